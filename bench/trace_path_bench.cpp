// What each part of a job log's way through kiln costs, in CPU per MB, without the emulator:
// the job's output is read from a real child process's pipe (`base64 -w 100` of random bytes
// prepared in a file, so the job is one process, as bench/trace_streaming.py's) on one
// io_context thread, as kiln reads it, and
//
//   read   is only read;
//   trace  also goes through a trace_buffer (masking with a masked value and the token
//          prefixes, UTF-8 repair, CRC32, the spool file and its writer thread);
//   send   is read, and as many bytes are PATCHed in 1 MiB bodies over TLS to a loopback Beast
//          server (one buffer sent again and again: the transport's share alone);
//   full   goes through the trace_buffer and is then PATCHed from it, 1 MiB at a time, as the
//          final flush of a job that wrote faster than GitLab's update interval lets a runner
//          send (bench/trace_streaming.py's case).
//
// CPU is the process's (user + system, every thread) minus the server thread's. Each stage runs
// --runs times; the median is printed.
//
//   trace_path_bench [--mb 100] [--runs 5] [--stage read|trace|send|full|all] [--plain]
//                    [--copy-reads]   (the job's pipe read into a buffer of the reader's own, as
//                                      before output was read straight into the spool block)

#include <sys/resource.h>

#include <algorithm>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>
#include <vector>

#include "executors/shell/process.hpp"
#include "runner/net/http_client.hpp"
#include "runner/trace/trace_buffer.hpp"
#include "tests/support/test_certs.hpp"
#include "tests/support/test_http_server.hpp"

namespace {

namespace asio = boost::asio;
namespace net = kiln::net;

// This thread's context switches: voluntary (it waited) and involuntary (it was preempted).
std::pair<long, long> context_switches() {
    rusage ru{};
    ::getrusage(RUSAGE_THREAD, &ru);
    return {ru.ru_nvcsw, ru.ru_nivcsw};
}

double process_cpu_seconds() {
    rusage ru{};
    ::getrusage(RUSAGE_SELF, &ru);
    return static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
           static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

struct options {
    std::size_t mb = 100;
    int runs = 5;
    std::string stage = "all";
    bool plain = false;
    bool copy_reads = false;  // the job's output read into a buffer of its own and copied
    std::string input;  // random bytes, 3/4 of the log's size
};

struct outcome {
    std::size_t bytes = 0;  // log bytes (what the trace holds, or what was read)
    double cpu_seconds = 0;
    long waits = 0;        // voluntary context switches of the I/O thread
    long preempted = 0;    // involuntary ones
    std::string error;
};

asio::awaitable<bool> patch(net::http_client& client, std::string_view body, std::size_t offset,
                            std::string& error) {
    net::http_request req;
    req.method = "PATCH";
    req.target = "/api/v4/jobs/1/trace";
    req.headers.set("Content-Type", "text/plain");
    req.headers.set("Content-Range",
                    std::to_string(offset) + "-" + std::to_string(offset + body.size() - 1));
    req.body.push_back({{}, {}, body});
    req.timeout = std::chrono::seconds(30);
    auto out = co_await client.send(std::move(req));
    if (!out.response || out.response->status != 202) {
        error = out.response ? "HTTP " + std::to_string(out.response->status) : out.error.message;
        co_return false;
    }
    co_return true;
}

asio::awaitable<void> run_stage(const std::string& stage, const options& o,
                                kiln::test::test_http_server& server, outcome& result) {
    auto ex = co_await asio::this_coro::executor;
    const auto& certs = kiln::test::test_certs();
    net::http_client client(ex, server.origin(), {certs.ca, {}, {}}, {});
    kiln::trace::trace_buffer buffer(o.mb * 2 * 1000 * 1000, {"glcbt-64_pXb3kZq1Yw7cVt9mRn2s"});
    const bool traced = stage == "trace" || stage == "full";
    const bool sending = stage == "send" || stage == "full";

    kiln::executors::process_spec spec;
    spec.argv = {"base64", "-w", "100", o.input};
    spec.argv[0] = "/usr/bin/base64";
    spec.env = {"PATH=/usr/bin:/bin"};
    spec.cwd = "/";

    std::string first;  // "send": the first MiB of output, PATCHed again and again
    std::size_t read_bytes = 0;
    std::size_t sent = 0;
    // The first PATCH opens the connection (the TLS handshake is not a per-MB cost).
    if (sending && !co_await patch(client, "warm-up", 0, result.error)) {
        co_return;
    }
    const double before = process_cpu_seconds();
    const auto server_before = server.cpu_time();
    const auto switches_before = context_switches();
    kiln::executors::child_process job(ex, spec);
    kiln::executors::output_sink sink([&](kiln::executors::output_stream, std::string_view s) {
        read_bytes += s.size();
        if (traced) {
            buffer.write(kiln::trace::source::job_stdout, s);
        } else if (sending && first.size() < 1024 * 1024) {
            first.append(s.substr(0, 1024 * 1024 - first.size()));
        }
    });
    if (traced && !o.copy_reads) {
        // As job.cpp does: fast output is read straight into the spool block.
        sink.place_with({[&](kiln::executors::output_stream, std::size_t max) {
                             return buffer.prepare(kiln::trace::source::job_stdout, max);
                         },
                         [&](kiln::executors::output_stream, std::size_t n) {
                             read_bytes += n;
                             buffer.placed(kiln::trace::source::job_stdout, n);
                         }});
    }
    auto status = co_await job.run(std::move(sink));
    if (status.exit_code != 0) {
        result.error = "the job failed";
        co_return;
    }
    if (stage == "send") {
        while (sent < read_bytes) {
            const auto body = std::string_view(first).substr(0, read_bytes - sent);
            if (!co_await patch(client, body, sent, result.error)) {
                co_return;
            }
            sent += body.size();
        }
    }
    if (traced) {
        buffer.close();
    }
    if (stage == "full") {
        while (sent < buffer.size()) {
            const auto chunk = co_await buffer.chunk(sent, 1024 * 1024);
            if (chunk.bytes.empty() || !co_await patch(client, chunk.bytes, sent, result.error)) {
                if (result.error.empty()) {
                    result.error = "cannot read the trace back";
                }
                co_return;
            }
            sent += chunk.bytes.size();
        }
        buffer.release_read_buffer();
    }
    const auto server_cpu =
        std::chrono::duration<double>(server.cpu_time() - server_before).count();
    result.cpu_seconds = process_cpu_seconds() - before - server_cpu;
    const auto switches = context_switches();
    result.waits = switches.first - switches_before.first;
    result.preempted = switches.second - switches_before.second;
    result.bytes = traced ? buffer.size() : read_bytes;
}

}  // namespace

int main(int argc, char** argv) {
    options o;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (a == "--mb" && i + 1 < argc) {
            o.mb = std::strtoul(argv[++i], nullptr, 10);
        } else if (a == "--runs" && i + 1 < argc) {
            o.runs = std::atoi(argv[++i]);
        } else if (a == "--stage" && i + 1 < argc) {
            o.stage = argv[++i];
        } else if (a == "--plain") {
            o.plain = true;
        } else if (a == "--copy-reads") {
            o.copy_reads = true;
        } else {
            std::fprintf(stderr,
                         "usage: trace_path_bench [--mb 100] [--runs 5] "
                         "[--stage read|trace|send|full|all] [--plain] [--copy-reads]\n");
            return 2;
        }
    }
    kiln::test::temp_dir dir;
    o.input = (dir / "random.bin").string();
    if (std::system(("head -c " + std::to_string(o.mb * 1000 * 1000 * 3 / 4) +
                     " /dev/urandom > " + o.input).c_str()) != 0) {
        std::fprintf(stderr, "cannot make %s\n", o.input.c_str());
        return 1;
    }
    const auto& certs = kiln::test::test_certs();
    kiln::test::server_options so;
    if (!o.plain) {
        so.cert_file = certs.server;
        so.key_file = certs.server_key;
    }
    so.record = false;
    kiln::test::test_http_server server(
        [](const kiln::test::recorded_request&) { return net::http_response{202, {}, ""}; }, so);

    std::vector<std::string> stages = {"read", "trace", "send", "full"};
    if (o.stage != "all") {
        stages = {o.stage};
    }
    std::printf("%zu MB of base64 per run, %d runs, GitLab stand-in over %s\n", o.mb, o.runs,
                o.plain ? "HTTP" : "TLS");
    for (const auto& stage : stages) {
        std::vector<double> per_mb;
        long waits = 0;
        long preempted = 0;
        for (int r = 0; r < o.runs; ++r) {
            asio::io_context io(1);
            outcome result;
            asio::co_spawn(io, run_stage(stage, o, server, result), [](std::exception_ptr e) {
                if (e) {
                    std::rethrow_exception(e);
                }
            });
            io.run();
            if (!result.error.empty() || result.bytes == 0) {
                std::fprintf(stderr, "%s: %s\n", stage.c_str(), result.error.c_str());
                return 1;
            }
            per_mb.push_back(result.cpu_seconds * 1000 / (static_cast<double>(result.bytes) / 1e6));
            waits += result.waits;
            preempted += result.preempted;
        }
        std::sort(per_mb.begin(), per_mb.end());
        std::printf("%-6s median %.3f ms/MB  (min %.3f, max %.3f); I/O thread per run: %ld waits, "
                    "%ld preemptions\n",
                    stage.c_str(), per_mb[per_mb.size() / 2], per_mb.front(), per_mb.back(),
                    waits / o.runs, preempted / o.runs);
    }
    return 0;
}
