#include "runner/trace/trace_buffer.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cassert>
#include <cerrno>
#include <system_error>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "runner/util/crc32.hpp"

namespace kiln::trace {
namespace {

// A write of at least this size shows a job writing fast (whole pipe reads at a time): the
// spool then fills large blocks.
constexpr std::size_t fast_write = 32 * 1024;
constexpr int burst_end_writes = 8;
// Least room in the spool block worth reading into (prepare()); less, and the read goes
// through write() and fills the block's end.
constexpr std::size_t min_room = 4096;

masking_totals totals;

[[noreturn]] void fail(const char* what, const std::filesystem::path& p) {
    throw std::system_error(errno, std::generic_category(), std::string(what) + " " + p.string());
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
      masking_(masking(std::move(secrets), options)), spool_(options.spool_dir, options.direct_io) {
    lane_for(source::runner);
    if (!timestamps_) {
        masking_ = {};  // no other lane will be started
    }
}

trace_buffer::~trace_buffer() = default;

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

masking_totals masking_work() { return totals; }

void trace_buffer::write(source from, std::string_view data) {
    // A fast writer's reads still vary in size (whatever the pipe held at the moment): only a
    // run of small ones ends a burst, so the spool keeps its large blocks and their pages.
    if (data.size() >= fast_write) {
        fast_ = true;
        small_writes_ = 0;
    } else if (fast_ && ++small_writes_ >= burst_end_writes) {
        fast_ = false;
    }
    if (truncated_) {
        return;
    }
    const auto start = std::chrono::steady_clock::now();
    auto& l = lane_for(from);
    // The masker passes its output on in pieces, straight through UTF-8 repair to the spool
    // batch: unchanged bytes are copied once, into the batch.
    l.mask.write(data, [this, &l](std::string_view s) { feed(l, s); });
    if (timestamps_ && from == source::runner && !truncated_) {
        // kiln writes whole messages: hold nothing of one back until the job's output has
        // come in between.
        l.mask.flush([this, &l](std::string_view s) { feed(l, s); });
    }
    totals.bytes += data.size();
    totals.nanoseconds += static_cast<std::uint64_t>(
        std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - start)
            .count());
}

std::span<char> trace_buffer::prepare(source from, std::size_t max) {
    prepared_ = {};
    if (timestamps_ || truncated_ || !fast_) {
        return {};
    }
    // The held-back bytes come out first, in front of the new ones: room is left for them.
    const auto& l = lane_for(from);
    const std::size_t reserve = l.mask.held_bytes() + utf8_.held_bytes();
    auto room = spool_.prepare(reserve, min_room);
    prepared_ = room.first(std::min(room.size(), max));
    return prepared_;
}

void trace_buffer::placed(source from, std::size_t n) {
    assert(n <= prepared_.size());
    const std::string_view data(prepared_.data(), n);
    prepared_ = {};
    if (n < fast_write && small_writes_ + 1 >= burst_end_writes) {
        // This read ends the burst, and the spool then rearranges the block these bytes lie
        // in: take them out of it first.
        const std::string copy(data);
        write(from, copy);
        return;
    }
    raw_ = data;
    write(from, data);
    raw_ = {};
    if (set_aside_) {
        set_aside_ = false;
        spool_.append(aside_, fast_);
        aside_.clear();
        if (aside_.capacity() > 2 * fast_write) {
            aside_.shrink_to_fit();
        }
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
    stamped_.clear();
    stamped_.shrink_to_fit();
    spool_.release_spares();
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
    crc_ = util::crc32_update(crc_, bytes.data(), bytes.size());
    size_ += bytes.size();
    if (raw_.data() != nullptr) {
        place(bytes);
        return;
    }
    spool_.append(bytes, fast_);
}

void trace_buffer::place(std::string_view bytes) {
    // Output of a read placed in the spool block comes in order: bytes the masker passed
    // unchanged lie exactly where they go; held-back bytes from the last write go in the room
    // left in front of the read. Anything else (a replacement, output that outgrew the room)
    // would overwrite bytes the masker has not read yet: from then on output is set aside
    // until it is done with the read.
    if (!set_aside_) {
        const auto room = spool_.free_space();
        const auto at = reinterpret_cast<std::uintptr_t>(room.data());
        const auto raw = reinterpret_cast<std::uintptr_t>(raw_.data());
        const bool in_place = room.data() != nullptr && room.data() == bytes.data();
        const bool in_front = room.data() != nullptr && raw >= at && raw <= at + room.size() &&
                              at + bytes.size() <= raw;
        if (in_place || in_front) {
            spool_.append(bytes, fast_);
            return;
        }
        set_aside_ = true;
    }
    aside_.append(bytes);
}

std::size_t trace_buffer::read(std::size_t offset, char* dest, std::size_t max) const {
    std::size_t done = 0;
    while (done < max && offset + done < size_) {
        const auto v = spool_.read(offset + done, max - done);
        if (v.bytes.empty()) {
            break;  // a read error: hand out what was read
        }
        std::memcpy(dest + done, v.bytes.data(), v.bytes.size());
        done += v.bytes.size();
    }
    return done;
}

std::string trace_buffer::slice(std::size_t offset, std::size_t max) const {
    std::string out(offset < size_ ? std::min(max, size_ - offset) : 0, '\0');
    out.resize(read(offset, out.data(), out.size()));
    return out;
}

void trace_buffer::save_as(const std::filesystem::path& path) {
    if (spool_.sync_to_disk()) {
        // The file holds the whole trace: give it the name. AT_EMPTY_PATH needs
        // CAP_DAC_READ_SEARCH; the /proc path works for anyone.
        const int fd = spool_.fd();
        const std::string self = "/proc/self/fd/" + std::to_string(fd);
        if (::linkat(fd, "", AT_FDCWD, path.c_str(), AT_EMPTY_PATH) == 0 ||
            ::linkat(AT_FDCWD, self.c_str(), AT_FDCWD, path.c_str(), AT_SYMLINK_FOLLOW) == 0) {
            if (::fsync(fd) != 0) {
                const int saved = errno;
                ::unlink(path.c_str());
                errno = saved;
                fail("cannot write", path);
            }
            return;
        }
    }
    // Another file system, or bytes only in memory: copy, a block at a time.
    const int out = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (out < 0) {
        fail("cannot create", path);
    }
    bool ok = true;
    for (std::size_t off = 0; ok && off < size_;) {
        const auto v = spool_.read(off, spool_file::large_block);
        ok = !v.bytes.empty();
        for (std::size_t done = 0; ok && done < v.bytes.size();) {
            const ssize_t w = ::write(out, v.bytes.data() + done, v.bytes.size() - done);
            if (w < 0 && errno == EINTR) {
                continue;
            }
            ok = w > 0;
            done += ok ? static_cast<std::size_t>(w) : 0;
        }
        off += v.bytes.size();
    }
    spool_.release_read_buffer();
    if (!ok || ::fsync(out) != 0) {
        const int saved = errno != 0 ? errno : EIO;
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
    return sizeof(*this) + lanes + stamped_.capacity() + spool_.memory_footprint();
}

}  // namespace kiln::trace
