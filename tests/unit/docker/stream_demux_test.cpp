#include <catch2/catch.hpp>

#include <string>
#include <vector>

#include "executors/docker/stream_demux.hpp"

using kiln::executors::docker::stream_demux;

namespace {

std::string frame(int stream, const std::string& payload) {
    std::string f(8, '\0');
    f[0] = static_cast<char>(stream);
    auto n = static_cast<std::uint32_t>(payload.size());
    f[4] = static_cast<char>((n >> 24) & 0xff);
    f[5] = static_cast<char>((n >> 16) & 0xff);
    f[6] = static_cast<char>((n >> 8) & 0xff);
    f[7] = static_cast<char>(n & 0xff);
    return f + payload;
}

struct collected {
    std::string out;
    std::string err;
};

}  // namespace

TEST_CASE("demux separates stdout and stderr frames", "[docker]") {
    collected c;
    stream_demux d([&](int s, std::string_view p) { (s == 2 ? c.err : c.out) += p; });
    CHECK(d.feed(frame(2, "err\n") + frame(1, "hello\n")));
    CHECK(c.out == "hello\n");
    CHECK(c.err == "err\n");
    CHECK(d.at_boundary());
}

TEST_CASE("demux gives the same result for every split of the input", "[docker]") {
    const std::string big(70000, 'x');  // size needs all four length bytes' worth of care
    const std::string input = frame(1, "out1\nline1\nline2\nno newline") + frame(2, "e") +
                              frame(1, "") + frame(1, big) + frame(2, "tail\n");
    const std::string want_out = "out1\nline1\nline2\nno newline" + big;
    const std::string want_err = "etail\n";
    for (std::size_t cut = 0; cut <= input.size(); cut += (cut < 200 ? 1 : 997)) {
        for (std::size_t cut2 :
             {cut, std::min(input.size(), cut + 3), std::min(input.size(), cut + 9)}) {
            collected c;
            stream_demux d([&](int s, std::string_view p) { (s == 2 ? c.err : c.out) += p; });
            REQUIRE(d.feed(std::string_view(input).substr(0, cut)));
            REQUIRE(d.feed(std::string_view(input).substr(cut, cut2 - cut)));
            REQUIRE(d.feed(std::string_view(input).substr(cut2)));
            REQUIRE(c.out == want_out);
            REQUIRE(c.err == want_err);
            REQUIRE(d.at_boundary());
        }
    }
}

TEST_CASE("demux delivers a frame's bytes as they arrive", "[docker]") {
    std::vector<std::string> pieces;
    stream_demux d([&](int, std::string_view p) { pieces.emplace_back(p); });
    auto f = frame(1, "abcdef");
    d.feed(f.substr(0, 10));  // header + "ab"
    REQUIRE(pieces == std::vector<std::string>{"ab"});
    CHECK_FALSE(d.at_boundary());
    d.feed(f.substr(10));
    CHECK(pieces == std::vector<std::string>{"ab", "cdef"});
    CHECK(d.at_boundary());
}

TEST_CASE("demux stops at a header that is not Docker's", "[docker]") {
    std::string got;
    stream_demux d([&](int, std::string_view p) { got += p; });
    CHECK_FALSE(d.feed("hello world, this is a raw tty stream"));
    CHECK(d.failed());
    CHECK(got.empty());
}
