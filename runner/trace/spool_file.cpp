#include "runner/trace/spool_file.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstdlib>
#include <chrono>
#include <cstring>
#include <mutex>
#include <thread>
#include <utility>

#include "runner/util/blocking.hpp"

namespace kiln::trace {

namespace {

enum block_state : int { filling, writing, written, failed };

// Writes a job may have queued before its next full block waits: with the block being filled,
// a fast job holds at most three blocks.
constexpr std::size_t max_in_flight = 2;
constexpr std::size_t page = 4096;
// Offsets, sizes and buffer addresses of direct I/O: the logical block size of any disk.
constexpr std::size_t direct_alignment = 4096;
constexpr std::size_t read_buffer_bytes = spool_file::large_block + 2 * direct_alignment;
// How long a full spool waits for the writer thread before writing a block through the page
// cache: long enough for a thread to get a CPU, short next to a slow disk.
constexpr auto direct_patience = std::chrono::milliseconds(5);

std::size_t round_up(std::size_t n, std::size_t a) { return (n + a - 1) / a * a; }

std::shared_ptr<char> new_buffer(std::size_t bytes) {
    // Aligned for direct I/O and not initialised: pages are touched as bytes are written, so a
    // quiet job's block costs what it holds.
    return {static_cast<char*>(std::aligned_alloc(direct_alignment, bytes)), std::free};
}

// Buffers for fast output and for reading back from disk: in a 2 MiB region the kernel may back
// with one huge page. A direct write or read pins the buffer's pages and maps each into the
// request; for a megabyte of 4 KiB pages that is 256 pages and, past the disk's segment limit
// (254 on virtio), two requests where one would do. With a huge page, trace_path_bench's
// "full" stage took ~7% less CPU. Only for buffers that fill at once: a huge page is resident
// as a whole from the first byte.
constexpr std::size_t huge_page = 2 * 1024 * 1024;
static_assert(2 * spool_file::large_block <= huge_page && read_buffer_bytes <= huge_page);

std::shared_ptr<char> new_huge_region() {
    auto* p = static_cast<char*>(std::aligned_alloc(huge_page, huge_page));
    if (p != nullptr) {
        ::madvise(p, huge_page, MADV_HUGEPAGE);  // a hint: without THP these are plain pages
    }
    return {p, std::free};
}

std::string temp_directory() {
    const char* tmp = std::getenv("TMPDIR");
    return tmp != nullptr && *tmp != '\0' ? tmp : "/tmp";
}

// No name from the start (O_TMPFILE) or it is removed at once, so the file goes away with the
// descriptor even if kiln is killed.
int open_anonymous(const std::string& dir, bool direct) {
    const int extra = direct ? O_DIRECT : 0;
#ifdef O_TMPFILE
    if (int fd = ::open(dir.c_str(), O_TMPFILE | O_RDWR | O_CLOEXEC | extra, 0600); fd >= 0) {
        return fd;
    }
#endif
    std::string path = dir + "/kiln-trace-XXXXXX";
    const int fd = ::mkostemp(path.data(), O_CLOEXEC);
    if (fd < 0) {
        return -1;
    }
    ::unlink(path.c_str());
    if (direct && ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_DIRECT) != 0) {
        ::close(fd);
        return -1;
    }
    return fd;
}

// Some file systems accept O_DIRECT at open and refuse the writes, or want another alignment.
bool direct_writes_work(int fd) {
    auto probe = new_buffer(direct_alignment);
    std::memset(probe.get(), 0, direct_alignment);
    return ::pwrite(fd, probe.get(), direct_alignment, 0) ==
               static_cast<ssize_t>(direct_alignment) &&
           ::ftruncate(fd, 0) == 0;
}

bool pwrite_all(int fd, const char* p, std::size_t n, std::size_t offset, int& error) {
    while (n > 0) {
        const ssize_t w = ::pwrite(fd, p, n, static_cast<off_t>(offset));
        if (w < 0 && errno == EINTR) {
            continue;
        }
        if (w <= 0) {
            error = w < 0 ? errno : EIO;
            return false;
        }
        p += w;
        n -= static_cast<std::size_t>(w);
        offset += static_cast<std::size_t>(w);
    }
    return true;
}

// Reads up to n bytes; fewer only at the end of the file or on an error.
std::size_t pread_all(int fd, char* p, std::size_t n, std::size_t offset) {
    std::size_t done = 0;
    while (done < n) {
        const ssize_t r = ::pread(fd, p + done, n - done, static_cast<off_t>(offset + done));
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r <= 0) {
            break;
        }
        done += static_cast<std::size_t>(r);
    }
    return done;
}

}  // namespace

struct spool_file::block {
    std::shared_ptr<char> buffer;  // large_block bytes, aligned
    std::size_t start = 0;         // file offset of buffer[0]: aligned
    std::size_t used = 0;
    std::size_t limit = 0;         // aligned
    std::size_t touched = 0;       // resident bytes of the buffer, from every block it served
    std::atomic<int> state{filling};
    int error = 0;

    char* data() const { return buffer.get(); }
    std::size_t end() const { return start + used; }
};

namespace {

// One thread for every job's spool writes. Leaked on purpose: jobs may still be writing while
// the process exits.
class block_writer {
public:
    static block_writer& get() {
        static auto* w = new block_writer;
        return *w;
    }

    // `b` stays alive until written: its spool_file waits for its writes before it lets a
    // block go. A raw pointer, so that the owner sees no other reference once the write is done
    // and can reuse the buffer at once.
    void submit(int fd, spool_file::block* b) {
        {
            std::lock_guard lock(mutex_);
            queue_.push_back({fd, b});
        }
        work_.notify_one();
    }

    void wait(const spool_file::block& b) {
        std::unique_lock lock(mutex_);
        done_.wait(lock, [&] { return b.state.load(std::memory_order_acquire) != writing; });
    }

    /// False when `b` is still being written after `timeout`.
    bool wait_for(const spool_file::block& b, std::chrono::microseconds timeout) {
        std::unique_lock lock(mutex_);
        return done_.wait_for(lock, timeout,
                              [&] { return b.state.load(std::memory_order_acquire) != writing; });
    }

private:
    struct task {
        int fd = -1;
        spool_file::block* b = nullptr;
    };

    block_writer() : thread_([this] { run(); }) { thread_.detach(); }

    void run() {
        for (;;) {
            task t;
            {
                std::unique_lock lock(mutex_);
                work_.wait(lock, [&] { return !queue_.empty(); });
                t = queue_.front();
                queue_.pop_front();
            }
            int error = 0;
            const bool ok = pwrite_all(t.fd, t.b->data(), t.b->used, t.b->start, error);
            {
                std::lock_guard lock(mutex_);
                t.b->error = error;
                t.b->state.store(ok ? written : failed, std::memory_order_release);
            }
            done_.notify_all();
        }
    }

    std::mutex mutex_;
    std::condition_variable work_;
    std::condition_variable done_;
    std::deque<task> queue_;
    std::thread thread_;
};

}  // namespace

struct spool_file::read_plan {
    bool done = false;
    view ready;  // when done: the answer
    std::size_t n = 0;
    std::shared_ptr<char> buffer;
    int fd = -1;
    std::size_t disk_start = 0;  // aligned file offset read into buffer[0]
    std::size_t disk_want = 0;   // bytes read from there (aligned)
    std::size_t lead = 0;        // the range starts at buffer[lead]
    std::size_t disk_len = 0;    // ... and its first disk_len bytes come from the file
    struct piece {
        std::shared_ptr<block> from;  // pinned: not reused while this read needs it
        std::size_t at;
        std::size_t len;
    };
    std::vector<piece> rest;  // the following bytes, from blocks in memory

    view finish(std::size_t got_from_disk) const {
        if (got_from_disk < lead + disk_len) {
            return {std::string_view(buffer.get() + lead,
                                     got_from_disk > lead ? got_from_disk - lead : 0),
                    buffer};
        }
        std::size_t got = disk_len;
        for (const auto& p : rest) {
            std::memcpy(buffer.get() + lead + got, p.from->data() + p.at, p.len);
            got += p.len;
        }
        return {std::string_view(buffer.get() + lead, got), buffer};
    }
};

spool_file::spool_file(const std::string& dir, bool try_direct) {
    for (const auto& d : {dir, temp_directory()}) {
        if (d.empty()) {
            continue;
        }
        if (int fd = try_direct ? open_anonymous(d, true) : -1; fd >= 0) {
            if (direct_writes_work(fd)) {
                fd_ = fd;
                align_ = direct_alignment;
                return;
            }
            ::close(fd);
        }
        if (fd_ = open_anonymous(d, false); fd_ >= 0) {
            return;
        }
    }
}

spool_file::~spool_file() {
    for (const auto& b : blocks_) {
        if (b->state.load(std::memory_order_acquire) == writing) {
            block_writer::get().wait(*b);
        }
    }
    for (int fd : {fd_, buffered_fd_}) {
        if (fd >= 0) {
            ::close(fd);
        }
    }
}

int spool_file::buffered_fd() {
    if (buffered_fd_ < 0) {
        // The same file opened again, without O_DIRECT.
        const std::string self = "/proc/self/fd/" + std::to_string(fd_);
        buffered_fd_ = ::open(self.c_str(), O_RDWR | O_CLOEXEC);
    }
    return buffered_fd_;
}

bool spool_file::ok() const {
    reap();
    return fd_ >= 0 && !failed_;
}

void spool_file::reap() const {
    while (!blocks_.empty()) {
        auto& f = blocks_.front();
        const int st = f->state.load(std::memory_order_acquire);
        if (st == failed) {
            // This block and every later one stay in memory; nothing more is written.
            failed_ = true;
        }
        if (st != written) {
            return;
        }
        disk_end_ = f->end();
        // Kept only while its resident pages suit the output's pace: after a burst, a
        // megabyte of pages is not kept for a quiet job.
        const std::size_t touched = std::max(f->touched, round_up(f->used, page));
        const std::size_t keep = was_fast_ ? max_in_flight + 1 : 1;
        if (f.use_count() == 1 && spares_.size() < keep && (was_fast_ || touched <= small_block)) {
            spares_.push_back({std::move(f->buffer), touched});
        }
        blocks_.pop_front();
    }
}

void spool_file::wait_oldest() const {
    for (const auto& b : blocks_) {
        if (b->state.load(std::memory_order_acquire) == writing) {
            block_writer::get().wait(*b);
            return;
        }
    }
}

std::shared_ptr<char> spool_file::fast_buffer() {
    // Two blocks share a huge region; it is freed when neither uses it any more.
    if (half_region_) {
        return std::move(half_region_);
    }
    auto region = new_huge_region();
    char* first = region.get();
    half_region_ = std::shared_ptr<char>(region, first + large_block);
    return std::shared_ptr<char>(std::move(region), first);
}

spool_file::block& spool_file::writable(bool fast) {
    reap();
    if (!blocks_.empty()) {
        auto& back = *blocks_.back();
        if (back.state.load(std::memory_order_relaxed) == filling && back.used < back.limit) {
            return back;
        }
    }
    auto b = std::make_shared<block>();
    if (!spares_.empty()) {
        b->buffer = std::move(spares_.back().buffer);
        b->touched = spares_.back().touched;
        spares_.pop_back();
    } else if (fast) {
        b->buffer = fast_buffer();
    } else {
        b->buffer = new_buffer(large_block);
    }
    b->start = size_;  // aligned: every block before was submitted whole
    b->limit = fast ? large_block : small_block;
    blocks_.push_back(std::move(b));
    return *blocks_.back();
}

void spool_file::submit_back() {
    if (fd_ < 0 || failed_ || synced_) {
        return;  // kept in memory
    }
    std::size_t in_flight = 0;
    for (const auto& b : blocks_) {
        in_flight += b->state.load(std::memory_order_acquire) == writing ? 1 : 0;
    }
    auto& b = blocks_.back();
    b->limit = b->used;  // nothing more goes into it
    if (in_flight >= max_in_flight && align_ > 1) {
        // The writer is behind. Usually it only waits for a CPU (the job's processes keep
        // both busy): give it a moment. If the disk itself is slower than the job's output,
        // this block goes through the page cache instead, written here — a copy, not a wait
        // on the device (a later direct read of it is coherent: the kernel writes it back
        // first).
        for (const auto& w : blocks_) {
            if (w->state.load(std::memory_order_acquire) == writing) {
                if (block_writer::get().wait_for(*w, direct_patience)) {
                    --in_flight;
                }
                break;
            }
        }
    }
    if (in_flight >= max_in_flight) {
        // Through the page cache, the writer thread is being throttled by the kernel: wait
        // for it rather than hold more memory.
        if (align_ > 1 && buffered_fd() >= 0) {
            int error = 0;
            const bool ok = pwrite_all(buffered_fd_, b->data(), b->used, b->start, error);
            b->error = error;
            b->state.store(ok ? written : failed, std::memory_order_release);
            reap();
            return;
        }
        wait_oldest();
        reap();
        if (failed_) {
            return;
        }
    }
    b->state.store(writing, std::memory_order_relaxed);
    block_writer::get().submit(fd_, b.get());
}

void spool_file::append(std::string_view bytes, bool fast) {
    if (was_fast_ && !fast) {
        // The burst is over: write what the large block holds now rather than when a quiet
        // job fills it (its aligned part; the rest moves to a small block), and give back the
        // buffers whose pages the burst touched.
        was_fast_ = false;
        spares_.clear();
        half_region_.reset();
        reap();
        if (!blocks_.empty() && fd_ >= 0 && !failed_ && !synced_) {
            auto& back = *blocks_.back();
            const std::size_t whole = back.used / align_ * align_;
            if (back.state.load(std::memory_order_relaxed) == filling && whole > 0) {
                auto next = std::make_shared<block>();
                next->buffer = new_buffer(large_block);
                next->start = back.start + whole;
                next->used = back.used - whole;
                next->limit = small_block;
                std::memcpy(next->data(), back.data() + whole, next->used);
                back.used = whole;
                submit_back();
                blocks_.push_back(std::move(next));
            }
        }
    }
    was_fast_ = fast;
    while (!bytes.empty()) {
        auto& b = writable(fast);
        const std::size_t n = std::min(bytes.size(), b.limit - b.used);
        if (b.data() + b.used != bytes.data()) {
            std::memcpy(b.data() + b.used, bytes.data(), n);
        }
        b.used += n;
        size_ += n;
        bytes.remove_prefix(n);
        if (b.used == b.limit) {
            submit_back();
        }
    }
}

std::span<char> spool_file::prepare(std::size_t reserve, std::size_t min) {
    if (fd_ < 0 || failed_ || synced_ || !was_fast_) {
        return {};
    }
    auto& b = writable(true);
    if (b.limit - b.used < reserve + min) {
        return {};
    }
    return {b.data() + b.used + reserve, b.limit - b.used - reserve};
}

std::span<char> spool_file::free_space() const {
    if (blocks_.empty()) {
        return {};
    }
    const auto& b = *blocks_.back();
    if (b.state.load(std::memory_order_relaxed) != filling || b.used >= b.limit) {
        return {};
    }
    return {b.data() + b.used, b.limit - b.used};
}

spool_file::read_plan spool_file::plan_read(std::size_t offset, std::size_t max) const {
    read_plan p;
    if (offset >= size_ || max == 0) {
        p.done = true;
        return p;
    }
    reap();
    p.n = std::min({max, size_ - offset, large_block});
    if (offset >= disk_end_) {
        for (const auto& b : blocks_) {
            if (offset < b->end()) {
                if (offset + p.n <= b->end()) {
                    p.done = true;
                    p.ready = {std::string_view(b->data() + (offset - b->start), p.n),
                               std::shared_ptr<const void>(b, b.get())};
                    return p;
                }
                break;  // spans blocks: gathered in the read buffer
            }
        }
    }
    if (!read_buffer_ || read_buffer_.use_count() > 1) {
        read_buffer_ = new_huge_region();  // the old one is still lent out
    }
    p.buffer = read_buffer_;
    p.fd = fd_;
    if (offset < disk_end_) {
        p.disk_len = std::min(offset + p.n, disk_end_) - offset;
        p.disk_start = offset / align_ * align_;
        p.lead = offset - p.disk_start;
        p.disk_want = round_up(p.lead + p.disk_len, align_);
    }
    std::size_t at = offset + p.disk_len;
    for (const auto& b : blocks_) {
        if (at >= offset + p.n) {
            break;
        }
        if (at < b->start || at >= b->end()) {
            continue;
        }
        const std::size_t len = std::min(offset + p.n - at, b->end() - at);
        p.rest.push_back({b, at - b->start, len});
        at += len;
    }
    return p;
}

spool_file::view spool_file::read(std::size_t offset, std::size_t max) const {
    auto p = plan_read(offset, max);
    if (p.done) {
        return p.ready;
    }
    const std::size_t got = p.disk_want > 0 ? pread_all(p.fd, p.buffer.get(), p.disk_want,
                                                        p.disk_start)
                                            : 0;
    return p.finish(got);
}

boost::asio::awaitable<spool_file::view> spool_file::read_async(std::size_t offset,
                                                                std::size_t max) const {
    auto p = plan_read(offset, max);
    if (p.done) {
        co_return p.ready;
    }
    std::size_t got = 0;
    if (p.disk_want > 0) {
        // A disk read may wait on the device: not on the I/O thread. The plan owns the buffer
        // and pins the blocks it copies from afterwards.
        // A named local: GCC 12 destroys a temporary inside a co_await expression twice
        // (util/blocking.hpp), which released the buffer's reference twice.
        auto read = [fd = p.fd, buffer = p.buffer, want = p.disk_want, start = p.disk_start] {
            return pread_all(fd, buffer.get(), want, start);
        };
        got = co_await util::run_blocking(std::move(read));
    }
    co_return p.finish(got);
}

void spool_file::release_read_buffer() const { read_buffer_.reset(); }

bool spool_file::sync_to_disk() {
    if (fd_ < 0 || (synced_ && !blocks_.empty())) {
        return false;
    }
    for (const auto& b : blocks_) {
        if (b->state.load(std::memory_order_acquire) == writing) {
            block_writer::get().wait(*b);
        }
    }
    reap();
    if (failed_) {
        return false;
    }
    if (!blocks_.empty()) {
        // Only the block being filled is left. Direct I/O writes whole aligned blocks: the
        // padding is cut off again below.
        auto& b = *blocks_.back();
        const std::size_t padded = round_up(b.used, align_);
        std::memset(b.data() + b.used, 0, padded - b.used);
        int error = 0;
        if (!pwrite_all(fd_, b.data(), padded, b.start, error)) {
            failed_ = true;
            errno = error;
            return false;
        }
        disk_end_ = b.end();
        blocks_.clear();
    }
    if (::ftruncate(fd_, static_cast<off_t>(size_)) != 0) {
        failed_ = true;
        return false;
    }
    synced_ = true;
    return disk_end_ == size_;
}

std::size_t spool_file::memory_footprint() const {
    reap();
    std::size_t n = sizeof(*this);
    for (const auto& b : blocks_) {
        n += sizeof(block) + std::max(b->touched, round_up(b->used, page));
    }
    for (const auto& s : spares_) {
        n += s.touched;
    }
    n += read_buffer_ ? huge_page : 0;
    n += half_region_ ? large_block : 0;
    return n;
}

}  // namespace kiln::trace
