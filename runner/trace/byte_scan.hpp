#pragma once
// The masker's hot loops: finding the next byte a stage must look at in job output that mostly
// needs nothing. Each scan is a plain loop plus SSE2 and AVX2 versions; which one runs is decided
// once from the CPU (the build targets baseline x86-64, so kiln still runs where AVX2 is
// missing). Every scan returns the first position at or after `i` that qualifies, or `n`.

#include <array>
#include <cstddef>

namespace kiln::trace::scan {

/// The first byte equal to `a` or `b`.
std::size_t find_either(const unsigned char* p, std::size_t i, std::size_t n, unsigned char a,
                        unsigned char b);

/// The first byte of 0x80 or above (the first one that is not ASCII).
std::size_t find_non_ascii(const unsigned char* p, std::size_t i, std::size_t n);

/// Bytes that may begin a token prefix: one of `first` followed by one of `second`. Up to four
/// of each are checked with vector compares; more (or an empty `second`, when a prefix is one
/// byte long) fall back to the tables, which always hold the whole sets.
struct pair_set {
    std::array<bool, 256> first_table{};
    std::array<bool, 256> second_table{};
    std::array<unsigned char, 4> first{};   // the first four distinct bytes of each set
    std::array<unsigned char, 4> second{};
    unsigned first_count = 0;  // distinct bytes in each set
    unsigned second_count = 0;
    bool any_second = false;  // some prefix is one byte long: any byte may follow

    void add(unsigned char a);                   // a one-byte prefix
    void add(unsigned char a, unsigned char b);  // a prefix starting with a, b
    bool vector() const {
        return !any_second && first_count > 0 && first_count <= 4 && second_count <= 4;
    }
};

/// The first i with first[p[i]] and (any_second or second[p[i + 1]] or i + 1 == n).
std::size_t find_pair(const unsigned char* p, std::size_t i, std::size_t n, const pair_set& s);

}  // namespace kiln::trace::scan
