#pragma once
// The spool: a job's final state that GitLab did not take (unreachable, 5xx) is written to disk
// with the job's trace, and the daemon delivers it when GitLab answers again — also after a
// restart. One `job-<id>.json` (the state, how to reach GitLab, the job token: mode 0600, never
// logged) and one `job-<id>.trace` (the final, masked trace, at most output_limit bytes) per job.

#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "runner/gitlab/runner_info.hpp"

namespace kiln::spool {

struct entry {
    std::int64_t job_id = 0;
    std::string job_token;  // secret
    std::string url;
    std::string tls_ca_file;
    std::string tls_cert_file;
    std::string tls_key_file;
    std::string executor;
    std::string shell;
    std::string runner;  // short token, for logs
    gitlab::job_update update;  // state, failure_reason, exit_code, checksum, bytesize
    std::int64_t trace_offset = 0;  // where to resume PATCHing (416 corrects it)
    std::int64_t spooled_at = 0;    // unix seconds
};

/// Entries older than this are dropped unread: GitLab has long failed such a job as stuck.
inline constexpr std::int64_t max_age_seconds = 7 * 24 * 3600;

std::string to_json(const entry& e);
/// Empty optional and `error` set when the text is not a spool entry.
std::optional<entry> from_json(std::string_view text, std::string& error);

/// <config dir>/spool unless `configured` names a directory.
std::filesystem::path directory(const std::filesystem::path& config_path,
                                const std::string& configured);

struct stored {
    entry e;
    std::filesystem::path json_path;
    std::filesystem::path trace_path;
};

/// Puts the whole trace into a new file at the given path (0600) and makes it durable
/// (fsync); throws on failure. trace_buffer::save_as does it without copying the log.
using trace_saver = std::function<void(const std::filesystem::path&)>;

/// Writes the trace, then the entry (atomically: the .json appears last, so a present .json
/// always has its trace). The directory is created 0700, files 0600. Throws on failure.
stored write(const std::filesystem::path& dir, const entry& e, const trace_saver& save_trace);
stored write(const std::filesystem::path& dir, const entry& e, std::string_view trace);

/// Creates the spool directory (0700) if it does not exist; throws on failure.
void create_directory(const std::filesystem::path& dir);

/// Every entry in `dir` (none when it does not exist); unreadable ones are reported in
/// `problems` and left alone.
std::vector<stored> load_all(const std::filesystem::path& dir, std::vector<std::string>& problems);

/// The spooled trace's size; throws when it cannot be read.
std::size_t trace_size(const stored& s);
/// Up to `max` bytes of the spooled trace from `offset`; throws when it cannot be read.
std::string read_trace(const stored& s, std::size_t offset, std::size_t max);

void remove(const stored& s);

}  // namespace kiln::spool
