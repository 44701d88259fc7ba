#pragma once
// HTTP/1.1 client for one origin (scheme, host, port) over TCP or TLS, with keep-alive reuse.
// Beast and OpenSSL stay in http_client.cpp; callers see plain values and awaitables.

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <chrono>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "runner/net/http_message.hpp"
#include "runner/net/tls.hpp"
#include "runner/net/url.hpp"

namespace kiln::net {

/// One piece of a request body: bytes in memory, or a file streamed from disk in 64 KiB reads
/// so large uploads are never held in memory. Exactly one of the three is set.
struct body_part {
    std::string data;
    std::filesystem::path file;
    /// Bytes the caller owns and keeps unchanged until send() completes: sent without a copy
    /// (trace PATCHes reuse one buffer for every request).
    std::string_view borrowed;

    std::string_view bytes() const { return borrowed.empty() ? std::string_view(data) : borrowed; }
};

struct http_request {
    std::string method = "GET";
    std::string target = "/";  // origin-form: "/api/v4/jobs/request?x=y"
    http_headers headers;
    std::vector<body_part> body;  // sent back to back with a Content-Length
    /// When set, a 2xx response body is written to this file instead of http_response::body.
    std::filesystem::path response_file;
    /// Deadline for the whole exchange, connect included.
    std::chrono::milliseconds timeout{std::chrono::seconds(60)};

    void set_body(std::string text) {
        body.clear();
        body.push_back({std::move(text), {}});
    }
};

struct transport_error {
    enum class kind { none, resolve, connect, tls, tls_verify, timeout, io, protocol, file };
    kind what = kind::none;
    std::string message;  // one line, names the peer and the reason
};

struct http_outcome {
    std::optional<http_response> response;
    transport_error error;  // meaningful when !response
};

struct client_options {
    std::chrono::seconds connection_max_age{15 * 60};  // <= 0: keep forever
    std::chrono::seconds connect_timeout{30};
    std::string user_agent;
    std::size_t max_response_body = 64 * 1024 * 1024;  // in-memory bodies only
};

class http_client {
public:
    /// Throws std::runtime_error when TLS material cannot be loaded.
    http_client(
        boost::asio::any_io_executor executor,
        net::origin origin,
        const tls_settings& tls,
        client_options options
    );
    ~http_client();
    http_client(const http_client&) = delete;
    http_client& operator=(const http_client&) = delete;

    /// Sends one request and reads the whole response. Reuses an idle kept-alive connection
    /// when there is one (and sends once more on a fresh connection if a reused one turns out
    /// to have been closed by the server before answering); opens a new one otherwise, so
    /// concurrent callers each get their own connection. Transport failures are returned as
    /// values, never thrown. Completes when the response is complete or the deadline passes.
    boost::asio::awaitable<http_outcome> send(http_request request);

    /// Closes idle connections (e.g. before shutdown).
    void close_idle();

    const net::origin& origin() const;
    std::size_t connections_opened() const;

private:
    struct impl;
    std::unique_ptr<impl> impl_;
};

}  // namespace kiln::net
