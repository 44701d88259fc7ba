#pragma once
// Shared plumbing of the CLI commands: config loading with diagnostics, running a coroutine to
// completion, and turning transport failures into one line that says what to do.

#include <boost/asio/awaitable.hpp>
#include <filesystem>
#include <functional>
#include <stdexcept>
#include <string>

#include "config/loader.hpp"
#include "runner/commands/commands.hpp"
#include "runner/gitlab/client.hpp"

namespace kiln::commands {

/// Thrown by commands for an expected failure; main prints "ERROR: <what>" and exits 1.
struct command_error : std::runtime_error {
    using std::runtime_error::runtime_error;
};

/// Configures logging from the flags (which win) and the config file's values.
void setup_logging(const global_options& g, const std::string& config_level = {},
                   const std::string& config_format = {});

/// Loads and validates the config: warnings are logged, errors throw command_error listing
/// them. A missing file is an error unless `missing_ok` (then defaults are returned).
config::settings load_settings(const std::filesystem::path& path, bool missing_ok = false);

/// Runs `body` on a fresh io_context until it completes; rethrows its exception.
void run_coroutine(std::function<boost::asio::awaitable<void>()> body);

/// A GitLab client for a runner entry's URL and TLS settings; bad URL or TLS files throw
/// command_error.
std::unique_ptr<gitlab::client> make_client(boost::asio::any_io_executor ex,
                                            const std::string& url,
                                            const net::tls_settings& tls);

/// "cannot connect to https://h:443: Connection refused; is GitLab running and reachable from
/// this host?" — the transport failure plus a hint for what to check.
std::string explain(const net::transport_error& e);

/// RFC 3339 UTC timestamp with second precision, as gitlab-runner writes token_obtained_at.
std::string utc_timestamp_now();

/// Prints "ERROR: message" on stderr.
void print_error(const std::string& message);

}  // namespace kiln::commands
