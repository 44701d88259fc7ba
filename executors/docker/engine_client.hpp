#pragma once
// The Docker Engine API over its Unix socket: HTTP/1.1 requests with plain string bodies, the
// chunked pull stream, and the hijacked attach stream. Beast stays in engine_client.cpp.

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace kiln::executors::docker {

struct api_result {
    int status = 0;    // 0: no HTTP answer (transport failure), see `body`
    std::string body;  // response body, or the transport error text when status == 0
    bool ok() const { return status >= 200 && status < 300; }
    /// The daemon's {"message": …} (or the plain text body) for error messages.
    std::string message() const;
};

/// "unix:///var/run/docker.sock" from [runners.docker] host, else DOCKER_HOST, else the default.
/// Throws std::invalid_argument for schemes kiln does not speak yet (tcp://).
std::string docker_socket_path(const std::string& configured_host);

/// The API version to use given the daemon's: min(daemon, newest kiln speaks). Empty when the
/// daemon's minimum is above what kiln speaks. Versions compare numerically ("1.9" < "1.10").
std::string choose_api_version(std::string_view daemon_version, std::string_view daemon_min);
int compare_api_versions(std::string_view a, std::string_view b);

/// The daemon's answer to a version it no longer (or not yet) speaks, e.g. after an engine
/// upgrade under a running kiln: 400 "client version 1.41 is too old" (text/plain) or
/// "… is too new" (JSON).
bool is_api_version_error(int status, std::string_view body);

inline constexpr std::string_view newest_api_version = "1.52";
inline constexpr std::string_view oldest_api_version = "1.41";

/// A hijacked attach connection: stdin towards the container, multiplexed output back.
class attach_stream {
public:
    virtual ~attach_stream() = default;
    /// Writes `data`, then half-closes our side so the container's stdin sees EOF.
    virtual boost::asio::awaitable<std::string> write_and_close(std::string data) = 0;
    /// Delivers raw stream bytes (frames) until the daemon closes the stream; returns an error
    /// text or empty.
    virtual boost::asio::awaitable<std::string> read_all(
        std::function<void(std::string_view)> on_bytes
    ) = 0;
    /// Ends the connection at once (pending reads complete with an error).
    virtual void close() = 0;
};

class engine_client {
public:
    engine_client(boost::asio::any_io_executor ex, std::string socket_path);
    ~engine_client();
    engine_client(const engine_client&) = delete;
    engine_client& operator=(const engine_client&) = delete;

    /// GET /_ping (and /version for the minimum): picks the API version every later path uses.
    /// Returns an error text, or empty on success. Does nothing once negotiated.
    boost::asio::awaitable<std::string> negotiate();

    /// One request; `path` is relative to the versioned root ("/containers/create?name=x").
    /// JSON bodies get Content-Type: application/json. Transport failures become status 0.
    boost::asio::awaitable<api_result> call(
        std::string method,
        std::string path,
        std::string body = {},
        std::chrono::milliseconds timeout = std::chrono::seconds(60),
        std::vector<std::pair<std::string, std::string>> headers = {}
    );

    /// POST /images/create: every JSON line of the 200 stream goes to `on_line`. A line with an
    /// "error" key turns the result into a failure (status 500, message = that error), because
    /// the daemon reports failures after its 200 (docker-engine.md §2.2).
    boost::asio::awaitable<api_result> pull(
        std::string from_image,
        std::string registry_auth,
        std::function<void(std::string_view)> on_line
    );

    /// POST /containers/{id}/attach with stdin, stdout, stderr and stream=1, hijacked. Must be
    /// called before start. Returns the stream, or nullptr with `error` set.
    boost::asio::awaitable<std::unique_ptr<attach_stream>> attach(
        std::string id, std::string& error
    );

    const std::string& api_version() const;
    const std::string& socket_path() const;

    /// Wall-clock time during which at least one request or attach stream to the engine was
    /// open (the union of their intervals, so the attach stream and the concurrent `wait` of a
    /// stage count once). A job's duration minus this is kiln's own share of it.
    std::chrono::nanoseconds engine_time() const;

private:
    struct impl;
    std::unique_ptr<impl> impl_;
};

/// URL-encodes a query value (filters JSON, image names).
std::string url_encode(std::string_view s);

}  // namespace kiln::executors::docker
