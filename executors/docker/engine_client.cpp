#include "executors/docker/engine_client.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/basic_stream.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http/buffer_body.hpp>
#include <boost/beast/http/empty_body.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>
#include <array>
#include <chrono>
#include <cstdlib>
#include <memory>
#include <nlohmann/json.hpp>
#include <stdexcept>

namespace kiln::executors::docker {

namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using local = asio::local::stream_protocol;
using unix_stream = beast::basic_stream<local, asio::any_io_executor, beast::unlimited_rate_policy>;
constexpr auto use_tuple = asio::as_tuple(asio::use_awaitable);

std::string trim(std::string s) {
    while (!s.empty() && (s.back() == '\n' || s.back() == '\r' || s.back() == ' ')) {
        s.pop_back();
    }
    return s;
}

// Union of the intervals in which the engine has work of ours outstanding.
struct busy_clock {
    int outstanding = 0;
    std::chrono::steady_clock::time_point since;
    std::chrono::nanoseconds total{0};

    std::chrono::nanoseconds now_total() const {
        return outstanding > 0 ? total + (std::chrono::steady_clock::now() - since) : total;
    }
};

class busy_scope {
public:
    explicit busy_scope(std::shared_ptr<busy_clock> clock) : clock_(std::move(clock)) {
        if (clock_->outstanding++ == 0) {
            clock_->since = std::chrono::steady_clock::now();
        }
    }
    ~busy_scope() {
        if (--clock_->outstanding == 0) {
            clock_->total += std::chrono::steady_clock::now() - clock_->since;
        }
    }
    busy_scope(const busy_scope&) = delete;
    busy_scope& operator=(const busy_scope&) = delete;

private:
    std::shared_ptr<busy_clock> clock_;
};

class hijacked final : public attach_stream {
public:
    hijacked(local::socket socket, std::string leftover, std::shared_ptr<busy_clock> clock)
        : socket_(std::move(socket)), leftover_(std::move(leftover)), clock_(std::move(clock)) {}

    asio::awaitable<std::string> write_and_close(std::string data) override {
        busy_scope busy(clock_);
        auto [ec, n] = co_await asio::async_write(socket_, asio::buffer(data), use_tuple);
        if (ec) {
            co_return "writing the script to the container failed: " + ec.message();
        }
        boost::system::error_code sec;
        // Half-close: the shell sees EOF on stdin while its output still flows back to us.
        socket_.shutdown(local::socket::shutdown_send, sec);
        co_return std::string{};
    }

    asio::awaitable<std::string> read_all(std::function<void(std::string_view)> on_bytes) override {
        busy_scope busy(clock_);
        if (!leftover_.empty()) {
            // Beast's header read may already hold the first frames (docker-engine.md §4.2).
            on_bytes(leftover_);
            leftover_.clear();
        }
        std::array<char, 64 * 1024> buf{};
        for (;;) {
            auto [ec, n] = co_await socket_.async_read_some(asio::buffer(buf), use_tuple);
            if (n > 0) {
                on_bytes(std::string_view(buf.data(), n));
            }
            if (ec == asio::error::eof) {
                co_return std::string{};
            }
            if (ec) {
                co_return "reading the container's output failed: " + ec.message();
            }
        }
    }

    void close() override {
        boost::system::error_code ec;
        socket_.close(ec);
    }

private:
    local::socket socket_;
    std::string leftover_;
    std::shared_ptr<busy_clock> clock_;
};

}  // namespace

std::string api_result::message() const {
    if (status == 0) {
        return body;
    }
    try {
        auto j = nlohmann::json::parse(body);
        if (j.is_object() && j.contains("message") && j["message"].is_string()) {
            return j["message"].get<std::string>();
        }
    } catch (const std::exception&) {
    }
    auto t = trim(body);
    return t.empty() ? "HTTP " + std::to_string(status) : t;
}

std::string docker_socket_path(const std::string& configured_host) {
    std::string host = configured_host;
    if (host.empty()) {
        if (const char* e = std::getenv("DOCKER_HOST"); e != nullptr) {
            host = e;
        }
    }
    if (host.empty()) {
        return "/var/run/docker.sock";
    }
    if (host.rfind("unix://", 0) == 0) {
        return host.substr(7);
    }
    throw std::invalid_argument(
        "Docker host \"" + host +
        "\" is not supported yet: kiln speaks to the engine over unix:// only"
    );
}

int compare_api_versions(std::string_view a, std::string_view b) {
    auto parts = [](std::string_view v) {
        std::array<long, 2> p{0, 0};
        auto dot = v.find('.');
        try {
            p[0] = std::stol(std::string(v.substr(0, dot)));
            if (dot != std::string_view::npos) {
                p[1] = std::stol(std::string(v.substr(dot + 1)));
            }
        } catch (const std::exception&) {
        }
        return p;
    };
    auto x = parts(a);
    auto y = parts(b);
    if (x != y) {
        return x < y ? -1 : 1;
    }
    return 0;
}

std::string choose_api_version(std::string_view daemon_version, std::string_view daemon_min) {
    std::string use(
        compare_api_versions(daemon_version, newest_api_version) < 0 ? daemon_version
                                                                     : newest_api_version
    );
    if (!daemon_min.empty() && compare_api_versions(use, daemon_min) < 0) {
        return {};
    }
    if (compare_api_versions(use, oldest_api_version) < 0) {
        return {};
    }
    return use;
}

bool is_api_version_error(int status, std::string_view body) {
    return status == 400 && body.find("client version") != std::string_view::npos &&
           (body.find("too old") != std::string_view::npos ||
            body.find("too new") != std::string_view::npos);
}

std::string url_encode(std::string_view s) {
    static const char* hex = "0123456789ABCDEF";
    std::string out;
    for (unsigned char c : s) {
        if (std::isalnum(c) != 0 || c == '-' || c == '_' || c == '.' || c == '~') {
            out += static_cast<char>(c);
        } else {
            out += '%';
            out += hex[c >> 4];
            out += hex[c & 15];
        }
    }
    return out;
}

struct engine_client::impl {
    asio::any_io_executor ex;
    std::string socket_path;
    std::string version;  // "1.41"; empty until negotiated
    std::shared_ptr<busy_clock> busy = std::make_shared<busy_clock>();

    std::string target(const std::string& path) const {
        return version.empty() ? path : "/v" + version + path;
    }

    std::string connect_error(const boost::system::error_code& ec) const {
        std::string m = "cannot connect to the Docker engine at unix://" + socket_path + ": " +
                        ec.message();
        if (ec == boost::system::errc::permission_denied) {
            m += " (kiln's user needs to be in the socket's group, usually docker)";
        }
        return m;
    }

    // One exchange on a fresh connection: a Unix socket connect costs microseconds, and a
    // connection per request means no stale kept-alive sockets to recover from.
    asio::awaitable<api_result> exchange(
        const std::string& method,
        const std::string& full_target,
        const std::string& body,
        std::chrono::milliseconds timeout,
        const std::vector<std::pair<std::string, std::string>>& headers,
        std::string* api_version_header,
        const std::function<void(std::string_view)>* on_body = nullptr
    ) {
        api_result result;
        unix_stream stream(ex);
        stream.expires_after(timeout);
        auto [cec] = co_await stream.async_connect(local::endpoint(socket_path), use_tuple);
        if (cec) {
            result.body = connect_error(cec);
            co_return result;
        }
        http::request<http::string_body> req{http::string_to_verb(method), full_target, 11};
        req.set(http::field::host, "docker");  // mandatory, any value (docker-engine.md §1.1)
        req.set(http::field::user_agent, "kiln");
        for (const auto& [k, v] : headers) {
            req.set(k, v);
        }
        if (!body.empty()) {
            req.set(http::field::content_type, "application/json");
            req.body() = body;
        }
        req.prepare_payload();
        auto [wec, wn] = co_await http::async_write(stream, req, use_tuple);
        if (wec) {
            result.body = "sending " + method + " " + full_target +
                          " to the Docker engine failed: " +
                          (wec == beast::error::timeout ? std::string("timed out") : wec.message());
            co_return result;
        }
        beast::flat_buffer buffer;
        http::response_parser<http::buffer_body> parser;
        parser.body_limit(boost::none);
        auto [hec, hn] = co_await http::async_read_header(stream, buffer, parser, use_tuple);
        if (hec) {
            result.body = "reading the Docker engine's answer to " + method + " " + full_target +
                          " failed: " +
                          (hec == beast::error::timeout ? std::string("timed out") : hec.message());
            co_return result;
        }
        result.status = static_cast<int>(parser.get().result_int());
        if (api_version_header != nullptr) {
            if (auto it = parser.get().find("Api-Version"); it != parser.get().end()) {
                *api_version_header = std::string(it->value());
            }
        }
        std::array<char, 16 * 1024> chunk{};
        const bool stream_to_callback = on_body != nullptr && result.status == 200;
        while (!parser.is_done()) {
            parser.get().body().data = chunk.data();
            parser.get().body().size = chunk.size();
            auto [ec, n] = co_await http::async_read(stream, buffer, parser, use_tuple);
            if (ec == http::error::need_buffer) {
                ec = {};
            }
            std::size_t got = chunk.size() - parser.get().body().size;
            if (stream_to_callback) {
                (*on_body)(std::string_view(chunk.data(), got));
            } else {
                result.body.append(chunk.data(), got);
                if (result.body.size() > 64 * 1024 * 1024) {
                    result.status = 0;
                    result.body =
                        "the Docker engine's answer to " + full_target + " is larger than 64 MiB";
                    co_return result;
                }
            }
            if (ec == http::error::end_of_stream || ec == asio::error::eof) {
                break;  // hijack-style error bodies run to EOF
            }
            if (ec) {
                result.status = 0;
                result.body =
                    "reading the Docker engine's answer to " + method + " " + full_target +
                    " failed: " +
                    (ec == beast::error::timeout ? std::string("timed out") : ec.message());
                co_return result;
            }
        }
        co_return result;
    }
};

engine_client::engine_client(asio::any_io_executor ex, std::string socket_path)
    : impl_(std::make_unique<impl>()) {
    impl_->ex = std::move(ex);
    impl_->socket_path = std::move(socket_path);
}

engine_client::~engine_client() = default;

const std::string& engine_client::api_version() const { return impl_->version; }
const std::string& engine_client::socket_path() const { return impl_->socket_path; }

asio::awaitable<std::string> engine_client::negotiate() {
    if (!impl_->version.empty()) {
        co_return std::string{};
    }
    busy_scope busy(impl_->busy);
    std::string daemon_version;
    auto ping = co_await impl_->exchange(
        "GET", "/_ping", {}, std::chrono::seconds(10), {}, &daemon_version
    );
    if (ping.status == 0) {
        co_return ping.body;
    }
    if (!ping.ok()) {
        co_return "the Docker engine answered /_ping with HTTP " + std::to_string(ping.status) +
            ": " + ping.message();
    }
    auto version =
        co_await impl_->exchange("GET", "/version", {}, std::chrono::seconds(10), {}, nullptr);
    std::string min_version;
    if (version.ok()) {
        try {
            auto j = nlohmann::json::parse(version.body);
            min_version = j.value("MinAPIVersion", "");
            if (daemon_version.empty()) {
                daemon_version = j.value("ApiVersion", "");
            }
        } catch (const std::exception&) {
        }
    }
    if (daemon_version.empty()) {
        co_return std::string("the Docker engine did not say which API version it speaks");
    }
    auto use = choose_api_version(daemon_version, min_version);
    if (use.empty()) {
        co_return "the Docker engine speaks API " + daemon_version + " (minimum " +
            (min_version.empty() ? std::string("unknown") : min_version) + "); kiln speaks " +
            std::string(oldest_api_version) + " to " + std::string(newest_api_version);
    }
    impl_->version = use;
    co_return std::string{};
}

asio::awaitable<api_result> engine_client::call(
    std::string method,
    std::string path,
    std::string body,
    std::chrono::milliseconds timeout,
    std::vector<std::pair<std::string, std::string>> headers
) {
    busy_scope busy(impl_->busy);
    if (auto err = co_await negotiate(); !err.empty()) {
        co_return api_result{0, err};
    }
    auto r = co_await impl_->exchange(method, impl_->target(path), body, timeout, headers, nullptr);
    if (is_api_version_error(r.status, r.body)) {
        // The engine was upgraded or downgraded under us: negotiate again, once.
        impl_->version.clear();
        if (auto err = co_await negotiate(); !err.empty()) {
            co_return api_result{0, err};
        }
        r = co_await impl_->exchange(method, impl_->target(path), body, timeout, headers, nullptr);
    }
    co_return r;
}

asio::awaitable<api_result> engine_client::pull(
    std::string from_image, std::string registry_auth, std::function<void(std::string_view)> on_line
) {
    busy_scope busy(impl_->busy);
    if (auto err = co_await negotiate(); !err.empty()) {
        co_return api_result{0, err};
    }
    std::vector<std::pair<std::string, std::string>> headers;
    if (!registry_auth.empty()) {
        headers.emplace_back("X-Registry-Auth", registry_auth);
    }
    std::string pending;
    std::string stream_error;
    std::function<void(std::string_view)> on_body = [&](std::string_view data) {
        pending.append(data);
        std::size_t nl;
        while ((nl = pending.find('\n')) != std::string::npos) {
            auto line = trim(pending.substr(0, nl));
            pending.erase(0, nl + 1);
            if (line.empty()) {
                continue;
            }
            try {
                auto j = nlohmann::json::parse(line);
                if (j.is_object() && j.contains("error")) {
                    stream_error =
                        j["error"].is_string() ? j["error"].get<std::string>() : j["error"].dump();
                }
            } catch (const std::exception&) {
            }
            on_line(line);
        }
    };
    auto r = co_await impl_->exchange(
        "POST",
        impl_->target("/images/create?fromImage=" + url_encode(from_image)),
        {},
        std::chrono::hours(1),
        headers,
        nullptr,
        &on_body
    );
    if (!pending.empty()) {
        on_body("\n");
    }
    if (r.ok() && !stream_error.empty()) {
        r.status = 500;
        r.body = nlohmann::json{{"message", stream_error}}.dump();
    }
    co_return r;
}

asio::awaitable<std::unique_ptr<attach_stream>> engine_client::attach(
    std::string id, std::string& error
) {
    busy_scope busy(impl_->busy);
    if (auto err = co_await negotiate(); !err.empty()) {
        error = err;
        co_return nullptr;
    }
    unix_stream stream(impl_->ex);
    stream.expires_after(std::chrono::seconds(30));
    auto [cec] = co_await stream.async_connect(local::endpoint(impl_->socket_path), use_tuple);
    if (cec) {
        error = impl_->connect_error(cec);
        co_return nullptr;
    }
    http::request<http::empty_body> req{
        http::verb::post,
        impl_->target("/containers/" + id + "/attach?stream=1&stdin=1&stdout=1&stderr=1"),
        11};
    req.set(http::field::host, "docker");
    req.set(http::field::connection, "Upgrade");
    req.set(http::field::upgrade, "tcp");
    auto [wec, wn] = co_await http::async_write(stream, req, use_tuple);
    if (wec) {
        error = "attaching to container " + id.substr(0, 12) + " failed: " + wec.message();
        co_return nullptr;
    }
    beast::flat_buffer buffer;
    http::response_parser<http::empty_body> parser;
    auto [hec, hn] = co_await http::async_read_header(stream, buffer, parser, use_tuple);
    if (hec) {
        error = "attaching to container " + id.substr(0, 12) + " failed: " + hec.message();
        co_return nullptr;
    }
    const int status = static_cast<int>(parser.get().result_int());
    std::string leftover(static_cast<const char*>(buffer.data().data()), buffer.size());
    if (status != 101 && status != 200) {
        // Errors on hijack endpoints are plain text without a length, ending at EOF.
        std::array<char, 4096> buf{};
        for (int i = 0; i < 64; ++i) {
            auto [ec, n] = co_await stream.async_read_some(asio::buffer(buf), use_tuple);
            leftover.append(buf.data(), n);
            if (ec) {
                break;
            }
        }
        error = "attaching to container " + id.substr(0, 12) + " failed: HTTP " +
                std::to_string(status) + ": " + trim(leftover);
        co_return nullptr;
    }
    stream.expires_never();
    co_return std::make_unique<hijacked>(stream.release_socket(), std::move(leftover),
                                        impl_->busy);
}

std::chrono::nanoseconds engine_client::engine_time() const { return impl_->busy->now_total(); }

}  // namespace kiln::executors::docker
