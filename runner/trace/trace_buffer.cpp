#include "runner/trace/trace_buffer.hpp"

#include <fcntl.h>
#include <libdeflate.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace kiln::trace {
namespace {

// Output is masked in pieces of at most this size, which bounds the scratch buffers whatever the
// size of one write (masking rarely makes a piece longer; the buffers can grow if it does).
constexpr std::size_t piece_bytes = 8 * 1024;
constexpr std::size_t scratch_bytes = piece_bytes + piece_bytes / 4;
// Final bytes gather in memory up to this size before one write to the spool file.
constexpr std::size_t spool_batch = 32 * 1024;

std::string spool_directory(const std::string& configured) {
    if (!configured.empty()) {
        return configured;
    }
    const char* tmp = std::getenv("TMPDIR");
    return tmp != nullptr && *tmp != '\0' ? tmp : "/tmp";
}

// An anonymous file: it has no name from the start (O_TMPFILE) or loses it at once, so it goes
// away with the descriptor even if kiln is killed.
int open_spool(const std::string& dir) {
#ifdef O_TMPFILE
    if (int fd = ::open(dir.c_str(), O_TMPFILE | O_RDWR | O_CLOEXEC, 0600); fd >= 0) {
        return fd;
    }
#endif
    std::string path = dir + "/kiln-trace-XXXXXX";
    const int fd = ::mkostemp(path.data(), O_CLOEXEC);
    if (fd >= 0) {
        ::unlink(path.c_str());
    }
    return fd;
}

bool pwrite_all(int fd, const char* p, std::size_t n, std::size_t offset) {
    while (n > 0) {
        const ssize_t w = ::pwrite(fd, p, n, static_cast<off_t>(offset));
        if (w < 0 && errno == EINTR) {
            continue;
        }
        if (w <= 0) {
            return false;
        }
        p += w;
        n -= static_cast<std::size_t>(w);
        offset += static_cast<std::size_t>(w);
    }
    return true;
}

masker_options masking(std::vector<std::string> secrets, const trace_options& o) {
    masker_options m;
    m.phrases = std::move(secrets);
    m.token_prefixes = o.token_prefixes;
    m.mask_all_default_tokens = o.mask_all_default_tokens;
    return m;
}

}  // namespace

trace_buffer::trace_buffer(std::size_t limit_bytes, std::vector<std::string> secrets,
                           trace_options options)
    : limit_(limit_bytes), masker_(masking(std::move(secrets), options)),
      fd_(open_spool(spool_directory(options.spool_dir))) {}

trace_buffer::~trace_buffer() {
    if (fd_ >= 0) {
        ::close(fd_);
    }
}

void trace_buffer::write(std::string_view data) {
    if (masked_.capacity() < scratch_bytes) {
        masked_.reserve(scratch_bytes);
        clean_.reserve(scratch_bytes);
    }
    while (!data.empty() && !truncated_) {
        const auto piece = data.substr(0, piece_bytes);
        data.remove_prefix(piece.size());
        masked_.clear();
        masker_.write(piece, masked_);
        process(masked_);
    }
}

void trace_buffer::close() {
    if (!truncated_) {
        masked_.clear();
        masker_.flush(masked_);
        process(masked_);
        clean_.clear();
        utf8_.flush(clean_);
        commit(clean_);
    }
    flush_spool();
    for (auto* s : {&masked_, &clean_}) {
        s->clear();
        s->shrink_to_fit();
    }
    if (pending_.empty()) {
        pending_.shrink_to_fit();
    }
}

void trace_buffer::process(std::string_view masked) {
    if (masked.empty()) {
        return;
    }
    clean_.clear();
    utf8_.write(masked, clean_);
    commit(clean_);
}

void trace_buffer::commit(std::string_view bytes) {
    if (truncated_ || bytes.empty()) {
        return;
    }
    if (size_ + bytes.size() <= limit_) {
        append(bytes);
        return;
    }
    // Cut at the limit, backing off over continuation bytes (bytes are valid UTF-8 here) so the
    // cut never splits a character.
    std::size_t n = limit_ - size_;
    for (int i = 0; i < 3 && n > 0 && (static_cast<unsigned char>(bytes[n]) & 0xC0) == 0x80; ++i) {
        --n;
    }
    append(bytes.substr(0, n));
    truncated_ = true;
    append("\n\x1b[33;1mJob's log exceeded limit of " + std::to_string(limit_) +
           " bytes.\nJob execution will continue but no more output will be collected."
           "\x1b[0;m\n");
}

void trace_buffer::append(std::string_view bytes) {
    crc_ = libdeflate_crc32(crc_, bytes.data(), bytes.size());
    size_ += bytes.size();
    if (pending_.size() + bytes.size() > spool_batch) {
        flush_spool();
    }
    if (pending_.empty() && bytes.size() >= spool_batch && spooled()) {
        if (pwrite_all(fd_, bytes.data(), bytes.size(), spooled_)) {
            spooled_ += bytes.size();
            return;
        }
        spool_failed_ = true;
    }
    if (pending_.capacity() < spool_batch) {
        pending_.reserve(spool_batch);
    }
    pending_.append(bytes);
}

void trace_buffer::flush_spool() {
    if (fd_ < 0 || spool_failed_ || pending_.empty()) {
        return;
    }
    if (!pwrite_all(fd_, pending_.data(), pending_.size(), spooled_)) {
        // Keep the bytes in memory rather than lose them; the limit still bounds them. Whatever
        // a failed pwrite left in the file is past spooled_ and never read.
        spool_failed_ = true;
        return;
    }
    spooled_ += pending_.size();
    pending_.clear();
}

std::string trace_buffer::slice(std::size_t offset, std::size_t max) const {
    if (offset >= size_) {
        return {};
    }
    std::string out(std::min(max, size_ - offset), '\0');
    std::size_t done = 0;
    if (offset < spooled_) {
        const std::size_t want = std::min(out.size(), spooled_ - offset);
        while (done < want) {
            const ssize_t r = ::pread(fd_, out.data() + done, want - done,
                                      static_cast<off_t>(offset + done));
            if (r < 0 && errno == EINTR) {
                continue;
            }
            if (r <= 0) {
                out.resize(done);  // a read error: hand out what was read
                return out;
            }
            done += static_cast<std::size_t>(r);
        }
    }
    if (done < out.size()) {
        std::memcpy(out.data() + done, pending_.data() + (offset + done - spooled_),
                    out.size() - done);
    }
    return out;
}

std::string trace_buffer::checksum() const {
    char buf[32];
    std::snprintf(buf, sizeof buf, "crc32:%08x", crc_);
    return buf;
}

std::size_t trace_buffer::memory_footprint() const {
    return sizeof(*this) + masker_.memory_footprint() + masked_.capacity() + clean_.capacity() +
           pending_.capacity();
}

}  // namespace kiln::trace
