#pragma once
// An in-process HTTP/1.1 server (plain or TLS) for integration tests and benchmarks. It runs on
// its own thread and io_context, so the client under test keeps the test's io_context to itself.

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "runner/net/http_message.hpp"
#include "runner/net/url.hpp"

namespace kiln::test {

struct recorded_request {
    std::string method;
    std::string target;
    net::http_headers headers;
    std::string body;
    std::size_t connection = 0;  // 1-based, in order of accept
    std::size_t index = 0;       // 0-based, in order of arrival over all connections
};

struct server_options {
    std::string address = "127.0.0.1";
    /// TLS when both are set.
    std::string cert_file;
    std::string key_file;
    /// When set, a client certificate signed by this CA is required.
    std::string client_ca_file;
    /// Keep every request (and its body) for requests(); benchmarks turn this off.
    bool record = true;
    std::size_t max_body = 256 * 1024 * 1024;
};

class test_http_server {
public:
    /// Runs on the server's thread; one request at a time.
    using handler = std::function<net::http_response(const recorded_request&)>;

    /// Listens on options.address, port 0, and starts serving at once. Throws when the address
    /// cannot be bound or the TLS files cannot be loaded.
    explicit test_http_server(handler h, server_options options = {});
    /// Stops the thread; open connections are dropped.
    ~test_http_server();
    test_http_server(const test_http_server&) = delete;
    test_http_server& operator=(const test_http_server&) = delete;

    std::uint16_t port() const;
    net::origin origin() const;
    /// "http://127.0.0.1:PORT" (https for TLS), without a trailing '/'.
    std::string url() const;

    /// Replaces the handler for requests that arrive from now on.
    void set_handler(handler h);

    /// After this many responses on one connection, the server closes it without saying so in
    /// the response (as a server does when its keep-alive timeout expires). 0 = never.
    void close_after_responses(std::size_t n);
    /// Wait this long before each response.
    void delay_responses(std::chrono::milliseconds d);
    /// The next `n` requests are read and recorded, then their connection is closed without an
    /// answer.
    void drop_requests(std::size_t n);

    std::vector<recorded_request> requests() const;
    std::size_t request_count() const;
    std::size_t connections_accepted() const;
    /// Connections that ended, for whatever reason (either side closed, TLS handshake failed).
    std::size_t connections_closed() const;
    std::size_t tls_handshake_failures() const;
    /// CPU time the server's thread has used (user + system), so a benchmark can tell its own
    /// share of the process's time.
    std::chrono::nanoseconds cpu_time() const;

    /// Blocks the calling thread until `n` requests have arrived; false on timeout.
    bool wait_for_requests(std::size_t n, std::chrono::milliseconds timeout) const;
    /// Blocks the calling thread until `n` connections have ended; false on timeout.
    bool wait_for_closed_connections(std::size_t n, std::chrono::milliseconds timeout) const;

private:
    struct impl;
    std::unique_ptr<impl> impl_;
};

/// A handler that answers every request with `status` and `body`.
test_http_server::handler respond_with(int status, std::string body = {},
                                       net::http_headers headers = {});

/// A loopback TCP port with nothing listening on it (bound, then closed).
std::uint16_t unused_port();

}  // namespace kiln::test
