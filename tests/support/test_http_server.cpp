#include "tests/support/test_http_server.hpp"

#include <atomic>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>
#include <boost/beast/ssl/ssl_stream.hpp>
#include <condition_variable>
#include <cstdio>
#include <exception>
#include <mutex>
#include <stdexcept>
#include <thread>

#include <pthread.h>
#include <time.h>

namespace kiln::test {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace ssl = asio::ssl;
using tcp = asio::ip::tcp;
constexpr auto use_tuple = asio::as_tuple(asio::use_awaitable);

void report_exception(std::exception_ptr e) {
    if (!e) {
        return;
    }
    try {
        std::rethrow_exception(e);
    } catch (const std::exception& ex) {
        std::fprintf(stderr, "test_http_server: %s\n", ex.what());
    }
}

}  // namespace

struct test_http_server::impl {
    server_options options;
    std::unique_ptr<ssl::context> ssl_ctx;
    std::unique_ptr<asio::io_context> ioc;
    std::unique_ptr<tcp::acceptor> acceptor;
    std::uint16_t port = 0;
    std::thread thread;

    std::atomic<std::size_t> close_after{0};
    std::atomic<std::int64_t> delay_ms{0};
    std::atomic<std::size_t> drop{0};

    mutable std::mutex mutex;
    mutable std::condition_variable changed;
    std::shared_ptr<const handler> on_request;
    std::vector<recorded_request> requests;
    std::size_t request_count = 0;
    std::size_t accepted = 0;
    std::size_t closed = 0;
    std::size_t handshake_failures = 0;

    // Decrements `drop` if it is positive; true when this request is to be dropped.
    bool take_drop() {
        auto n = drop.load();
        while (n > 0) {
            if (drop.compare_exchange_weak(n, n - 1)) {
                return true;
            }
        }
        return false;
    }

    // Beast's read loop takes 64 KiB per read; a big upload then costs hundreds of composed
    // operations, which is slow in sanitizer builds. After the header, slices of up to 1 MiB
    // go to the parser directly.
    template <class Stream>
    static asio::awaitable<bool> read_request(
        Stream& stream,
        beast::flat_buffer& buffer,
        http::request_parser<http::string_body>& parser
    ) {
        auto [ec, n] = co_await http::async_read_header(stream, buffer, parser, use_tuple);
        if (ec) {
            co_return false;
        }
        bool need_read = buffer.size() == 0;
        while (!parser.is_done()) {
            if (need_read) {
                auto [rec, got] =
                    co_await stream.async_read_some(buffer.prepare(1024 * 1024), use_tuple);
                if (rec) {
                    co_return false;
                }
                buffer.commit(got);
            }
            boost::system::error_code pec;
            buffer.consume(parser.put(buffer.data(), pec));
            if (pec && pec != http::error::need_more) {
                co_return false;
            }
            need_read = pec == http::error::need_more || buffer.size() == 0;
        }
        co_return true;
    }

    template <class Stream>
    asio::awaitable<void> serve(Stream& stream, std::size_t connection_id) {
        beast::flat_buffer buffer;
        std::size_t responses = 0;
        for (;;) {
            http::request_parser<http::string_body> parser;
            parser.body_limit(options.max_body);
            parser.header_limit(64 * 1024);
            if (!co_await read_request(stream, buffer, parser)) {
                co_return;
            }
            auto& msg = parser.get();
            recorded_request rec;
            rec.method = std::string(msg.method_string());
            rec.target = std::string(msg.target());
            for (const auto& field : msg) {
                rec.headers.items.emplace_back(std::string(field.name_string()),
                                               std::string(field.value()));
            }
            rec.body = std::move(msg.body());
            rec.connection = connection_id;

            std::shared_ptr<const handler> h;
            {
                std::lock_guard lock(mutex);
                rec.index = request_count++;
                if (options.record) {
                    requests.push_back(rec);
                }
                h = on_request;
            }
            changed.notify_all();
            if (take_drop()) {
                co_return;
            }
            if (auto d = delay_ms.load(); d > 0) {
                asio::steady_timer timer(stream.get_executor(), std::chrono::milliseconds(d));
                co_await timer.async_wait(use_tuple);
            }

            net::http_response answer;
            try {
                answer = (*h)(rec);
            } catch (const std::exception& e) {
                answer = net::http_response{500, {}, std::string("handler threw: ") + e.what()};
            }
            http::response<http::string_body> res{static_cast<http::status>(answer.status),
                                                  msg.version()};
            bool close_requested = false;
            for (const auto& [name, value] : answer.headers.items) {
                // The framing headers are computed below from the body.
                if (net::http_headers::name_equals(name, "Content-Length") ||
                    net::http_headers::name_equals(name, "Transfer-Encoding")) {
                    continue;
                }
                if (net::http_headers::name_equals(name, "Connection")) {
                    close_requested = net::http_headers::name_equals(value, "close");
                    continue;
                }
                res.insert(name, value);
            }
            res.body() = std::move(answer.body);
            res.keep_alive(msg.keep_alive() && !close_requested);
            res.prepare_payload();
            auto [wec, w] = co_await http::async_write(stream, res, use_tuple);
            if (wec || !res.keep_alive()) {
                co_return;
            }
            ++responses;
            if (auto limit = close_after.load(); limit > 0 && responses >= limit) {
                co_return;
            }
        }
    }

    asio::awaitable<void> connection(tcp::socket socket, std::size_t id) {
        if (ssl_ctx) {
            beast::ssl_stream<beast::tcp_stream> stream(std::move(socket), *ssl_ctx);
            beast::get_lowest_layer(stream).expires_after(std::chrono::seconds(10));
            auto [ec] = co_await stream.async_handshake(ssl::stream_base::server, use_tuple);
            if (ec) {
                std::lock_guard lock(mutex);
                ++handshake_failures;
            } else {
                beast::get_lowest_layer(stream).expires_never();
                co_await serve(stream, id);
            }
            // No close_notify: a server whose keep-alive timer fires, or that crashes, often
            // just closes the socket, and that is the harder case for a client.
            beast::get_lowest_layer(stream).close();
        } else {
            beast::tcp_stream stream(std::move(socket));
            co_await serve(stream, id);
            boost::system::error_code ignored;
            stream.socket().shutdown(tcp::socket::shutdown_both, ignored);
            stream.close();
        }
        {
            std::lock_guard lock(mutex);
            ++closed;
        }
        changed.notify_all();
    }

    asio::awaitable<void> accept_loop() {
        for (;;) {
            auto [ec, socket] = co_await acceptor->async_accept(use_tuple);
            if (ec == asio::error::operation_aborted) {
                co_return;
            }
            if (ec) {
                continue;
            }
            boost::system::error_code ignored;
            socket.set_option(tcp::no_delay(true), ignored);
            std::size_t id = 0;
            {
                std::lock_guard lock(mutex);
                id = ++accepted;
            }
            changed.notify_all();
            asio::co_spawn(*ioc, connection(std::move(socket), id), report_exception);
        }
    }
};

test_http_server::test_http_server(handler h, server_options options)
    : impl_(std::make_unique<impl>()) {
    auto& s = *impl_;
    s.options = std::move(options);
    s.on_request = std::make_shared<const handler>(std::move(h));
    const bool tls = !s.options.cert_file.empty() && !s.options.key_file.empty();
    if (tls) {
        s.ssl_ctx = std::make_unique<ssl::context>(ssl::context::tls_server);
        s.ssl_ctx->use_certificate_chain_file(s.options.cert_file);
        s.ssl_ctx->use_private_key_file(s.options.key_file, ssl::context::pem);
        if (!s.options.client_ca_file.empty()) {
            s.ssl_ctx->load_verify_file(s.options.client_ca_file);
            s.ssl_ctx->set_verify_mode(ssl::verify_peer | ssl::verify_fail_if_no_peer_cert);
        }
    }
    s.ioc = std::make_unique<asio::io_context>(1);
    tcp::endpoint ep(asio::ip::make_address(s.options.address), 0);
    s.acceptor = std::make_unique<tcp::acceptor>(*s.ioc, ep);
    s.port = s.acceptor->local_endpoint().port();
    asio::co_spawn(*s.ioc, s.accept_loop(), report_exception);
    s.thread = std::thread([&s] {
        auto guard = asio::make_work_guard(*s.ioc);
        s.ioc->run();
    });
}

std::chrono::nanoseconds test_http_server::cpu_time() const {
    clockid_t clock{};
    timespec ts{};
    if (::pthread_getcpuclockid(impl_->thread.native_handle(), &clock) != 0 ||
        ::clock_gettime(clock, &ts) != 0) {
        return {};
    }
    return std::chrono::seconds(ts.tv_sec) + std::chrono::nanoseconds(ts.tv_nsec);
}

test_http_server::~test_http_server() {
    auto& s = *impl_;
    s.ioc->stop();
    s.thread.join();
    // Connection coroutines still suspended in the io_context refer to this impl; destroy them
    // (with the io_context) while everything they use is alive.
    s.acceptor.reset();
    s.ioc.reset();
}

std::uint16_t test_http_server::port() const { return impl_->port; }

net::origin test_http_server::origin() const {
    return net::origin{impl_->ssl_ctx != nullptr, impl_->options.address, impl_->port};
}

std::string test_http_server::url() const {
    auto o = origin();
    auto host = o.host.find(':') != std::string::npos ? "[" + o.host + "]" : o.host;
    return std::string(o.tls ? "https" : "http") + "://" + host + ":" + std::to_string(o.port);
}

void test_http_server::set_handler(handler h) {
    auto p = std::make_shared<const handler>(std::move(h));
    std::lock_guard lock(impl_->mutex);
    impl_->on_request = std::move(p);
}

void test_http_server::close_after_responses(std::size_t n) { impl_->close_after = n; }

void test_http_server::delay_responses(std::chrono::milliseconds d) { impl_->delay_ms = d.count(); }

void test_http_server::drop_requests(std::size_t n) { impl_->drop = n; }

std::vector<recorded_request> test_http_server::requests() const {
    std::lock_guard lock(impl_->mutex);
    return impl_->requests;
}

std::size_t test_http_server::request_count() const {
    std::lock_guard lock(impl_->mutex);
    return impl_->request_count;
}

std::size_t test_http_server::connections_accepted() const {
    std::lock_guard lock(impl_->mutex);
    return impl_->accepted;
}

std::size_t test_http_server::connections_closed() const {
    std::lock_guard lock(impl_->mutex);
    return impl_->closed;
}

std::size_t test_http_server::tls_handshake_failures() const {
    std::lock_guard lock(impl_->mutex);
    return impl_->handshake_failures;
}

bool test_http_server::wait_for_requests(std::size_t n, std::chrono::milliseconds timeout) const {
    std::unique_lock lock(impl_->mutex);
    return impl_->changed.wait_for(lock, timeout, [&] { return impl_->request_count >= n; });
}

bool test_http_server::wait_for_closed_connections(std::size_t n,
                                                   std::chrono::milliseconds timeout) const {
    std::unique_lock lock(impl_->mutex);
    return impl_->changed.wait_for(lock, timeout, [&] { return impl_->closed >= n; });
}

test_http_server::handler respond_with(int status, std::string body, net::http_headers headers) {
    return [status, body = std::move(body), headers = std::move(headers)](const recorded_request&) {
        return net::http_response{status, headers, body};
    };
}

std::uint16_t unused_port() {
    asio::io_context ioc;
    tcp::acceptor acceptor(ioc, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
    auto port = acceptor.local_endpoint().port();
    acceptor.close();
    return port;
}

}  // namespace kiln::test
