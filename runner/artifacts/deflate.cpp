#include "runner/artifacts/deflate.hpp"

#include <isa-l/igzip_lib.h>
#include <libdeflate.h>

#include <stdexcept>
#include <string>

namespace kiln::artifacts::detail {

// Chosen with bench/archive_bench on the reference tree (docs/benchmarks.md, "Issue 5").
// isa-l does everything up to "default": level 2 costs no more CPU than level 1 there and is
// 0.6% smaller. A tree of headers is thousands of tiny deflate streams, and building Huffman
// tables for each is a sixth of all CPU; isa-l level 0 uses fixed tables, so small files use
// it: under 4 KiB at "default" (10% less CPU for a 3% bigger archive), under 16 KiB at "fast"
// (gitlab-runner's "fast" is deflate level 1, the zip -1 equivalent: 8% less CPU again for
// 2.4% more size). The slow levels buy ~12% in
// size for 3x the CPU with libdeflate on whole files (most files of a source tree fit in one
// 512 KiB task) and isa-l's best level on the pieces of split files.
level_plan plan_for(compression_level level) {
    switch (level) {
        case compression_level::fastest: return {0, 0, 0};
        case compression_level::fast: return {1, 0, 16384};
        case compression_level::normal: return {2, 0, 4096};
        case compression_level::slow: return {3, 6, 0};
        case compression_level::slowest: return {3, 9, 0};
    }
    return {2, 0, 4096};
}

namespace {

std::size_t level_buf_size(int isal_level) {
    switch (isal_level) {
        case 1: return ISAL_DEF_LVL1_DEFAULT;
        case 2: return ISAL_DEF_LVL2_DEFAULT;
        case 3: return ISAL_DEF_LVL3_DEFAULT;
        default: return 0;
    }
}

[[noreturn]] void isal_failed(int rc) {
    throw std::runtime_error("deflate (isa-l) failed with code " + std::to_string(rc));
}

}  // namespace

deflater::deflater(compression_level level) : plan_(plan_for(level)) {
    level_buf_.resize(level_buf_size(plan_.isal_level));
    if (plan_.libdeflate_level > 0) {
        libdeflate_ = libdeflate_alloc_compressor(plan_.libdeflate_level);
        if (!libdeflate_) throw std::bad_alloc();
    }
}

deflater::~deflater() {
    if (libdeflate_) libdeflate_free_compressor(libdeflate_);
}

bool deflater::compress_whole(std::span<const unsigned char> in, byte_vector& out) {
    if (in.size() < 16) return false;  // headers alone would make it bigger
    const std::size_t at = out.size();
    const std::size_t room = in.size() - 1;  // only worth it when strictly smaller
    out.resize(at + room);
    if (libdeflate_) {
        std::size_t n = libdeflate_deflate_compress(libdeflate_, in.data(), in.size(), out.data() + at, room);
        out.resize(at + n);  // n == 0: did not fit
        return n != 0;
    }
    isal_zstream s;
    isal_deflate_stateless_init(&s);
    s.level = in.size() < plan_.small_file ? 0 : static_cast<std::uint32_t>(plan_.isal_level);
    s.level_buf = level_buf_.empty() ? nullptr : level_buf_.data();
    s.level_buf_size = static_cast<std::uint32_t>(level_buf_.size());
    s.end_of_stream = 1;
    s.flush = NO_FLUSH;
    s.next_in = const_cast<std::uint8_t*>(in.data());
    s.avail_in = static_cast<std::uint32_t>(in.size());
    s.next_out = out.data() + at;
    s.avail_out = static_cast<std::uint32_t>(room);
    int rc = isal_deflate_stateless(&s);
    if (rc == STATELESS_OVERFLOW) {
        out.resize(at);
        return false;
    }
    if (rc != COMP_OK) isal_failed(rc);
    out.resize(at + s.total_out);
    return true;
}

void deflater::compress_piece(std::span<const unsigned char> dict, std::span<const unsigned char> in,
                              bool last, byte_vector& out) {
    isal_zstream s;
    isal_deflate_init(&s);
    s.level = static_cast<std::uint32_t>(plan_.isal_level);
    s.level_buf = level_buf_.empty() ? nullptr : level_buf_.data();
    s.level_buf_size = static_cast<std::uint32_t>(level_buf_.size());
    s.end_of_stream = last ? 1 : 0;
    s.flush = last ? NO_FLUSH : SYNC_FLUSH;
    if (!dict.empty()) {
        int rc = isal_deflate_set_dict(&s, const_cast<std::uint8_t*>(dict.data()),
                                       static_cast<std::uint32_t>(dict.size()));
        if (rc != COMP_OK) isal_failed(rc);
    }
    s.next_in = const_cast<std::uint8_t*>(in.data());
    s.avail_in = static_cast<std::uint32_t>(in.size());
    std::size_t used = out.size();
    for (;;) {
        // Stored blocks bound the expansion: 5 bytes per 64 KiB, plus the flush marker.
        std::size_t want = in.size() + in.size() / 64 + 1024;
        if (out.size() - used < want) out.resize(used + want);
        s.next_out = out.data() + used;
        s.avail_out = static_cast<std::uint32_t>(out.size() - used);
        const std::uint32_t before = s.avail_out;
        int rc = isal_deflate(&s);
        if (rc != COMP_OK) isal_failed(rc);
        used += before - s.avail_out;
        bool finished = last ? s.internal_state.state == ZSTATE_END
                             : (s.avail_in == 0 && s.avail_out > 0);
        if (finished) break;
    }
    out.resize(used);
}

}  // namespace kiln::artifacts::detail
