#include "runner/gitlab/job_payload.hpp"

#include <algorithm>
#include <string>
#include <vector>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "tests/unit/gitlab/fixture.hpp"

using namespace kiln::gitlab;
using kiln::test::read_fixture;
using json = nlohmann::json;

namespace {

job_spec parse_ok(const std::string& text) {
    auto r = parse_job_payload(text);
    INFO((r ? std::string("ok") : r.error().message));
    REQUIRE(r.has_value());
    return *r;
}

std::vector<std::string> masked_keys(const job_spec& job) {
    std::vector<std::string> out;
    for (const auto& v : job.variables) {
        if (v.masked) {
            out.push_back(v.key);
        }
    }
    return out;
}

}  // namespace

TEST_CASE("job_basic.json parses field by field", "[gitlab][payload]") {
    auto job = parse_ok(read_fixture("job_basic.json"));

    CHECK(job.id == 5001);
    CHECK(job.token == "glcbt-64_pXb3kZq1Yw7cVt9mRn2s");
    CHECK(job.allow_git_fetch);

    CHECK(job.info.id == 5001);
    CHECK(job.info.name == "unit-tests");
    CHECK(job.info.stage == "test");
    CHECK(job.info.project_id == 42);
    CHECK(job.info.project_name == "Widgets");
    CHECK(job.info.project_full_path == "acme/widgets");
    CHECK(job.info.root_namespace_id == 7);
    CHECK(job.info.instance_id == "6d1c4a1b-0e5b-4c47-9b0f-2b8a2c1f7e3a");
    CHECK(job.info.user_id == 17);
    CHECK_FALSE(job.info.scoped_user_id.has_value());
    CHECK(job.info.time_in_queue_seconds == 2);
    CHECK(job.info.project_jobs_running_on_instance_runners_count == "+Inf");
    CHECK(job.info.queue_depth == 1);

    CHECK(
        job.git.repo_url ==
        "https://gitlab-ci-token:glcbt-64_pXb3kZq1Yw7cVt9mRn2s@gitlab.example.com/acme/widgets.git"
    );
    CHECK(job.git.ref == "main");
    CHECK(job.git.sha == "1f0e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c");
    CHECK(job.git.before_sha == "a9b8c7d6e5f40312233445566778899aabbccdde");
    CHECK(job.git.ref_type == "branch");
    CHECK(
        job.git.refspecs ==
        std::vector<std::string>{
            "+refs/pipelines/1001:refs/pipelines/1001", "+refs/heads/main:refs/remotes/origin/main"}
    );
    CHECK(job.git.depth == 20);
    CHECK(job.git.repo_object_format == "sha1");
    CHECK(job.git.protected_ref);

    CHECK(job.runner.timeout == 3600);
    CHECK(job.runner.runner_session_url.empty());

    CHECK(job.variables.size() == 57);
    CHECK(
        masked_keys(job) ==
        std::vector<std::string>{
            "CI_JOB_TOKEN",
            "CI_REGISTRY_PASSWORD",
            "CI_DEPENDENCY_PROXY_PASSWORD",
            "DEPLOY_PASSWORD"}
    );
    const auto& first = job.variables.front();
    CHECK(first.key == "CI_PIPELINE_ID");
    CHECK(first.value == "1001");
    CHECK(first.is_public);
    CHECK_FALSE(first.masked);
    CHECK_FALSE(first.file);
    CHECK_FALSE(first.raw);
    const auto* repo = find_variable(job.variables, "CI_REPOSITORY_URL");
    REQUIRE(repo);
    CHECK_FALSE(repo->is_public);
    CHECK_FALSE(repo->masked);
    CHECK(
        find_variable(job.variables, "CI_COMMIT_MESSAGE")->value ==
        "Merge branch 'feature' into 'main'\n"
    );

    REQUIRE(job.steps.size() == 2);
    CHECK(job.steps[0].name == "script");
    CHECK(
        job.steps[0].script ==
        std::vector<std::string>{"echo \"Preparing\"", "make deps", "make test"}
    );
    CHECK(job.steps[0].timeout == 3600);
    CHECK(job.steps[0].when == "on_success");
    CHECK_FALSE(job.steps[0].allow_failure);
    CHECK(job.steps[1].name == "after_script");
    CHECK(job.steps[1].script == std::vector<std::string>{"echo \"cleanup for $CI_JOB_STATUS\""});
    CHECK(job.steps[1].when == "always");
    CHECK(job.steps[1].allow_failure);

    CHECK(job.hooks.empty());
    CHECK_FALSE(job.image.has_value());
    CHECK(job.services.empty());
    CHECK(job.artifacts.empty());
    CHECK(job.cache.empty());
    REQUIRE(job.credentials.size() == 1);
    CHECK(job.credentials[0].type == "registry");
    CHECK(job.credentials[0].url == "registry.gitlab.example.com");
    CHECK(job.credentials[0].username == "gitlab-ci-token");
    CHECK(job.credentials[0].password == job.token);
    CHECK(job.dependencies.empty());
    CHECK(job.features.trace_sections);
    CHECK(job.features.failure_reasons.size() == 52);
    CHECK(job.features.failure_reasons.front() == "unknown_failure");
    CHECK(job.features.failure_reasons.back() == "downstream_project_trigger_resolved_to_empty");
    CHECK(job.features.token_mask_prefixes.empty());
    CHECK(job.run.empty());
}

TEST_CASE("job_go_module.json: hooks, reports, caches, dependencies", "[gitlab][payload]") {
    auto job = parse_ok(read_fixture("job_go_module.json"));

    CHECK(job.id == 77021);
    CHECK(job.runner.timeout == 5400);
    CHECK(job.variables.size() == 62);
    CHECK(masked_keys(job).size() == 3);

    const auto* dsn = find_variable(job.variables, "TEST_DSN");
    REQUIRE(dsn);
    CHECK(dsn->raw);
    CHECK_FALSE(dsn->file);
    CHECK(dsn->value == "postgres://ci:$DB_PASS@db/test?sslmode=disable");
    const auto* netrc = find_variable(job.variables, "GOPRIVATE_NETRC");
    REQUIRE(netrc);
    CHECK(netrc->file);
    CHECK_FALSE(netrc->raw);
    CHECK_FALSE(netrc->is_public);

    REQUIRE(job.hooks.size() == 1);
    CHECK(job.hooks[0].name == "pre_get_sources_script");
    CHECK(job.hooks[0].script.size() == 1);

    REQUIRE(job.image.has_value());
    CHECK(job.image->name == "golang:1.23-bookworm");
    CHECK(job.image->entrypoint.empty());
    CHECK(job.image->pull_policy == std::vector<std::string>{"always", "if-not-present"});
    CHECK(job.image->executor_opts.docker_platform.empty());
    CHECK(job.image->executor_opts.unsupported.empty());
    CHECK(job.services.empty());

    REQUIRE(job.artifacts.size() == 4);
    const auto& archive = job.artifacts[0];
    CHECK(archive.name == "billing-svc-$CI_COMMIT_SHORT_SHA");
    CHECK_FALSE(archive.untracked);
    CHECK(archive.paths == std::vector<std::string>{"coverage.out", "bin/"});
    CHECK(archive.exclude == std::vector<std::string>{"bin/**/*.tmp"});
    CHECK(archive.when == "always");
    CHECK(archive.expire_in == "1 week");
    CHECK(archive.artifact_type == "archive");
    CHECK(archive.artifact_format == "zip");
    CHECK(job.artifacts[1].name == "junit.xml");
    CHECK(job.artifacts[1].artifact_type == "junit");
    CHECK(job.artifacts[1].artifact_format == "gzip");
    CHECK(job.artifacts[1].exclude.empty());
    CHECK(job.artifacts[2].artifact_type == "cobertura");
    CHECK(job.artifacts[3].name == ".env");
    CHECK(job.artifacts[3].artifact_type == "dotenv");

    REQUIRE(job.cache.size() == 2);
    CHECK(job.cache[0].key == "go-mod-9a1f3c7e2b-protected");
    CHECK(job.cache[0].paths == std::vector<std::string>{".go/pkg/mod/"});
    CHECK(job.cache[0].policy == "pull-push");
    CHECK(job.cache[0].when == "on_success");
    CHECK(job.cache[0].fallback_keys == std::vector<std::string>{"go-mod-main-protected"});
    CHECK(job.cache[1].policy == "pull");
    CHECK(job.cache[1].when == "always");
    CHECK(job.cache[1].fallback_keys.empty());

    CHECK(job.credentials.size() == 2);

    REQUIRE(job.dependencies.size() == 2);
    CHECK(job.dependencies[0].id == 77018);
    CHECK(job.dependencies[0].name == "generate:proto");
    CHECK(job.dependencies[0].token == job.token);
    REQUIRE(job.dependencies[0].artifacts.has_value());
    CHECK(job.dependencies[0].artifacts->filename == "artifacts.zip");
    CHECK(job.dependencies[0].artifacts->size == 48213);
    CHECK(job.dependencies[1].id == 77019);
    CHECK(job.dependencies[1].name == "lint");
    CHECK_FALSE(job.dependencies[1].artifacts.has_value());
}

TEST_CASE("job_with_services.json: image options and services", "[gitlab][payload]") {
    auto job = parse_ok(read_fixture("job_with_services.json"));

    CHECK(job.id == 300555);
    CHECK(job.variables.size() == 63);
    CHECK(find_variable(job.variables, "POSTGRES_PASSWORD")->masked);
    CHECK(find_variable(job.variables, "DOCKER_TLS_CERTDIR")->value.empty());
    CHECK(job.git.ref == "feature/checkout-v2");
    CHECK_FALSE(job.git.protected_ref);
    CHECK(job.git.depth == 50);

    REQUIRE(job.image.has_value());
    CHECK(job.image->name == "ruby:3.3");
    CHECK(job.image->entrypoint == std::vector<std::string>{""});
    CHECK(job.image->executor_opts.docker_platform == "linux/amd64");
    CHECK(job.image->executor_opts.docker_user == "1000");
    CHECK(job.image->pull_policy == std::vector<std::string>{"if-not-present"});

    REQUIRE(job.services.size() == 3);
    const auto& pg = job.services[0];
    CHECK(pg.name == "postgres:16-alpine");
    CHECK(pg.alias == "db,postgres");
    CHECK(pg.entrypoint.empty());
    CHECK(pg.command.empty());
    CHECK(pg.pull_policy.empty());
    REQUIRE(pg.variables.size() == 1);
    CHECK(pg.variables[0].key == "POSTGRES_HOST_AUTH_METHOD");
    CHECK(pg.variables[0].value == "trust");
    const auto& redis = job.services[1];
    CHECK(redis.alias == "cache");
    CHECK(redis.command == std::vector<std::string>{"redis-server", "--save", ""});
    CHECK(redis.variables.empty());
    const auto& dind = job.services[2];
    CHECK(dind.alias == "docker");
    REQUIRE(dind.ports.size() == 1);
    CHECK(dind.ports[0].number == 2375);
    CHECK(dind.ports[0].protocol == "http");
    CHECK(dind.ports[0].name == "dockerd");
    CHECK(dind.executor_opts.docker_platform == "linux/amd64");
    CHECK(dind.executor_opts.docker_user.empty());
    CHECK(dind.command == std::vector<std::string>{"--tls=false"});

    REQUIRE(job.artifacts.size() == 2);
    CHECK(job.artifacts[0].name == "rspec.xml");
    CHECK(job.artifacts[0].artifact_type == "junit");
    CHECK(job.artifacts[0].when == "always");
    CHECK(job.artifacts[0].expire_in == "30 days");
    CHECK(job.artifacts[1].name.empty());
    CHECK(job.artifacts[1].untracked);
    CHECK(job.artifacts[1].paths == std::vector<std::string>{"log/", "tmp/screenshots/"});
    CHECK(job.artifacts[1].when == "on_failure");

    REQUIRE(job.cache.size() == 1);
    CHECK(job.cache[0].key == "bundler-gems-non_protected");
    CHECK_FALSE(job.cache[0].untracked);
}

TEST_CASE("every nullable or optional key may be null or missing", "[gitlab][payload]") {
    struct mutation {
        const char* fixture;
        const char* pointer;
    };
    const std::vector<mutation> mutations{
        {"job_with_services.json", "/allow_git_fetch"},
        {"job_with_services.json", "/job_info"},
        {"job_with_services.json", "/job_info/name"},
        {"job_with_services.json", "/job_info/project_id"},
        {"job_with_services.json", "/job_info/scoped_user_id"},
        {"job_with_services.json", "/job_info/project_jobs_running_on_instance_runners_count"},
        {"job_with_services.json", "/git_info"},
        {"job_with_services.json", "/git_info/repo_url"},
        {"job_with_services.json", "/git_info/refspecs"},
        {"job_with_services.json", "/git_info/depth"},
        {"job_with_services.json", "/git_info/protected"},
        {"job_with_services.json", "/runner_info"},
        {"job_with_services.json", "/runner_info/timeout"},
        {"job_with_services.json", "/runner_info/runner_session_url"},
        {"job_with_services.json", "/variables"},
        {"job_with_services.json", "/variables/0"},
        {"job_with_services.json", "/variables/0/value"},
        {"job_with_services.json", "/variables/0/public"},
        {"job_with_services.json", "/variables/0/masked"},
        {"job_with_services.json", "/steps"},
        {"job_with_services.json", "/steps/0/script"},
        {"job_with_services.json", "/steps/0/timeout"},
        {"job_with_services.json", "/steps/0/when"},
        {"job_with_services.json", "/steps/0/allow_failure"},
        {"job_with_services.json", "/hooks"},
        {"job_with_services.json", "/image"},
        {"job_with_services.json", "/image/name"},
        {"job_with_services.json", "/image/entrypoint"},
        {"job_with_services.json", "/image/ports"},
        {"job_with_services.json", "/image/executor_opts"},
        {"job_with_services.json", "/image/executor_opts/docker"},
        {"job_with_services.json", "/image/executor_opts/docker/user"},
        {"job_with_services.json", "/image/executor_opts/docker/platform"},
        {"job_with_services.json", "/image/pull_policy"},
        {"job_with_services.json", "/services"},
        {"job_with_services.json", "/services/0/alias"},
        {"job_with_services.json", "/services/0/variables"},
        {"job_with_services.json", "/services/0/variables/0/value"},
        {"job_with_services.json", "/services/1/command"},
        {"job_with_services.json", "/services/2/ports"},
        {"job_with_services.json", "/services/2/ports/0/protocol"},
        {"job_with_services.json", "/services/2/executor_opts"},
        {"job_with_services.json", "/artifacts"},
        {"job_with_services.json", "/artifacts/0/name"},
        {"job_with_services.json", "/artifacts/1/untracked"},
        {"job_with_services.json", "/artifacts/1/paths"},
        {"job_with_services.json", "/artifacts/1/when"},
        {"job_with_services.json", "/artifacts/1/expire_in"},
        {"job_with_services.json", "/cache"},
        {"job_with_services.json", "/cache/0/key"},
        {"job_with_services.json", "/cache/0/untracked"},
        {"job_with_services.json", "/cache/0/policy"},
        {"job_with_services.json", "/cache/0/fallback_keys"},
        {"job_with_services.json", "/credentials"},
        {"job_with_services.json", "/credentials/0/password"},
        {"job_with_services.json", "/features"},
        {"job_with_services.json", "/features/trace_sections"},
        {"job_with_services.json", "/features/failure_reasons"},
        {"job_with_services.json", "/dependencies"},
        {"job_go_module.json", "/variables/0/raw"},
        {"job_go_module.json", "/variables/1/file"},
        {"job_go_module.json", "/artifacts/0/exclude"},
        {"job_go_module.json", "/artifacts/0/untracked"},
        {"job_go_module.json", "/dependencies/0/artifacts_file"},
        {"job_go_module.json", "/dependencies/0/artifacts_file/filename"},
        {"job_go_module.json", "/dependencies/0/artifacts_file/size"},
        {"job_go_module.json", "/dependencies/0/token"},
        {"job_go_module.json", "/hooks/0/script"},
        {"job_go_module.json", "/cache/0/fallback_keys"},
    };
    // Long lists are cut short so that the 140 parses stay fast under the sanitizers.
    json services_doc = json::parse(read_fixture("job_with_services.json"));
    services_doc["variables"].erase(
        services_doc["variables"].begin() + 3, services_doc["variables"].end()
    );
    services_doc["features"]["failure_reasons"] = {"unknown_failure", "script_failure"};
    json go_doc = json::parse(read_fixture("job_go_module.json"));
    go_doc["variables"] = {
        go_doc["variables"][59],
        go_doc["variables"][60]};  // TEST_DSN (raw), GOPRIVATE_NETRC (file)
    go_doc["features"]["failure_reasons"] = {"unknown_failure"};
    for (const auto& m : mutations) {
        const json& original =
            std::string(m.fixture) == "job_go_module.json" ? go_doc : services_doc;
        const json::json_pointer ptr(m.pointer);
        INFO(m.fixture << " " << m.pointer);
        REQUIRE(original.contains(ptr));  // a typo here would test nothing
        for (const char* how : {"null", "missing"}) {
            json doc = original;
            if (std::string(how) == "null") {
                doc[ptr] = nullptr;
            } else {
                auto& parent = doc[ptr.parent_pointer()];
                if (parent.is_array()) {
                    parent.erase(static_cast<json::size_type>(std::stoul(ptr.back())));
                } else {
                    parent.erase(ptr.back());
                }
            }
            INFO(how);
            auto r = parse_job_payload(doc.dump());
            INFO((r ? std::string("ok") : r.error().message));
            REQUIRE(r.has_value());
            CHECK(r->id == original["id"].get<std::int64_t>());
            CHECK(r->token == original["token"].get<std::string>());
        }
    }
}

TEST_CASE("null and missing values become defaults", "[gitlab][payload]") {
    json doc = json::parse(read_fixture("job_with_services.json"));
    doc["variables"][0]["value"] = nullptr;
    doc["image"]["entrypoint"] = nullptr;
    doc["services"][0]["variables"][0]["value"] = nullptr;
    doc["artifacts"] = nullptr;
    doc["runner_info"]["timeout"] = nullptr;
    doc.erase("cache");
    auto job = parse_ok(doc.dump());
    CHECK(job.variables[0].key == "CI_PIPELINE_ID");
    CHECK(job.variables[0].value.empty());
    CHECK(job.image->entrypoint.empty());
    CHECK(job.services[0].variables[0].value.empty());
    CHECK(job.artifacts.empty());
    CHECK(job.cache.empty());
    CHECK(job.runner.timeout == 7200);
}

TEST_CASE("runner_info.timeout <= 0 means the default of 7200 s", "[gitlab][payload]") {
    for (int timeout : {0, -1, -3600}) {
        json doc = json::parse(read_fixture("job_basic.json"));
        doc["runner_info"]["timeout"] = timeout;
        CHECK(parse_ok(doc.dump()).runner.timeout == default_job_timeout_seconds);
    }
    json doc = json::parse(read_fixture("job_basic.json"));
    doc["runner_info"]["timeout"] = 60;
    CHECK(parse_ok(doc.dump()).runner.timeout == 60);
}

TEST_CASE("unknown keys are ignored, anywhere", "[gitlab][payload]") {
    json doc = json::parse(read_fixture("job_with_services.json"));
    doc["brand_new_feature"] = {{"nested", {1, 2, 3}}};
    doc["secrets"] = {{"DB", {{"vault", {{"path", "x"}}}, {"file", true}}}};
    doc["policy_options"] = {{"execution_policy_job", true}};
    doc["inputs"] =
        json::array({{{"key", "a"}, {"value", {{"type", "string"}, {"content", "x"}}}}});
    doc["variables"][0]["brand_new"] = 42;
    doc["job_info"]["brand_new"] = nullptr;
    doc["services"][0]["brand_new"] = "x";
    doc["runner_info"]["uuid"] = "b8e1";
    auto job = parse_ok(doc.dump());
    CHECK(job.id == 300555);
    CHECK(job.runner.uuid == "b8e1");
}

TEST_CASE("executor_opts: integer users and unsupported options", "[gitlab][payload]") {
    json doc = json::parse(read_fixture("job_with_services.json"));
    doc["image"]["executor_opts"]["docker"]["user"] = 1000;
    doc["image"]["executor_opts"]["kubernetes"] = {{"user", "1000:1000"}};
    doc["services"][2]["executor_opts"]["docker"]["user"] = 0;
    doc["services"][2]["executor_opts"]["docker"]["shm_size"] = "1g";
    doc["services"][2]["executor_opts"]["podman"] = json::object();
    auto job = parse_ok(doc.dump());
    CHECK(job.image->executor_opts.docker_user == "1000");
    CHECK(job.image->executor_opts.kubernetes_user == "1000:1000");
    CHECK(job.image->executor_opts.unsupported.empty());
    CHECK(job.services[2].executor_opts.docker_user == "0");
    auto unsupported = job.services[2].executor_opts.unsupported;
    std::sort(unsupported.begin(), unsupported.end());
    CHECK(unsupported == std::vector<std::string>{"docker.shm_size", "podman"});
}

TEST_CASE("id and token are required", "[gitlab][payload]") {
    const std::string id_message = "job payload: field \"id\" must be a positive integer";
    const std::string token_message = "job payload: field \"token\" must be a non-empty string";
    struct row {
        const char* name;
        json id;
        json token;
        bool drop_id;
        bool drop_token;
        std::string field;
    };
    const std::vector<row> rows{
        {"id missing", 1, "t", true, false, "id"},
        {"id null", nullptr, "t", false, false, "id"},
        {"id zero", 0, "t", false, false, "id"},
        {"id negative", -5, "t", false, false, "id"},
        {"id string", "5001", "t", false, false, "id"},
        {"id fraction", 1.5, "t", false, false, "id"},
        {"token missing", 5001, "t", false, true, "token"},
        {"token null", 5001, nullptr, false, false, "token"},
        {"token empty", 5001, "", false, false, "token"},
        {"token number", 5001, 42, false, false, "token"},
    };
    for (const auto& r : rows) {
        json doc = json::parse(read_fixture("job_basic.json"));
        doc["id"] = r.id;
        doc["token"] = r.token;
        if (r.drop_id) {
            doc.erase("id");
        }
        if (r.drop_token) {
            doc.erase("token");
        }
        INFO(r.name);
        auto result = parse_job_payload(doc.dump());
        REQUIRE_FALSE(result.has_value());
        CHECK(result.error().field == r.field);
        CHECK(result.error().message == (r.field == "id" ? id_message : token_message));
        if (r.field == "token") {
            CHECK(result.error().job_id == 5001);  // known, so the job can still be failed
        }
    }
}

TEST_CASE("values of the wrong type are errors naming their path", "[gitlab][payload]") {
    struct row {
        const char* pointer;
        json value;
        std::string field;
        std::string expectation;
    };
    const std::vector<row> rows{
        {"/steps", "echo hi", "steps", "must be an array"},
        {"/steps/0", "echo hi", "steps[0]", "must be an object"},
        {"/steps/0/script", "echo hi", "steps[0].script", "must be an array of strings"},
        {"/steps/0/script/1", 7, "steps[0].script", "must be an array of strings"},
        {"/variables/3/masked", "yes", "variables[3].masked", "must be a boolean"},
        {"/variables/3/value", 12, "variables[3].value", "must be a string"},
        {"/git_info", "main", "git_info", "must be an object"},
        {"/git_info/depth", "20", "git_info.depth", "must be an integer"},
        {"/image/entrypoint", "/bin/sh", "image.entrypoint", "must be an array of strings"},
        {"/image/executor_opts/docker/user",
         true,
         "image.executor_opts.docker.user",
         "must be a string or an integer"},
        {"/services/2/ports/0/number", "80", "services[2].ports[0].number", "must be an integer"},
        {"/artifacts/1/untracked", "true", "artifacts[1].untracked", "must be a boolean"},
        {"/cache/0/fallback_keys", "k", "cache[0].fallback_keys", "must be an array of strings"},
        {"/features/failure_reasons",
         "all",
         "features.failure_reasons",
         "must be an array of strings"},
    };
    for (const auto& r : rows) {
        json doc = json::parse(read_fixture("job_with_services.json"));
        doc[json::json_pointer(r.pointer)] = r.value;
        INFO(r.pointer);
        auto result = parse_job_payload(doc.dump());
        REQUIRE_FALSE(result.has_value());
        CHECK(result.error().field == r.field);
        CHECK(result.error().message == "job payload: field \"" + r.field + "\" " + r.expectation);
        CHECK(result.error().job_id == 300555);
        CHECK(result.error().job_token == "glcbt-64_m4Nb8Vc2Xz5Lk7Jh1Gf9");
    }
    json doc = json::parse(read_fixture("job_go_module.json"));
    doc["dependencies"][0]["artifacts_file"]["size"] = "big";
    auto result = parse_job_payload(doc.dump());
    REQUIRE_FALSE(result.has_value());
    CHECK(result.error().field == "dependencies[0].artifacts_file.size");
}

TEST_CASE("invalid JSON is reported with its position", "[gitlab][payload]") {
    struct row {
        std::string text;
        std::string starts_with;
    };
    const std::vector<row> rows{
        {R"({"id": 1,, "token": "t"})",
         "job payload: invalid JSON at line 1, column 10 (byte 10): syntax error"},
        {R"({"id": 1, "token": "t")", "job payload: invalid JSON at line 1, column 23 (byte 23): "},
        {"", "job payload: invalid JSON at line 1, column 1 (byte 1): "},
        {"{\n  \"id\": 1,\n  oops\n}", "job payload: invalid JSON at line 3, column 3 (byte 16): "},
        {"<html>502 Bad Gateway</html>",
         "job payload: invalid JSON at line 1, column 1 (byte 1): "},
        {"[]", "job payload: top level must be a JSON object"},
        {"null", "job payload: top level must be a JSON object"},
    };
    for (const auto& r : rows) {
        INFO(r.text);
        auto result = parse_job_payload(r.text);
        REQUIRE_FALSE(result.has_value());
        CHECK(result.error().field.empty());
        CHECK(result.error().message.rfind(r.starts_with, 0) == 0);
        CHECK(result.error().message.find("[json.exception") == std::string::npos);
    }
    auto broken = parse_job_payload(R"({"id": 1,, "token": "t"})");
    CHECK(broken.error().message.find("syntax error") != std::string::npos);
    CHECK_THROWS_AS(broken.value(), std::runtime_error);
}

TEST_CASE("find_variable: later duplicates win", "[gitlab][payload]") {
    const std::vector<job_variable> vars{
        {"A", "first", true, false, false, false},
        {"B", "b", true, false, false, false},
        {"A", "second", false, true, false, false},
    };
    REQUIRE(find_variable(vars, "A"));
    CHECK(find_variable(vars, "A")->value == "second");
    CHECK(find_variable(vars, "A")->masked);
    CHECK(find_variable(vars, "B")->value == "b");
    CHECK(find_variable(vars, "C") == nullptr);
    CHECK(find_variable(vars, "") == nullptr);
    CHECK(find_variable({}, "A") == nullptr);
}

TEST_CASE("when: stage selection", "[gitlab][payload]") {
    struct row {
        const char* when;
        bool on_success;
        bool on_failure;
    };
    const std::vector<row> rows{
        {"", true, false},
        {"on_success", true, false},
        {"on_failure", false, true},
        {"always", true, true},
        {"someday", false, false},
    };
    for (const auto& r : rows) {
        INFO(r.when);
        CHECK(when_on_success(r.when) == r.on_success);
        CHECK(when_on_failure(r.when) == r.on_failure);
    }
}
