// Throughput of job-log masking: kiln::trace::masker on ~256 MB of build-log text with 200
// masked values and the default token prefixes, written in 4-64 KiB pieces; for comparison the
// per-value find loop trace_buffer used before, and the whole trace_buffer (masking, UTF-8
// repair, CRC32, spooling to disk).
//
//   masking_bench [MiB of log, default 256]

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "runner/trace/masker.hpp"
#include "runner/trace/trace_buffer.hpp"

namespace {

using clock_type = std::chrono::steady_clock;

std::string random_token(std::mt19937_64& rng, std::size_t len) {
    static const std::string alphabet =
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-";
    std::string s(len, ' ');
    for (auto& c : s) {
        c = alphabet[rng() % alphabet.size()];
    }
    return s;
}

// Compiler, test-runner, package-manager and service lines, with now and then a masked value,
// a GitLab token or a URL with a private_token.
std::string make_log(std::size_t bytes, const std::vector<std::string>& secrets, std::mt19937_64& rng) {
    static const char* words[] = {"parser", "handler", "config", "server", "client", "cache",
                                  "router", "storage", "metrics", "auth", "scheduler", "worker",
                                  "queue", "archive", "runner", "executor", "trace", "artifact"};
    static const char* pkgs[] = {"github.com/stretchr/testify v1.8.4", "golang.org/x/sys v0.15.0",
                                 "github.com/sirupsen/logrus v1.9.3", "google.golang.org/grpc v1.60.1",
                                 "github.com/prometheus/client_golang v1.18.0"};
    auto w = [&] { return std::string(words[rng() % std::size(words)]); };
    std::string log;
    log.reserve(bytes + 4096);
    std::uint64_t line = 0;
    while (log.size() < bytes) {
        ++line;
        const auto pick = rng() % 100;
        if (pick < 22) {
            log += std::string("[") + std::to_string(rng() % 100) + "%] Building CXX object src/" + w() +
                   "/CMakeFiles/" + w() + ".dir/" + w() + "_" + w() + ".cpp.o\n";
        } else if (pick < 34) {
            log += std::string("/usr/bin/c++ -DNDEBUG -I/builds/group/project/include -I/builds/group/project/src/") +
                   w() + " -O2 -g -Wall -Wextra -std=gnu++20 -o CMakeFiles/" + w() + ".dir/" + w() +
                   ".cpp.o -c /builds/group/project/src/" + w() + "/" + w() + ".cpp\n";
        } else if (pick < 50) {
            log += std::string("=== RUN   Test") + w() + "_" + w() + "/case_" + std::to_string(rng() % 64) + "\n";
        } else if (pick < 64) {
            log += std::string("--- PASS: Test") + w() + "_" + w() + " (0." + std::to_string(rng() % 100) + "s)\n";
        } else if (pick < 72) {
            log += std::string("ok  \tgitlab.com/group/project/internal/") + w() + "\t" +
                   std::to_string(rng() % 3) + "." + std::to_string(rng() % 1000) + "s\n";
        } else if (pick < 78) {
            log += std::string("go: downloading ") + pkgs[rng() % std::size(pkgs)] + "\n";
        } else if (pick < 86) {
            log += std::string("2024-05-01T12:00:") + std::to_string(10 + rng() % 50) + ".123Z INFO  " + w() +
                   ": listening on 0.0.0.0:" + std::to_string(1024 + rng() % 60000) +
                   " (pid " + std::to_string(rng() % 32768) + ")\n";
        } else if (pick < 92) {
            log += std::string("npm WARN deprecated ") + w() + "@" + std::to_string(rng() % 9) + ".0." +
                   std::to_string(rng() % 20) + ": This module is not supported, and leaks memory.\n";
        } else if (pick < 97) {
            log += std::string("\x1b[0Ksection_start:1700000000:") + w() + "_script\r\x1b[0K\x1b[36;1mExecuting \"" +
                   w() + "\" stage\x1b[0;m\n";
        } else {
            log += std::string("Step ") + std::to_string(rng() % 20) + "/20 : RUN apt-get update && apt-get install -y " +
                   w() + "\n";
        }
        if (line % 400 == 0) {
            log += std::string("export DEPLOY_KEY=") + secrets[rng() % secrets.size()] + "\n";
        }
        if (line % 1000 == 0) {
            log += std::string("git clone https://gitlab-ci-token:glcbt-64_") + random_token(rng, 20) +
                   "@gitlab.example.com/group/project.git\n";
        }
        if (line % 1500 == 0) {
            log += std::string("curl 'https://gitlab.example.com/api/v4/projects?private_token=") +
                   random_token(rng, 20) + "&per_page=100'\n";
        }
        if (line % 2000 == 0) {
            log += std::string("docker login -p glpat-") + random_token(rng, 20) + " registry.example.com\n";
        }
    }
    return log;
}

std::vector<std::size_t> write_sizes(std::size_t total, std::mt19937_64& rng) {
    std::vector<std::size_t> sizes;
    for (std::size_t done = 0; done < total;) {
        const std::size_t s = std::min<std::size_t>(4096 + rng() % (60 * 1024 + 1), total - done);
        sizes.push_back(s);
        done += s;
    }
    return sizes;
}

// trace_buffer's masking before the masker: every value searched for from every match, then
// the longest tail that may start one held back.
class naive_masker {
public:
    explicit naive_masker(std::vector<std::string> secrets) : secrets_(std::move(secrets)) {
        std::sort(secrets_.begin(), secrets_.end(),
                  [](const auto& a, const auto& b) { return a.size() > b.size(); });
        for (const auto& s : secrets_) {
            longest_ = std::max(longest_, s.size());
        }
    }
    void write(std::string_view data, std::string& out) {
        held_.append(data);
        std::size_t pos = 0;
        const std::string_view text = held_;
        while (pos < text.size()) {
            std::size_t best = std::string_view::npos;
            std::size_t best_len = 0;
            for (const auto& s : secrets_) {
                auto at = text.find(s, pos);
                if (at < best) {
                    best = at;
                    best_len = s.size();
                }
            }
            if (best == std::string_view::npos) {
                break;
            }
            out.append(text.substr(pos, best - pos));
            out.append("[MASKED]");
            pos = best + best_len;
        }
        auto rest = text.substr(pos);
        std::size_t keep = 0;
        for (std::size_t n = std::min(rest.size(), longest_ - 1); n > 0 && keep == 0; --n) {
            for (const auto& s : secrets_) {
                if (s.size() > n && s.compare(0, n, rest.substr(rest.size() - n)) == 0) {
                    keep = n;
                    break;
                }
            }
        }
        out.append(rest.substr(0, rest.size() - keep));
        held_ = std::string(rest.substr(rest.size() - keep));
    }

private:
    std::vector<std::string> secrets_;
    std::size_t longest_ = 0;
    std::string held_;
};

template <class F>
double best_gbps(std::size_t bytes, int runs, F&& run) {
    double best = 0;
    for (int r = 0; r < runs; ++r) {
        const auto t0 = clock_type::now();
        run();
        const std::chrono::duration<double> dt = clock_type::now() - t0;
        best = std::max(best, static_cast<double>(bytes) / dt.count() / 1e9);
    }
    return best;
}

}  // namespace

int main(int argc, char** argv) {
    const std::size_t mib = argc > 1 ? std::strtoul(argv[1], nullptr, 10) : 256;
    std::mt19937_64 rng(20240501);
    std::vector<std::string> secrets;
    for (int i = 0; i < 200; ++i) {
        secrets.push_back(random_token(rng, 8 + rng() % 33));
    }
    const std::string log = make_log(mib << 20, secrets, rng);
    const auto sizes = write_sizes(log.size(), rng);
    std::printf("log: %.1f MiB in %zu writes of 4-64 KiB; 200 masked values of 8-40 bytes, %zu token prefixes\n",
                static_cast<double>(log.size()) / (1 << 20), sizes.size(),
                kiln::trace::effective_token_prefixes({}).size());

    kiln::trace::masker_options opts;
    opts.phrases = secrets;
    std::size_t out_bytes = 0;
    std::size_t masks = 0;
    const double masker_gbps = best_gbps(log.size(), 3, [&] {
        kiln::trace::masker m(opts);
        std::string out;
        std::size_t off = 0;
        out_bytes = 0;
        masks = 0;
        for (auto s : sizes) {
            out.clear();
            m.write(std::string_view(log).substr(off, s), out);
            off += s;
            out_bytes += out.size();
            for (auto at = out.find("[MASKED]"); at != std::string::npos; at = out.find("[MASKED]", at + 8)) {
                ++masks;
            }
        }
        out.clear();
        m.flush(out);
        out_bytes += out.size();
    });
    std::printf("masker (200 values + prefixes + URL params): %.2f GB/s best of 3  (%zu [MASKED], %zu bytes out)\n",
                masker_gbps, masks, out_bytes);

    // Without the [MASKED] count, which is part of the loop above.
    const double masker_only = best_gbps(log.size(), 3, [&] {
        kiln::trace::masker m(opts);
        std::string out;
        std::size_t off = 0;
        for (auto s : sizes) {
            out.clear();
            m.write(std::string_view(log).substr(off, s), out);
            off += s;
        }
        m.flush(out);
    });
    std::printf("masker, output only:                          %.2f GB/s best of 3\n", masker_only);

    // Values that share a prefix (personal access tokens, URLs with credentials).
    {
        kiln::trace::masker_options shared = opts;
        for (auto& v : shared.phrases) {
            v = (&v - shared.phrases.data()) % 2 == 0 ? "glpat-" + v : "https://deploy:" + v;
        }
        const double gbps = best_gbps(log.size(), 3, [&] {
            kiln::trace::masker m(shared);
            std::string out;
            std::size_t off = 0;
            for (auto s : sizes) {
                out.clear();
                m.write(std::string_view(log).substr(off, s), out);
                off += s;
            }
            m.flush(out);
        });
        std::printf("masker, values sharing glpat- / https://:     %.2f GB/s best of 3\n", gbps);
    }

    // The trace benchmarks' job: base64 lines of random bytes, one masked value, 64 KiB writes,
    // the output passed on as views (as trace_buffer takes it) and only counted.
    {
        static constexpr std::string_view b64 =
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        std::string text(log.size(), '\n');
        for (std::size_t i = 0; i < text.size(); ++i) {
            if (i % 101 != 100) {
                text[i] = b64[rng() % 64];
            }
        }
        kiln::trace::masker_options one;
        one.phrases = {"glcbt-64_pXb3kZq1Yw7cVt9mRn2s"};
        std::size_t passed = 0;
        const double gbps = best_gbps(text.size(), 3, [&] {
            kiln::trace::masker m(one);
            const auto count = [&passed](std::string_view piece) { passed += piece.size(); };
            for (std::size_t off = 0; off < text.size(); off += 64 * 1024) {
                m.write(std::string_view(text).substr(off, 64 * 1024), count);
            }
            m.flush(count);
        });
        std::printf("masker, base64 lines, one value, no copy:     %.2f GB/s best of 3\n", gbps);
    }

    // One write per line, as job output often arrives.
    const double per_line = best_gbps(log.size(), 3, [&] {
        kiln::trace::masker m(opts);
        std::string out;
        for (std::size_t off = 0; off < log.size();) {
            const std::size_t nl = log.find('\n', off);
            const std::size_t end = nl == std::string::npos ? log.size() : nl + 1;
            out.clear();
            m.write(std::string_view(log).substr(off, end - off), out);
            off = end;
        }
        m.flush(out);
    });
    std::printf("masker, one write per line:                   %.2f GB/s best of 3\n", per_line);

    std::size_t footprint = 0;
    const double buffer_gbps = best_gbps(log.size(), 3, [&] {
        kiln::trace::trace_buffer b(std::size_t{1} << 40, secrets);
        std::size_t off = 0;
        for (auto s : sizes) {
            b.write(std::string_view(log).substr(off, s));
            off += s;
            footprint = std::max(footprint, b.memory_footprint());
        }
        b.close();
        if (b.size() != out_bytes) {
            std::printf("trace_buffer size %zu != masker output %zu\n", b.size(), out_bytes);
        }
    });
    std::printf("trace_buffer (mask, UTF-8, CRC32, spool):     %.2f GB/s best of 3; memory_footprint() peak %.1f KiB\n",
                buffer_gbps, static_cast<double>(footprint) / 1024);

    const std::size_t naive_bytes = std::min<std::size_t>(log.size(), 16u << 20);
    const double naive_gbps = best_gbps(naive_bytes, 1, [&] {
        naive_masker m(secrets);
        std::string out;
        std::size_t off = 0;
        for (auto s : sizes) {
            if (off >= naive_bytes) {
                break;
            }
            out.clear();
            m.write(std::string_view(log).substr(off, std::min(s, naive_bytes - off)), out);
            off += s;
        }
    });
    std::printf("old per-value find loop (200 values, first %zu MiB): %.4f GB/s\n", naive_bytes >> 20,
                naive_gbps);
    return 0;
}
