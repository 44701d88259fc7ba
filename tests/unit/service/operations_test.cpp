#include <catch2/catch.hpp>

#include "runner/service/http_server.hpp"
#include "runner/service/operations.hpp"

using namespace kiln::service;
using namespace std::chrono_literals;

TEST_CASE("durations print like Go's time.Duration") {
    CHECK(go_duration(0s) == "0s");
    CHECK(go_duration(1500ms) == "1.5s");
    CHECK(go_duration(123s + 250ms) == "2m3.25s");
    CHECK(go_duration(3600s) == "1h0m0s");
    CHECK(go_duration(250ms) == "250ms");
}

TEST_CASE("job page URL drops the credentials and .git") {
    CHECK(job_page_url("https://gitlab-ci-token:glcbt-secret@gitlab.example.com/group/app.git", 7) ==
          "https://gitlab.example.com/group/app/-/jobs/7");
    CHECK(job_page_url("http://127.0.0.1:8080/g/p", 1) == "http://127.0.0.1:8080/g/p/-/jobs/1");
}

TEST_CASE("API endpoints get gitlab-runner's labels") {
    CHECK(api_endpoint_labels("jobs/request") == std::pair<std::string, std::string>{"request_job", "POST"});
    CHECK(api_endpoint_labels("jobs/:id") == std::pair<std::string, std::string>{"update_job", "PUT"});
    CHECK(api_endpoint_labels("jobs/:id/trace") == std::pair<std::string, std::string>{"patch_trace", "PATCH"});
    CHECK(api_endpoint_labels("runners/verify").first == "runners/verify");
}

TEST_CASE("/debug/jobs/list lines in gitlab-runner's two versions") {
    job_view j;
    j.id = 12;
    j.url = "https://gitlab.example.com/g/p/-/jobs/12";
    j.runner = "t1234567";
    j.executor = "docker";
    j.stage = "step_script";
    j.duration = 61s;
    CHECK(render_jobs_list({j}, 1) ==
          "id=12 url=https://gitlab.example.com/g/p/-/jobs/12 state=running stage=step_script "
          "executor_stage=docker_run runner=t1234567\n");
    CHECK(render_jobs_list({j}, 2) ==
          "url=https://gitlab.example.com/g/p/-/jobs/12 state=running stage=step_script "
          "executor_stage=docker_run duration=1m1s runner=t1234567\n");
    j.stage.clear();
    CHECK(render_jobs_list({j}, 2).find("stage=prepare_executor executor_stage=prepare ") !=
          std::string::npos);
    CHECK(render_jobs_list({}, 2).empty());
}

TEST_CASE("listen_address forms") {
    using hp = std::pair<std::string, std::string>;
    CHECK(split_host_port("127.0.0.1:9252") == hp{"127.0.0.1", "9252"});
    CHECK(split_host_port(":9252") == hp{"", "9252"});
    CHECK(split_host_port("[::1]:9252") == hp{"::1", "9252"});
    CHECK(split_host_port("localhost:0") == hp{"localhost", "0"});
    CHECK_FALSE(split_host_port("9252"));
    CHECK_FALSE(split_host_port("host:"));
    CHECK_FALSE(split_host_port("::1:9252"));
    CHECK_FALSE(split_host_port("host:http"));
}
