#pragma once
// The job's cache stages, as gitlab-runner names them in the trace: restore_cache (after
// get_sources) and archive_cache / archive_cache_on_failure (after after_script). kiln does
// the work itself on the host — no helper binary — with the rules of cache_rules.hpp:
//  - local cache: <cache_dir>/<project path>/<key>/cache.zip, written atomically;
//  - distributed cache ([runners.cache] Type = "s3"): the archive is also uploaded with a
//    presigned PUT and fetched with a presigned GET (sigv4.hpp), streamed from and to the
//    file, never held in memory.
// A missing cache, an unreachable server or a broken archive is a warning in the trace and
// never changes the job's result; only an unknown cache policy fails the job, as in
// gitlab-runner.

#include <boost/asio/awaitable.hpp>
#include <filesystem>
#include <functional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "config/settings.hpp"
#include "runner/gitlab/job_payload.hpp"

namespace kiln::cache {

struct stage_context {
    const config::runner_entry* runner = nullptr;
    const gitlab::job_spec* job = nullptr;
    /// The job's environment (CI_* and the job's variables), for $VAR expansion in keys and
    /// for the CACHE_* tuning variables; the last definition of a name wins.
    const std::vector<std::pair<std::string, std::string>>* env = nullptr;
    std::filesystem::path project_dir;
    /// Appends raw bytes to the job's trace.
    std::function<void(std::string_view)> out;
};

/// Whether restore_cache runs at all (some cache[] entry has paths or untracked); without it
/// gitlab-runner skips the stage and prints no section.
bool restore_needed(const gitlab::job_spec& job);

/// Whether archive_cache(_on_failure) runs for this result.
bool archive_needed(const gitlab::job_spec& job, bool job_succeeded);

/// restore_cache. Returns "" or the message of an error that fails the job.
boost::asio::awaitable<std::string> restore(stage_context ctx);

/// archive_cache (job_succeeded) or archive_cache_on_failure. Returns "" or the message of an
/// error that fails the job.
boost::asio::awaitable<std::string> archive(stage_context ctx, bool job_succeeded);

/// The cache directory: [[runners]] cache_dir, else "cache" under the working directory (as
/// builds_dir defaults to "builds" there).
std::filesystem::path cache_root(const config::runner_entry& runner);

}  // namespace kiln::cache
