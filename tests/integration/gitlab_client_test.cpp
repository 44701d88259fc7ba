#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <catch2/catch.hpp>
#include <chrono>
#include <fstream>
#include <iterator>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <string>

#include "runner/gitlab/client.hpp"
#include "tests/support/run_coroutine_test.hpp"
#include "tests/support/test_certs.hpp"
#include "tests/support/test_http_server.hpp"

namespace {

namespace asio = boost::asio;
namespace net = kiln::net;
namespace gitlab = kiln::gitlab;
using namespace std::chrono_literals;
using kiln::test::recorded_request;
using kiln::test::respond_with;
using kiln::test::run_coroutine_test;
using kiln::test::test_http_server;
using counts = std::map<int, std::uint64_t>;

gitlab::client_config config_for(const test_http_server& server) {
    gitlab::client_config c;
    c.url = server.url() + "/";
    c.request_timeout = 5s;
    c.job_request_timeout = 5s;
    return c;
}

std::string fixture(const std::string& name) {
    std::ifstream in(std::string(KILN_FIXTURES_DIR) + "/" + name, std::ios::binary);
    REQUIRE(in);
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

std::string read_file(const std::filesystem::path& p) {
    std::ifstream in(p, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

std::string random_bytes(std::size_t n) {
    std::mt19937_64 rng(7);
    std::string s(n, '\0');
    for (auto& c : s) {
        c = static_cast<char>(rng() & 0xff);
    }
    return s;
}

net::http_headers json_type() {
    net::http_headers h;
    h.set("Content-Type", "application/json");
    return h;
}

net::http_headers location(std::string url) {
    net::http_headers h;
    h.set("Location", std::move(url));
    return h;
}

}  // namespace

TEST_CASE("retriable statuses are retried until GitLab answers", "[gitlab-client]") {
    const auto job = fixture("job_basic.json");
    test_http_server server([&](const recorded_request& r) {
        if (r.index < 2) {
            return net::http_response{503, {}, "{\"message\":\"503 Service Unavailable\"}"};
        }
        return net::http_response{201, json_type(), job};
    });
    run_coroutine_test(
        [&]() -> asio::awaitable<void> {
            auto ex = co_await asio::this_coro::executor;
            gitlab::client gl(ex, config_for(server));
            auto r = co_await gl.request_job("glrt-runner", "s_0123456789ab", "");
            REQUIRE(r.reached());
            CHECK(r.value.status == gitlab::request_job_status::job_received);
            REQUIRE(r.value.job);
            CHECK(r.value.job->id == 5001);
            CHECK(gl.statuses().at("jobs/request") == counts{{503, 2}, {201, 1}});
            CHECK(gl.connections_opened() == 1);
        },
        5s
    );
    auto requests = server.requests();
    REQUIRE(requests.size() == 3);
    for (const auto& r : requests) {
        CHECK(r.method == "POST");
        CHECK(r.target == "/api/v4/jobs/request");
        CHECK(r.headers.get("RUNNER-TOKEN") == "glrt-runner");
    }
    // Each attempt is a new request as far as GitLab's logs are concerned.
    CHECK(requests[0].headers.get("X-Request-Id") != requests[1].headers.get("X-Request-Id"));
}

TEST_CASE("a 429 with Retry-After is retried after that many seconds", "[gitlab-client]") {
    test_http_server server([](const recorded_request& r) {
        if (r.index == 0) {
            net::http_headers h;
            h.set("Retry-After", "1");
            return net::http_response{429, h, "{\"message\":\"Too Many Requests\"}"};
        }
        return net::http_response{200, json_type(), R"({"id":12,"token":"glrt-runner"})"};
    });
    run_coroutine_test(
        [&]() -> asio::awaitable<void> {
            auto ex = co_await asio::this_coro::executor;
            gitlab::client gl(ex, config_for(server));
            const auto start = std::chrono::steady_clock::now();
            auto r = co_await gl.verify_runner("glrt-runner", "s_0123456789ab");
            const auto elapsed = std::chrono::steady_clock::now() - start;
            REQUIRE(r.reached());
            CHECK(r.value.status == gitlab::verify_status::valid);
            CHECK(r.value.runner.id == 12);
            CHECK(elapsed >= 950ms);
            CHECK(elapsed < 3s);
            CHECK(gl.statuses().at("runners/verify") == counts{{429, 1}, {200, 1}});
        },
        5s
    );
    CHECK(server.request_count() == 2);
}

TEST_CASE("a 501 is final", "[gitlab-client]") {
    test_http_server server(
        respond_with(501, "{\"message\":\"501 Not Implemented\"}", json_type())
    );
    run_coroutine_test(
        [&]() -> asio::awaitable<void> {
            auto ex = co_await asio::this_coro::executor;
            gitlab::client gl(ex, config_for(server));
            // A named argument: g++ 12 frees a braced `{}` temporary passed by value to a
            // coroutine twice.
            gitlab::register_params params;
            auto r = co_await gl.register_runner("glrt-registration", params);
            REQUIRE(r.reached());
            CHECK(r.value.status == gitlab::register_status::failed);
            CHECK(r.value.http_status == 501);
            CHECK(gl.statuses().at("runners") == counts{{501, 1}});
        },
        5s
    );
    CHECK(server.request_count() == 1);
}

TEST_CASE("transport errors are retried, then reported", "[gitlab-client]") {
    test_http_server server(respond_with(200));
    auto config = config_for(server);
    config.max_attempts = 3;

    SECTION("the server recovers") {
        server.drop_requests(2);
        run_coroutine_test(
            [&]() -> asio::awaitable<void> {
                auto ex = co_await asio::this_coro::executor;
                gitlab::client gl(ex, config);
                gitlab::job_update update{"glcbt-job"};
                auto r = co_await gl.update_job(7, update);
                REQUIRE(r.reached());
                CHECK(r.value.status == gitlab::update_status::succeeded);
                CHECK(gl.statuses().at("jobs/:id") == counts{{0, 2}, {200, 1}});
            },
            5s
        );
        CHECK(server.request_count() == 3);
        CHECK(server.connections_accepted() == 3);
    }

    SECTION("the server keeps failing") {
        server.drop_requests(100);
        run_coroutine_test(
            [&]() -> asio::awaitable<void> {
                auto ex = co_await asio::this_coro::executor;
                gitlab::client gl(ex, config);
                gitlab::job_update update{"glcbt-job"};
                auto r = co_await gl.update_job(7, update);
                REQUIRE_FALSE(r.reached());
                CHECK(r.transport.what == net::transport_error::kind::io);
                CHECK_THAT(r.transport.message, Catch::Contains(server.url()));
                CHECK(gl.statuses().at("jobs/:id") == counts{{0, 3}});
            },
            5s
        );
        CHECK(server.request_count() == 3);
    }

    SECTION("nothing listens") {
        config.url = "http://127.0.0.1:" + std::to_string(kiln::test::unused_port());
        run_coroutine_test(
            [&]() -> asio::awaitable<void> {
                auto ex = co_await asio::this_coro::executor;
                gitlab::client gl(ex, config);
                gitlab::job_update update{"glcbt-job"};
                auto r = co_await gl.update_job(7, update);
                REQUIRE_FALSE(r.reached());
                CHECK(r.transport.what == net::transport_error::kind::connect);
                CHECK(gl.statuses().at("jobs/:id") == counts{{0, 3}});
            },
            5s
        );
    }
}

TEST_CASE("TLS problems are not retried", "[gitlab-client][tls]") {
    const auto& certs = kiln::test::test_certs();
    kiln::test::server_options options;
    options.cert_file = certs.server;
    options.key_file = certs.server_key;
    test_http_server server(respond_with(200), options);
    auto config = config_for(server);
    config.tls.ca_file = certs.other_ca;
    run_coroutine_test(
        [&]() -> asio::awaitable<void> {
            auto ex = co_await asio::this_coro::executor;
            gitlab::client gl(ex, config);
            auto r = co_await gl.verify_runner("glrt-runner", "s_0123456789ab");
            REQUIRE_FALSE(r.reached());
            CHECK(r.transport.what == net::transport_error::kind::tls_verify);
            CHECK(gl.statuses().at("runners/verify") == counts{{0, 1}});
        },
        5s
    );
    CHECK(server.connections_accepted() == 1);
}

TEST_CASE("upload_artifacts sends a multipart body streamed from the archive", "[gitlab-client]") {
    kiln::test::temp_dir dir;
    const auto archive = dir / "artifacts.zip";
    const auto content = random_bytes(1024 * 1024 + 17);
    std::ofstream(archive, std::ios::binary) << content;
    test_http_server server(respond_with(201, "{}", json_type()));
    run_coroutine_test(
        [&]() -> asio::awaitable<void> {
            auto ex = co_await asio::this_coro::executor;
            gitlab::client gl(ex, config_for(server));
            gitlab::artifact_upload_params p;
            p.file_name = "artifacts.zip";
            p.artifact_type = "archive";
            p.artifact_format = "zip";
            p.expire_in = "1 day";
            auto r = co_await gl.upload_artifacts(42, "glcbt-job", archive, p);
            REQUIRE(r.reached());
            CHECK(r.value.status == gitlab::upload_status::succeeded);
        },
        10s
    );
    auto requests = server.requests();
    REQUIRE(requests.size() == 1);
    const auto& req = requests[0];
    CHECK(req.method == "POST");
    CHECK(req.target ==
          "/api/v4/jobs/42/artifacts?artifact_format=zip&artifact_type=archive&expire_in=1%20day");
    CHECK(req.headers.get("JOB-TOKEN") == "glcbt-job");
    CHECK(req.headers.get("Content-Length") == std::to_string(req.body.size()));

    const auto type = req.headers.get("Content-Type").value_or("");
    const std::string prefix = "multipart/form-data; boundary=";
    REQUIRE(type.rfind(prefix, 0) == 0);
    const auto boundary = type.substr(prefix.size());
    REQUIRE_FALSE(boundary.empty());
    const std::string head = "--" + boundary +
                             "\r\nContent-Disposition: form-data; name=\"file\"; "
                             "filename=\"artifacts.zip\"\r\nContent-Type: "
                             "application/octet-stream\r\n\r\n";
    const std::string tail = "\r\n--" + boundary + "--\r\n";
    REQUIRE(req.body.size() == head.size() + content.size() + tail.size());
    CHECK(req.body.compare(0, head.size(), head) == 0);
    CHECK(req.body.compare(head.size(), content.size(), content) == 0);
    CHECK(req.body.compare(head.size() + content.size(), tail.size(), tail) == 0);
    // The boundary must not occur inside the part.
    CHECK(content.find("--" + boundary) == std::string::npos);
}

TEST_CASE("a 307 on upload re-targets this and later uploads", "[gitlab-client]") {
    kiln::test::temp_dir dir;
    const auto archive = dir / "artifacts.zip";
    const auto content = random_bytes(64 * 1024);
    std::ofstream(archive, std::ios::binary) << content;
    test_http_server target(respond_with(201, "{}", json_type()));
    test_http_server gitlab_server(respond_with(
        307, {}, location(target.url() + "/api/v4/jobs/42/artifacts?artifact_format=zip")
    ));
    run_coroutine_test(
        [&]() -> asio::awaitable<void> {
            auto ex = co_await asio::this_coro::executor;
            gitlab::client gl(ex, config_for(gitlab_server));
            gitlab::artifact_upload_params p;
            p.artifact_format = "zip";
            auto first = co_await gl.upload_artifacts(42, "glcbt-job", archive, p);
            REQUIRE(first.reached());
            CHECK(first.value.status == gitlab::upload_status::succeeded);
            auto second = co_await gl.upload_artifacts(42, "glcbt-job", archive, p);
            REQUIRE(second.reached());
            CHECK(second.value.status == gitlab::upload_status::succeeded);
            CHECK(gl.statuses().at("jobs/:id/artifacts") == counts{{307, 1}, {201, 2}});
        },
        10s
    );
    CHECK(gitlab_server.request_count() == 1);
    auto requests = target.requests();
    REQUIRE(requests.size() == 2);
    for (const auto& r : requests) {
        CHECK(r.target == "/api/v4/jobs/42/artifacts?artifact_format=zip");
        CHECK(r.headers.get("JOB-TOKEN") == "glcbt-job");
        CHECK(r.body.find(content) != std::string::npos);
    }
}

TEST_CASE("download_artifacts follows a redirect to object storage", "[gitlab-client]") {
    kiln::test::temp_dir dir;
    const auto payload = random_bytes(200 * 1024);
    test_http_server storage(respond_with(200, payload));
    const auto object = "/bucket/artifacts.zip?X-Amz-Signature=abc%2Fdef&X-Amz-Expires=60";
    test_http_server gitlab_server(respond_with(302, {}, location(storage.url() + object)));
    run_coroutine_test(
        [&]() -> asio::awaitable<void> {
            auto ex = co_await asio::this_coro::executor;
            gitlab::client gl(ex, config_for(gitlab_server));
            auto r = co_await gl.download_artifacts(42, "glcbt-job", dir / "artifacts.zip");
            INFO(r.transport.message << r.value.message);
            REQUIRE(r.reached());
            CHECK(r.value.status == gitlab::download_status::succeeded);
        },
        10s
    );
    CHECK(read_file(dir / "artifacts.zip") == payload);
    auto first = gitlab_server.requests();
    REQUIRE(first.size() == 1);
    CHECK(first[0].target == "/api/v4/jobs/42/artifacts");
    CHECK(first[0].headers.get("JOB-TOKEN") == "glcbt-job");
    auto second = storage.requests();
    REQUIRE(second.size() == 1);
    CHECK(second[0].method == "GET");
    CHECK(second[0].target == object);
    CHECK_FALSE(second[0].headers.get("JOB-TOKEN"));
    CHECK(second[0].headers.get("Host") == "127.0.0.1:" + std::to_string(storage.port()));
}

TEST_CASE("patch_trace sends text with an inclusive Content-Range", "[gitlab-client]") {
    net::http_headers range;
    range.set("Range", "0-15");
    test_http_server server(respond_with(202, {}, range));
    run_coroutine_test(
        [&]() -> asio::awaitable<void> {
            auto ex = co_await asio::this_coro::executor;
            gitlab::client gl(ex, config_for(server));
            auto r = co_await gl.patch_trace(7, "glcbt-job", "hello", 10, false);
            REQUIRE(r.reached());
            CHECK(r.value.status == gitlab::patch_status::succeeded);
            CHECK(r.value.new_offset == 15);
        },
        5s
    );
    auto requests = server.requests();
    REQUIRE(requests.size() == 1);
    CHECK(requests[0].method == "PATCH");
    CHECK(requests[0].target == "/api/v4/jobs/7/trace?debug_trace=false");
    CHECK(requests[0].headers.get("Content-Type") == "text/plain");
    CHECK(requests[0].headers.get("Content-Range") == "10-14");
    CHECK(requests[0].headers.get("JOB-TOKEN") == "glcbt-job");
    CHECK(requests[0].body == "hello");
}

TEST_CASE("patch_trace sends a large body without copying it, unchanged on every retry",
          "[gitlab-client]") {
    // The streamer lends its buffer: the same bytes must go out on each attempt.
    std::string log;
    for (int i = 0; log.size() < (1u << 20); ++i) {
        log += "line " + std::to_string(i) + " of a large job log\n";
    }
    log.resize(1u << 20);
    net::http_headers range;
    range.set("Range", "0-" + std::to_string(log.size()));
    test_http_server server([&](const recorded_request& r) {
        if (r.index == 0) {
            return net::http_response{503, {}, "{\"message\":\"503 Service Unavailable\"}"};
        }
        return net::http_response{202, range, ""};
    });
    run_coroutine_test(
        [&]() -> asio::awaitable<void> {
            auto ex = co_await asio::this_coro::executor;
            gitlab::client gl(ex, config_for(server));
            const std::string_view lent = log;
            auto r = co_await gl.patch_trace(7, "glcbt-job", lent, 0, false);
            REQUIRE(r.reached());
            CHECK(r.value.status == gitlab::patch_status::succeeded);
            CHECK(r.value.new_offset == static_cast<std::int64_t>(log.size()));
        },
        10s
    );
    auto requests = server.requests();
    REQUIRE(requests.size() == 2);
    for (const auto& r : requests) {
        CHECK(r.headers.get("Content-Range") == "0-" + std::to_string(log.size() - 1));
        CHECK(r.headers.get("Content-Length") == std::to_string(log.size()));
        CHECK(r.body == log);
    }
}

TEST_CASE("update_job puts the token in the body and omits a zero exit code", "[gitlab-client]") {
    test_http_server server(respond_with(200));
    run_coroutine_test(
        [&]() -> asio::awaitable<void> {
            auto ex = co_await asio::this_coro::executor;
            gitlab::client gl(ex, config_for(server));
            gitlab::job_update done{"glcbt-job", gitlab::job_state::success};
            auto a = co_await gl.update_job(7, done);
            REQUIRE(a.reached());
            CHECK(a.value.status == gitlab::update_status::succeeded);
            gitlab::job_update failed{"glcbt-job", gitlab::job_state::failed, "script_failure"};
            failed.exit_code = 2;
            auto b = co_await gl.update_job(7, failed);
            REQUIRE(b.reached());
        },
        5s
    );
    auto requests = server.requests();
    REQUIRE(requests.size() == 2);
    CHECK(requests[0].method == "PUT");
    CHECK(requests[0].target == "/api/v4/jobs/7");
    CHECK(requests[0].headers.get("JOB-TOKEN") == "glcbt-job");
    CHECK(requests[0].headers.get("Content-Type") == "application/json");
    auto first = nlohmann::json::parse(requests[0].body);
    CHECK(first.at("token") == "glcbt-job");
    CHECK(first.at("state") == "success");
    CHECK_FALSE(first.contains("exit_code"));
    CHECK(first.contains("info"));
    auto second = nlohmann::json::parse(requests[1].body);
    CHECK(second.at("state") == "failed");
    CHECK(second.at("failure_reason") == "script_failure");
    CHECK(second.at("exit_code") == 2);
}
