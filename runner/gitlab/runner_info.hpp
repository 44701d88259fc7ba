#pragma once
// The `info` object (protocol.md §2.1) and the JSON request bodies of the runner API.

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

namespace kiln::gitlab {

/// info.features: every key is always sent, false included, in this order.
struct feature_flags {
    bool variables = false;
    bool image = false;
    bool services = false;
    bool artifacts = false;
    bool cache = false;
    bool fallback_cache_keys = false;
    bool shared = false;
    bool upload_multiple_artifacts = false;
    bool upload_raw_artifacts = false;
    bool session = false;
    bool terminal = false;
    bool refspecs = false;
    bool masking = false;
    bool proxy = false;
    bool raw_variables = false;
    bool artifacts_exclude = false;
    bool multi_build_steps = false;
    bool trace_reset = false;
    bool trace_checksum = false;
    bool trace_size = false;
    bool vault_secrets = false;
    bool cancelable = false;
    bool return_exit_code = false;
    bool service_variables = false;
    bool service_multiple_aliases = false;
    bool image_executor_opts = false;
    bool service_executor_opts = false;
    bool cancel_gracefully = false;
    bool native_steps_integration = false;
    bool two_phase_job_commit = false;
    bool job_inputs = false;
};

inline constexpr std::size_t feature_count = 31;

/// GOOS / GOARCH spelling of the platform this binary was built for ("linux", "amd64", "arm64").
std::string_view build_platform();
std::string_view build_architecture();

/// This build's version (the CMake project version).
std::string_view kiln_version();

struct runner_info {
    std::string name = "kiln";
    std::string version{kiln_version()};
    std::string revision;
    std::string platform{build_platform()};
    std::string architecture{build_architecture()};
    std::string executor;  // empty on registration (gitlab-runner sends no executor there)
    std::string shell;
    feature_flags features;
    std::string gpus;  // config.gpus
    std::map<std::string, std::string> labels;
};

/// The `info` object as compact JSON: empty strings and labels omitted; features and config
/// always present.
std::string runner_info_json(const runner_info& info);

/// POST /jobs/request: {info, token, system_id?, last_update?}; empty values are omitted.
std::string job_request_body(
    const runner_info& info,
    std::string_view token,
    std::string_view system_id,
    std::string_view last_update
);

struct register_params {
    std::string description;
    std::string maintenance_note;
    std::vector<std::string> tags;  // sent as the comma-separated tag_list
    bool run_untagged = false;
    bool locked = true;
    std::string access_level;  // "not_protected" | "ref_protected"
    std::int64_t maximum_timeout = 0;
    bool paused = false;
};

/// POST /runners: description, maintenance_note, tag_list, access_level and maximum_timeout are
/// omitted when empty/0; run_untagged, locked, paused, info and token are always sent.
std::string register_body(
    const register_params& params, const runner_info& info, std::string_view registration_token
);

/// POST /runners/verify: {info, token, system_id?}.
std::string verify_body(
    const runner_info& info, std::string_view token, std::string_view system_id
);

/// DELETE /runners: {token}.
std::string unregister_body(std::string_view token);

/// DELETE /runners/managers: {token, system_id}, system_id always present.
std::string unregister_manager_body(std::string_view token, std::string_view system_id);

/// POST /runners/reset_authentication_token: {token}.
std::string reset_token_body(std::string_view token);

enum class job_state { pending, running, success, failed };

std::string_view to_string(job_state s);

struct job_update {
    std::string token;  // the job token; PUT requires it in the body
    job_state state = job_state::running;
    std::string failure_reason;  // omitted when empty; see resolve_failure_reason
    std::string checksum;        // "crc32:%08x" of the trace; omitted when empty
    std::int64_t bytesize = 0;   // trace size; omitted when 0
    int exit_code = 0;           // omitted when 0: GitLab reads absence as 0
};

/// PUT /jobs/:id: {info, token, state, failure_reason?, checksum?, output, exit_code?}; `output`
/// is always present ({} when there is neither checksum nor size).
std::string job_update_body(const runner_info& info, const job_update& update);

/// The reason to send for `reason` given the job's features.failure_reasons (protocol.md §5.2):
/// empty -> script_failure; supported (or one of script_failure, runner_system_failure,
/// job_execution_timeout) -> itself; else its older equivalent if supported; else unknown_failure.
std::string resolve_failure_reason(
    std::string_view reason, const std::vector<std::string>& supported
);

}  // namespace kiln::gitlab
