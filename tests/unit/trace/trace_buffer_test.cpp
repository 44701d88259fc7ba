#include <catch2/catch.hpp>

#include <libdeflate.h>

#include <cstdio>
#include <string>

#include "runner/trace/trace_buffer.hpp"

using kiln::trace::trace_buffer;

namespace {

std::string crc_of(const std::string& s) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "crc32:%08x", libdeflate_crc32(0, s.data(), s.size()));
    return buf;
}

}  // namespace

TEST_CASE("masked values are replaced before output becomes visible", "[trace]") {
    trace_buffer b(1 << 20, {"s3cr3t-Passw0rd", "  glcbt-64_token  ", ""});
    b.write("password=s3cr3t-Passw0rd token=glcbt-64_token\n");
    b.close();
    CHECK(std::string(b.contents()) == "password=[MASKED] token=[MASKED]\n");
}

TEST_CASE("a secret split at every byte offset across two writes is masked", "[trace]") {
    const std::string secret = "s3cr3t-Passw0rd";
    const std::string text = "before " + secret + " after\n";
    for (std::size_t cut = 0; cut <= text.size(); ++cut) {
        trace_buffer b(1 << 20, {secret});
        b.write(text.substr(0, cut));
        // Whatever is visible after the first write must not contain any part of the secret
        // that could complete later, nor the secret itself.
        CHECK(std::string(b.contents()).find(secret) == std::string::npos);
        b.write(text.substr(cut));
        b.close();
        CHECK(std::string(b.contents()) == "before [MASKED] after\n");
    }
}

TEST_CASE("a secret written one byte at a time is masked", "[trace]") {
    const std::string secret = "abcdefgh12";
    trace_buffer b(1 << 20, {secret});
    for (char c : "x" + secret + secret + "y") {
        b.write(std::string(1, c));
    }
    b.close();
    CHECK(std::string(b.contents()) == "x[MASKED][MASKED]y");
}

TEST_CASE("the longest of overlapping secrets wins", "[trace]") {
    trace_buffer b(1 << 20, {"token", "token-extended"});
    b.write("a token-extended b token c");
    b.close();
    CHECK(std::string(b.contents()) == "a [MASKED] b [MASKED] c");
}

TEST_CASE("bytes that only look like the start of a secret are released on close", "[trace]") {
    trace_buffer b(1 << 20, {"secretvalue"});
    b.write("ends with secr");
    CHECK(std::string(b.contents()) == "ends with ");
    b.close();
    CHECK(std::string(b.contents()) == "ends with secr");
}

TEST_CASE("output past the limit is cut with gitlab-runner's notice", "[trace]") {
    trace_buffer b(10, {});
    b.write("0123456789ABCDEF");
    b.write("more output");
    b.close();
    const std::string expected =
        "0123456789\n\x1b[33;1mJob's log exceeded limit of 10 bytes.\nJob execution will "
        "continue but no more output will be collected.\x1b[0;m\n";
    CHECK(std::string(b.contents()) == expected);
    CHECK(b.truncated());
    CHECK(b.checksum() == crc_of(expected));
}

TEST_CASE("the limit never splits a UTF-8 sequence", "[trace]") {
    trace_buffer b(5, {});
    b.write("abcd\xc3\xa9z");  // "é" would straddle the limit
    CHECK(std::string(b.contents()).rfind("abcd\n", 0) == 0);
}

TEST_CASE("checksum and slices cover exactly the final bytes", "[trace]") {
    trace_buffer b(1 << 20, {"hidden-secret"});
    std::string expected;
    for (int i = 0; i < 100; ++i) {
        b.write("line " + std::to_string(i) + " hidden-secret\n");
        expected += "line " + std::to_string(i) + " [MASKED]\n";
    }
    b.close();
    CHECK(std::string(b.contents()) == expected);
    CHECK(b.size() == expected.size());
    CHECK(b.checksum() == crc_of(expected));
    CHECK(std::string(b.slice(5, 3)) == expected.substr(5, 3));
    CHECK(b.slice(expected.size(), 10).empty());
}
