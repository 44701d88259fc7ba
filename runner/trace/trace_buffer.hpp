#pragma once
// The job log on its way to GitLab: output goes in, masked, UTF-8-clean and size-limited bytes
// come out with their offsets and checksum. Final bytes are spooled to an unlinked temporary
// file, so memory per job stays small whatever the log size; trace_streamer reads them back.

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "runner/trace/masker.hpp"

namespace kiln::trace {

/// gitlab-runner's default output_limit: 4096 KiB.
inline constexpr std::size_t default_limit = 4096 * 1024;

struct trace_options {
    std::vector<std::string> token_prefixes;  ///< features.token_mask_prefixes
    bool mask_all_default_tokens = true;      ///< FF_MASK_ALL_DEFAULT_TOKENS
    /// Where the spool file is created; empty: $TMPDIR, else /tmp.
    std::string spool_dir;
};

class trace_buffer {
public:
    /// `secrets`: values of masked variables (trimmed, empty ones dropped, see masker).
    trace_buffer(std::size_t limit_bytes, std::vector<std::string> secrets,
                 trace_options options = {});
    ~trace_buffer();
    trace_buffer(const trace_buffer&) = delete;
    trace_buffer& operator=(const trace_buffer&) = delete;

    /// Appends output. Secrets are masked before anything becomes visible; bytes that could
    /// still become a match are held back until the next write or close(). Past the limit,
    /// output is cut (not inside a UTF-8 sequence) and gitlab-runner's notice is appended once;
    /// later output is dropped.
    void write(std::string_view data);

    /// End of output: releases held-back bytes.
    void close();

    /// Bytes that are final (masked, limited); offsets into the trace GitLab stores.
    std::size_t size() const { return size_; }
    /// Up to `max` final bytes from `offset`.
    std::string slice(std::size_t offset, std::size_t max) const;
    std::string contents() const { return slice(0, size_); }

    /// "crc32:%08x" over all final bytes, as GitLab expects in output.checksum.
    std::string checksum() const;
    bool truncated() const { return truncated_; }

    /// False when no spool file could be created or written: the log is then kept in memory
    /// (still bounded by the limit).
    bool spooled() const { return fd_ >= 0 && !spool_failed_; }
    /// Bytes of memory this buffer holds, tables and buffers included.
    std::size_t memory_footprint() const;

private:
    void process(std::string_view piece);
    void commit(std::string_view bytes);
    void append(std::string_view bytes);
    void flush_spool();

    std::size_t limit_;
    masker masker_;
    utf8_repair utf8_;
    std::string masked_;  // scratch: one piece after masking
    std::string clean_;   // scratch: the same after UTF-8 repair
    std::string pending_;  // final bytes not yet in the spool file
    int fd_ = -1;
    bool spool_failed_ = false;
    std::size_t spooled_ = 0;  // bytes in the spool file: [0, spooled_)
    std::size_t size_ = 0;
    std::uint32_t crc_ = 0;
    bool truncated_ = false;
};

}  // namespace kiln::trace
