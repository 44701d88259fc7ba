#pragma once
// The job GitLab hands out in the 201 body of POST /jobs/request (protocol.md §4), as values.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <boost/system/result.hpp>

namespace kiln::gitlab {

struct job_info {
    std::int64_t id = 0;
    std::string name;
    std::string stage;
    std::int64_t project_id = 0;
    std::string project_name;
    std::string project_full_path;
    std::int64_t namespace_id = 0;
    std::int64_t root_namespace_id = 0;
    std::int64_t organization_id = 0;
    std::string instance_id;
    std::string instance_uuid;
    std::int64_t user_id = 0;
    std::optional<std::int64_t> scoped_user_id;
    std::int64_t time_in_queue_seconds = 0;
    std::string project_jobs_running_on_instance_runners_count;  // "+Inf", "0".."N", "N+"
    std::int64_t queue_size = 0;
    std::int64_t queue_depth = 0;
};

struct git_info {
    std::string repo_url;
    std::string ref;
    std::string sha;
    std::string before_sha;
    std::string ref_type;  // "branch" | "tag"
    std::vector<std::string> refspecs;
    std::int64_t depth = 0;  // 0 = full clone
    std::string repo_object_format;
    bool protected_ref = false;  // JSON key "protected"
};

inline constexpr std::int64_t default_job_timeout_seconds = 7200;

struct runner_info_section {
    std::int64_t timeout = default_job_timeout_seconds;  // seconds; a value <= 0 becomes 7200
    std::string runner_session_url;
    std::string uuid;
};

struct job_variable {
    std::string key;
    std::string value;       // null in the payload becomes ""
    bool is_public = false;  // JSON key "public"
    bool masked = false;
    bool file = false;
    bool raw = false;
};

struct job_step {
    std::string name;  // "script", "after_script", "release", ...
    std::vector<std::string> script;
    std::int64_t timeout = 0;
    std::string when;  // "on_success" (also ""), "on_failure", "always"
    bool allow_failure = false;
};

struct job_hook {
    std::string name;  // "pre_get_sources_script" | "post_get_sources_script"
    std::vector<std::string> script;
};

struct image_port {
    std::int64_t number = 0;
    std::string protocol;
    std::string name;
};

struct executor_options {
    std::string docker_platform;
    std::string docker_user;  // an integer user id arrives as a number; kept as its decimal text
    std::string kubernetes_user;  // same
    /// Option names the runner does not know ("docker.foo", "podman"). gitlab-runner fails the
    /// job (runner_system_failure) when this is not empty rather than ignoring them.
    std::vector<std::string> unsupported;
};

/// `image` and each `services[]` entry; `alias`, `command` and `variables` are service-only.
struct image_spec {
    std::string name;
    std::string alias;  // may list several names separated by ',' or spaces
    std::vector<std::string> entrypoint;
    std::vector<std::string> command;
    std::vector<image_port> ports;
    std::vector<job_variable> variables;
    std::vector<std::string> pull_policy;  // "always", "if-not-present", "never"
    executor_options executor_opts;
};

struct artifact_spec {
    std::string name;  // may be empty (null) or contain unexpanded $VARS
    bool untracked = false;
    std::vector<std::string> paths;
    std::vector<std::string> exclude;
    std::string when;  // "on_success" (also ""), "on_failure", "always"
    std::string expire_in;
    std::string artifact_type;    // "archive", "junit", ...
    std::string artifact_format;  // "zip", "gzip", "raw"
};

struct cache_spec {
    std::string key;
    bool untracked = false;
    std::vector<std::string> paths;
    std::string policy;  // "pull-push" (also ""), "pull", "push"
    std::string when;
    std::vector<std::string> fallback_keys;
};

struct registry_credential {
    std::string type;  // only "registry" is used
    std::string url;
    std::string username;
    std::string password;
};

struct artifacts_file {
    std::string filename;
    std::int64_t size = 0;
};

struct job_dependency {
    std::int64_t id = 0;
    std::string name;
    std::string token;                        // current GitLab: the running job's own token
    std::optional<artifacts_file> artifacts;  // absent when the dependency has no archive
};

struct gitlab_features {
    bool trace_sections = false;
    std::vector<std::string> failure_reasons;
    std::vector<std::string> token_mask_prefixes;
};

struct job_spec {
    std::int64_t id = 0;
    std::string token;
    bool allow_git_fetch = false;
    job_info info;
    git_info git;
    runner_info_section runner;
    std::vector<job_variable> variables;
    std::vector<job_step> steps;
    std::vector<job_hook> hooks;
    std::optional<image_spec> image;
    std::vector<image_spec> services;
    std::vector<artifact_spec> artifacts;
    std::vector<cache_spec> cache;
    std::vector<registry_credential> credentials;
    std::vector<job_dependency> dependencies;
    gitlab_features features;
    std::string run;  // JSON-encoded step-runner steps; non-empty only for `run:` jobs
};

/// Why a payload could not be used. When the payload did carry a usable id and token they are
/// filled in, so the caller can fail the job on GitLab instead of leaving it stranded.
struct payload_error {
    std::string field;    // JSON path of the offending value, e.g. "steps[0].script"; "" for syntax
    std::string message;  // one readable line, e.g. `job payload: field "id" must be ...`
    std::int64_t job_id = 0;
    std::string job_token;
};

/// Lets boost::system::result<T, payload_error>::value() throw; found by ADL.
[[noreturn]] void throw_exception_from_error(
    const payload_error& e, const boost::source_location& loc
);

using payload_result = boost::system::result<job_spec, payload_error>;

/// Parses the 201 body of jobs/request. Lenient like gitlab-runner: any value may be null,
/// optional keys may be missing, unknown keys are ignored. `id` (positive integer) and `token`
/// (non-empty string) are required; a value of the wrong JSON type is an error naming its path.
payload_result parse_job_payload(std::string_view json);

/// The variable named `key`; later duplicates override earlier ones. nullptr when absent.
const job_variable* find_variable(const std::vector<job_variable>& variables, std::string_view key);

/// Stage selection of gitlab-runner: `when` "", "on_success" or "always" run after success,
/// "on_failure" or "always" after failure; an unknown value runs in neither.
bool when_on_success(std::string_view when);
bool when_on_failure(std::string_view when);

}  // namespace kiln::gitlab
