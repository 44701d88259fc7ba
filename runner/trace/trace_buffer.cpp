#include "runner/trace/trace_buffer.hpp"

#include <fcntl.h>
#include <libdeflate.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <system_error>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace kiln::trace {
namespace {

// Final bytes gather in memory up to a batch before one write to the spool file. While the job
// writes fast (whole pipe reads at a time) the batch is large: the page cache then takes large
// folios, and per-page kernel work was the largest cost of streaming a big log. A slow job keeps
// the small batch, so its memory stays small.
constexpr std::size_t small_spool_batch = 32 * 1024;
constexpr std::size_t large_spool_batch = 128 * 1024;
constexpr std::size_t fast_write = 32 * 1024;

std::string temp_directory() {
    const char* tmp = std::getenv("TMPDIR");
    return tmp != nullptr && *tmp != '\0' ? tmp : "/tmp";
}

// An anonymous file: it has no name from the start (O_TMPFILE) or loses it at once, so it goes
// away with the descriptor even if kiln is killed.
int open_anonymous(const std::string& dir) {
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

int open_spool(const std::string& configured) {
    if (!configured.empty()) {
        if (int fd = open_anonymous(configured); fd >= 0) {
            return fd;
        }
    }
    return open_anonymous(temp_directory());
}

[[noreturn]] void fail(const char* what, const std::filesystem::path& p) {
    throw std::system_error(errno, std::generic_category(), std::string(what) + " " + p.string());
}

// Copies [0, n) of `from` to `to` in the kernel where it can, else through a buffer.
bool copy_range(int from, int to, std::size_t n) {
    std::size_t done = 0;
    while (done < n) {
        loff_t in = static_cast<loff_t>(done);
        const ssize_t c = ::copy_file_range(from, &in, to, nullptr, n - done, 0);
        if (c > 0) {
            done += static_cast<std::size_t>(c);
            continue;
        }
        if (c < 0 && errno == EINTR) {
            continue;
        }
        if (c == 0 || (errno != EXDEV && errno != ENOSYS && errno != EINVAL && errno != EOPNOTSUPP)) {
            return false;
        }
        // No kernel copy between these files: the rest through user space.
        std::unique_ptr<char[]> buf(new char[64 * 1024]);
        while (done < n) {
            const ssize_t r = ::pread(from, buf.get(), std::min<std::size_t>(64 * 1024, n - done),
                                      static_cast<off_t>(done));
            if (r < 0 && errno == EINTR) {
                continue;
            }
            if (r <= 0) {
                return false;
            }
            for (ssize_t w = 0; w < r;) {
                const ssize_t k = ::write(to, buf.get() + w, static_cast<std::size_t>(r - w));
                if (k < 0 && errno == EINTR) {
                    continue;
                }
                if (k <= 0) {
                    return false;
                }
                w += k;
            }
            done += static_cast<std::size_t>(r);
        }
    }
    return true;
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
    : limit_(limit_bytes), timestamps_(options.timestamps), clock_(options.clock),
      masking_(masking(std::move(secrets), options)), batch_(small_spool_batch),
      fd_(open_spool(options.spool_dir)) {
    lane_for(source::runner);
    if (!timestamps_) {
        masking_ = {};  // no other lane will be started
    }
}

trace_buffer::~trace_buffer() {
    if (fd_ >= 0) {
        ::close(fd_);
    }
}

trace_buffer::lane& trace_buffer::lane_for(source from) {
    const auto i = timestamps_ ? static_cast<std::size_t>(from) : 0;
    if (!lanes_[i]) {
        lanes_[i] = std::make_unique<lane>(lane{masker(masking_), std::nullopt});
        if (timestamps_) {
            const bool runner = from == source::runner;
            lanes_[i]->stamp.emplace(runner ? timestamper::executor_stream : timestamper::work_stream,
                                     from == source::job_stderr ? 'E' : 'O', clock_);
        }
    }
    return *lanes_[i];
}

void trace_buffer::write(source from, std::string_view data) {
    const std::size_t batch = data.size() >= fast_write ? large_spool_batch : small_spool_batch;
    if (batch < batch_) {
        // The burst is over: give the large batch's memory back.
        flush_spool();
        if (pending_.empty()) {
            pending_.shrink_to_fit();
        }
    }
    batch_ = batch;
    if (truncated_) {
        return;
    }
    auto& l = lane_for(from);
    // The masker passes its output on in pieces, straight through UTF-8 repair to the spool
    // batch: unchanged bytes are copied once, into the batch.
    l.mask.write(data, [this, &l](std::string_view s) { feed(l, s); });
    if (timestamps_ && from == source::runner && !truncated_) {
        // kiln writes whole messages: hold nothing of one back until the job's output has
        // come in between.
        l.mask.flush([this, &l](std::string_view s) { feed(l, s); });
    }
}

void trace_buffer::feed(lane& l, std::string_view masked) {
    if (!l.stamp) {
        process(masked);
        return;
    }
    stamped_.clear();
    l.stamp->write(masked, stamped_);
    process(stamped_);
}

void trace_buffer::finish(lane& l) {
    l.mask.flush([this, &l](std::string_view s) { feed(l, s); });
    if (l.stamp) {
        stamped_.clear();
        l.stamp->flush(stamped_);
        process(stamped_);
    }
}

void trace_buffer::end_job_output() {
    if (!timestamps_ || truncated_) {
        return;
    }
    for (auto from : {source::job_stdout, source::job_stderr}) {
        if (auto& l = lanes_[static_cast<std::size_t>(from)]) {
            finish(*l);
        }
    }
}

void trace_buffer::close() {
    if (!truncated_) {
        for (auto from : {source::job_stdout, source::job_stderr, source::runner}) {
            if (auto& l = lanes_[static_cast<std::size_t>(from)]) {
                finish(*l);
            }
        }
        utf8_.flush([this](std::string_view s) { commit(s); });
    }
    flush_spool();
    stamped_.clear();
    stamped_.shrink_to_fit();
    if (pending_.empty()) {
        pending_.shrink_to_fit();
    }
}

void trace_buffer::process(std::string_view masked) {
    if (masked.empty() || truncated_) {
        return;
    }
    utf8_.write(masked, [this](std::string_view s) { commit(s); });
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
    if (pending_.size() + bytes.size() > batch_) {
        flush_spool();
    }
    if (pending_.empty() && bytes.size() >= batch_ && spooled()) {
        if (pwrite_all(fd_, bytes.data(), bytes.size(), spooled_)) {
            spooled_ += bytes.size();
            return;
        }
        spool_failed_ = true;
    }
    if (pending_.capacity() < batch_) {
        pending_.reserve(batch_);
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

std::size_t trace_buffer::read(std::size_t offset, char* dest, std::size_t max) const {
    if (offset >= size_) {
        return 0;
    }
    const std::size_t n = std::min(max, size_ - offset);
    std::size_t done = 0;
    if (offset < spooled_) {
        const std::size_t want = std::min(n, spooled_ - offset);
        while (done < want) {
            const ssize_t r = ::pread(fd_, dest + done, want - done,
                                      static_cast<off_t>(offset + done));
            if (r < 0 && errno == EINTR) {
                continue;
            }
            if (r <= 0) {
                return done;  // a read error: hand out what was read
            }
            done += static_cast<std::size_t>(r);
        }
    }
    if (done < n) {
        std::memcpy(dest + done, pending_.data() + (offset + done - spooled_), n - done);
    }
    return n;
}

std::string trace_buffer::slice(std::size_t offset, std::size_t max) const {
    std::string out(offset < size_ ? std::min(max, size_ - offset) : 0, '\0');
    out.resize(read(offset, out.data(), out.size()));
    return out;
}

void trace_buffer::save_as(const std::filesystem::path& path) const {
    if (fd_ >= 0 && !spool_failed_ && spooled_ == size_) {
        // The whole trace is in the spool file: give it the name. AT_EMPTY_PATH needs
        // CAP_DAC_READ_SEARCH; the /proc path works for anyone.
        const std::string self = "/proc/self/fd/" + std::to_string(fd_);
        if (::linkat(fd_, "", AT_FDCWD, path.c_str(), AT_EMPTY_PATH) == 0 ||
            ::linkat(AT_FDCWD, self.c_str(), AT_FDCWD, path.c_str(), AT_SYMLINK_FOLLOW) == 0) {
            if (::fsync(fd_) != 0) {
                const int saved = errno;
                ::unlink(path.c_str());
                errno = saved;
                fail("cannot write", path);
            }
            return;
        }
    }
    const int out = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (out < 0) {
        fail("cannot create", path);
    }
    const std::size_t in_file = fd_ >= 0 ? spooled_ : 0;
    bool ok = in_file == 0 || copy_range(fd_, out, in_file);
    for (std::size_t done = 0; ok && done < pending_.size();) {
        const ssize_t w = ::write(out, pending_.data() + done, pending_.size() - done);
        if (w < 0 && errno == EINTR) {
            continue;
        }
        ok = w > 0;
        done += ok ? static_cast<std::size_t>(w) : 0;
    }
    if (!ok || ::fsync(out) != 0) {
        const int saved = errno;
        ::close(out);
        ::unlink(path.c_str());
        errno = saved;
        fail("cannot write", path);
    }
    ::close(out);
}

std::string trace_buffer::checksum() const {
    char buf[32];
    std::snprintf(buf, sizeof buf, "crc32:%08x", crc_);
    return buf;
}

std::size_t trace_buffer::memory_footprint() const {
    std::size_t lanes = 0;
    for (const auto& l : lanes_) {
        if (l) {
            lanes += sizeof(lane) + l->mask.memory_footprint();
        }
    }
    return sizeof(*this) + lanes + stamped_.capacity() + pending_.capacity();
}

}  // namespace kiln::trace
