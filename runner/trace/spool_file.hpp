#pragma once
// Where a job log's final bytes live while the job runs: an anonymous file, written in blocks
// by a background writer thread, with O_DIRECT where the file system takes it. The I/O thread
// only copies bytes into the block being filled (64 KiB while output is slow, 1 MiB while it is
// fast); the newest bytes are read from memory, and a PATCH body that lies in one block is lent
// without a copy; older bytes are read back from the file on the blocking pool.
//
// Why a writer thread: a write can wait on the disk (dirty-page throttling on a busy build
// host), which must never stall polling or other jobs. Why O_DIRECT: through the page cache, a
// 100 MB log cost the kernel ~0.3 ms of CPU per MB to copy into pages, write back, and free
// again when the job ended (bench/trace_path_bench, docs/benchmarks.md); with direct I/O the
// device moves the bytes. Where the file system refuses it, the same blocks go through the
// page cache.
//
// Not thread-safe: one owner thread (the job's), except sync_to_disk and the reads after it,
// which may run on another thread while the owner waits.

#include <boost/asio/awaitable.hpp>
#include <cstddef>
#include <deque>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace kiln::trace {

class spool_file {
public:
    /// Bytes a block holds while output comes fast; also the largest read.
    static constexpr std::size_t large_block = 1024 * 1024;
    /// ... and while it comes slowly, which bounds the memory of a quiet job.
    static constexpr std::size_t small_block = 64 * 1024;

    /// An anonymous file in `dir` (O_TMPFILE), else in $TMPDIR or /tmp. ok() is false when
    /// none could be made: everything then stays in memory. `try_direct`: O_DIRECT where the
    /// file system takes it (false: through the page cache, as on one that refuses it).
    explicit spool_file(const std::string& dir, bool try_direct = true);
    ~spool_file();  // waits for the writes in flight
    spool_file(const spool_file&) = delete;
    spool_file& operator=(const spool_file&) = delete;

    /// A file exists and every write so far succeeded. After a failed write the bytes not on
    /// disk stay in memory (the caller's size limit bounds them).
    bool ok() const;
    /// Written with O_DIRECT.
    bool direct() const { return align_ > 1; }
    std::size_t size() const { return size_; }

    /// `fast`: the output comes in large writes; blocks are large while it does. Bytes that
    /// already lie where they go (placed in the space prepare() gave) are not copied.
    void append(std::string_view bytes, bool fast);

    /// While output comes fast: room in the block being filled, from `reserve` bytes past
    /// what it holds, for output to be read straight into before it is appended. Empty when
    /// there is less than `min` of it, the output is slow, or bytes do not go to a file.
    std::span<char> prepare(std::size_t reserve, std::size_t min);
    /// The free part of the block being filled: where append() puts the next byte, and how far
    /// that block goes. Empty when no block is being filled.
    std::span<char> free_space() const;

    /// Up to `max` bytes from `offset` (fewer at the end, or none after a read error). `keep`
    /// holds the memory `bytes` points to; a view of a block still in memory is not copied.
    struct view {
        std::string_view bytes;
        std::shared_ptr<const void> keep;
    };
    /// Reads the file on the calling thread.
    view read(std::size_t offset, std::size_t max) const;
    /// The same, with the file read on the blocking pool: for the I/O thread.
    boost::asio::awaitable<view> read_async(std::size_t offset, std::size_t max) const;
    /// Gives back the buffer disk reads go through (1 MiB) once no view of it is held.
    void release_read_buffer() const;
    /// No more output: gives back the spare block buffers.
    void release_spares() {
        spares_.clear();
        half_region_.reset();
    }

    /// Writes everything, the last partial block too, and waits for it: the file then holds
    /// exactly the bytes appended. False when it cannot (no file, a failed write). Later
    /// appends stay in memory.
    bool sync_to_disk();
    /// The file's descriptor (for linkat and fsync); -1 when there is none.
    int fd() const { return fd_; }

    /// Memory this spool holds: blocks and the read buffer.
    std::size_t memory_footprint() const;

    struct block;

private:
    struct spare {
        std::shared_ptr<char> buffer;
        std::size_t touched;  // bytes of it that are resident
    };
    // A read planned on the owner thread: the part on disk (read anywhere) and pins on the
    // blocks holding the rest, copied after the disk part.
    struct read_plan;

    block& writable(bool fast);
    std::shared_ptr<char> fast_buffer();
    void submit_back();
    void reap() const;
    void wait_oldest() const;
    int buffered_fd();
    read_plan plan_read(std::size_t offset, std::size_t max) const;

    int fd_ = -1;
    int buffered_fd_ = -1;   // the file without O_DIRECT, opened when the disk falls behind
    std::size_t align_ = 1;  // offsets, sizes and buffers of direct I/O; 1 without it
    std::size_t size_ = 0;
    // Bytes [0, disk_end_) are on disk; blocks_ hold [disk_end_, size_), oldest first, the
    // back one still filling. Mutable: reads reap the blocks whose writes completed.
    mutable std::size_t disk_end_ = 0;
    mutable std::deque<std::shared_ptr<block>> blocks_;
    // Block buffers to reuse: a fresh megabyte per block cost page faults on every block.
    mutable std::vector<spare> spares_;
    mutable std::shared_ptr<char> read_buffer_;  // disk reads (aligned)
    std::shared_ptr<char> half_region_;          // the unused half of a fast block's region
    mutable bool failed_ = false;
    bool was_fast_ = false;
    bool synced_ = false;  // the file ends where the last sync left it: later bytes stay in memory
};

}  // namespace kiln::trace
