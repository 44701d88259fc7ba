#include "runner/gitlab/responses.hpp"

#include <chrono>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <catch2/catch.hpp>

#include "tests/unit/gitlab/fixture.hpp"

using namespace kiln::gitlab;
using kiln::net::http_headers;
using kiln::net::http_response;
using kiln::test::read_fixture;
using std::chrono::seconds;

namespace {

using header_list = std::vector<std::pair<std::string, std::string>>;

http_response response(int status, header_list headers = {}, std::string body = {}) {
    http_response r;
    r.status = status;
    r.headers.items = std::move(headers);
    r.body = std::move(body);
    return r;
}

http_response json_response(int status, std::string body) {
    return response(status, {{"Content-Type", "application/json"}}, std::move(body));
}

}  // namespace

TEST_CASE("error_summary turns GitLab error bodies into one line", "[gitlab][responses]") {
    struct row {
        std::string body;
        std::string expected;
    };
    const std::vector<row> rows{
        {R"({"message":"403 Forbidden"})", "403 Forbidden"},
        {R"({"message":{"runner_projects.base":["Maximum number of ci registered project runners (3) exceeded"]}})",
         "runner_projects.base: Maximum number of ci registered project runners (3) exceeded"},
        {R"({"message":{"tags_list":["is too long","is invalid"],"base":["nope"]}})",
         "tags_list: is too long, is invalid; base: nope"},
        {R"({"message":{"error":"This endpoint has been requested too many times. Try again later."}})",
         "error: This endpoint has been requested too many times. Try again later."},
        {R"({"error":"invalid_token"})", "invalid_token"},
        {R"({"message":"line one\nline two"})", "line one line two"},
        {R"({"status":"bad"})", R"({"status":"bad"})"},
        {"  <h1>502 Bad\n   Gateway</h1>\n", "<h1>502 Bad Gateway</h1>"},
        {"<?xml version=\"1.0\"?><Error><Code>AccessDenied</Code><Message>Request has "
         "expired</Message></Error>",
         "AccessDenied: Request has expired"},
        {"200", "200"},
        {"", ""},
        {" \n ", ""},
    };
    for (const auto& r : rows) {
        INFO(r.body);
        CHECK(error_summary(r.body) == r.expected);
    }
    const auto long_line = error_summary(std::string(300, 'x'));
    CHECK(long_line == std::string(200, 'x') + "...");
}

TEST_CASE("Content-Type must be application/json, parameters allowed", "[gitlab][responses]") {
    struct row {
        std::optional<std::string> content_type;
        bool json;
    };
    const std::vector<row> rows{
        {"application/json", true},
        {"application/json; charset=utf-8", true},
        {"Application/JSON;charset=UTF-8", true},
        {" application/json ", true},
        {"text/plain", false},
        {"text/html; charset=utf-8", false},
        {"application/jsonp", false},
        {"", false},
        {std::nullopt, false},
    };
    for (const auto& r : rows) {
        INFO(r.content_type.value_or("(absent)"));
        http_headers h;
        if (r.content_type) {
            h.set("content-type", *r.content_type);
        }
        CHECK(is_json_content_type(h) == r.json);
    }
}

TEST_CASE("X-GitLab-Trace-Update-Interval parsing", "[gitlab][responses]") {
    struct row {
        std::optional<std::string> header;
        std::optional<seconds> expected;
    };
    const std::vector<row> rows{
        {"60", seconds{60}},
        {"3", seconds{3}},
        {"1", seconds{1}},
        {" 7 ", seconds{7}},
        {"+5", seconds{5}},
        {"900", seconds{900}},
        {"901", seconds{900}},
        {"100000", seconds{900}},
        {"0", std::nullopt},
        {"-5", std::nullopt},
        {"1/2", std::nullopt},  // Ruby's 2**-1 for a pending state aged 1-2 s
        {"2.5", std::nullopt},
        {"abc", std::nullopt},
        {"", std::nullopt},
        {"99999999999999999999999", std::nullopt},
        {std::nullopt, std::nullopt},
    };
    for (const auto& r : rows) {
        INFO(r.header.value_or("(absent)"));
        http_headers h;
        if (r.header) {
            h.set("X-Gitlab-Trace-Update-Interval", *r.header);
        }
        CHECK(parse_update_interval(h) == r.expected);
    }
}

TEST_CASE("POST /runners responses", "[gitlab][responses]") {
    SECTION("201 with a token") {
        auto r = map_register_response(json_response(
            201, R"({"id":12345,"token":"t3_abc","token_expires_at":"2026-06-01T10:00:00.000Z"})"
        ));
        CHECK(r.status == register_status::registered);
        CHECK(r.runner.id == 12345);
        CHECK(r.runner.token == "t3_abc");
        CHECK(r.runner.token_expires_at == "2026-06-01T10:00:00.000Z");
        CHECK(r.http_status == 201);
    }
    SECTION("201 with a null expiry") {
        auto r = map_register_response(
            json_response(201, R"({"id":1,"token":"t3_x","token_expires_at":null})")
        );
        CHECK(r.status == register_status::registered);
        CHECK(r.runner.token_expires_at.empty());
    }
    SECTION("201 that cannot be decoded") {
        CHECK(
            map_register_response(
                response(201, {{"Content-Type", "text/html"}}, R"({"id":1,"token":"t"})")
            )
                .status == register_status::failed
        );
        CHECK(map_register_response(json_response(201, "{")).status == register_status::failed);
        CHECK(
            map_register_response(json_response(201, R"({"id":1})")).status ==
            register_status::failed
        );
    }
    SECTION("error statuses") {
        struct row {
            int status;
            register_status expected;
        };
        for (auto [status, expected] : std::vector<row>{
                 {400, register_status::bad_request},
                 {403, register_status::forbidden},
                 {410, register_status::disallowed},
                 {422, register_status::failed},
                 {500, register_status::failed},
             }) {
            INFO(status);
            auto r = map_register_response(json_response(status, R"({"message":"nope"})"));
            CHECK(r.status == expected);
            CHECK(r.message == "nope");
            CHECK(r.http_status == status);
        }
    }
}

TEST_CASE("POST /runners/verify responses", "[gitlab][responses]") {
    SECTION("200 JSON with an id") {
        auto r = map_verify_response(json_response(
            200, R"({"id":42,"token":"glrt-abc","token_expires_at":"2026-05-01T00:00:00.000Z"})"
        ));
        CHECK(r.status == verify_status::valid);
        CHECK_FALSE(r.legacy_response);
        CHECK(r.runner.id == 42);
        CHECK(r.runner.token == "glrt-abc");
        CHECK(r.runner.token_expires_at == "2026-05-01T00:00:00.000Z");
    }
    SECTION("token_expires_at null") {
        auto r = map_verify_response(
            json_response(200, R"({"id":42,"token":"glrt-abc","token_expires_at":null})")
        );
        CHECK(r.status == verify_status::valid);
        CHECK(r.runner.token_expires_at.empty());
    }
    SECTION("id 0 is a failure") {
        CHECK(
            map_verify_response(json_response(200, R"({"id":0,"token":"glrt-abc"})")).status ==
            verify_status::failed
        );
        CHECK(
            map_verify_response(json_response(200, R"({"token":"glrt-abc"})")).status ==
            verify_status::failed
        );
        CHECK(
            map_verify_response(json_response(200, R"({"id":18446744073709551615})")).status ==
            verify_status::failed
        );
        CHECK(
            map_verify_response(json_response(200, R"({"id":"42"})")).status ==
            verify_status::failed
        );
    }
    SECTION("old GitLab's plain-text 200 is valid") {
        for (auto r : {
                 response(200, {{"Content-Type", "text/plain"}}, "200"),
                 response(200, {}, "200"),
                 json_response(200, "200"),
             }) {
            auto v = map_verify_response(r);
            CHECK(v.status == verify_status::valid);
            CHECK(v.legacy_response);
            CHECK(v.runner.id == 0);
        }
    }
    SECTION("error statuses") {
        struct row {
            int status;
            verify_status expected;
        };
        for (auto [status, expected] : std::vector<row>{
                 {403, verify_status::forbidden},
                 {422, verify_status::unprocessable},
                 {400, verify_status::failed},
                 {500, verify_status::failed},
             }) {
            INFO(status);
            CHECK(
                map_verify_response(json_response(status, R"({"message":"x"})")).status == expected
            );
        }
    }
}

TEST_CASE("DELETE /runners and /runners/managers responses", "[gitlab][responses]") {
    struct row {
        int status;
        unregister_status runners;
        unregister_status managers;
    };
    const std::vector<row> rows{
        {204, unregister_status::unregistered, unregister_status::unregistered},
        {400, unregister_status::bad_request, unregister_status::bad_request},
        {403, unregister_status::forbidden, unregister_status::forbidden},
        {404, unregister_status::failed, unregister_status::not_found},
        {412, unregister_status::failed, unregister_status::failed},
        {500, unregister_status::failed, unregister_status::failed},
    };
    for (const auto& r : rows) {
        INFO(r.status);
        CHECK(map_unregister_response(response(r.status)).status == r.runners);
        CHECK(map_unregister_manager_response(response(r.status)).status == r.managers);
    }
    auto nf = map_unregister_manager_response(
        json_response(404, R"({"message":"404 Runner manager Not Found"})")
    );
    CHECK(nf.message == "404 Runner manager Not Found");
}

TEST_CASE("POST /runners/reset_authentication_token responses", "[gitlab][responses]") {
    struct row {
        const char* body;
        reset_token_status status;
        std::string token;
        std::string expires;
    };
    const std::vector<row> rows{
        {R"({"token":"glrt-new","token_expires_at":"2026-07-01T00:00:00.000Z"})",
         reset_token_status::reset,
         "glrt-new",
         "2026-07-01T00:00:00.000Z"},
        {R"({"token":"glrt-new","token_expires_at":null})",
         reset_token_status::reset,
         "glrt-new",
         ""},
        {R"({"token":"glrt-new"})", reset_token_status::reset, "glrt-new", ""},
        {R"({"token_expires_at":null})", reset_token_status::failed, "", ""},
        {"not json", reset_token_status::failed, "", ""},
    };
    for (const auto& r : rows) {
        INFO(r.body);
        auto m = map_reset_token_response(json_response(201, r.body));
        CHECK(m.status == r.status);
        CHECK(m.token == r.token);
        CHECK(m.token_expires_at == r.expires);
    }
    CHECK(map_reset_token_response(response(403)).status == reset_token_status::forbidden);
    CHECK(map_reset_token_response(response(422)).status == reset_token_status::unprocessable);
    CHECK(map_reset_token_response(response(500)).status == reset_token_status::failed);
}

TEST_CASE("POST /jobs/request: 201 carries the job", "[gitlab][responses]") {
    const auto body = read_fixture("job_basic.json");
    for (const char* ct : {"application/json", "application/json; charset=utf-8"}) {
        INFO(ct);
        auto r = map_request_job_response(response(201, {{"Content-Type", ct}}, body));
        REQUIRE(r.status == request_job_status::job_received);
        REQUIRE(r.job != nullptr);
        CHECK(r.job->id == 5001);
        CHECK(r.healthy());
        CHECK_FALSE(r.last_update.has_value());
        CHECK_FALSE(r.payload_problem.has_value());
    }
}

TEST_CASE("POST /jobs/request: a 201 that cannot be used", "[gitlab][responses]") {
    SECTION("wrong Content-Type is a decode failure, but id and token are kept") {
        auto r = map_request_job_response(
            response(201, {{"Content-Type", "text/plain"}}, read_fixture("job_basic.json"))
        );
        CHECK(r.status == request_job_status::invalid_job);
        CHECK(r.healthy());
        CHECK_FALSE(r.job != nullptr);
        REQUIRE(r.payload_problem.has_value());
        CHECK(r.payload_problem->job_id == 5001);
        CHECK(r.payload_problem->job_token == "glcbt-64_pXb3kZq1Yw7cVt9mRn2s");
        CHECK(r.message.find("not application/json") != std::string::npos);
    }
    SECTION("payload errors are passed on") {
        auto r = map_request_job_response(json_response(201, R"({"id":0,"token":"t"})"));
        CHECK(r.status == request_job_status::invalid_job);
        REQUIRE(r.payload_problem.has_value());
        CHECK(r.payload_problem->field == "id");
        CHECK(r.message == r.payload_problem->message);
    }
    SECTION("no Content-Type at all") {
        auto r = map_request_job_response(response(201, {}, "{}"));
        CHECK(r.status == request_job_status::invalid_job);
        CHECK(r.payload_problem->job_id == 0);
    }
}

TEST_CASE("POST /jobs/request: other statuses and X-GitLab-Last-Update", "[gitlab][responses]") {
    struct row {
        int status;
        header_list headers;
        request_job_status expected;
        bool healthy;
        std::optional<std::string> last_update;
    };
    const std::vector<row> rows{
        {204,
         {{"X-GitLab-Last-Update", "6f1e0f7f3c9b4f2a"}},
         request_job_status::no_job,
         true,
         "6f1e0f7f3c9b4f2a"},
        {204,
         {{"x-gitlab-last-update", "abc"}, {"Gitlab-Ci-Builds-Polling", "yes"}},
         request_job_status::no_job,
         true,
         "abc"},
        {204, {}, request_job_status::no_job, true, std::nullopt},
        {204, {{"X-GitLab-Last-Update", ""}}, request_job_status::no_job, true, std::nullopt},
        {403, {}, request_job_status::forbidden, false, std::nullopt},
        {409, {}, request_job_status::failed, true, std::nullopt},
        {422, {}, request_job_status::failed, true, std::nullopt},
        {429, {{"Retry-After", "60"}}, request_job_status::failed, true, std::nullopt},
        {500, {}, request_job_status::failed, true, std::nullopt},
        {502, {}, request_job_status::failed, true, std::nullopt},
        {503, {}, request_job_status::failed, true, std::nullopt},
        {400, {}, request_job_status::failed, true, std::nullopt},
        {404, {}, request_job_status::failed, true, std::nullopt},
    };
    for (const auto& r : rows) {
        INFO(r.status);
        auto m = map_request_job_response(response(r.status, r.headers, R"({"message":"m"})"));
        CHECK(m.status == r.expected);
        CHECK(m.healthy() == r.healthy);
        CHECK(m.last_update == r.last_update);
        CHECK_FALSE(m.job != nullptr);
        CHECK(m.http_status == r.status);
    }
    CHECK(
        map_request_job_response(response(409, {}, R"({"message":"409 Conflict"})")).message ==
        "409 Conflict"
    );
}

TEST_CASE("PUT /jobs/:id responses", "[gitlab][responses]") {
    struct row {
        int status;
        std::string job_status;
        std::string interval;
        update_status expected;
        bool cancel;
        std::optional<seconds> new_interval;
    };
    const std::vector<row> rows{
        {200, "running", "", update_status::succeeded, false, std::nullopt},
        {200, "", "", update_status::succeeded, false, std::nullopt},
        {200, "success", "", update_status::succeeded, false, std::nullopt},
        {200, "canceling", "", update_status::succeeded, true, std::nullopt},
        {200, "canceled", "", update_status::abort, false, std::nullopt},
        {200, "failed", "", update_status::abort, false, std::nullopt},
        {202, "running", "2", update_status::accepted, false, seconds{2}},
        {202, "running", "64", update_status::accepted, false, seconds{64}},
        {202, "running", "1/2", update_status::accepted, false, std::nullopt},
        {202, "canceling", "4", update_status::accepted, true, seconds{4}},
        {202, "canceled", "", update_status::abort, false, std::nullopt},
        {403, "", "", update_status::abort, false, std::nullopt},
        {403, "canceled", "", update_status::abort, false, std::nullopt},
        {403, "success", "", update_status::abort, false, std::nullopt},
        {404, "", "", update_status::abort, false, std::nullopt},
        {412, "running", "", update_status::trace_validation_failed, false, std::nullopt},
        {400, "", "", update_status::failed, false, std::nullopt},
        {409, "", "", update_status::failed, false, std::nullopt},
        {429, "", "", update_status::failed, false, std::nullopt},
        {500, "failed", "", update_status::abort, false, std::nullopt},
        {503, "", "", update_status::failed, false, std::nullopt},
    };
    for (const auto& r : rows) {
        INFO(r.status << " Job-Status: " << r.job_status << " interval: " << r.interval);
        header_list h;
        if (!r.job_status.empty()) {
            h.emplace_back("Job-Status", r.job_status);
        }
        if (!r.interval.empty()) {
            h.emplace_back("X-GitLab-Trace-Update-Interval", r.interval);
        }
        auto m = map_update_response(response(r.status, h, std::to_string(r.status)));
        CHECK(m.status == r.expected);
        CHECK(m.cancel_requested == r.cancel);
        CHECK(m.update_interval == r.new_interval);
        CHECK(m.job_status == r.job_status);
        CHECK(m.http_status == r.status);
    }
}

TEST_CASE("PATCH /jobs/:id/trace responses", "[gitlab][responses]") {
    struct row {
        int status;
        std::string job_status;
        std::optional<std::string> range;
        std::int64_t start;
        std::int64_t length;
        patch_status expected;
        std::int64_t new_offset;
        bool cancel;
    };
    const std::vector<row> rows{
        {202, "running", "0-17", 0, 17, patch_status::succeeded, 17, false},
        {202, "running", "0-999", 100, 50, patch_status::succeeded, 150, false},  // Range ignored
        {202, "running", std::nullopt, 1024, 1024, patch_status::succeeded, 2048, false},
        {202, "canceling", "0-17", 0, 17, patch_status::succeeded, 17, true},
        {416, "", "0-17", 20, 10, patch_status::range_mismatch, 17, false},
        {416, "running", "0-1200", 2000, 5, patch_status::range_mismatch, 1200, false},
        {416, "", "0-0", 500, 5, patch_status::range_mismatch, 0, false},  // GitLab lost the trace
        {416, "", std::nullopt, 500, 5, patch_status::range_mismatch, 0, false},
        {416, "", "garbage", 500, 5, patch_status::range_mismatch, 0, false},
        {416, "canceling", "0-30", 40, 5, patch_status::range_mismatch, 30, true},
        {403, "", std::nullopt, 10, 5, patch_status::abort, 10, false},
        {403, "canceled", std::nullopt, 10, 5, patch_status::abort, 10, false},
        {202, "canceled", "0-15", 10, 5, patch_status::abort, 10, false},
        {202, "failed", "0-15", 10, 5, patch_status::abort, 10, false},
        {416, "failed", "0-3", 10, 5, patch_status::abort, 10, false},
        {404, "", std::nullopt, 10, 5, patch_status::not_found, 10, false},
        {400, "", std::nullopt, 10, 5, patch_status::failed, 10, false},
        {409, "running", std::nullopt, 10, 5, patch_status::failed, 10, false},
        {429, "", std::nullopt, 10, 5, patch_status::failed, 10, false},
        {500, "", std::nullopt, 10, 5, patch_status::failed, 10, false},
    };
    for (const auto& r : rows) {
        INFO(
            r.status << " Job-Status: " << r.job_status
                     << " Range: " << r.range.value_or("(absent)")
        );
        header_list h;
        if (!r.job_status.empty()) {
            h.emplace_back("Job-Status", r.job_status);
        }
        if (r.range) {
            h.emplace_back("Range", *r.range);
        }
        auto m = map_patch_response(response(r.status, h), r.start, r.length);
        CHECK(m.status == r.expected);
        CHECK(m.new_offset == r.new_offset);
        CHECK(m.cancel_requested == r.cancel);
        CHECK(m.http_status == r.status);
    }
}

TEST_CASE("PATCH: the update interval comes with the answer", "[gitlab][responses]") {
    auto m = map_patch_response(
        response(
            202,
            {{"Job-Status", "running"}, {"Range", "0-17"}, {"X-GitLab-Trace-Update-Interval", "60"}}
        ),
        0,
        17
    );
    CHECK(m.update_interval == seconds{60});
    CHECK(m.job_status == "running");
    auto capped =
        map_patch_response(response(202, {{"X-GitLab-Trace-Update-Interval", "3600"}}), 0, 1);
    CHECK(capped.update_interval == max_update_interval);
}

TEST_CASE("POST /jobs/:id/artifacts responses", "[gitlab][responses]") {
    struct row {
        int status;
        header_list headers;
        upload_status expected;
        std::string base;
    };
    const std::vector<row> rows{
        {201, {}, upload_status::succeeded, ""},
        {307,
         {{"Location",
           "https://other.example.com:8443/api/v4/jobs/1/artifacts?artifact_format=zip"}},
         upload_status::redirected,
         "https://other.example.com:8443"},
        {307,
         {{"Location", "http://gitlab.internal/api/v4/jobs/1/artifacts"}},
         upload_status::redirected,
         "http://gitlab.internal"},
        {307,
         {{"Location", "https://host.example.com"}},
         upload_status::redirected,
         "https://host.example.com"},
        {307, {}, upload_status::failed, ""},
        {307, {{"Location", "/api/v4/jobs/1/artifacts"}}, upload_status::failed, ""},
        {307, {{"Location", "ftp://host/x"}}, upload_status::failed, ""},
        {403, {}, upload_status::forbidden, ""},
        {413, {}, upload_status::too_large, ""},
        {503, {}, upload_status::unavailable, ""},
        {400, {}, upload_status::failed, ""},
        {405, {}, upload_status::failed, ""},
        {500, {}, upload_status::failed, ""},
    };
    for (const auto& r : rows) {
        INFO(r.status);
        auto m = map_upload_response(response(r.status, r.headers));
        CHECK(m.status == r.expected);
        CHECK(m.new_base_url == r.base);
    }
    CHECK(
        map_upload_response(json_response(413, R"({"message":"413 Request Entity Too Large"})"))
            .message == "413 Request Entity Too Large"
    );
}

TEST_CASE("GET /jobs/:id/artifacts responses", "[gitlab][responses]") {
    struct row {
        int status;
        header_list headers;
        download_status expected;
        std::string location;
    };
    const std::string signed_url = "https://objects.example.com/bucket/a.zip?X-Amz-Signature=abc";
    const std::vector<row> rows{
        {200, {}, download_status::succeeded, ""},
        {302, {{"Location", signed_url}}, download_status::redirected, signed_url},
        {307, {{"location", signed_url}}, download_status::redirected, signed_url},
        {302, {}, download_status::failed, ""},
        {401, {}, download_status::forbidden, ""},
        {403, {}, download_status::forbidden, ""},
        {404, {}, download_status::not_found, ""},
        {429, {}, download_status::failed, ""},
        {500, {}, download_status::failed, ""},
        {502, {}, download_status::failed, ""},
    };
    for (const auto& r : rows) {
        INFO(r.status);
        auto m = map_download_response(response(r.status, r.headers));
        CHECK(m.status == r.expected);
        CHECK(m.location == r.location);
    }
    auto xml = map_download_response(response(
        403,
        {{"Content-Type", "application/xml"}},
        "<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>"
    ));
    CHECK(xml.status == download_status::forbidden);
    CHECK(xml.message == "AccessDenied: Request has expired");
}
