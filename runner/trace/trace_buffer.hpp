#pragma once
// The job log on its way to GitLab, as a pure value: output goes in, masked and size-limited
// bytes come out with their offsets and checksum. No I/O; trace_streamer sends what this holds.

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace kiln::trace {

/// gitlab-runner's default output_limit: 4096 KiB.
inline constexpr std::size_t default_limit = 4096 * 1024;
inline constexpr std::string_view masked_text = "[MASKED]";

class trace_buffer {
public:
    /// `secrets`: values of masked variables (trimmed, empty ones dropped, matched longest first).
    trace_buffer(std::size_t limit_bytes, std::vector<std::string> secrets);

    /// Appends output. Secrets are replaced by [MASKED] before anything becomes visible; bytes
    /// that could be the start of a secret split across writes are held back until the next
    /// write or close(). Past the limit, output is cut (not inside a UTF-8 sequence) and
    /// gitlab-runner's notice is appended once; later output is dropped.
    void write(std::string_view data);

    /// End of output: releases held-back bytes.
    void close();

    /// Bytes that are final (masked, limited); offsets into the trace GitLab stores.
    std::size_t size() const { return data_.size(); }
    std::string_view contents() const { return data_; }
    /// Up to `max` final bytes from `offset`.
    std::string_view slice(std::size_t offset, std::size_t max) const;

    /// "crc32:%08x" over all final bytes, as GitLab expects in output.checksum.
    std::string checksum() const;
    bool truncated() const { return truncated_; }

private:
    void commit(std::string_view masked);

    std::size_t limit_;
    std::vector<std::string> secrets_;
    std::size_t longest_secret_ = 0;
    std::string held_;
    std::string data_;
    std::uint32_t crc_ = 0;
    bool truncated_ = false;
};

}  // namespace kiln::trace
