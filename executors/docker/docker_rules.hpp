#pragma once
// The Docker executor's decisions as pure functions: sizes, Go runtime settings derived from
// cgroup limits, allow-lists, pull policies, service aliases, labels, and the body of
// POST /containers/create. No I/O; see tests/unit/docker.

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "config/settings.hpp"

namespace kiln::executors::docker {

/// Docker's size strings as go-units' RAMInBytes reads them ("64m", "2g", "1.5GiB", "1024"),
/// in bytes with binary multiples; nullopt when malformed.
std::optional<std::int64_t> parse_size(std::string_view s);

/// "1.5" → 1500000000 (HostConfig.NanoCpus); nullopt when malformed or not positive.
std::optional<std::int64_t> parse_cpus(std::string_view s);

/// Number of CPUs in a cpuset list such as "0-3,6"; 0 when malformed.
int cpuset_count(std::string_view s);

/// GOMEMLIMIT for a memory limit: floor(ratio × limit) in whole MiB, in the one form every Go
/// version since 1.19 accepts ("57MiB" for 64 MiB at 0.9). Empty when below 1 MiB.
std::string gomemlimit_value(std::int64_t limit_bytes, double ratio);

/// GOMAXPROCS for a CPU quota, as Go 1.25 computes it from cgroups: min(available CPUs,
/// max(2, ceil(nano_cpus / 1e9))). 0 when there is no quota.
int gomaxprocs_value(std::int64_t nano_cpus, int available_cpus);

struct go_env_inputs {
    std::int64_t memory_bytes = 0;  // HostConfig.Memory; 0 = no limit
    double ratio = 0.9;
    std::int64_t nano_cpus = 0;
    int available_cpus = 1;  // cpuset or host CPUs
    /// Variable names already set by the job, the runner's environment or the image.
    std::set<std::string> already_set;
};

/// "KEY=VALUE" entries for GOMEMLIMIT and GOMAXPROCS that kiln injects. Never overrides a value
/// someone else set: GOMEMLIMIT is left alone when GOMEMLIMIT or AUTOMEMLIMIT is set (including
/// to "off" or empty), GOMAXPROCS when GOMAXPROCS is.
std::vector<std::string> go_runtime_env(const go_env_inputs& in);

/// "64 MiB", "2 GiB", "1.5 GiB" for messages.
std::string human_size(std::int64_t bytes);

/// Allow-list of globs: empty allows everything; "!pattern" entries exclude. A name is
/// allowed when it matches a positive pattern (or there are only exclusions) and no exclusion.
bool is_allowed(const std::vector<std::string>& patterns, std::string_view name);

struct pull_policies {
    std::vector<std::string> policies;  // tried in order
    std::string error;                  // non-empty: configuration error for the job log
};

/// The job's image:pull_policy if given, else the runner's pull_policy, else ["always"],
/// restricted to allowed_pull_policies (gitlab-runner's rule).
pull_policies effective_pull_policies(
    const std::vector<std::string>& job,
    const std::vector<std::string>& runner,
    const std::vector<std::string>& allowed
);

/// Adds ":latest" when the last path component names no tag or digest.
std::string normalize_image(std::string_view image);

/// Network aliases of a service: its explicit aliases (comma or space separated) and the two
/// names gitlab-runner derives from the image ("group/tool:1" → "group__tool", "group-tool").
std::vector<std::string> service_aliases(std::string_view image, std::string_view alias);

/// Object names must match [a-zA-Z0-9][a-zA-Z0-9_.-]*.
std::string sanitize_name(std::string_view s);

inline constexpr std::string_view label_prefix = "kiln.";

struct job_labels {
    std::string runner;  // short token
    std::int64_t job_id = 0;
    std::int64_t project_id = 0;
    std::int64_t pipeline_id = 0;
};

/// Labels for everything kiln creates for a job; `type` is build, service, network, volume or
/// cache. Config container_labels are added to containers by the caller.
std::map<std::string, std::string> labels_for(const job_labels& who, std::string_view type);

struct mount_spec {
    std::string type;  // "bind" | "volume"
    std::string source;
    std::string target;
    bool read_only = false;
};

struct container_request {
    std::string name;
    std::string image;
    std::vector<std::string> cmd;
    std::optional<std::vector<std::string>> entrypoint;  // unset: the image's
    std::vector<std::string> env;
    std::map<std::string, std::string> labels;
    std::vector<mount_spec> mounts;
    std::string network;  // per-job network; empty: settings.network_mode or the default
    std::vector<std::string> aliases;
    std::string user;
    std::string working_dir;
    bool service = false;       // service containers get no build resource limits
    bool stdin_script = false;  // the build container: stages arrive on stdin
    bool init = false;          // docker-init as PID 1 so SIGTERM ends the stage
};

/// The JSON body of POST /containers/create from [runners.docker] and the request. Throws
/// std::invalid_argument naming the key when a setting cannot be expressed (bad size, …).
std::string container_create_body(
    const config::docker_settings& settings, const container_request& req
);

}  // namespace kiln::executors::docker
