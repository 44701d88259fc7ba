#include "runner/gitlab/runner_info.hpp"

#include <algorithm>
#include <array>
#include <utility>

#include <nlohmann/json.hpp>

#ifndef KILN_VERSION
#define KILN_VERSION "0.0.0"
#endif

namespace kiln::gitlab {

namespace {

// Key order matters only for readability and for comparing with gitlab-runner's output.
using ojson = nlohmann::ordered_json;

constexpr std::array<std::pair<std::string_view, bool feature_flags::*>, feature_count>
    feature_table{{
        {"variables", &feature_flags::variables},
        {"image", &feature_flags::image},
        {"services", &feature_flags::services},
        {"artifacts", &feature_flags::artifacts},
        {"cache", &feature_flags::cache},
        {"fallback_cache_keys", &feature_flags::fallback_cache_keys},
        {"shared", &feature_flags::shared},
        {"upload_multiple_artifacts", &feature_flags::upload_multiple_artifacts},
        {"upload_raw_artifacts", &feature_flags::upload_raw_artifacts},
        {"session", &feature_flags::session},
        {"terminal", &feature_flags::terminal},
        {"refspecs", &feature_flags::refspecs},
        {"masking", &feature_flags::masking},
        {"proxy", &feature_flags::proxy},
        {"raw_variables", &feature_flags::raw_variables},
        {"artifacts_exclude", &feature_flags::artifacts_exclude},
        {"multi_build_steps", &feature_flags::multi_build_steps},
        {"trace_reset", &feature_flags::trace_reset},
        {"trace_checksum", &feature_flags::trace_checksum},
        {"trace_size", &feature_flags::trace_size},
        {"vault_secrets", &feature_flags::vault_secrets},
        {"cancelable", &feature_flags::cancelable},
        {"return_exit_code", &feature_flags::return_exit_code},
        {"service_variables", &feature_flags::service_variables},
        {"service_multiple_aliases", &feature_flags::service_multiple_aliases},
        {"image_executor_opts", &feature_flags::image_executor_opts},
        {"service_executor_opts", &feature_flags::service_executor_opts},
        {"cancel_gracefully", &feature_flags::cancel_gracefully},
        {"native_steps_integration", &feature_flags::native_steps_integration},
        {"two_phase_job_commit", &feature_flags::two_phase_job_commit},
        {"job_inputs", &feature_flags::job_inputs},
    }};

static_assert(sizeof(feature_flags) == feature_count * sizeof(bool), "feature_table out of date");

std::string to_text(const ojson& j) {
    // Replace rather than throw on invalid UTF-8 coming from configuration values.
    return j.dump(-1, ' ', false, ojson::error_handler_t::replace);
}

void put_if(ojson& j, std::string_view key, std::string_view value) {
    if (!value.empty()) {
        j[std::string(key)] = value;
    }
}

ojson info_object(const runner_info& info) {
    ojson j = ojson::object();
    put_if(j, "name", info.name);
    put_if(j, "version", info.version);
    put_if(j, "revision", info.revision);
    put_if(j, "platform", info.platform);
    put_if(j, "architecture", info.architecture);
    put_if(j, "executor", info.executor);
    put_if(j, "shell", info.shell);
    ojson features = ojson::object();
    for (const auto& [name, flag] : feature_table) {
        features[std::string(name)] = info.features.*flag;
    }
    j["features"] = std::move(features);
    j["config"] = ojson{{"gpus", info.gpus}};
    if (!info.labels.empty()) {
        ojson labels = ojson::object();
        for (const auto& [k, v] : info.labels) {
            labels[k] = v;
        }
        j["labels"] = std::move(labels);
    }
    return j;
}

}  // namespace

std::string_view build_platform() {
#if defined(__linux__)
    return "linux";
#elif defined(__APPLE__)
    return "darwin";
#elif defined(__FreeBSD__)
    return "freebsd";
#elif defined(_WIN32)
    return "windows";
#else
    return "unknown";
#endif
}

std::string_view build_architecture() {
#if defined(__x86_64__) || defined(_M_X64)
    return "amd64";
#elif defined(__aarch64__)
    return "arm64";
#elif defined(__i386__)
    return "386";
#elif defined(__arm__)
    return "arm";
#elif defined(__s390x__)
    return "s390x";
#elif defined(__powerpc64__) && defined(__LITTLE_ENDIAN__)
    return "ppc64le";
#elif defined(__riscv) && __riscv_xlen == 64
    return "riscv64";
#else
    return "unknown";
#endif
}

std::string_view kiln_version() { return KILN_VERSION; }

std::string runner_info_json(const runner_info& info) { return to_text(info_object(info)); }

std::string job_request_body(
    const runner_info& info,
    std::string_view token,
    std::string_view system_id,
    std::string_view last_update
) {
    ojson j = ojson::object();
    j["info"] = info_object(info);
    j["token"] = token;
    put_if(j, "system_id", system_id);
    // An empty last_update would defeat Workhorse's long poll; absence means "first request".
    put_if(j, "last_update", last_update);
    return to_text(j);
}

std::string register_body(
    const register_params& params, const runner_info& info, std::string_view registration_token
) {
    std::string tag_list;
    for (const auto& tag : params.tags) {
        if (!tag_list.empty()) {
            tag_list += ',';
        }
        tag_list += tag;
    }
    ojson j = ojson::object();
    put_if(j, "description", params.description);
    put_if(j, "maintenance_note", params.maintenance_note);
    put_if(j, "tag_list", tag_list);
    j["run_untagged"] = params.run_untagged;
    j["locked"] = params.locked;
    put_if(j, "access_level", params.access_level);
    if (params.maximum_timeout != 0) {
        j["maximum_timeout"] = params.maximum_timeout;
    }
    j["paused"] = params.paused;
    j["info"] = info_object(info);
    j["token"] = registration_token;
    return to_text(j);
}

std::string verify_body(
    const runner_info& info, std::string_view token, std::string_view system_id
) {
    ojson j = ojson::object();
    j["info"] = info_object(info);
    j["token"] = token;
    put_if(j, "system_id", system_id);
    return to_text(j);
}

std::string unregister_body(std::string_view token) { return to_text(ojson{{"token", token}}); }

std::string unregister_manager_body(std::string_view token, std::string_view system_id) {
    ojson j = ojson::object();
    j["token"] = token;
    j["system_id"] = system_id;
    return to_text(j);
}

std::string reset_token_body(std::string_view token) { return to_text(ojson{{"token", token}}); }

std::string_view to_string(job_state s) {
    switch (s) {
        case job_state::pending:
            return "pending";
        case job_state::running:
            return "running";
        case job_state::success:
            return "success";
        case job_state::failed:
            return "failed";
    }
    return "running";
}

std::string job_update_body(const runner_info& info, const job_update& update) {
    ojson j = ojson::object();
    j["info"] = info_object(info);
    j["token"] = update.token;
    j["state"] = to_string(update.state);
    put_if(j, "failure_reason", update.failure_reason);
    put_if(j, "checksum", update.checksum);  // deprecated duplicate of output.checksum
    ojson output = ojson::object();
    put_if(output, "checksum", update.checksum);
    if (update.bytesize != 0) {
        output["bytesize"] = update.bytesize;
    }
    j["output"] = std::move(output);
    if (update.exit_code != 0) {
        j["exit_code"] = update.exit_code;
    }
    return to_text(j);
}

std::string resolve_failure_reason(
    std::string_view reason, const std::vector<std::string>& supported
) {
    if (reason.empty()) {
        return "script_failure";
    }
    auto usable = [&](std::string_view r) {
        return r == "script_failure" || r == "runner_system_failure" ||
               r == "job_execution_timeout" ||
               std::find(supported.begin(), supported.end(), r) != supported.end();
    };
    if (usable(reason)) {
        return std::string(reason);
    }
    // Reasons newer than the GitLab at hand fall back to the older, broader ones.
    static constexpr std::array<std::pair<std::string_view, std::string_view>, 3> older{{
        {"image_pull_failure", "runner_system_failure"},
        {"runner_configuration_error", "script_failure"},
        {"runner_external_dependency_failure", "runner_system_failure"},
    }};
    for (const auto& [from, to] : older) {
        if (reason == from && usable(to)) {
            return std::string(to);
        }
    }
    return "unknown_failure";
}

}  // namespace kiln::gitlab
