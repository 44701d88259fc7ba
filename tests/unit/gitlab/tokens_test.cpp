#include "runner/gitlab/tokens.hpp"

#include <cstdint>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

using namespace kiln::gitlab;

TEST_CASE("short_token follows gitlab-runner's ShortenToken", "[gitlab][tokens]") {
    struct row {
        const char* token;
        const char* expected;
    };
    // The first block is gitlab-runner's own test table (helpers/shorten_token_test.go).
    const std::vector<row> rows{
        {"short", "short"},
        {"veryverylongtoken", "veryveryl"},
        {"t1_t9Wkyj-HGRkqQ-VWTGAr", "t9Wkyj-HG"},
        {"t2_t9Wkyj-HGRkqQ-VWTGAr", "t9Wkyj-HG"},
        {"t3_t9Wkyj-HGRkqQ-VWTGAr", "t9Wkyj-HG"},
        {"t4_t9Wkyj-HGRkqQ-VWTGAr", "t4_t9Wkyj"},
        {"glrt-t9Wkyj-HGRkqQ-VWTGAr", "t9Wkyj-HG"},
        {"glrt-t1_t9Wkyj-HGRkqQ-VWTGAr", "t9Wkyj-HG"},
        {"glrtr-t9Wkyj-HGRkqQ-VWTGAr", "t9Wkyj-HG"},
        {"glrtr-t1_t9Wkyj-HGRkqQ-VWTGAr", "t1_t9Wkyj"},
        {"glcbt-t9Wkyj-HGRkqQ-VWTGAr", "t9Wkyj-HG"},
        {"glcbt-t2_t9Wkyj-HGRkqQ-VWTGAr", "t2_t9Wkyj"},
        {"GR1348941Z196cJVywzZpx_Ki_Cn2", "Z196cJVyw"},
        {"GR134894-196cJVywzZpx_Ki_Cn2", "GR134894-"},
        // Edges of the same rules.
        {"", ""},
        {"glrt-", ""},
        {"GR1348941", ""},
        {"GR13489", "GR13489"},
        {"GRabcdefAxyz", "xyz"},
        {"t1_glcbt-abcdefghijk", "abcdefghi"},
        {"glcbt-64_pXb3kZq1Yw7cVt9mRn2s", "64_pXb3kZ"},
        {"glrt-t1_y8Gk2PqZrT5vW9nB3xLm", "y8Gk2PqZr"},
        {"xglrt-abcdefghijk", "xglrt-abc"},
    };
    for (const auto& r : rows) {
        INFO(r.token);
        CHECK(short_token(r.token) == r.expected);
    }
}

TEST_CASE("created-runner tokens start with glrt-", "[gitlab][tokens]") {
    CHECK(is_created_runner_token("glrt-t1_y8Gk2PqZrT5vW9nB3xLm"));
    CHECK(is_created_runner_token("glrt-abc"));
    CHECK_FALSE(is_created_runner_token("glrtr-abc"));
    CHECK_FALSE(is_created_runner_token("t1_abc"));
    CHECK_FALSE(is_created_runner_token("GLRT-abc"));
    CHECK_FALSE(is_created_runner_token("glrt"));
    CHECK_FALSE(is_created_runner_token(""));
}

TEST_CASE("system_id format", "[gitlab][tokens]") {
    for (const char* ok : {"s_0a1b2c3d4e5f", "r_AbCdEf123456", "s_000000000000"}) {
        INFO(ok);
        CHECK(is_valid_system_id(ok));
    }
    for (const char* bad :
         {"",
          "s_",
          "s_0a1b2c3d4e5",
          "s_0a1b2c3d4e5f0",
          "x_0a1b2c3d4e5f",
          "S_0a1b2c3d4e5f",
          "s-0a1b2c3d4e5f",
          "s_0a1b2c3d4e5-",
          "s_0a1b2c3d4e5 ",
          " s_0a1b2c3d4e5f"}) {
        INFO(bad);
        CHECK_FALSE(is_valid_system_id(bad));
    }
}

TEST_CASE("system_id from the machine id (known answers)", "[gitlab][tokens]") {
    // Expected values computed once with:
    //   printf gitlab-runner | openssl dgst -sha256 -hmac 0123456789abcdef0123456789abcdef
    //   -> ee3af03959fe472a5afbe48d49a7643ad5821761d10a1a5a5f315d2ef66298c4
    //   printf gitlab-runner | openssl dgst -sha256 -hmac a1b2c3d4e5f60718293a4b5c6d7e8f90
    //   -> 67d1d7b548ad919183b5680eb8c0338bf5e9fa78b025e4c35f7535d26e9dbda1
    struct row {
        const char* machine_id;
        const char* expected;
    };
    const std::vector<row> rows{
        {"0123456789abcdef0123456789abcdef", "s_ee3af03959fe"},
        {"0123456789abcdef0123456789abcdef\n", "s_ee3af03959fe"},
        {"  a1b2c3d4e5f60718293a4b5c6d7e8f90 \n", "s_67d1d7b548ad"},
    };
    for (const auto& r : rows) {
        INFO(r.machine_id);
        auto id = system_id_from_machine_id(r.machine_id);
        REQUIRE(id.has_value());
        CHECK(*id == r.expected);
        CHECK(is_valid_system_id(*id));
    }
    CHECK_FALSE(system_id_from_machine_id("").has_value());
    CHECK_FALSE(system_id_from_machine_id(" \n\t").has_value());
}

TEST_CASE("random system_id", "[gitlab][tokens]") {
    SECTION("deterministic source") {
        std::uint8_t next = 0;
        auto id = random_system_id([&] { return next++; });
        CHECK(id == "r_abcdefghijkl");
    }
    SECTION("biased bytes are rejected, the rest map onto [a-zA-Z0-9]") {
        const std::vector<std::uint8_t> bytes{
            255, 248, 0, 25, 26, 51, 52, 61, 62, 247, 123, 200, 100, 1};
        std::size_t i = 0;
        auto id = random_system_id([&] { return bytes.at(i++); });
        CHECK(id == "r_azAZ09a99oMb");
        CHECK(i == bytes.size());
    }
    SECTION("OpenSSL source") {
        auto a = random_system_id();
        auto b = random_system_id();
        CHECK(is_valid_system_id(a));
        CHECK(a.rfind("r_", 0) == 0);
        CHECK(a != b);
    }
}
