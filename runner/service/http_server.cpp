#include "runner/service/http_server.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>
#include <chrono>
#include <set>
#include <stdexcept>

namespace kiln::service {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using namespace std::chrono_literals;

namespace {
constexpr auto use_tuple = asio::as_tuple(asio::use_awaitable);
constexpr std::size_t max_connections = 64;  // scrapers and curl, not the public
}  // namespace

std::optional<std::pair<std::string, std::string>> split_host_port(std::string_view address) {
    std::string_view host;
    std::string_view port;
    if (!address.empty() && address.front() == '[') {
        auto close = address.find(']');
        if (close == std::string_view::npos || close + 1 >= address.size() ||
            address[close + 1] != ':') {
            return std::nullopt;
        }
        host = address.substr(1, close - 1);
        port = address.substr(close + 2);
    } else {
        auto colon = address.rfind(':');
        if (colon == std::string_view::npos || address.find(':') != colon) {
            return std::nullopt;
        }
        host = address.substr(0, colon);
        port = address.substr(colon + 1);
    }
    if (port.empty() || port.find_first_not_of("0123456789") != std::string_view::npos) {
        return std::nullopt;
    }
    return std::pair{std::string(host), std::string(port)};
}

struct http_server::impl : std::enable_shared_from_this<impl> {
    asio::any_io_executor ex;
    tcp::acceptor acceptor;
    http_handler handler;
    std::set<tcp::socket*> open;
    bool closed = false;

    impl(asio::any_io_executor e, http_handler h)
        : ex(e), acceptor(e), handler(std::move(h)) {}

    asio::awaitable<void> accept_loop() {
        auto self = shared_from_this();
        while (!closed) {
            auto [ec, socket] = co_await acceptor.async_accept(use_tuple);
            if (ec) {
                if (closed || ec == asio::error::operation_aborted) {
                    co_return;
                }
                continue;  // e.g. EMFILE: the next accept may work
            }
            if (open.size() >= max_connections) {
                continue;  // the socket closes here
            }
            asio::co_spawn(ex, serve(std::move(socket)), asio::detached);
        }
    }

    asio::awaitable<void> serve(tcp::socket socket) {
        auto self = shared_from_this();
        beast::tcp_stream stream(std::move(socket));
        auto* raw = &stream.socket();
        open.insert(raw);
        beast::flat_buffer buffer;
        for (;;) {
            // Bodies are read (small ones) only so a POST gets its 405 instead of a reset.
            http::request_parser<http::string_body> parser;
            parser.header_limit(16 * 1024);
            parser.body_limit(8 * 1024);
            stream.expires_after(30s);
            auto [rec, n] = co_await http::async_read(stream, buffer, parser, use_tuple);
            if (rec) {
                break;
            }
            auto& req = parser.get();
            http::response<http::string_body> res;
            res.version(req.version());
            res.set(http::field::server, "kiln");
            const bool head = req.method() == http::verb::head;
            if (req.method() != http::verb::get && !head) {
                res.result(http::status::method_not_allowed);
                res.set(http::field::allow, "GET, HEAD");
                res.set(http::field::content_type, "text/plain; charset=utf-8");
                res.body() = "only GET and HEAD\n";
            } else {
                auto reply = handler(req.target());
                res.result(reply.status);
                res.set(http::field::content_type, reply.content_type);
                for (const auto& [k, v] : reply.headers) {
                    res.set(k, v);
                }
                res.body() = std::move(reply.body);
            }
            res.keep_alive(req.keep_alive());
            res.prepare_payload();
            stream.expires_after(30s);
            boost::system::error_code wec;
            if (head) {
                http::response_serializer<http::string_body> sr(res);
                std::tie(wec, n) = co_await http::async_write_header(stream, sr, use_tuple);
            } else {
                std::tie(wec, n) = co_await http::async_write(stream, res, use_tuple);
            }
            if (wec || !res.keep_alive() || closed) {
                break;
            }
        }
        open.erase(raw);
        boost::system::error_code ignored;
        stream.socket().shutdown(tcp::socket::shutdown_both, ignored);
    }
};

http_server::http_server(asio::any_io_executor ex, const std::string& listen_address,
                         http_handler handler)
    : impl_(std::make_shared<impl>(ex, std::move(handler))) {
    auto hp = split_host_port(listen_address);
    if (!hp) {
        throw std::runtime_error("listen_address \"" + listen_address +
                                 "\" is not host:port (for example \"127.0.0.1:9252\" or \":9252\")");
    }
    auto [host, port] = *hp;
    tcp::endpoint endpoint;
    boost::system::error_code ec;
    if (host.empty()) {
        endpoint = tcp::endpoint(tcp::v4(), static_cast<unsigned short>(std::stoul(port)));
    } else {
        // Start-up only, before the daemon runs: a blocking lookup is acceptable here.
        tcp::resolver resolver(ex);
        auto results = resolver.resolve(host, port, tcp::resolver::passive, ec);
        if (ec || results.empty()) {
            throw std::runtime_error("listen_address \"" + listen_address +
                                     "\": cannot resolve " + host + ": " + ec.message());
        }
        endpoint = results.begin()->endpoint();
    }
    auto& a = impl_->acceptor;
    a.open(endpoint.protocol(), ec);
    if (!ec) {
        a.set_option(tcp::acceptor::reuse_address(true), ec);
        a.bind(endpoint, ec);
    }
    if (!ec) {
        a.listen(asio::socket_base::max_listen_connections, ec);
    }
    if (ec) {
        throw std::runtime_error("cannot listen on listen_address \"" + listen_address +
                                 "\": " + ec.message() +
                                 " (choose a free port or remove listen_address)");
    }
}

http_server::~http_server() { close(); }

std::string http_server::local_address() const {
    boost::system::error_code ec;
    auto ep = impl_->acceptor.local_endpoint(ec);
    if (ec) {
        return {};
    }
    auto addr = ep.address().to_string();
    if (ep.address().is_v6()) {
        addr = "[" + addr + "]";
    }
    return addr + ":" + std::to_string(ep.port());
}

void http_server::start() { asio::co_spawn(impl_->ex, impl_->accept_loop(), asio::detached); }

void http_server::close() {
    if (!impl_ || impl_->closed) {
        return;
    }
    impl_->closed = true;
    boost::system::error_code ignored;
    impl_->acceptor.close(ignored);
    for (auto* s : impl_->open) {
        s->close(ignored);
    }
}

}  // namespace kiln::service
