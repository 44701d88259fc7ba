#include "runner/commands/common.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <cstdio>
#include <ctime>

#include "runner/util/logging.hpp"

namespace kiln::commands {

void setup_logging(const global_options& g, const std::string& config_level,
                   const std::string& config_format) {
    const std::string& lvl = g.log_level.empty() ? config_level : g.log_level;
    const std::string& fmt = g.log_format.empty() ? config_format : g.log_format;
    if (!log::setup(lvl, fmt)) {
        log::warn("unknown log level or format; using info and text",
                  {{"log_level", lvl}, {"log_format", fmt}});
    }
}

config::settings load_settings(const std::filesystem::path& path, bool missing_ok) {
    std::error_code ec;
    if (missing_ok && !std::filesystem::exists(path, ec)) {
        return config::settings{};
    }
    auto r = config::load_config_file(path);
    for (const auto& d : r.warnings()) {
        log::warn(d.to_string());
    }
    if (!r.ok()) {
        std::string msg;
        for (const auto& d : r.errors()) {
            msg += (msg.empty() ? "" : "\n       ") + d.to_string();
        }
        if (msg.empty()) {
            msg = "cannot load " + path.string();
        }
        throw command_error(msg + "\n       (run `kiln lint --config " + path.string() +
                            "` to check the file)");
    }
    return *r.value;
}

void run_coroutine(std::function<boost::asio::awaitable<void>()> body) {
    boost::asio::io_context ctx;
    std::exception_ptr failure;
    boost::asio::co_spawn(ctx, body(), [&](std::exception_ptr e) { failure = e; });
    ctx.run();
    if (failure) {
        std::rethrow_exception(failure);
    }
}

std::unique_ptr<gitlab::client> make_client(boost::asio::any_io_executor ex, const std::string& url,
                                            const net::tls_settings& tls) {
    gitlab::client_config cfg;
    cfg.url = url;
    cfg.tls = tls;
    try {
        return std::make_unique<gitlab::client>(std::move(ex), std::move(cfg));
    } catch (const std::invalid_argument& e) {
        throw command_error(std::string(e.what()));
    } catch (const std::runtime_error& e) {
        throw command_error(std::string(e.what()));
    }
}

std::string explain(const net::transport_error& e) {
    using kind = net::transport_error::kind;
    switch (e.what) {
        case kind::tls_verify:
            return e.message +
                   "; pass the CA that signed GitLab's certificate with --tls-ca-file "
                   "(tls-ca-file in config.toml)";
        case kind::tls:
            return e.message + "; check that the URL's scheme and port serve HTTPS";
        case kind::resolve:
            return e.message + "; check the host name in the URL";
        case kind::connect:
        case kind::timeout:
            return e.message + "; is GitLab running at that address and reachable from this host?";
        default:
            return e.message;
    }
}

std::string utc_timestamp_now() {
    std::time_t t = std::time(nullptr);
    std::tm tm{};
    ::gmtime_r(&t, &tm);
    char buf[32];
    std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
    return buf;
}

void print_error(const std::string& message) {
    std::fprintf(stderr, "ERROR: %s\n", message.c_str());
}

}  // namespace kiln::commands
