#pragma once
// The configuration model: gitlab-runner's config.toml as plain values. Defaults are
// gitlab-runner's (../shared/docs/gitlab-runner-reference.md §2); optional<> means "not set
// in the file", where the effective default depends on context (executor, running as root…).

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace kiln::config {

/// [[runners.docker.services]]: services started for every job of the runner.
struct docker_service {
    std::string name;   // image
    std::string alias;  // space- or comma-separated aliases
    std::vector<std::string> entrypoint;
    std::vector<std::string> command;
    std::vector<std::string> environment;  // "KEY=value"

    friend bool operator==(const docker_service&, const docker_service&) = default;
};

/// [runners.docker]
struct docker_settings {
    std::string host;  // empty: $DOCKER_HOST or unix:///var/run/docker.sock
    bool tls_verify = false;
    std::string tls_cert_path;
    std::string image;
    std::vector<std::string> pull_policy;  // empty: ["always"]
    std::vector<std::string> allowed_pull_policies;
    std::vector<std::string> allowed_images;
    std::vector<std::string> allowed_services;
    std::vector<std::string> allowed_privileged_images;
    std::vector<std::string> allowed_privileged_services;
    std::vector<std::string> allowed_users;
    std::string user;
    bool privileged = false;
    std::optional<bool> services_privileged;
    std::vector<std::string> volumes;
    std::vector<std::string> volumes_from;
    std::string volume_driver;
    bool volume_keep = false;
    std::string cache_dir;
    bool disable_cache = false;
    std::string memory;              // docker size string, e.g. "2g"
    std::string memory_swap;
    std::string memory_reservation;
    std::string cpus;                // e.g. "1.5"
    std::string cpuset_cpus;
    std::string cpuset_mems;
    std::int64_t cpu_shares = 0;
    std::string cgroup_parent;
    bool oom_kill_disable = false;
    std::int64_t oom_score_adjust = 0;
    std::optional<std::int64_t> pids_limit;
    std::int64_t shm_size = 0;
    std::map<std::string, std::string> tmpfs;
    std::map<std::string, std::string> services_tmpfs;
    std::map<std::string, std::string> ulimit;
    std::map<std::string, std::string> sysctls;
    std::vector<std::string> cap_add;
    std::vector<std::string> cap_drop;
    std::vector<std::string> security_opt;
    std::vector<std::string> devices;
    std::vector<std::string> device_cgroup_rules;
    std::string gpus;
    std::string userns_mode;
    std::vector<std::string> group_add;
    std::string network_mode;
    std::int64_t network_mtu = 0;
    bool enable_ipv6 = false;
    std::vector<std::string> dns;
    std::vector<std::string> dns_search;
    std::vector<std::string> extra_hosts;
    std::string hostname;
    std::string runtime;
    std::int64_t wait_for_services_timeout = 30;  // seconds; -1 disables the check
    std::vector<docker_service> services;
    std::int64_t services_limit = -1;
    std::string helper_image;
    std::string helper_image_flavor;
    bool disable_entrypoint_overwrite = false;
    std::map<std::string, std::string> container_labels;
    // kiln's own Go build-host settings (issue 4); not gitlab-runner keys.
    std::optional<double> gomemlimit_ratio;  // default 0.9
    std::optional<bool> go_cache;            // persistent GOCACHE/GOMODCACHE, default on

    friend bool operator==(const docker_settings&, const docker_settings&) = default;
};

/// [runners.cache.s3]
struct cache_s3_settings {
    std::string server_address;
    std::string access_key;
    std::string secret_key;
    std::string session_token;
    std::string bucket_name;
    std::string bucket_location;
    bool insecure = false;
    std::string authentication_type;
    std::optional<bool> path_style;  // unset: path style unless the endpoint is AWS or Google

    friend bool operator==(const cache_s3_settings&, const cache_s3_settings&) = default;
};

/// [runners.cache]
struct cache_settings {
    std::string type;  // "s3"; empty = local cache only
    std::string path;
    bool shared = false;
    std::int64_t max_uploaded_archive_size = 0;
    std::optional<cache_s3_settings> s3;

    friend bool operator==(const cache_settings&, const cache_settings&) = default;
};

/// [runners.custom_build_dir]
struct custom_build_dir_settings {
    std::optional<bool> enabled;  // default: true for docker, false for shell

    friend bool operator==(
        const custom_build_dir_settings&,
        const custom_build_dir_settings&
    ) = default;
};

/// [runners.signing]: kiln's signed artifacts (docs/artifacts.md); not a gitlab-runner section.
struct signing_settings {
    /// Private key (PEM, Ed25519 or ECDSA P-256): every zip archive the runner uploads carries
    /// a manifest of its files signed with it. Empty: archives are not signed.
    std::string key_file;
    /// Public keys (PEM): dependency archives must carry a manifest signed by one of them, or
    /// the job fails. Empty: dependency archives are not checked.
    std::vector<std::string> verify_key_files;
    /// An in-toto provenance statement in signed archives.
    bool provenance = true;

    friend bool operator==(const signing_settings&, const signing_settings&) = default;
};

/// One [[runners]] entry.
struct runner_entry {
    std::string name;
    std::string url;
    std::int64_t id = 0;
    std::string token;
    std::optional<std::string> token_obtained_at;  // RFC 3339, as gitlab-runner writes it
    std::optional<std::string> token_expires_at;   // absent or zero time: never expires
    std::string tls_ca_file;
    std::string tls_cert_file;
    std::string tls_key_file;
    std::string executor;
    std::string shell;  // empty: bash
    std::string builds_dir;
    std::string cache_dir;
    std::vector<std::string> environment;  // "KEY=value"
    std::int64_t request_concurrency = 1;
    std::int64_t limit = 0;          // 0 = unlimited
    std::int64_t output_limit = 4096;  // KiB
    bool strict_check_interval = false;
    std::string pre_get_sources_script;
    std::string post_get_sources_script;
    std::string pre_build_script;
    std::string post_build_script;
    std::string clone_url;
    bool debug_trace_disabled = false;
    std::optional<bool> clean_git_config;
    std::int64_t unhealthy_requests_limit = 3;
    std::chrono::seconds unhealthy_interval{3600};
    std::int64_t job_status_final_update_retry_limit = 10;
    std::map<std::string, bool> feature_flags;
    std::optional<docker_settings> docker;
    std::optional<cache_settings> cache;
    custom_build_dir_settings custom_build_dir;
    std::optional<signing_settings> signing;
    // kiln: the tags the runner was registered with (GitLab decides which jobs match; this
    // records them for `kiln list`, e.g. go-module,<name> from `register --go-module`).
    std::vector<std::string> tags;

    friend bool operator==(const runner_entry&, const runner_entry&) = default;
};

/// The whole file. Values are the effective ones: where gitlab-runner reads 0 or a negative
/// number as "use the default" (check_interval, shutdown_timeout, output_limit,
/// request_concurrency, …) the loader stores the default.
struct settings {
    std::int64_t concurrent = 1;
    std::chrono::seconds check_interval{3};
    std::string log_level = "info";
    std::string log_format = "runner";  // runner | text | json
    std::string listen_address;
    std::chrono::seconds shutdown_timeout{30};
    std::chrono::seconds connection_max_age{15 * 60};  // 0: keep connections forever
    std::string sentry_dsn;
    std::string user;
    // kiln: where undeliverable final job states wait (empty: <config dir>/spool).
    std::string spool_dir;
    // kiln: `kiln run` prunes builds/cache directories and cache volumes unused for longer
    // than this, hourly (0: never; `kiln prune` does it by hand).
    std::chrono::seconds prune_older_than{0};
    std::vector<runner_entry> runners;

    friend bool operator==(const settings&, const settings&) = default;
};

}  // namespace kiln::config
