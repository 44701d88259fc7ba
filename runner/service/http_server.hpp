#pragma once
// The operations HTTP endpoint (`listen_address`): a small HTTP/1.1 server on kiln's
// io_context for /metrics, health and debug pages. GET and HEAD only, small requests, no TLS
// and no authentication (as gitlab-runner's): bind it to a private address.

#include <boost/asio/any_io_executor.hpp>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace kiln::service {

struct http_reply {
    unsigned status = 200;
    std::string content_type = "text/plain; charset=utf-8";
    std::string body;
    std::vector<std::pair<std::string, std::string>> headers;
};

/// Called on the I/O thread for each GET or HEAD (HEAD gets the same headers, no body).
using http_handler = std::function<http_reply(std::string_view target)>;

/// "host:port", ":port" (all interfaces), "[v6]:port". nullopt when there is no port.
std::optional<std::pair<std::string, std::string>> split_host_port(std::string_view address);

class http_server {
public:
    /// Resolves and binds `listen_address`; throws std::runtime_error saying what to change.
    http_server(boost::asio::any_io_executor ex, const std::string& listen_address,
                http_handler handler);
    ~http_server();
    http_server(const http_server&) = delete;
    http_server& operator=(const http_server&) = delete;

    /// The bound address, e.g. "127.0.0.1:9252" (useful with port 0).
    std::string local_address() const;
    void start();
    /// Stops accepting and closes open connections; the coroutines then end.
    void close();

private:
    struct impl;
    std::shared_ptr<impl> impl_;
};

}  // namespace kiln::service
