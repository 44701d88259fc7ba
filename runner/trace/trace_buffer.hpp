#pragma once
// The job log on its way to GitLab: output goes in, masked, UTF-8-clean and size-limited bytes
// come out with their offsets and checksum. Final bytes are spooled to an unlinked temporary
// file, so memory per job stays small whatever the log size; trace_streamer reads them back.

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "runner/trace/masker.hpp"
#include "runner/trace/spool_file.hpp"
#include "runner/trace/timestamper.hpp"

namespace kiln::trace {

/// gitlab-runner's default output_limit: 4096 KiB.
inline constexpr std::size_t default_limit = 4096 * 1024;

/// Where output comes from, as gitlab-runner's log streams: kiln's own messages are stream 00
/// (stdout), the job's scripts stream 01, stdout or stderr.
enum class source : std::uint8_t { runner, job_stdout, job_stderr };

struct trace_options {
    std::vector<std::string> token_prefixes;  ///< features.token_mask_prefixes
    bool mask_all_default_tokens = true;      ///< FF_MASK_ALL_DEFAULT_TOKENS
    /// Where the spool file is created (kiln's spool directory, so save_as can name it without
    /// a copy); empty or unusable: $TMPDIR, else /tmp.
    std::string spool_dir;
    /// The spool file is written with O_DIRECT where the file system takes it (spool_file).
    bool direct_io = true;
    /// FF_TIMESTAMPS: each line gets gitlab-runner's prefix (time, stream id, O/E, '+' for a
    /// continued line; protocol.md §6.4 item 4), and each source is masked and cut into lines on
    /// its own, as gitlab-runner's per-stream log writers do. Off: every source goes through one
    /// masker, in the order written.
    bool timestamps = false;
    /// The timestamps' clock.
    timestamper::clock_fn clock = &std::chrono::system_clock::now;
};

/// Job output this process has taken through trace buffers (masking, UTF-8 repair, CRC32, into
/// the spool), and the time that took: kiln's masking throughput metric. I/O thread only.
struct masking_totals {
    std::uint64_t bytes = 0;
    std::uint64_t nanoseconds = 0;
};
masking_totals masking_work();

class trace_buffer {
public:
    /// `secrets`: values of masked variables (trimmed, empty ones dropped, see masker).
    trace_buffer(std::size_t limit_bytes, std::vector<std::string> secrets,
                 trace_options options = {});
    ~trace_buffer();
    trace_buffer(const trace_buffer&) = delete;
    trace_buffer& operator=(const trace_buffer&) = delete;

    /// Appends output. Secrets are masked before anything becomes visible; bytes that could
    /// still become a match are held back until the next write from the same source (with
    /// timestamps: also a partial line) or close(). Past the limit, output is cut (not inside a
    /// UTF-8 sequence) and gitlab-runner's notice is appended once; later output is dropped.
    void write(source from, std::string_view data);
    /// kiln's own messages.
    void write(std::string_view data) { write(source::runner, data); }

    /// Room to read the next output from `from` straight into (at most `max` bytes): the place
    /// in the spool block where write() would copy it, so bytes the masker passes unchanged
    /// are never copied. Empty when there is none (slow output, timestamps, no spool file):
    /// read elsewhere and call write(). Nothing else may be written before placed().
    std::span<char> prepare(source from, std::size_t max);
    /// `n` bytes were read to the start of what prepare() gave: the same as write() of them.
    void placed(source from, std::size_t n);

    /// End of a stage's output: with timestamps, what the job's sources hold back is released
    /// (a partial last line gets its newline), so kiln's next message follows it. Without
    /// timestamps there is nothing to reorder and this does nothing.
    void end_job_output();

    /// End of output: releases held-back bytes.
    void close();

    bool timestamps() const { return timestamps_; }

    /// Bytes that are final (masked, limited); offsets into the trace GitLab stores.
    std::size_t size() const { return size_; }
    /// Copies up to `max` final bytes from `offset` to `dest`; returns how many (fewer only at
    /// the end of the trace or when the spool file cannot be read).
    std::size_t read(std::size_t offset, char* dest, std::size_t max) const;
    /// Up to `max` (at most 1 MiB) final bytes from `offset` without copying them where they
    /// are still in memory; `keep` holds them for as long as the caller needs (a PATCH body).
    /// Bytes already on disk are read on the blocking pool.
    boost::asio::awaitable<spool_file::view> chunk(std::size_t offset, std::size_t max) const {
        return spool_.read_async(offset, max);
    }
    /// The buffer chunks read from disk go through, once no chunk holds it.
    void release_read_buffer() const { spool_.release_read_buffer(); }
    /// Up to `max` final bytes from `offset`.
    std::string slice(std::size_t offset, std::size_t max) const;
    std::string contents() const { return slice(0, size_); }

    /// After close(): the whole trace as a new file at `path` (mode 0600), made durable with
    /// fsync. The spool file itself gets the name when it can (same file system, O_TMPFILE):
    /// no byte is copied; otherwise the kernel copies it (copy_file_range). Throws
    /// std::system_error naming the path.
    void save_as(const std::filesystem::path& path);

    /// "crc32:%08x" over all final bytes, as GitLab expects in output.checksum.
    std::string checksum() const;
    bool truncated() const { return truncated_; }

    /// False when no spool file could be created or written: the log is then kept in memory
    /// (still bounded by the limit).
    bool spooled() const { return spool_.ok(); }
    /// The spool file is written with O_DIRECT.
    bool spooled_direct() const { return spool_.direct(); }
    /// Bytes of memory this buffer holds, tables and buffers included.
    std::size_t memory_footprint() const;

private:
    // One source's writer chain before the shared UTF-8 repair and limit: masker, then (with
    // timestamps) the line timestamper.
    struct lane {
        masker mask;
        std::optional<timestamper> stamp;
    };
    lane& lane_for(source from);
    void feed(lane& l, std::string_view masked);
    void finish(lane& l);
    void process(std::string_view piece);
    void commit(std::string_view bytes);
    void append(std::string_view bytes);
    void place(std::string_view bytes);

    std::size_t limit_;
    bool timestamps_;
    timestamper::clock_fn clock_;
    masker_options masking_;  // to start a lane (with timestamps, one per source, when first used)
    // By source; without timestamps only [0] exists and takes every source.
    std::array<std::unique_ptr<lane>, 3> lanes_;
    utf8_repair utf8_;
    std::string stamped_;  // scratch: a piece of masked output with timestamps
    spool_file spool_;
    bool fast_ = false;  // a job writing fast: large writes, not yet followed by a run of small ones
    int small_writes_ = 0;
    std::size_t size_ = 0;
    std::uint32_t crc_ = 0;
    bool truncated_ = false;
    // A read placed in the spool block: what prepare() lent, then the bytes read there while
    // the masker works on them. Output that cannot go in place without overwriting raw bytes
    // it has not read yet is set aside and appended when it is done.
    std::span<char> prepared_;
    std::string_view raw_;
    bool set_aside_ = false;
    std::string aside_;
};

}  // namespace kiln::trace
