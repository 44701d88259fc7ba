#include <catch2/catch.hpp>

#include <random>
#include <string>

#include "runner/trace/byte_scan.hpp"

namespace scan = kiln::trace::scan;

namespace {

const unsigned char* bytes(const std::string& s) {
    return reinterpret_cast<const unsigned char*>(s.data());
}

// Plain text without any of the bytes the scans look for.
std::string filler(std::size_t n, std::mt19937& rng) {
    static constexpr std::string_view alphabet = "ABCDEFHIJKLMNOPQRSTUVWXYZ0123456789+/ \n";
    std::string s(n, ' ');
    for (auto& c : s) {
        c = alphabet[rng() % alphabet.size()];
    }
    return s;
}

}  // namespace

// The vector loops stop at 16/32/64-byte steps and hand the tail to the plain loop: a byte to
// find is planted at every position of texts of every length around those steps, starting the
// scan at every offset before it.
TEST_CASE("byte scans find the first qualifying byte wherever it is", "[trace][scan]") {
    std::mt19937 rng(7);
    scan::pair_set starts;
    starts.add('g', 'l');
    starts.add('_', 'g');
    for (std::size_t n = 0; n <= 130; ++n) {
        const std::string base = filler(n, rng);
        for (std::size_t from = 0; from <= n; from += (n > 40 ? 7 : 1)) {
            REQUIRE(scan::find_either(bytes(base), from, n, '?', '&') == n);
            REQUIRE(scan::find_non_ascii(bytes(base), from, n) == n);
            REQUIRE(scan::find_pair(bytes(base), from, n, starts) == n);
        }
        for (std::size_t at = 0; at < n; ++at) {
            std::string s = base;
            s[at] = '&';
            std::string hi = base;
            hi[at] = static_cast<char>(0xC3);
            std::string pair = base;
            pair[at] = 'g';
            if (at + 1 < n) {
                pair[at + 1] = 'l';
            }
            // A first byte alone, followed by a byte that cannot follow it, is no start.
            std::string lone = base;
            lone[at] = '_';
            if (at + 1 < n) {
                lone[at + 1] = 'x';
            }
            for (std::size_t from : {std::size_t{0}, at / 2, at}) {
                REQUIRE(scan::find_either(bytes(s), from, n, '?', '&') == at);
                REQUIRE(scan::find_non_ascii(bytes(hi), from, n) == at);
                REQUIRE(scan::find_pair(bytes(pair), from, n, starts) == at);
                // At the very end a first byte may still begin a prefix: the next write decides.
                REQUIRE(scan::find_pair(bytes(lone), from, n, starts) == (at + 1 == n ? at : n));
            }
            REQUIRE(scan::find_either(bytes(s), at + 1, n, '?', '&') == n);
        }
    }
}

TEST_CASE("pair scans with many or one-byte prefixes use the tables", "[trace][scan]") {
    scan::pair_set many;
    for (char c : std::string("abcdef")) {
        many.add(static_cast<unsigned char>(c), 'x');
    }
    CHECK_FALSE(many.vector());
    const std::string text = std::string(70, 'Z') + "fx" + std::string(10, 'Z');
    CHECK(scan::find_pair(bytes(text), 0, text.size(), many) == 70);

    scan::pair_set one;
    one.add('q', 'r');
    CHECK(one.vector());
    one.add('Z');
    CHECK_FALSE(one.vector());
    CHECK(scan::find_pair(bytes(text), 3, text.size(), one) == 3);
}
