#include "runner/gitlab/retry_policy.hpp"

#include <chrono>
#include <optional>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

using namespace kiln::gitlab;
using namespace std::chrono;
using kiln::net::http_headers;

namespace {

sys_seconds at(int y, unsigned m, unsigned d, int hh, int mm, int ss) {
    return sys_days{year{y} / month{m} / day{d}} + hours{hh} + minutes{mm} + seconds{ss};
}

}  // namespace

TEST_CASE("retriable statuses", "[gitlab][retry]") {
    for (int s : {408, 429, 500, 502, 503, 504, 512, 520, 524, 599}) {
        INFO(s);
        CHECK(is_retriable_status(s));
    }
    for (int s : {200, 201, 202, 204, 301, 307, 400, 401, 403, 404, 409,
                  412, 413, 416, 422, 501, 505, 506, 507, 508, 510, 511}) {
        INFO(s);
        CHECK_FALSE(is_retriable_status(s));
    }
}

TEST_CASE("at most 5 attempts", "[gitlab][retry]") {
    CHECK(should_retry(503, 1));
    CHECK(should_retry(503, 4));
    CHECK_FALSE(should_retry(503, 5));
    CHECK_FALSE(should_retry(404, 1));
}

TEST_CASE("RFC 1123 dates", "[gitlab][retry]") {
    struct row {
        std::string text;
        std::optional<sys_seconds> expected;
    };
    const std::vector<row> rows{
        {"Wed, 21 Oct 2015 07:28:00 GMT", at(2015, 10, 21, 7, 28, 0)},
        {"Mon, 02 Jan 2006 15:04:05 UTC", at(2006, 1, 2, 15, 4, 5)},
        {"Sun, 29 Feb 2032 23:59:59 GMT", at(2032, 2, 29, 23, 59, 59)},
        {"Wed, 21 Oct 2015 07:28:00", std::nullopt},
        {"21 Oct 2015 07:28:00 GMT", std::nullopt},
        {"Wed, 1 Oct 2015 07:28:00 GMT", std::nullopt},
        {"Wed, 32 Oct 2015 07:28:00 GMT", std::nullopt},
        {"Wed, 29 Feb 2015 07:28:00 GMT", std::nullopt},
        {"Wed, 21 Foo 2015 07:28:00 GMT", std::nullopt},
        {"Xyz, 21 Oct 2015 07:28:00 GMT", std::nullopt},
        {"Wed, 21 Oct 2015 24:00:00 GMT", std::nullopt},
        {"Wed, 21 Oct 2015 07:28:00 +0000", std::nullopt},
        {"2015-10-21T07:28:00Z", std::nullopt},
        {"", std::nullopt},
    };
    for (const auto& r : rows) {
        INFO(r.text);
        auto parsed = parse_rfc1123_date(r.text);
        REQUIRE(parsed.has_value() == r.expected.has_value());
        if (parsed) {
            CHECK(*parsed == *r.expected);
        }
    }
}

TEST_CASE("wait before the next attempt", "[gitlab][retry]") {
    const system_clock::time_point now = at(2015, 10, 21, 7, 27, 30);
    struct row {
        const char* name;
        std::vector<std::pair<std::string, std::string>> headers;
        milliseconds delay;
        wait_source source;
    };
    const std::vector<row> rows{
        {"reset time in 30 s",
         {{"RateLimit-ResetTime", "Wed, 21 Oct 2015 07:28:00 GMT"}},
         30s,
         wait_source::rate_limit_reset},
        {"reset time beats Retry-After",
         {{"Retry-After", "60"}, {"RateLimit-ResetTime", "Wed, 21 Oct 2015 07:28:00 GMT"}},
         30s,
         wait_source::rate_limit_reset},
        {"reset time in the past",
         {{"RateLimit-ResetTime", "Wed, 21 Oct 2015 07:00:00 GMT"}, {"Retry-After", "60"}},
         60s,
         wait_source::retry_after},
        {"unparsable reset time",
         {{"RateLimit-ResetTime", "soon"}, {"Retry-After", "5"}},
         5s,
         wait_source::retry_after},
        {"Retry-After seconds", {{"retry-after", "60"}}, 60s, wait_source::retry_after},
        {"Retry-After zero", {{"Retry-After", "0"}}, 100ms, wait_source::backoff},
        {"Retry-After negative", {{"Retry-After", "-3"}}, 100ms, wait_source::backoff},
        {"Retry-After date is not used",
         {{"Retry-After", "Wed, 21 Oct 2015 07:28:00 GMT"}},
         100ms,
         wait_source::backoff},
        {"no headers", {}, 100ms, wait_source::backoff},
    };
    for (const auto& r : rows) {
        INFO(r.name);
        http_headers h;
        h.items = r.headers;
        auto w = wait_before_retry(h, 0, now, 0.5);
        CHECK(w.delay == r.delay);
        CHECK(w.source == r.source);
    }
    auto later = wait_before_retry(http_headers{}, 3, now, 0.5);
    CHECK(later.delay == 450ms);
    CHECK(later.source == wait_source::backoff);
}

TEST_CASE("gitlab-runner's exponential backoff", "[gitlab][retry]") {
    struct row {
        int attempt;
        double jitter;
        milliseconds expected;
    };
    const std::vector<row> rows{
        {0, 0.0, 100ms},
        {0, 0.99, 100ms},
        {1, 0.0, 100ms},
        {1, 0.5, 150ms},
        {3, 0.5, 450ms},
        {3, 1.0, 800ms},
        {10, 0.5, 30050ms},
        {20, 0.0, 100ms},
        {20, 1.0, 60000ms},
        {5000, 1.0, 60000ms},
        {-1, 0.5, 100ms},
        {3, -2.0, 100ms},
        {3, 7.0, 800ms},
    };
    for (const auto& r : rows) {
        INFO(r.attempt << " " << r.jitter);
        CHECK(exponential_backoff(r.attempt, r.jitter) == r.expected);
    }
}

TEST_CASE("capped exponential backoff with full jitter", "[gitlab][retry]") {
    struct row {
        int attempt;
        double jitter;
        milliseconds expected;
    };
    const std::vector<row> rows{
        {0, 0.5, 500ms},
        {0, 0.0, 0ms},
        {3, 0.5, 4000ms},
        {6, 1.0, 60000ms},
        {10, 0.5, 30000ms},
        {100000, 0.25, 15000ms},
    };
    for (const auto& r : rows) {
        INFO(r.attempt << " " << r.jitter);
        CHECK(full_jitter_backoff(r.attempt, 1s, 60s, r.jitter) == r.expected);
    }
}
