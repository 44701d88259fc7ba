#include "runner/trace/spool_file.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <thread>

namespace kiln::trace {

namespace {

enum block_state : int { filling, writing, written, failed };

// Writes a job may have queued before its next full block waits: with the block being filled,
// a fast job holds at most three blocks.
constexpr std::size_t max_in_flight = 2;
constexpr std::size_t page = 4096;

std::size_t resident(std::size_t bytes) { return (bytes + page - 1) / page * page; }

std::shared_ptr<char> new_buffer(std::size_t bytes) {
    // Not value-initialised: pages are touched as bytes are written, so a quiet job's block
    // costs what it holds.
    return std::shared_ptr<char>(new char[bytes], std::default_delete<char[]>());
}

std::string temp_directory() {
    const char* tmp = std::getenv("TMPDIR");
    return tmp != nullptr && *tmp != '\0' ? tmp : "/tmp";
}

// No name from the start (O_TMPFILE) or it is removed at once, so the file goes away with the
// descriptor even if kiln is killed.
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
    std::shared_ptr<char> buffer;  // large_block bytes
    std::size_t start = 0;         // file offset of buffer[0]
    std::size_t used = 0;
    std::size_t limit = 0;
    std::size_t touched = 0;  // resident bytes of the buffer, from every block it served
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
                t = std::move(queue_.front());
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

spool_file::spool_file(const std::string& dir) {
    for (const auto& d : {dir, temp_directory()}) {
        if (!d.empty()) {
            if (fd_ = open_anonymous(d); fd_ >= 0) {
                return;
            }
        }
    }
}

spool_file::~spool_file() {
    for (const auto& b : blocks_) {
        if (b->state.load(std::memory_order_acquire) == writing) {
            block_writer::get().wait(*b);
        }
    }
    if (fd_ >= 0) {
        ::close(fd_);
    }
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
        const std::size_t touched = std::max(f->touched, resident(f->used));
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
    } else {
        b->buffer = new_buffer(large_block);
    }
    b->start = size_;
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
    if (in_flight >= max_in_flight) {
        // The disk is slower than the job's output: wait rather than hold more memory.
        wait_oldest();
        reap();
        if (failed_) {
            return;
        }
    }
    auto& b = blocks_.back();
    b->limit = b->used;  // nothing more goes into it
    b->state.store(writing, std::memory_order_relaxed);
    block_writer::get().submit(fd_, b.get());
}

void spool_file::append(std::string_view bytes, bool fast) {
    if (was_fast_ && !fast) {
        // The burst is over: write what the large block holds now rather than when a quiet
        // job fills it, and give back the buffers whose pages the burst touched.
        was_fast_ = false;
        spares_.clear();
        reap();
        if (!blocks_.empty() && blocks_.back()->used > 0 &&
            blocks_.back()->state.load(std::memory_order_relaxed) == filling) {
            submit_back();
        }
    }
    was_fast_ = fast;
    while (!bytes.empty()) {
        auto& b = writable(fast);
        const std::size_t n = std::min(bytes.size(), b.limit - b.used);
        std::memcpy(b.data() + b.used, bytes.data(), n);
        b.used += n;
        size_ += n;
        bytes.remove_prefix(n);
        if (b.used == b.limit) {
            submit_back();
        }
    }
}

spool_file::view spool_file::read(std::size_t offset, std::size_t max) const {
    if (offset >= size_ || max == 0) {
        return {};
    }
    reap();
    const std::size_t n = std::min({max, size_ - offset, large_block});
    if (offset >= disk_end_) {
        for (const auto& b : blocks_) {
            if (offset < b->end()) {
                if (offset + n <= b->end()) {
                    return {std::string_view(b->data() + (offset - b->start), n),
                            std::shared_ptr<const void>(b, b.get())};
                }
                break;  // spans blocks: gathered below
            }
        }
    }
    if (!read_buffer_ || read_buffer_.use_count() > 1) {
        read_buffer_ = new_buffer(large_block);  // the old one is still lent out
    }
    char* out = read_buffer_.get();
    std::size_t got = 0;
    if (offset < disk_end_) {
        const std::size_t from_disk = std::min(offset + n, disk_end_) - offset;
        got = pread_all(fd_, out, from_disk, offset);
        if (got < from_disk) {
            return {std::string_view(out, got), read_buffer_};
        }
    }
    for (const auto& b : blocks_) {
        const std::size_t at = offset + got;
        if (got == n) {
            break;
        }
        if (at < b->start || at >= b->end()) {
            continue;
        }
        const std::size_t k = std::min(n - got, b->end() - at);
        std::memcpy(out + got, b->data() + (at - b->start), k);
        got += k;
    }
    return {std::string_view(out, got), read_buffer_};
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
    if (!blocks_.empty()) {  // only the block being filled is left
        auto& b = *blocks_.back();
        int error = 0;
        if (!pwrite_all(fd_, b.data(), b.used, b.start, error)) {
            failed_ = true;
            errno = error;
            return false;
        }
        disk_end_ = b.end();
        blocks_.clear();
    }
    synced_ = true;
    return disk_end_ == size_;
}

std::size_t spool_file::memory_footprint() const {
    reap();
    std::size_t n = sizeof(*this);
    for (const auto& b : blocks_) {
        n += sizeof(block) + std::max(b->touched, resident(b->used));
    }
    for (const auto& s : spares_) {
        n += s.touched;
    }
    n += read_buffer_ ? large_block : 0;
    return n;
}

}  // namespace kiln::trace
