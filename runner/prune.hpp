#pragma once
// Disk hygiene (`kiln prune`, and hourly in `kiln run` with prune_older_than): builds
// directories, cache directories and Docker cache volumes unused for longer than an age are
// removed — never anything of a running job. A running job holds an flock on
// <builds_dir>/<runner>/<concurrent id>.lock, which prune must take before touching that
// slot's checkouts; a cache volume mounted by any container is in use.

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <chrono>
#include <cstdint>
#include <ctime>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "config/settings.hpp"

namespace kiln::prune {

/// "7d", "168h", "1h30m", "90s", "45m": a Go duration, plus whole days (`d`). Nullopt when
/// malformed or negative.
std::optional<std::chrono::seconds> parse_age(std::string_view text);

/// "9d", "5h", "42m", "30s": the age in its largest whole unit, for messages.
std::string describe_age(std::chrono::seconds age);

inline bool is_stale(std::time_t last_used, std::time_t now, std::chrono::seconds age) {
    return now - last_used > age.count();
}

struct report {
    std::vector<std::string> removed;   // "builds /path (unused for 9d)"
    std::vector<std::string> in_use;    // skipped because a job holds it
    std::vector<std::string> errors;
};

/// An exclusive flock on a slot's lock file, released on destruction.
class slot_lock {
public:
    /// Nullopt with errno EWOULDBLOCK when another holder has it; other errors likewise.
    static std::optional<slot_lock> try_acquire(const std::filesystem::path& path);
    slot_lock(slot_lock&& o) noexcept : fd_(o.fd_) { o.fd_ = -1; }
    slot_lock& operator=(slot_lock&& o) noexcept {
        std::swap(fd_, o.fd_);
        return *this;
    }
    ~slot_lock();

private:
    explicit slot_lock(int fd) : fd_(fd) {}
    int fd_ = -1;
};

/// <builds_dir>/<runner short token>/<concurrent id>.lock
std::filesystem::path slot_lock_path(const std::filesystem::path& builds_dir,
                                     const std::string& short_token, int concurrent_id);

/// The runner's builds directory as jobs use it (builds_dir, else ./builds).
std::filesystem::path builds_dir_of(const config::runner_entry& r);
/// The runner's local cache directory (cache_dir, else ./cache).
std::filesystem::path cache_dir_of(const config::runner_entry& r);
/// The host directories the runner's jobs write into: the builds directory, and the local
/// cache unless the cache lives in Docker volumes.
std::vector<std::filesystem::path> job_dirs_of(const config::runner_entry& r);

/// Where the daemon notes that a runner's job of a project used its Docker cache volume:
/// <config dir>/volume-use/<short token>-<project id> (its mtime is the last use).
std::filesystem::path volume_marks_dir(const std::filesystem::path& config_path);
void mark_volume_use(const std::filesystem::path& marks_dir, const std::string& short_token,
                     std::int64_t project_id);

/// Checkouts (directories holding .git) and `.tmp` directories below each slot of the runner,
/// unused for longer than `age`; a slot whose lock is held is skipped. Blocking.
void prune_builds(const std::filesystem::path& builds_dir, const std::string& short_token,
                  std::chrono::seconds age, bool dry_run, report& out);

/// Files of a local cache directory unused (mtime and atime) for longer than `age`, then the
/// directories left empty. Blocking.
void prune_cache_dir(const std::filesystem::path& cache_dir, std::chrono::seconds age,
                     bool dry_run, report& out);

/// Docker cache volumes (kiln.type=cache) of these runners whose last use (the mark, else the
/// volume's creation) is older than `age` and that no container mounts.
boost::asio::awaitable<void> prune_volumes(boost::asio::any_io_executor ex,
                                           std::string docker_host,
                                           std::vector<std::string> short_tokens,
                                           std::filesystem::path marks_dir,
                                           std::chrono::seconds age, bool dry_run, report& out);

/// Everything above for every runner of `s` (volumes for docker runners). Filesystem work goes
/// to the blocking pool.
boost::asio::awaitable<void> prune_all(boost::asio::any_io_executor ex, config::settings s,
                                       std::filesystem::path config_path,
                                       std::chrono::seconds age, bool dry_run, report& out);

}  // namespace kiln::prune
