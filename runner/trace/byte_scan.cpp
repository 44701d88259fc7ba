#include "runner/trace/byte_scan.hpp"

#include <algorithm>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define KILN_X86 1
#endif

namespace kiln::trace::scan {
namespace {

#if KILN_X86
// AVX2 is worth asking for at run time: the scans are the masker's whole cost on ordinary
// output, and 32 bytes a step halves it again after SSE2's 16.
const bool has_avx2 = __builtin_cpu_supports("avx2");

unsigned ctz(unsigned m) { return static_cast<unsigned>(__builtin_ctz(m)); }

__attribute__((target("avx2"))) std::size_t find_either_avx2(const unsigned char* p,
                                                              std::size_t i, std::size_t n,
                                                              unsigned char a, unsigned char b) {
    const __m256i va = _mm256_set1_epi8(static_cast<char>(a));
    const __m256i vb = _mm256_set1_epi8(static_cast<char>(b));
    for (; i + 32 <= n; i += 32) {
        const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i));
        const auto m = static_cast<unsigned>(
            _mm256_movemask_epi8(_mm256_or_si256(_mm256_cmpeq_epi8(v, va), _mm256_cmpeq_epi8(v, vb))));
        if (m != 0) {
            return i + ctz(m);
        }
    }
    return i;
}

std::size_t find_either_sse2(const unsigned char* p, std::size_t i, std::size_t n, unsigned char a,
                             unsigned char b) {
    const __m128i va = _mm_set1_epi8(static_cast<char>(a));
    const __m128i vb = _mm_set1_epi8(static_cast<char>(b));
    for (; i + 16 <= n; i += 16) {
        const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + i));
        const auto m = static_cast<unsigned>(
            _mm_movemask_epi8(_mm_or_si128(_mm_cmpeq_epi8(v, va), _mm_cmpeq_epi8(v, vb))));
        if (m != 0) {
            return i + ctz(m);
        }
    }
    return i;
}

__attribute__((target("avx2"))) std::size_t find_non_ascii_avx2(const unsigned char* p,
                                                                 std::size_t i, std::size_t n) {
    for (; i + 64 <= n; i += 64) {
        const __m256i v0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i));
        const __m256i v1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i + 32));
        if (_mm256_movemask_epi8(_mm256_or_si256(v0, v1)) != 0) {
            break;
        }
    }
    for (; i + 32 <= n; i += 32) {
        const auto m = static_cast<unsigned>(
            _mm256_movemask_epi8(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i))));
        if (m != 0) {
            return i + ctz(m);
        }
    }
    return i;
}

std::size_t find_non_ascii_sse2(const unsigned char* p, std::size_t i, std::size_t n) {
    for (; i + 16 <= n; i += 16) {
        const auto m = static_cast<unsigned>(
            _mm_movemask_epi8(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + i))));
        if (m != 0) {
            return i + ctz(m);
        }
    }
    return i;
}

// K compares per set (the sets padded by repeating a member): the default prefixes need two.
template <unsigned K>
__attribute__((target("avx2"))) std::size_t find_pair_avx2(const unsigned char* p, std::size_t i,
                                                            std::size_t n, const pair_set& s) {
    __m256i f[K];
    __m256i g[K];
    for (unsigned k = 0; k < K; ++k) {
        f[k] = _mm256_set1_epi8(static_cast<char>(s.first[std::min(k, s.first_count - 1)]));
        g[k] = _mm256_set1_epi8(
            static_cast<char>(s.second[s.second_count == 0 ? 0 : std::min(k, s.second_count - 1)]));
    }
    for (; i + 33 <= n; i += 32) {
        const __m256i v0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i));
        const __m256i v1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i + 1));
        __m256i a = _mm256_cmpeq_epi8(v0, f[0]);
        __m256i b = _mm256_cmpeq_epi8(v1, g[0]);
        for (unsigned k = 1; k < K; ++k) {
            a = _mm256_or_si256(a, _mm256_cmpeq_epi8(v0, f[k]));
            b = _mm256_or_si256(b, _mm256_cmpeq_epi8(v1, g[k]));
        }
        const auto m = static_cast<unsigned>(_mm256_movemask_epi8(_mm256_and_si256(a, b)));
        if (m != 0) {
            return i + ctz(m);
        }
    }
    return i;
}

std::size_t find_pair_sse2(const unsigned char* p, std::size_t i, std::size_t n, const pair_set& s) {
    __m128i f[4];
    __m128i g[4];
    for (unsigned k = 0; k < 4; ++k) {
        f[k] = _mm_set1_epi8(static_cast<char>(s.first[std::min(k, s.first_count - 1)]));
        g[k] = _mm_set1_epi8(
            static_cast<char>(s.second[s.second_count == 0 ? 0 : std::min(k, s.second_count - 1)]));
    }
    for (; i + 17 <= n; i += 16) {
        const __m128i v0 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + i));
        const __m128i v1 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + i + 1));
        const __m128i a = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(v0, f[0]), _mm_cmpeq_epi8(v0, f[1])),
                                       _mm_or_si128(_mm_cmpeq_epi8(v0, f[2]), _mm_cmpeq_epi8(v0, f[3])));
        const __m128i b = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(v1, g[0]), _mm_cmpeq_epi8(v1, g[1])),
                                       _mm_or_si128(_mm_cmpeq_epi8(v1, g[2]), _mm_cmpeq_epi8(v1, g[3])));
        const auto m = static_cast<unsigned>(_mm_movemask_epi8(_mm_and_si128(a, b)));
        if (m != 0) {
            return i + ctz(m);
        }
    }
    return i;
}
#endif

}  // namespace

namespace {

// Adds c to one of the sets: its table, and its list while the list has room.
void add_member(unsigned char c, std::array<bool, 256>& table, std::array<unsigned char, 4>& list,
                unsigned& count) {
    if (!table[c]) {
        table[c] = true;
        if (count < list.size()) {
            list[count] = c;
        }
        ++count;
    }
}

}  // namespace

void pair_set::add(unsigned char a) {
    add_member(a, first_table, first, first_count);
    any_second = true;
}

void pair_set::add(unsigned char a, unsigned char b) {
    add_member(a, first_table, first, first_count);
    add_member(b, second_table, second, second_count);
}

std::size_t find_either(const unsigned char* p, std::size_t i, std::size_t n, unsigned char a,
                        unsigned char b) {
#if KILN_X86
    i = has_avx2 ? find_either_avx2(p, i, n, a, b) : find_either_sse2(p, i, n, a, b);
#endif
    for (; i < n; ++i) {
        if (p[i] == a || p[i] == b) {
            return i;
        }
    }
    return n;
}

std::size_t find_non_ascii(const unsigned char* p, std::size_t i, std::size_t n) {
#if KILN_X86
    i = has_avx2 ? find_non_ascii_avx2(p, i, n) : find_non_ascii_sse2(p, i, n);
#endif
    for (; i < n; ++i) {
        if (p[i] >= 0x80) {
            return i;
        }
    }
    return n;
}

std::size_t find_pair(const unsigned char* p, std::size_t i, std::size_t n, const pair_set& s) {
#if KILN_X86
    if (s.vector()) {
        if (!has_avx2) {
            i = find_pair_sse2(p, i, n, s);
        } else {
            switch (std::max(s.first_count, s.second_count)) {
                case 1: i = find_pair_avx2<1>(p, i, n, s); break;
                case 2: i = find_pair_avx2<2>(p, i, n, s); break;
                case 3: i = find_pair_avx2<3>(p, i, n, s); break;
                default: i = find_pair_avx2<4>(p, i, n, s); break;
            }
        }
    }
#endif
    for (; i < n; ++i) {
        if (s.first_table[p[i]] && (s.any_second || i + 1 == n || s.second_table[p[i + 1]])) {
            return i;
        }
    }
    return n;
}

}  // namespace kiln::trace::scan
