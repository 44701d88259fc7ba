#include "runner/net/http_client.hpp"

#include <fcntl.h>
#include <openssl/ssl.h>
#include <openssl/x509_vfy.h>
#include <unistd.h>

#include <array>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/ip/address.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl/error.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/buffers_suffix.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/buffer_body.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/read.hpp>
#include <cerrno>
#include <cstring>
#include <type_traits>
#include <variant>

#include "runner/net/tls_stream.hpp"

namespace kiln::net {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using clock = std::chrono::steady_clock;
constexpr auto use_tuple = asio::as_tuple(asio::use_awaitable);
constexpr std::size_t chunk_size = 64 * 1024;
constexpr int send_buffer_bytes = 2 * 1024 * 1024;

struct connection {
    std::unique_ptr<beast::tcp_stream> plain;
    std::unique_ptr<tls_stream> secure;
    beast::flat_buffer buffer;
    clock::time_point opened = clock::now();

    beast::tcp_stream& lowest() { return secure ? secure->next_layer() : *plain; }
};

// All of `buffers`. Over TLS each call encrypts up to tls_stream::max_batch and sends it in one
// write, where asio::async_write would hand the stream 64 KiB at a time.
template <class Stream, class Buffers>
asio::awaitable<boost::system::error_code> write_all(Stream& stream, const Buffers& buffers) {
    if constexpr (std::is_same_v<Stream, tls_stream>) {
        beast::buffers_suffix<Buffers> rest(buffers);
        while (beast::buffer_bytes(rest) > 0) {
            auto [ec, n] = co_await stream.async_write_some(rest, use_tuple);
            if (ec) {
                co_return ec;
            }
            rest.consume(n);
        }
        co_return boost::system::error_code{};
    } else {
        auto [ec, n] = co_await asio::async_write(stream, buffers, use_tuple);
        co_return ec;
    }
}

bool has_line_break(std::string_view s) {
    return s.find_first_of("\r\n") != std::string_view::npos;
}

transport_error make_error(transport_error::kind k, std::string message) {
    return transport_error{k, std::move(message)};
}

// A server that requires a client certificate rejects a TLS 1.3 client only after the client's
// handshake has completed, so the failure shows up on the first request as an alert or as a bare
// "Connection reset by peer". OpenSSL calls this when the server asks for a certificate and none
// is configured; the mark lets the error say so.
int client_cert_request_index() {
    static const int index = ::SSL_get_ex_new_index(0, nullptr, nullptr, nullptr, nullptr);
    return index;
}

int note_client_cert_request(SSL* ssl, X509** /*cert*/, EVP_PKEY** /*key*/) {
    ::SSL_set_ex_data(ssl, client_cert_request_index(), reinterpret_cast<void*>(1));
    return 0;  // go on without a certificate
}

void explain_missing_client_cert(SSL* ssl, transport_error& e) {
    if (::SSL_get_ex_data(ssl, client_cert_request_index()) != nullptr) {
        e.message += " (TLS: the server asked for a client certificate and none is configured; "
                     "set tls-cert-file and tls-key-file if GitLab requires one)";
    }
}

// A connection the server closed while idle shows up as one of these before any byte of the
// response arrives; sending again on a fresh connection is then safe.
bool is_stale_connection_error(const boost::system::error_code& ec) {
    return ec == http::error::end_of_stream || ec == asio::error::eof ||
           ec == asio::error::connection_reset || ec == asio::error::broken_pipe ||
           ec == asio::ssl::error::stream_truncated;
}

// Sink for a response body: memory (with a cap) or a file.
class body_sink {
public:
    body_sink(std::string* memory, std::size_t cap) : memory_(memory), cap_(cap) {}
    ~body_sink() {
        if (fd_ >= 0) {
            ::close(fd_);
        }
    }
    body_sink(const body_sink&) = delete;
    body_sink& operator=(const body_sink&) = delete;

    std::string open_file(const std::filesystem::path& path) {
        fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        if (fd_ < 0) {
            return "cannot write " + path.string() + ": " + std::strerror(errno);
        }
        path_ = path;
        return {};
    }

    std::string write(const char* data, std::size_t n) {
        if (fd_ >= 0) {
            while (n > 0) {
                ssize_t w = ::write(fd_, data, n);
                if (w < 0) {
                    if (errno == EINTR) {
                        continue;
                    }
                    return "cannot write " + path_.string() + ": " + std::strerror(errno);
                }
                data += w;
                n -= static_cast<std::size_t>(w);
            }
            return {};
        }
        if (memory_->size() + n > cap_) {
            return "response body larger than " + std::to_string(cap_) + " bytes";
        }
        memory_->append(data, n);
        return {};
    }

    std::string finish() {
        if (fd_ >= 0) {
            int rc = ::close(fd_);
            fd_ = -1;
            if (rc != 0) {
                return "cannot write " + path_.string() + ": " + std::strerror(errno);
            }
        }
        return {};
    }

private:
    std::string* memory_;
    std::size_t cap_;
    int fd_ = -1;
    std::filesystem::path path_;
};

struct exchange_result {
    http_outcome outcome;
    bool reusable = false;
    bool stale = false;  // failed before any response byte on what may be a dead kept-alive conn
};

template <class Stream>
asio::awaitable<exchange_result> exchange(
    Stream& stream,
    connection& conn,
    const http_request& req,
    const std::string& head,
    clock::time_point deadline,
    std::size_t max_body,
    const std::string& peer
) {
    exchange_result result;
    auto& low = conn.lowest();
    low.expires_at(deadline);

    auto io_error = [&](const boost::system::error_code& ec, const char* phase) {
        if (ec == beast::error::timeout) {
            return make_error(transport_error::kind::timeout,
                              std::string(phase) + " " + peer + " timed out");
        }
        return make_error(transport_error::kind::io,
                          std::string(phase) + " " + peer + " failed: " + ec.message());
    };

    // Head and in-memory parts go out in one gather write; files are streamed after.
    std::vector<asio::const_buffer> pending{asio::buffer(head)};
    auto flush = [&]() -> asio::awaitable<boost::system::error_code> {
        if (pending.empty()) {
            co_return boost::system::error_code{};
        }
        auto ec = co_await write_all(stream, pending);
        pending.clear();
        co_return ec;
    };
    // On the heap and only once needed: a local array would live in this coroutine's frame, so
    // every held long poll (one per runner entry) would keep 64 KiB for the whole hold.
    std::unique_ptr<char[]> chunk;
    auto chunk_data = [&chunk]() {
        if (!chunk) {
            chunk = std::make_unique_for_overwrite<char[]>(chunk_size);
        }
        return chunk.get();
    };
    for (const auto& part : req.body) {
        if (part.file.empty()) {
            if (const auto bytes = part.bytes(); !bytes.empty()) {
                pending.push_back(asio::buffer(bytes.data(), bytes.size()));
            }
            continue;
        }
        if (auto ec = co_await flush()) {
            result.outcome.error = io_error(ec, "sending to");
            result.stale = is_stale_connection_error(ec);
            co_return result;
        }
        int fd = ::open(part.file.c_str(), O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            result.outcome.error = make_error(
                transport_error::kind::file,
                "cannot read " + part.file.string() + ": " + std::strerror(errno)
            );
            co_return result;
        }
        for (;;) {
            ssize_t n = ::read(fd, chunk_data(), chunk_size);
            if (n < 0 && errno == EINTR) {
                continue;
            }
            if (n < 0) {
                result.outcome.error = make_error(
                    transport_error::kind::file,
                    "cannot read " + part.file.string() + ": " + std::strerror(errno)
                );
                ::close(fd);
                co_return result;
            }
            if (n == 0) {
                break;
            }
            auto ec = co_await write_all(
                stream, asio::buffer(chunk_data(), static_cast<std::size_t>(n))
            );
            if (ec) {
                ::close(fd);
                result.outcome.error = io_error(ec, "sending to");
                co_return result;
            }
        }
        ::close(fd);
    }
    if (auto ec = co_await flush()) {
        result.outcome.error = io_error(ec, "sending to");
        result.stale = is_stale_connection_error(ec);
        co_return result;
    }

    http::response_parser<http::buffer_body> parser;
    parser.body_limit(boost::none);  // the sink enforces the in-memory cap
    parser.header_limit(64 * 1024);
    if (req.method == "HEAD") {
        parser.skip(true);
    }
    {
        auto [ec, n] = co_await http::async_read_header(stream, conn.buffer, parser, use_tuple);
        if (ec) {
            result.outcome.error = io_error(ec, "reading the response from");
            result.stale = is_stale_connection_error(ec) && conn.buffer.size() == 0;
            co_return result;
        }
    }

    http_response response;
    response.status = static_cast<int>(parser.get().result_int());
    for (const auto& field : parser.get()) {
        response.headers.items.emplace_back(std::string(field.name_string()),
                                            std::string(field.value()));
    }

    body_sink sink(&response.body, max_body);
    if (!req.response_file.empty() && response.status >= 200 && response.status < 300) {
        if (auto err = sink.open_file(req.response_file); !err.empty()) {
            result.outcome.error = make_error(transport_error::kind::file, err);
            co_return result;
        }
    }
    while (!parser.is_done()) {
        parser.get().body().data = chunk_data();
        parser.get().body().size = chunk_size;
        auto [ec, n] = co_await http::async_read(stream, conn.buffer, parser, use_tuple);
        if (ec == http::error::need_buffer) {
            ec = {};
        }
        if (ec) {
            result.outcome.error = io_error(ec, "reading the response from");
            co_return result;
        }
        std::size_t got = chunk_size - parser.get().body().size;
        if (auto err = sink.write(chunk.get(), got); !err.empty()) {
            result.outcome.error = make_error(transport_error::kind::file, err);
            co_return result;
        }
    }
    if (auto err = sink.finish(); !err.empty()) {
        result.outcome.error = make_error(transport_error::kind::file, err);
        co_return result;
    }
    result.reusable = parser.get().keep_alive();
    result.outcome.response = std::move(response);
    co_return result;
}

}  // namespace

struct http_client::impl {
    asio::any_io_executor executor;
    net::origin origin;
    std::shared_ptr<SSL_CTX> ssl_ctx;  // shared with other clients using the same files (tls.hpp)
    client_options options;
    std::vector<std::unique_ptr<connection>> idle;
    std::size_t opened = 0;
    bool host_is_ip = false;
    std::string peer;

    std::unique_ptr<connection> take_idle() {
        while (!idle.empty()) {
            auto c = std::move(idle.back());
            idle.pop_back();
            if (options.connection_max_age.count() <= 0 ||
                clock::now() - c->opened < options.connection_max_age) {
                return c;
            }
        }
        return nullptr;
    }

    asio::awaitable<std::variant<std::unique_ptr<connection>, transport_error>> connect(
        clock::time_point deadline
    ) {
        // An address needs no lookup: Asio resolves on a thread of its own (with its own
        // malloc arena), which an idle kiln talking to an IP address need not have.
        tcp::resolver::results_type endpoints;
        if (host_is_ip) {
            endpoints = tcp::resolver::results_type::create(
                tcp::endpoint(asio::ip::make_address(origin.host), origin.port), origin.host,
                std::to_string(origin.port));
        } else {
            tcp::resolver resolver(executor);
            auto [rec, found] = co_await resolver.async_resolve(
                origin.host, std::to_string(origin.port), use_tuple);
            if (rec) {
                co_return make_error(transport_error::kind::resolve,
                                     "cannot resolve " + origin.host + ": " + rec.message());
            }
            endpoints = std::move(found);
        }
        auto conn = std::make_unique<connection>();
        if (origin.tls) {
            try {
                conn->secure = std::make_unique<tls_stream>(executor, ssl_ctx.get());
            } catch (const std::exception& e) {
                co_return make_error(transport_error::kind::tls, e.what());
            }
        } else {
            conn->plain = std::make_unique<beast::tcp_stream>(executor);
        }
        auto& low = conn->lowest();
        low.expires_at(std::min(deadline, clock::now() + options.connect_timeout));
        auto [cec, ep] = co_await low.async_connect(endpoints, use_tuple);
        if (cec) {
            auto k = cec == beast::error::timeout ? transport_error::kind::timeout
                                                  : transport_error::kind::connect;
            co_return make_error(k, "cannot connect to " + peer + ": " +
                                        (cec == beast::error::timeout ? std::string("timed out")
                                                                      : cec.message()));
        }
        boost::system::error_code ignored;
        low.socket().set_option(tcp::no_delay(true), ignored);
        // A fixed send buffer (the kernel doubles it) well above a PATCH's 256 KiB write
        // batches: with the autotuned one, which starts small, a 1 MiB PATCH went out in ~20
        // sendmsg calls, each after waiting for the socket. Only bytes in flight use it.
        low.socket().set_option(asio::socket_base::send_buffer_size(send_buffer_bytes), ignored);
        ++opened;
        if (!origin.tls) {
            co_return conn;
        }

        SSL* ssl = conn->secure->native_handle();
        // OpenSSL's own name checks give precise reasons ("hostname mismatch", "IP address
        // mismatch") where a verify callback would only say "certificate verify failed".
        if (host_is_ip) {
            ::X509_VERIFY_PARAM_set1_ip_asc(::SSL_get0_param(ssl), origin.host.c_str());
        } else {
            ::SSL_set_tlsext_host_name(ssl, origin.host.c_str());
            ::SSL_set1_host(ssl, origin.host.c_str());
        }
        low.expires_at(deadline);
        auto [hec] = co_await conn->secure->async_handshake(use_tuple);
        if (hec) {
            long verify = ::SSL_get_verify_result(ssl);
            if (verify != X509_V_OK) {
                co_return make_error(transport_error::kind::tls_verify,
                                     "TLS handshake with " + peer +
                                         " failed: certificate verify failed: " +
                                         ::X509_verify_cert_error_string(verify));
            }
            std::string reason = hec == beast::error::timeout ? "timed out" : hec.message();
            auto err = make_error(transport_error::kind::tls,
                                  "TLS handshake with " + peer + " failed: " + reason);
            explain_missing_client_cert(ssl, err);
            co_return err;
        }
        co_return conn;
    }
};

http_client::http_client(
    asio::any_io_executor executor,
    net::origin origin,
    const tls_settings& tls,
    client_options options
)
    : impl_(std::make_unique<impl>()) {
    impl_->executor = std::move(executor);
    impl_->origin = std::move(origin);
    impl_->options = std::move(options);
    impl_->peer = impl_->origin.to_string();
    boost::system::error_code ec;
    asio::ip::make_address(impl_->origin.host, ec);
    impl_->host_is_ip = !ec;
    if (impl_->origin.tls) {
        impl_->ssl_ctx = make_client_tls_context(tls);
        ::SSL_CTX_set_client_cert_cb(impl_->ssl_ctx.get(), note_client_cert_request);
    }
}

http_client::~http_client() = default;

const origin& http_client::origin() const { return impl_->origin; }

std::size_t http_client::connections_opened() const { return impl_->opened; }

void http_client::close_idle() { impl_->idle.clear(); }

asio::awaitable<http_outcome> http_client::send(http_request req) {
    auto& s = *impl_;
    const auto deadline = clock::now() + req.timeout;

    if (has_line_break(req.method) || has_line_break(req.target) || req.target.empty() ||
        req.target[0] != '/') {
        co_return http_outcome{std::nullopt,
                               make_error(transport_error::kind::protocol,
                                          "invalid request line for " + req.target)};
    }
    std::uint64_t content_length = 0;
    for (const auto& part : req.body) {
        if (part.file.empty()) {
            content_length += part.bytes().size();
            continue;
        }
        std::error_code fec;
        auto size = std::filesystem::file_size(part.file, fec);
        if (fec) {
            co_return http_outcome{std::nullopt,
                                   make_error(transport_error::kind::file,
                                              "cannot read " + part.file.string() + ": " +
                                                  fec.message())};
        }
        content_length += size;
    }

    std::string head;
    head.reserve(512);
    head += req.method + " " + req.target + " HTTP/1.1\r\nHost: " + s.origin.host_header() +
            "\r\n";
    if (!s.options.user_agent.empty() && !req.headers.get("User-Agent")) {
        head += "User-Agent: " + s.options.user_agent + "\r\n";
    }
    for (const auto& [name, value] : req.headers.items) {
        if (has_line_break(name) || has_line_break(value)) {
            co_return http_outcome{std::nullopt,
                                   make_error(transport_error::kind::protocol,
                                              "header " + name + " contains a line break")};
        }
        head += name + ": " + value + "\r\n";
    }
    if (content_length > 0 || (req.method != "GET" && req.method != "HEAD")) {
        head += "Content-Length: " + std::to_string(content_length) + "\r\n";
    }
    head += "\r\n";

    for (int attempt = 0;; ++attempt) {
        auto conn = s.take_idle();
        const bool reused = conn != nullptr;
        if (!conn) {
            auto c = co_await s.connect(deadline);
            if (auto* err = std::get_if<transport_error>(&c)) {
                co_return http_outcome{std::nullopt, std::move(*err)};
            }
            conn = std::move(std::get<0>(c));
        }
        // Not a conditional expression: GCC 12 miscompiles co_await inside ?: (the result
        // temporary is destroyed twice).
        exchange_result r;
        if (conn->secure) {
            r = co_await exchange(*conn->secure, *conn, req, head, deadline,
                                  s.options.max_response_body, s.peer);
        } else {
            r = co_await exchange(*conn->plain, *conn, req, head, deadline,
                                  s.options.max_response_body, s.peer);
        }
        if (!r.outcome.response && r.stale && reused && attempt == 0 &&
            clock::now() < deadline) {
            continue;
        }
        if (r.outcome.response && r.reusable) {
            s.idle.push_back(std::move(conn));
        }
        if (!r.outcome.response && !reused && conn->secure &&
            r.outcome.error.what == transport_error::kind::io) {
            explain_missing_client_cert(conn->secure->native_handle(), r.outcome.error);
        }
        co_return std::move(r.outcome);
    }
}

}  // namespace kiln::net
