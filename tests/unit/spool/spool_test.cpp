#include <catch2/catch.hpp>

#include "runner/spool.hpp"

using namespace kiln;

TEST_CASE("a spool entry survives the round trip through its JSON", "[spool]") {
    spool::entry e;
    e.job_id = 4711;
    e.job_token = "glcbt-64_secret";
    e.url = "https://gitlab.example.com";
    e.tls_ca_file = "/etc/kiln/ca.pem";
    e.executor = "docker";
    e.runner = "abcdefghi";
    e.update.state = gitlab::job_state::failed;
    e.update.failure_reason = "script_failure";
    e.update.exit_code = 3;
    e.update.checksum = "crc32:0badf00d";
    e.update.bytesize = 1234;
    e.trace_offset = 1000;
    e.spooled_at = 1'700'000'000;
    std::string error;
    auto back = spool::from_json(spool::to_json(e), error);
    REQUIRE(back);
    CHECK(back->job_id == 4711);
    CHECK(back->job_token == "glcbt-64_secret");
    CHECK(back->update.token == "glcbt-64_secret");  // the PUT body needs it
    CHECK(back->url == e.url);
    CHECK(back->tls_ca_file == e.tls_ca_file);
    CHECK(back->executor == "docker");
    CHECK(back->update.state == gitlab::job_state::failed);
    CHECK(back->update.failure_reason == "script_failure");
    CHECK(back->update.exit_code == 3);
    CHECK(back->update.checksum == "crc32:0badf00d");
    CHECK(back->update.bytesize == 1234);
    CHECK(back->trace_offset == 1000);
    CHECK(back->spooled_at == 1'700'000'000);
}

TEST_CASE("what is not a spooled final state is refused", "[spool]") {
    std::string error;
    CHECK_FALSE(spool::from_json("garbage", error));
    CHECK(error == "not JSON");
    CHECK_FALSE(spool::from_json(R"({"version":2})", error));
    CHECK_FALSE(spool::from_json(
        R"({"version":1,"job_id":1,"job_token":"t","url":"u","state":"running"})", error));
    CHECK(error == "not a final state");
    CHECK_FALSE(spool::from_json(R"({"version":1,"job_id":1,"url":"u","state":"success"})", error));
    CHECK(spool::from_json(
        R"({"version":1,"job_id":1,"job_token":"t","url":"u","state":"success"})", error));
}

TEST_CASE("the spool lives next to the config unless configured", "[spool]") {
    CHECK(spool::directory("/etc/kiln/config.toml", "") == "/etc/kiln/spool");
    CHECK(spool::directory("/etc/kiln/config.toml", "/var/spool/kiln") == "/var/spool/kiln");
}
