#include <catch2/catch.hpp>

#include "runner/net/url.hpp"

using namespace kiln::net;

TEST_CASE("GitLab URLs: scheme, default ports, /ci suffix and trailing slashes", "[net][url]") {
    struct row {
        const char* text;
        bool tls;
        const char* host;
        int port;
        const char* path;
    };
    const row rows[] = {
        {"https://gitlab.example.com", true, "gitlab.example.com", 443, ""},
        {"https://gitlab.example.com/", true, "gitlab.example.com", 443, ""},
        {"http://gitlab.example.com:8080/ci/", false, "gitlab.example.com", 8080, ""},
        {"https://example.com/gitlab/", true, "example.com", 443, "/gitlab"},
        {"https://127.0.0.1:41234", true, "127.0.0.1", 41234, ""},
        {"https://[::1]:8443/", true, "::1", 8443, ""},
    };
    for (const auto& r : rows) {
        INFO(r.text);
        auto parsed = parse_gitlab_url(r.text);
        REQUIRE(std::holds_alternative<base_url>(parsed));
        const auto& b = std::get<base_url>(parsed);
        CHECK(b.origin.tls == r.tls);
        CHECK(b.origin.host == r.host);
        CHECK(b.origin.port == r.port);
        CHECK(b.path == r.path);
    }
}

TEST_CASE("unusable URLs say what is expected", "[net][url]") {
    for (const char* bad : {"ftp://example.com", "not a url", "https://", "https://user:pw@host/",
                            "gitlab.example.com"}) {
        INFO(bad);
        auto parsed = parse_gitlab_url(bad);
        REQUIRE(std::holds_alternative<url_error>(parsed));
        CHECK_FALSE(std::get<url_error>(parsed).message.empty());
    }
}

TEST_CASE("origins print with brackets for IPv6 and omit default ports in Host", "[net][url]") {
    origin v6{true, "::1", 443};
    CHECK(v6.to_string() == "https://[::1]:443");
    CHECK(v6.host_header() == "[::1]");
    origin plain{false, "gitlab", 8080};
    CHECK(plain.host_header() == "gitlab:8080");
}

TEST_CASE("absolute redirect targets split into origin and target", "[net][url]") {
    auto r = split_absolute_url("https://objects.example.com:9000/bucket/key?X-Amz-Signature=abc");
    REQUIRE(std::holds_alternative<std::pair<origin, std::string>>(r));
    auto& [o, target] = std::get<0>(r);
    CHECK(o.host == "objects.example.com");
    CHECK(o.port == 9000);
    CHECK(target == "/bucket/key?X-Amz-Signature=abc");
}

TEST_CASE("query values are percent-encoded", "[net][url]") {
    CHECK(query_escape("1 week") == "1%20week");
    CHECK(query_escape("a&b=c") == "a%26b%3Dc");
    CHECK(query_escape("plain-value_1.0~") == "plain-value_1.0~");
}
