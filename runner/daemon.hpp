#pragma once
// `kiln run`: one polling coroutine per [[runners]] entry on one io_context, jobs as coroutines
// beside them, the global `concurrent` and per-runner `limit` shared between them, and signals.

#include <cstdint>
#include <filesystem>

#include "config/settings.hpp"

namespace kiln {

struct daemon_options {
    std::filesystem::path config_path;
    config::settings settings;
    std::int64_t max_jobs = 0;  // exit after this many jobs; 0: until a signal
};

/// Runs until SIGQUIT (stop asking for jobs, let running ones finish), SIGTERM/SIGINT (cancel
/// running jobs gracefully, abort them after shutdown_timeout; a second signal aborts at once),
/// or max_jobs jobs have finished. Returns the process exit code.
int run_daemon(daemon_options options);

}  // namespace kiln
