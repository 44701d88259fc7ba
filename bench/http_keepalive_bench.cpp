// Sequential small POSTs (the shape of a trace PATCH or job PUT) from kiln's net::http_client on
// one kept-alive connection to a loopback Beast server running on its own thread, over plain
// HTTP and TLS. Prints requests/s, p50/p99 latency and the connections opened.
//
//   http_keepalive_bench [--requests N] [--mode plain|tls|both]
//   http_keepalive_bench --serve plain|tls     (reference clients: prints the URL and, for TLS,
//                                               the CA file; serves until stdin closes)

#include <algorithm>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <chrono>
#include <ctime>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <iostream>
#include <string>
#include <vector>

#include "runner/net/http_client.hpp"
#include "tests/support/test_certs.hpp"
#include "tests/support/test_http_server.hpp"

namespace {

namespace asio = boost::asio;
namespace net = kiln::net;
using clock_type = std::chrono::steady_clock;

constexpr double target_requests_per_second = 5000;
constexpr int warmup_requests = 500;

// About 200 bytes, like the JSON of a job PUT without the info object.
std::string request_body() {
    std::string body =
        R"({"token":"glcbt-64_pXb3kZq1Yw7cVt9mRn2s","state":"running","checksum":"crc32:1c291ca3",)"
        R"("output":{"checksum":"crc32:1c291ca3","bytesize":123456},"failure_reason":"",)"
        R"("exit_code":0,"pad":")";
    body.append(200 - body.size() - 2, 'x');
    body += "\"}";
    return body;
}

double cpu_seconds(clockid_t clock) {
    timespec ts{};
    ::clock_gettime(clock, &ts);
    return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) / 1e9;
}

struct run_result {
    std::vector<double> latencies_us;
    double seconds = 0;
    double client_cpu_seconds = 0;   // this (the client's) thread, user + system
    double process_cpu_seconds = 0;  // both threads
    int failures = 0;
    std::string first_error;
    std::size_t client_connections = 0;
};

net::http_request make_request(const std::string& body) {
    net::http_request req;
    req.method = "POST";
    req.target = "/api/v4/jobs/5001/trace";
    req.headers.set("Content-Type", "application/json");
    req.headers.set("JOB-TOKEN", "glcbt-64_pXb3kZq1Yw7cVt9mRn2s");
    req.set_body(body);
    req.timeout = std::chrono::seconds(10);
    return req;
}

asio::awaitable<void> drive(net::http_client& client, int requests, run_result& out) {
    const auto req = make_request(request_body());
    for (int i = 0; i < warmup_requests; ++i) {
        co_await client.send(req);
    }
    out.latencies_us.reserve(static_cast<std::size_t>(requests));
    const double thread_cpu0 = cpu_seconds(CLOCK_THREAD_CPUTIME_ID);
    const double process_cpu0 = cpu_seconds(CLOCK_PROCESS_CPUTIME_ID);
    const auto start = clock_type::now();
    for (int i = 0; i < requests; ++i) {
        const auto t0 = clock_type::now();
        auto outcome = co_await client.send(req);
        const auto t1 = clock_type::now();
        if (!outcome.response || outcome.response->status != 200) {
            if (out.failures++ == 0) {
                out.first_error = outcome.response
                                      ? "status " + std::to_string(outcome.response->status)
                                      : outcome.error.message;
            }
        }
        out.latencies_us.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
    }
    out.seconds = std::chrono::duration<double>(clock_type::now() - start).count();
    out.client_cpu_seconds = cpu_seconds(CLOCK_THREAD_CPUTIME_ID) - thread_cpu0;
    out.process_cpu_seconds = cpu_seconds(CLOCK_PROCESS_CPUTIME_ID) - process_cpu0;
}

kiln::test::server_options server_options_for(bool tls) {
    kiln::test::server_options o;
    o.record = false;
    if (tls) {
        const auto& certs = kiln::test::test_certs();
        o.cert_file = certs.server;
        o.key_file = certs.server_key;
    }
    return o;
}

net::http_headers json_headers() {
    net::http_headers h;
    h.set("Content-Type", "application/json");
    return h;
}

double percentile(std::vector<double> v, double p) {
    if (v.empty()) {
        return 0;
    }
    std::sort(v.begin(), v.end());
    auto i = static_cast<std::size_t>(p * static_cast<double>(v.size() - 1) + 0.5);
    return v[std::min(i, v.size() - 1)];
}

bool run_mode(bool tls, int requests) {
    kiln::test::test_http_server server(
        kiln::test::respond_with(200, "{}", json_headers()), server_options_for(tls)
    );
    net::tls_settings tls_files;
    if (tls) {
        tls_files.ca_file = kiln::test::test_certs().ca;
    }
    asio::io_context ioc(1);
    net::http_client client(ioc.get_executor(), server.origin(), tls_files, {});
    run_result result;
    std::exception_ptr failure;
    asio::co_spawn(ioc, drive(client, requests, result), [&](std::exception_ptr e) {
        failure = e;
    });
    ioc.run();
    if (failure) {
        std::rethrow_exception(failure);
    }
    result.client_connections = client.connections_opened();
    const double rps = requests / result.seconds;
    std::printf(
        "%-5s  requests=%d  requests/s=%.0f  p50=%.1fus  p99=%.1fus  max=%.1fus  "
        "connections: client opened %zu, server accepted %zu  failures=%d\n",
        tls ? "tls" : "plain", requests, rps, percentile(result.latencies_us, 0.50),
        percentile(result.latencies_us, 0.99),
        *std::max_element(result.latencies_us.begin(), result.latencies_us.end()),
        result.client_connections, server.connections_accepted(), result.failures
    );
    const double per_request_us = 1e6 / requests;
    std::printf("       CPU per request: client %.1fus, server %.1fus (user + kernel)\n",
                result.client_cpu_seconds * per_request_us,
                (result.process_cpu_seconds - result.client_cpu_seconds) * per_request_us);
    if (result.failures > 0) {
        std::printf("       first failure: %s\n", result.first_error.c_str());
    }
    const bool ok = rps >= target_requests_per_second && result.failures == 0 &&
                    result.client_connections == 1;
    std::printf("       target >= %.0f requests/s on one connection: %s\n",
                target_requests_per_second, ok ? "met" : "NOT met");
    return ok;
}

int serve(bool tls) {
    kiln::test::test_http_server server(
        kiln::test::respond_with(200, "{}", json_headers()), server_options_for(tls)
    );
    std::printf("%s %s\n", server.url().c_str(), tls ? kiln::test::test_certs().ca.c_str() : "-");
    std::fflush(stdout);
    std::string line;
    while (std::getline(std::cin, line)) {
    }
    return 0;
}

int usage() {
    std::fprintf(stderr,
                 "usage: http_keepalive_bench [--requests N] [--mode plain|tls|both]\n"
                 "       http_keepalive_bench --serve plain|tls\n");
    return 2;
}

}  // namespace

int main(int argc, char** argv) {
    int requests = 20000;
    std::string mode = "both";
    std::string serve_mode;
    for (int i = 1; i < argc; ++i) {
        std::string arg = argv[i];
        if (i + 1 >= argc) {
            return usage();
        }
        if (arg == "--requests") {
            requests = std::atoi(argv[++i]);
        } else if (arg == "--mode") {
            mode = argv[++i];
        } else if (arg == "--serve") {
            serve_mode = argv[++i];
        } else {
            return usage();
        }
    }
    try {
        if (!serve_mode.empty()) {
            return serve(serve_mode == "tls");
        }
        if (requests <= 0 || (mode != "plain" && mode != "tls" && mode != "both")) {
            return usage();
        }
        std::printf("http_keepalive_bench: %d sequential POSTs with a %zu-byte JSON body on one "
                    "kept-alive connection (after %d warm-up requests)\n",
                    requests, request_body().size(), warmup_requests);
        bool ok = true;
        if (mode != "tls") {
            ok = run_mode(false, requests) && ok;
        }
        if (mode != "plain") {
            ok = run_mode(true, requests) && ok;
        }
        return ok ? 0 : 1;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "http_keepalive_bench: %s\n", e.what());
        return 1;
    }
}
