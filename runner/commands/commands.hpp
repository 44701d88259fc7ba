#pragma once
// The `kiln` subcommands. main.cpp parses the command line (CLI11) into these option structs;
// each command returns the process exit code and reports failures as one line on stderr.

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace kiln::commands {

struct global_options {
    std::string config;  // --config/-c; empty: $CONFIG_FILE or the default path
    std::string log_level;
    std::string log_format;
};

struct register_options {
    bool non_interactive = false;
    std::string url;
    std::string token;               // glrt- authentication token
    std::string registration_token;  // legacy registration token
    std::string name;
    std::string executor;
    std::string shell;
    std::string docker_image;
    std::string docker_memory;
    std::string tag_list;
    std::optional<bool> run_untagged;
    std::optional<bool> locked;
    std::string access_level;
    std::int64_t maximum_timeout = 0;
    bool paused = false;
    std::string maintenance_note;
    std::int64_t limit = 0;
    std::int64_t request_concurrency = 0;
    std::int64_t output_limit = 0;
    std::string builds_dir;
    std::string cache_dir;
    std::string tls_ca_file;
    std::string tls_cert_file;
    std::string tls_key_file;
    std::vector<std::string> env;
    bool leave_runner = false;
    // Per-Go-module runners: one runner for the module of this go.mod (file or directory), or
    // one per go.mod below a directory; `project` names them (runner-<project>-<module>).
    std::string go_module;
    std::string go_modules_from;
    std::string project;
};

/// Which runners a command applies to: --name, or --url with --token, or --all-runners.
struct runner_selector {
    std::string name;
    std::string url;
    std::string token;
    bool all_runners = false;
};

struct reset_token_options {
    runner_selector select;
    std::int64_t id = 0;
    std::string pat;
};

int run_register(const global_options& g, register_options o);
int run_verify(const global_options& g, const runner_selector& s, bool delete_removed);
int run_unregister(const global_options& g, const runner_selector& s);
int run_list(const global_options& g);
int run_reset_token(const global_options& g, const reset_token_options& o);
int run_lint(const global_options& g);

struct run_options {
    std::string working_directory;
    std::int64_t max_jobs = 0;  // stop after this many jobs (0: run until signalled)
    std::string user;           // jobs run as this user (overrides `user` in the config)
    std::string service;        // accepted for gitlab-runner's unit files; names nothing here
    bool syslog = false;        // accepted likewise: systemd's journal already takes the log
};
int run_daemon(const global_options& g, const run_options& o);

struct prune_options {
    std::string older_than;  // empty: prune_older_than from the config, else 7 days
    bool dry_run = false;
    std::string working_directory;  // where relative (default) builds/cache dirs live
};
int run_prune(const global_options& g, const prune_options& o);

struct artifacts_verify_options {
    std::string archive;
    std::vector<std::string> key_files;  // --key, repeatable: any one may have signed it
};
/// `kiln artifacts verify ARCHIVE --key PUB.pem`: 0 and a summary when the archive's signed
/// manifest verifies, 1 and one ERROR line otherwise.
int run_artifacts_verify(const artifacts_verify_options& o);

/// install/uninstall/start/stop/restart/status (gitlab-runner's flags).
struct service_options {
    std::string service = "kiln";        // --service/-n: the unit's name
    std::string working_directory;       // --working-directory/-d (install)
    // install: --user/-u alone makes the service run as that user (so do its jobs); with
    // --init-user/-i the service runs as the init user and becomes --user at start, as
    // gitlab-runner's unit runs `run --user`. Neither: root.
    std::string user;
    std::string init_user;
    bool syslog = false;  // --syslog: accepted; the journal takes the log
    std::string unit_dir = "/etc/systemd/system";  // --unit-dir: for image builds and chroots
};
int run_install(const global_options& g, const service_options& o);
int run_uninstall(const global_options& g, const service_options& o);
/// verb: start, stop, restart or status (exit 0 only while the service runs).
int run_service_control(const std::string& verb, const global_options& g,
                        const service_options& o);

}  // namespace kiln::commands
