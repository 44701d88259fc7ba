#include "runner/gitlab/runner_info.hpp"

#include <string>
#include <vector>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "tests/unit/gitlab/fixture.hpp"

using namespace kiln::gitlab;
using kiln::test::read_fixture;
using ojson = nlohmann::ordered_json;

namespace {

std::vector<std::string> keys(const ojson& object) {
    std::vector<std::string> out;
    for (const auto& [k, v] : object.items()) {
        out.push_back(k);
    }
    return out;
}

const std::vector<std::string> feature_order{
    "variables",
    "image",
    "services",
    "artifacts",
    "cache",
    "fallback_cache_keys",
    "shared",
    "upload_multiple_artifacts",
    "upload_raw_artifacts",
    "session",
    "terminal",
    "refspecs",
    "masking",
    "proxy",
    "raw_variables",
    "artifacts_exclude",
    "multi_build_steps",
    "trace_reset",
    "trace_checksum",
    "trace_size",
    "vault_secrets",
    "cancelable",
    "return_exit_code",
    "service_variables",
    "service_multiple_aliases",
    "image_executor_opts",
    "service_executor_opts",
    "cancel_gracefully",
    "native_steps_integration",
    "two_phase_job_commit",
    "job_inputs",
};

}  // namespace

TEST_CASE("default info: kiln, this build, every feature key false", "[gitlab][info]") {
    const auto info = ojson::parse(runner_info_json(runner_info{}));
    CHECK(
        keys(info) ==
        std::vector<std::string>{
            "name", "version", "platform", "architecture", "features", "config"}
    );
    CHECK(info["name"] == "kiln");
    CHECK(info["version"] == std::string(kiln_version()));
    CHECK_FALSE(kiln_version().empty());
    CHECK(info["platform"] == "linux");
    CHECK(info["architecture"] == std::string(build_architecture()));
#if defined(__x86_64__)
    CHECK(build_architecture() == "amd64");
#elif defined(__aarch64__)
    CHECK(build_architecture() == "arm64");
#endif
    REQUIRE(feature_order.size() == feature_count);
    CHECK(keys(info["features"]) == feature_order);
    for (const auto& [name, value] : info["features"].items()) {
        INFO(name);
        CHECK(value == false);
    }
    CHECK(info["config"] == ojson{{"gpus", ""}});
}

TEST_CASE("info: set values and labels appear", "[gitlab][info]") {
    runner_info ri;
    ri.revision = "abc1234";
    ri.executor = "docker";
    ri.shell = "bash";
    ri.features.cancel_gracefully = true;
    ri.gpus = "all";
    ri.labels = {{"zone", "eu-1"}, {"env", "ci"}};
    const auto info = ojson::parse(runner_info_json(ri));
    CHECK(
        keys(info) ==
        std::vector<std::string>{
            "name",
            "version",
            "revision",
            "platform",
            "architecture",
            "executor",
            "shell",
            "features",
            "config",
            "labels"}
    );
    CHECK(info["features"]["cancel_gracefully"] == true);
    CHECK(info["features"]["cancelable"] == false);
    CHECK(info["features"].size() == feature_count);
    CHECK(info["config"]["gpus"] == "all");
    CHECK(keys(info["labels"]) == std::vector<std::string>{"env", "zone"});
}

TEST_CASE("jobs/request body matches fixtures/jobs_request_body.json", "[gitlab][info]") {
    runner_info ri;
    ri.name = "gitlab-runner";
    ri.version = "18.3.1";
    ri.revision = "5a021a1c";
    ri.platform = "linux";
    ri.architecture = "amd64";
    ri.executor = "docker";
    ri.shell = "bash";
    feature_flags all_but_shared_and_proxy;
    all_but_shared_and_proxy = feature_flags{
        true, true, true,  true, true, true, false, true, true, true, true,
        true, true, false, true, true, true, true,  true, true, true, true,
        true, true, true,  true, true, true, true,  true, true,
    };
    ri.features = all_but_shared_and_proxy;
    const auto body = ojson::parse(job_request_body(
        ri, "glrt-t1_y8Gk2PqZrT5vW9nB3xLm", "s_0a1b2c3d4e5f", "6f1e0f7f3c9b4f2a8d5e1c0b9a8f7e6d"
    ));
    const auto expected = ojson::parse(read_fixture("jobs_request_body.json"));
    CHECK(keys(body) == keys(expected));
    CHECK(keys(body["info"]) == keys(expected["info"]));
    CHECK(keys(body["info"]["features"]) == keys(expected["info"]["features"]));
    // ordered_json compares objects in order, so this is a key-by-key, order-exact comparison.
    CHECK(body == expected);
}

TEST_CASE("jobs/request body omits an empty system_id and last_update", "[gitlab][info]") {
    const auto body = ojson::parse(job_request_body(runner_info{}, "glrt-x", "", ""));
    CHECK(keys(body) == std::vector<std::string>{"info", "token"});
    const auto with_id =
        ojson::parse(job_request_body(runner_info{}, "glrt-x", "s_0a1b2c3d4e5f", ""));
    CHECK(keys(with_id) == std::vector<std::string>{"info", "token", "system_id"});
}

TEST_CASE("register body: omission rules", "[gitlab][info]") {
    SECTION("everything set") {
        register_params p;
        p.description = "my runner";
        p.maintenance_note = "call ops";
        p.tags = {"docker", "linux"};
        p.run_untagged = true;
        p.locked = false;
        p.access_level = "ref_protected";
        p.maximum_timeout = 3600;
        p.paused = true;
        const auto body = ojson::parse(register_body(p, runner_info{}, "GR1348941abc"));
        CHECK(
            keys(body) ==
            std::vector<std::string>{
                "description",
                "maintenance_note",
                "tag_list",
                "run_untagged",
                "locked",
                "access_level",
                "maximum_timeout",
                "paused",
                "info",
                "token"}
        );
        CHECK(body["tag_list"] == "docker,linux");
        CHECK(body["run_untagged"] == true);
        CHECK(body["locked"] == false);
        CHECK(body["maximum_timeout"] == 3600);
        CHECK(body["paused"] == true);
        CHECK(body["token"] == "GR1348941abc");
        CHECK(body["info"]["features"].size() == feature_count);
        CHECK_FALSE(body["info"].contains("executor"));
    }
    SECTION("defaults") {
        const auto body = ojson::parse(register_body(register_params{}, runner_info{}, "tok"));
        CHECK(
            keys(body) ==
            std::vector<std::string>{"run_untagged", "locked", "paused", "info", "token"}
        );
        CHECK(body["locked"] == true);
        CHECK(body["run_untagged"] == false);
        CHECK(body["paused"] == false);
    }
}

TEST_CASE("verify, unregister and reset-token bodies", "[gitlab][info]") {
    const auto verify = ojson::parse(verify_body(runner_info{}, "glrt-abc", "s_0a1b2c3d4e5f"));
    CHECK(keys(verify) == std::vector<std::string>{"info", "token", "system_id"});
    CHECK(verify["system_id"] == "s_0a1b2c3d4e5f");
    CHECK(
        keys(ojson::parse(verify_body(runner_info{}, "glrt-abc", ""))) ==
        std::vector<std::string>{"info", "token"}
    );

    CHECK(unregister_body("t1_abc") == R"({"token":"t1_abc"})");
    CHECK(
        unregister_manager_body("glrt-abc", "s_0a1b2c3d4e5f") ==
        R"({"token":"glrt-abc","system_id":"s_0a1b2c3d4e5f"})"
    );
    CHECK(unregister_manager_body("glrt-abc", "") == R"({"token":"glrt-abc","system_id":""})");
    CHECK(reset_token_body("glrt-abc") == R"({"token":"glrt-abc"})");
    CHECK(reset_token_body("quote\"and\\slash") == R"({"token":"quote\"and\\slash"})");
}

TEST_CASE("job update body", "[gitlab][info]") {
    SECTION("accept: running, no output yet") {
        job_update u;
        u.token = "glcbt-abc";
        const auto body = ojson::parse(job_update_body(runner_info{}, u));
        CHECK(keys(body) == std::vector<std::string>{"info", "token", "state", "output"});
        CHECK(body["state"] == "running");
        CHECK(body["output"] == ojson::object());
    }
    SECTION("final failure with everything") {
        job_update u;
        u.token = "glcbt-abc";
        u.state = job_state::failed;
        u.failure_reason = "script_failure";
        u.checksum = "crc32:8c1e6f0d";
        u.bytesize = 20480;
        u.exit_code = 2;
        const auto body = ojson::parse(job_update_body(runner_info{}, u));
        CHECK(
            keys(body) ==
            std::vector<std::string>{
                "info", "token", "state", "failure_reason", "checksum", "output", "exit_code"}
        );
        CHECK(body["state"] == "failed");
        CHECK(body["checksum"] == "crc32:8c1e6f0d");
        CHECK(body["output"] == ojson{{"checksum", "crc32:8c1e6f0d"}, {"bytesize", 20480}});
        CHECK(body["exit_code"] == 2);
    }
    SECTION("exit code 0 is never sent") {
        job_update u;
        u.token = "glcbt-abc";
        u.state = job_state::success;
        u.checksum = "crc32:00000000";
        u.exit_code = 0;
        const auto body = ojson::parse(job_update_body(runner_info{}, u));
        CHECK_FALSE(body.contains("exit_code"));
        CHECK_FALSE(body.contains("failure_reason"));
        CHECK(body["output"] == ojson{{"checksum", "crc32:00000000"}});
    }
}

TEST_CASE("job states", "[gitlab][info]") {
    CHECK(to_string(job_state::pending) == "pending");
    CHECK(to_string(job_state::running) == "running");
    CHECK(to_string(job_state::success) == "success");
    CHECK(to_string(job_state::failed) == "failed");
}

TEST_CASE("failure reasons fall back to what GitLab supports", "[gitlab][info]") {
    const std::vector<std::string> modern{
        "unknown_failure",
        "script_failure",
        "runner_system_failure",
        "job_execution_timeout",
        "image_pull_failure",
        "runner_configuration_error",
        "runner_interrupted",
    };
    const std::vector<std::string> old_gitlab{"unknown_failure", "script_failure"};
    struct row {
        const char* reason;
        const std::vector<std::string>* supported;
        const char* expected;
    };
    const std::vector<row> rows{
        {"", &modern, "script_failure"},
        {"script_failure", &old_gitlab, "script_failure"},
        {"runner_system_failure", &old_gitlab, "runner_system_failure"},
        {"job_execution_timeout", &old_gitlab, "job_execution_timeout"},
        {"image_pull_failure", &modern, "image_pull_failure"},
        {"image_pull_failure", &old_gitlab, "runner_system_failure"},
        {"runner_configuration_error", &old_gitlab, "script_failure"},
        {"runner_external_dependency_failure", &old_gitlab, "runner_system_failure"},
        {"runner_interrupted", &modern, "runner_interrupted"},
        {"runner_interrupted", &old_gitlab, "unknown_failure"},
        {"job_canceled", &modern, "unknown_failure"},
    };
    for (const auto& r : rows) {
        INFO(r.reason);
        CHECK(resolve_failure_reason(r.reason, *r.supported) == r.expected);
    }
}
