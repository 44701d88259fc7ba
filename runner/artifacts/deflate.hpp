#pragma once
// Raw deflate of one piece of input, the building block of the parallel zip writer and of
// gzip. Internal to runner/artifacts.
//
// Two codecs, chosen per compression level by measurement (docs/benchmarks.md, "Issue 5"):
// isa-l (levels 0-3, very fast, stateful with flushes so that one file's data can be cut into
// pieces compressed by different workers and concatenated into one deflate stream) and
// libdeflate (better ratios, but whole-buffer only: its output always ends with a final block,
// so it can only compress a piece that is a whole file).

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <utility>
#include <vector>

#include "runner/artifacts/archive.hpp"

struct libdeflate_compressor;

namespace kiln::artifacts::detail {

/// A vector whose resize() leaves new bytes uninitialised: buffers about to be overwritten by
/// read() or a compressor are not zeroed first.
template <class T>
struct uninitialised_allocator : std::allocator<T> {
    template <class U>
    struct rebind {
        using other = uninitialised_allocator<U>;
    };
    using std::allocator<T>::allocator;
    template <class U>
    void construct(U* p) noexcept {
        ::new (static_cast<void*>(p)) U;
    }
    template <class U, class... Args>
    void construct(U* p, Args&&... args) {
        ::new (static_cast<void*>(p)) U(std::forward<Args>(args)...);
    }
};
using byte_vector = std::vector<unsigned char, uninitialised_allocator<unsigned char>>;

/// What a compression level means for the codecs.
struct level_plan {
    int isal_level = 1;       // isa-l level 0..3, for pieces of split files (and whole files
                              // when libdeflate_level is 0)
    int libdeflate_level = 0;  // >0: libdeflate for whole files at this level
    std::size_t small_file = 0;  // whole files below this size: isa-l level 0, whose static
                                 // tables spare building Huffman tables per tiny stream
};

level_plan plan_for(compression_level level);

/// One worker's compressor state (isa-l level buffer, libdeflate compressor). Not thread-safe;
/// one per thread.
class deflater {
public:
    explicit deflater(compression_level level);
    ~deflater();
    deflater(const deflater&) = delete;
    deflater& operator=(const deflater&) = delete;

    /// Compresses `in` as a complete deflate stream (a whole file) and appends it to `out`.
    /// Returns false (leaving `out` as it was) when the result would not be smaller than the
    /// input, so the caller stores the data instead.
    bool compress_whole(std::span<const unsigned char> in, byte_vector& out);

    /// Compresses one piece of a longer stream and appends it to `out`: `dict` is the data just
    /// before the piece (up to 32 KiB, may be empty), `last` ends the stream with a final
    /// block; a piece that is not last ends byte-aligned (sync flush), so the pieces of one
    /// file concatenate into one valid deflate stream.
    void compress_piece(std::span<const unsigned char> dict, std::span<const unsigned char> in,
                        bool last, byte_vector& out);

private:
    level_plan plan_;
    std::vector<unsigned char> level_buf_;
    libdeflate_compressor* libdeflate_ = nullptr;
};

}  // namespace kiln::artifacts::detail
