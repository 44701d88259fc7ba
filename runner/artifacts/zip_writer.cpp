// write_zip: the caller's thread walks the entries, reads file data into 1 MiB tasks and hands
// them to compression workers; it then writes the finished tasks in order. Small files are
// packed many to a task (each compressed whole); a file bigger than a task is cut into 1 MiB
// pieces, each compressed by whichever worker is free, with the previous 32 KiB as dictionary
// and a sync flush, and the pieces concatenate into one deflate stream. At most a few tasks are
// in flight, so memory stays bounded whatever the file sizes.

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <libdeflate.h>
#include <openssl/evp.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cctype>
#include <condition_variable>
#include <cstring>
#include <ctime>
#include <deque>
#include <exception>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <system_error>
#include <thread>

#include "runner/artifacts/archive.hpp"
#include "runner/artifacts/archive_metrics.hpp"
#include "runner/artifacts/deflate.hpp"
#include "runner/artifacts/zip_format.hpp"
#include "runner/util/crc32.hpp"

namespace kiln::artifacts {

compression_level parse_compression_level(std::string_view text) {
    std::string t;
    for (char c : text) t += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    if (t == "fastest") return compression_level::fastest;
    if (t == "fast") return compression_level::fast;
    if (t == "slow") return compression_level::slow;
    if (t == "slowest") return compression_level::slowest;
    return compression_level::normal;
}

namespace {

using detail::zip::entry_record;
using detail::zip::output_file;

constexpr std::size_t task_capacity = 512 << 10;
constexpr std::size_t dict_capacity = 32 << 10;

[[noreturn]] void throw_errno(const std::string& what, const std::filesystem::path& p) {
    throw std::system_error(errno, std::generic_category(), what + " " + p.string());
}

std::size_t read_full(int fd, const std::string& path, unsigned char* buf, std::size_t len, std::uint64_t off) {
    std::size_t got = 0;
    while (got < len) {
        ssize_t n = ::pread(fd, buf + got, len - got, static_cast<off_t>(off + got));
        if (n < 0) {
            if (errno == EINTR) continue;
            throw_errno("cannot read", path);
        }
        if (n == 0) break;
        got += static_cast<std::size_t>(n);
    }
    return got;
}

struct fd_guard {
    int fd = -1;
    ~fd_guard() {
        if (fd >= 0) ::close(fd);
    }
};

class sha256 {
public:
    sha256() : ctx_(EVP_MD_CTX_new()) {
        if (!ctx_ || EVP_DigestInit_ex(ctx_, EVP_sha256(), nullptr) != 1) throw std::runtime_error("SHA-256 unavailable");
    }
    ~sha256() { EVP_MD_CTX_free(ctx_); }
    sha256(const sha256&) = delete;
    sha256& operator=(const sha256&) = delete;
    void update(const void* p, std::size_t n) { EVP_DigestUpdate(ctx_, p, n); }
    std::array<unsigned char, 32> finish() {
        std::array<unsigned char, 32> out{};
        unsigned int len = 0;
        EVP_DigestFinal_ex(ctx_, out.data(), &len);
        EVP_DigestInit_ex(ctx_, EVP_sha256(), nullptr);
        return out;
    }

private:
    EVP_MD_CTX* ctx_;
};

// A directory the entries' files are opened relative to: a tree walk lists a directory's
// files together, so one descriptor spares two full path lookups per file (lstat here, open
// in the worker). Shared by the pieces that need it; closed with the last.
struct dir_handle {
    int fd = AT_FDCWD;
    std::string path;  // with a trailing '/', for messages
    dir_handle() = default;
    dir_handle(const dir_handle&) = delete;
    dir_handle& operator=(const dir_handle&) = delete;
    ~dir_handle() {
        if (fd >= 0) ::close(fd);
    }
};

// A part of one entry inside a task. Directories and symlinks are pieces without data. The
// calling thread plans the pieces from lstat; the worker opens and reads the file (so reading
// runs in parallel too), then compresses.
struct piece {
    std::uint32_t entry = 0;
    std::shared_ptr<const dir_handle> dir;  // regular files: read by the worker from dir/name
    std::string name;
    std::string path() const { return dir->path + name; }
    std::uint64_t offset = 0;              // of the piece's data in the file
    std::uint32_t want = 0;                // bytes planned (from lstat)
    std::uint32_t dict_want = 0;           // split pieces after the first: bytes before offset
    std::uint32_t in_off = 0, in_len = 0;  // in task::input, after the dictionary; in_len as read
    std::uint32_t out_off = 0, out_len = 0;
    std::uint32_t crc = 0;                 // whole files: computed by the worker
    std::array<unsigned char, 32> sha{};   // whole files, when hashing
    bool first = true, last = true;  // first/last piece of the entry's data
    bool whole = true;               // the entry's whole data (not split)
    bool deflated = false;           // out holds deflate data; otherwise store input
};

struct task {
    detail::byte_vector input;  // dict_len bytes of dictionary, then the data
    std::size_t dict_len = 0;   // room for the dictionary before the data
    bool dict_short = false;    // the file held less than that when the worker read it
    std::vector<piece> pieces;
    detail::byte_vector output;
    bool done = false;
    std::exception_ptr error;

    std::size_t used() const { return input.size() - dict_len; }
    void reset() {
        input.clear();
        dict_len = 0;
        dict_short = false;
        pieces.clear();
        output.clear();
        done = false;
        error = nullptr;
    }
};

class worker_pool {
public:
    worker_pool(unsigned threads, compression_level level, bool hash) {
        for (unsigned i = 0; i < threads; ++i) threads_.emplace_back([this, level, hash] { run(level, hash); });
    }
    ~worker_pool() {
        {
            std::lock_guard lock(mutex_);
            stopping_ = true;
        }
        work_cv_.notify_all();
        for (auto& t : threads_) t.join();
    }

    void submit(task* t) {
        {
            std::lock_guard lock(mutex_);
            queue_.push_back(t);
        }
        work_cv_.notify_one();
    }

    void wait(task* t) {
        std::unique_lock lock(mutex_);
        done_cv_.wait(lock, [t] { return t->done; });
    }

    bool is_done(task* t) {
        std::lock_guard lock(mutex_);
        return t->done;
    }

private:
    void run(compression_level level, bool hash) {
        detail::deflater d(level);
        std::optional<sha256> sha;
        if (hash) sha.emplace();
        for (;;) {
            task* t = nullptr;
            {
                std::unique_lock lock(mutex_);
                work_cv_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
                if (queue_.empty()) return;
                t = queue_.front();
                queue_.pop_front();
            }
            try {
                read(*t, sha ? &*sha : nullptr);
                compress(d, *t);
            } catch (...) {
                t->error = std::current_exception();
            }
            {
                std::lock_guard lock(mutex_);
                t->done = true;
            }
            done_cv_.notify_all();
        }
    }

    static void read(task& t, sha256* sha) {
        for (auto& p : t.pieces) {
            if (!p.dir) continue;
            // O_NOFOLLOW: if the file was swapped for a link since lstat, this fails rather than
            // archiving what the link points to.
            fd_guard fd{::openat(p.dir->fd, p.name.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC)};
            if (fd.fd < 0) throw_errno("cannot open", p.path());
            if (p.dict_want)
                t.dict_short = read_full(fd.fd, p.path(), t.input.data(), p.dict_want, p.offset - p.dict_want) < p.dict_want;
            unsigned char* data = t.input.data() + t.dict_len + p.in_off;
            // A file that shrank since lstat is archived as it now is; one that grew, up to
            // its listed size.
            p.in_len = static_cast<std::uint32_t>(read_full(fd.fd, p.path(), data, p.want, p.offset));
            if (p.whole) {
                p.crc = util::crc32_update(0, data, p.in_len);
                if (sha) {
                    sha->update(data, p.in_len);
                    p.sha = sha->finish();
                }
            }
        }
    }

    static void compress(detail::deflater& d, task& t) {
        const unsigned char* data = t.input.data() + t.dict_len;
        for (auto& p : t.pieces) {
            if (p.in_len == 0 && p.whole) continue;  // empty file, directory or symlink
            p.out_off = static_cast<std::uint32_t>(t.output.size());
            std::span<const unsigned char> in(data + p.in_off, p.in_len);
            if (p.whole) {
                p.deflated = d.compress_whole(in, t.output);
            } else {
                std::span<const unsigned char> dict(t.input.data(), p.first ? 0 : t.dict_len);
                d.compress_piece(dict, in, p.last, t.output);
                p.deflated = true;
            }
            p.out_len = static_cast<std::uint32_t>(t.output.size() - p.out_off);
        }
    }

    std::mutex mutex_;
    std::condition_variable work_cv_, done_cv_;
    std::deque<task*> queue_;
    bool stopping_ = false;
    std::vector<std::thread> threads_;
};

class zip_writer {
public:
    template <class Output>
    zip_writer(const Output& out, const zip_options& options) : options_(options), out_(out) {
        unsigned threads = options.threads ? options.threads : std::thread::hardware_concurrency();
        threads = std::clamp(threads, 1u, 64u);
        // One task per worker plus one being filled and one being written: enough to keep the
        // workers busy; each task is ~2 MiB (input and output), which bounds memory.
        window_ = threads + 2;
        pool_.emplace(threads, options.level, static_cast<bool>(options.trailer));
        if (options.trailer) sha_.emplace();
    }

    ~zip_writer() {
        // Let the workers finish what they hold before the tasks go away.
        for (auto& t : inflight_) pool_->wait(t.get());
    }

    // next() returns the next entry or nullptr at the end.
    template <class Next>
    archive_stats run(Next next) {
        while (const archive_entry* e = next()) add(*e);
        submit_current();
        while (!inflight_.empty()) write_front();
        if (options_.trailer) {
            auto extra = options_.trailer(digests_);
            for (auto& g : extra) add_generated(g);
        }
        std::uint64_t size = detail::zip::write_central_directory(out_, records_);
        out_.close();
        archive_stats stats;
        stats.entries = records_.size();
        stats.uncompressed_bytes = file_bytes_;
        stats.archive_bytes = size;
        return stats;
    }

private:
    void add(const archive_entry& e) {
        if (e.name.empty() || e.name.front() == '/')
            throw std::invalid_argument("archive entry name must be relative: \"" + e.name + "\"");
        struct stat st {};
        std::string source = e.source.native();
        while (source.size() > 1 && source.back() == '/') source.pop_back();  // "dir/" names dir
        const std::size_t slash = source.rfind('/');
        const std::string name = slash == std::string::npos ? source : source.substr(slash + 1);
        const auto& dir = directory(slash == std::string::npos ? std::string() : source.substr(0, slash + 1), e.source);
        if (::fstatat(dir->fd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) throw_errno("cannot archive", e.source);
        entry_record r;
        r.name = e.name;
        r.mode = st.st_mode;
        r.mtime = st.st_mtime;
        if (S_ISDIR(st.st_mode)) {
            if (r.name.back() != '/') r.name += '/';
            add_meta(std::move(r));
        } else if (S_ISLNK(st.st_mode)) {
            std::string target(static_cast<std::size_t>(st.st_size > 0 ? st.st_size : 4096) + 1, '\0');
            ssize_t n = ::readlinkat(dir->fd, name.c_str(), target.data(), target.size());
            if (n < 0) throw_errno("cannot read symbolic link", e.source);
            target.resize(static_cast<std::size_t>(n));
            r.link_target = std::move(target);
            add_meta(std::move(r));
        } else if (S_ISREG(st.st_mode)) {
            r.size_hint = static_cast<std::uint64_t>(st.st_size);
            add_file(dir, name, std::move(r));
        }
        // Sockets, FIFOs and devices are not archivable; gitlab-runner skips them too.
    }

    void add_meta(entry_record r) {
        auto& t = current();
        piece p;
        p.entry = static_cast<std::uint32_t>(records_.size());
        p.in_off = static_cast<std::uint32_t>(t.used());
        t.pieces.push_back(p);
        records_.push_back(std::move(r));
    }

    // The directory `parent` ("" or ending in '/'), opened once for consecutive entries in it.
    const std::shared_ptr<const dir_handle>& directory(const std::string& parent, const std::filesystem::path& source) {
        if (dir_ && dir_->path == parent) return dir_;
        auto d = std::make_shared<dir_handle>();
        d->path = parent;
        if (!parent.empty()) {
            d->fd = ::open(parent.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
            if (d->fd < 0) throw_errno("cannot archive", source);
        }
        dir_ = std::move(d);
        return dir_;
    }

    void add_file(const std::shared_ptr<const dir_handle>& dir, const std::string& name, entry_record r) {
        const std::uint64_t size = r.size_hint;
        const auto index = static_cast<std::uint32_t>(records_.size());
        if (size <= task_capacity) {
            if (current().used() + size > task_capacity) submit_current();
            auto& t = current();
            std::size_t at = t.input.size();
            t.input.resize(at + size);  // filled by the worker
            piece p;
            p.entry = index;
            p.dir = dir;
            p.name = name;
            p.want = static_cast<std::uint32_t>(size);
            p.in_off = static_cast<std::uint32_t>(at);
            t.pieces.push_back(std::move(p));
            records_.push_back(std::move(r));
            return;
        }
        // A big file: its own tasks, one per piece; each worker also reads the 32 KiB before
        // its piece as the deflate dictionary.
        r.split = true;
        r.zip64_local = detail::zip::needs_zip64_local(size);
        records_.push_back(std::move(r));
        submit_current();
        for (std::uint64_t off = 0;; off += task_capacity) {
            auto& t = current();
            std::size_t want = static_cast<std::size_t>(std::min<std::uint64_t>(task_capacity, size - off));
            piece p;
            p.entry = index;
            p.dir = dir;
            p.name = name;
            p.offset = off;
            p.want = static_cast<std::uint32_t>(want);
            p.dict_want = off == 0 ? 0 : static_cast<std::uint32_t>(std::min<std::uint64_t>(dict_capacity, off));
            p.first = off == 0;
            p.whole = false;
            p.last = off + want >= size;
            t.input.resize(p.dict_want + want);
            t.dict_len = p.dict_want;
            t.pieces.push_back(std::move(p));
            const bool last = t.pieces.back().last;
            submit_current();
            if (last) break;
        }
    }

    task& current() {
        if (!filling_) {
            if (!spare_.empty()) {
                filling_ = std::move(spare_.back());
                spare_.pop_back();
            } else {
                filling_ = std::make_unique<task>();
                // Reserved here once, so the buffers never grow (or move to a worker's malloc
                // arena) later.
                filling_->input.reserve(task_capacity + dict_capacity);
                filling_->output.reserve(task_capacity + task_capacity / 32 + (64 << 10));
            }
        }
        return *filling_;
    }

    void submit_current() {
        if (!filling_ || filling_->pieces.empty()) return;
        while (inflight_.size() >= window_) write_front();
        pool_->submit(filling_.get());
        inflight_.push_back(std::move(filling_));
        // Write whatever is already finished, keeping the output flowing.
        while (!inflight_.empty() && pool_->is_done(inflight_.front().get())) write_front();
    }

    void write_front() {
        std::unique_ptr<task> t = std::move(inflight_.front());
        inflight_.pop_front();
        pool_->wait(t.get());
        if (t->error) std::rethrow_exception(t->error);
        const unsigned char* data = t->input.data() + t->dict_len;
        for (const auto& p : t->pieces) write_piece(*t, p, data);
        t->reset();
        spare_.push_back(std::move(t));
    }

    void write_piece(const task& t, const piece& p, const unsigned char* data) {
        entry_record& r = records_[p.entry];
        const unsigned char* in = data + p.in_off;
        if (p.first) {
            r.offset = out_.offset();
            r.crc = 0;
        }
        if (S_ISREG(r.mode)) {
            if (p.whole) {
                r.crc = p.crc;
            } else {
                // The worker compressed against the 32 KiB it read before its piece; that must
                // be what the previous piece held, or the stream would not decode to these bytes.
                if (!p.first && p.in_len > 0 &&
                    (t.dict_short || t.dict_len != carry_.size() ||
                     !std::equal(carry_.begin(), carry_.end(), t.input.begin())))
                    throw std::runtime_error(p.path() + " changed while it was archived; archive it again when it is complete");
                std::size_t keep = std::min<std::size_t>(dict_capacity, p.in_len);
                carry_.assign(in + p.in_len - keep, in + p.in_len);
                r.crc = util::crc32_update(r.crc, in, p.in_len);
                if (sha_) sha_->update(in, p.in_len);
            }
            r.size += p.in_len;
        }
        if (p.whole) {
            if (S_ISLNK(r.mode)) {
                r.crc = util::crc32_update(0, r.link_target.data(), r.link_target.size());
                r.size = r.link_target.size();
                r.compressed = r.size;
                detail::zip::write_local_header(out_, r);
                out_.write(r.link_target.data(), r.link_target.size());
            } else if (p.deflated) {
                r.method = detail::zip::method_deflate;
                r.compressed = p.out_len;
                detail::zip::write_local_header(out_, r);
                out_.write(t.output.data() + p.out_off, p.out_len);
            } else {
                r.compressed = r.size;
                detail::zip::write_local_header(out_, r);
                out_.write(in, p.in_len);
            }
        } else {
            if (p.first) {
                r.method = detail::zip::method_deflate;
                detail::zip::write_local_header(out_, r);
            }
            out_.write(t.output.data() + p.out_off, p.out_len);
            r.compressed += p.out_len;
            if (p.last) {
                if (!r.zip64_local && (r.size >= 0xffffffffULL || r.compressed >= 0xffffffffULL))
                    throw std::runtime_error("file grew past 4 GiB while it was archived");
                detail::zip::write_data_descriptor(out_, r);
            }
        }
        if (p.last && S_ISREG(r.mode)) {
            file_bytes_ += r.size;
            if (sha_) digests_.push_back(file_digest{r.name, r.size, p.whole ? p.sha : sha_->finish()});
        }
    }

    void add_generated(const generated_file& g) {
        entry_record r;
        r.name = g.name;
        r.mode = S_IFREG | 0644;
        r.mtime = std::time(nullptr);
        r.offset = out_.offset();
        auto in = std::span(reinterpret_cast<const unsigned char*>(g.content.data()), g.content.size());
        r.crc = util::crc32_update(0, in.data(), in.size());
        r.size = in.size();
        detail::byte_vector packed;
        detail::deflater d(options_.level);
        if (in.size() <= 0xffff0000ULL && d.compress_whole(in, packed)) {
            r.method = detail::zip::method_deflate;
            r.compressed = packed.size();
            detail::zip::write_local_header(out_, r);
            out_.write(packed.data(), packed.size());
        } else {
            r.compressed = r.size;
            detail::zip::write_local_header(out_, r);
            out_.write(in.data(), in.size());
        }
        records_.push_back(std::move(r));
    }

    const zip_options& options_;
    output_file out_;
    std::optional<worker_pool> pool_;
    std::size_t window_ = 4;
    std::unique_ptr<task> filling_;
    std::deque<std::unique_ptr<task>> inflight_;
    std::vector<std::unique_ptr<task>> spare_;
    detail::byte_vector carry_;
    std::shared_ptr<const dir_handle> dir_;
    std::vector<entry_record> records_;
    std::optional<sha256> sha_;
    std::vector<file_digest> digests_;
    std::uint64_t file_bytes_ = 0;
};

}  // namespace

namespace {

template <class Next>
archive_stats write_zip_to_path(Next next, const std::filesystem::path& out, const zip_options& options) {
    try {
        zip_writer w(out, options);
        return w.run(next);
    } catch (...) {
        std::error_code ignored;
        std::filesystem::remove(out, ignored);  // never leave a half-written archive behind
        throw;
    }
}

std::uint64_t uncompressed(const archive_stats& s) { return s.uncompressed_bytes; }

struct from_function {
    const std::function<bool(archive_entry&)>* next;
    archive_entry entry;
    const archive_entry* operator()() { return (*next)(entry) ? &entry : nullptr; }
};

}  // namespace

archive_stats write_zip(const std::vector<archive_entry>& entries, const std::filesystem::path& out,
                        const zip_options& options) {
    return detail::counted(
        archive_operation::create,
        [&] {
            auto it = entries.begin();
            return write_zip_to_path(
                [&]() -> const archive_entry* { return it == entries.end() ? nullptr : &*it++; }, out, options);
        },
        uncompressed);
}

archive_stats write_zip(const std::function<bool(archive_entry&)>& next, const std::filesystem::path& out,
                        const zip_options& options) {
    return detail::counted(
        archive_operation::create, [&] { return write_zip_to_path(from_function{&next, {}}, out, options); },
        uncompressed);
}

archive_stats write_zip(const std::function<bool(archive_entry&)>& next, int out_fd, const zip_options& options) {
    return detail::counted(
        archive_operation::create,
        [&] {
            zip_writer w(out_fd, options);
            return w.run(from_function{&next, {}});
        },
        uncompressed);
}

}  // namespace kiln::artifacts
