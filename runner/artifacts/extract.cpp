// extract_archive: every path is walked from a directory descriptor of the destination one
// component at a time with O_NOFOLLOW|O_DIRECTORY, so no symlink on disk (from the archive or
// already there) is ever followed; files are created with O_EXCL|O_NOFOLLOW after removing
// what was there, so nothing is written through a link either. Limits count the bytes
// actually written, not the sizes the archive declares.

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <string>
#include <system_error>
#include <vector>

#include "runner/artifacts/archive.hpp"
#include "runner/artifacts/archive_metrics.hpp"

namespace kiln::artifacts {

namespace {

// An entry kiln will not extract; the message becomes extract_result::error.
struct refused : std::runtime_error {
    using std::runtime_error::runtime_error;
};

struct fd_holder {
    int fd = -1;
    explicit fd_holder(int f = -1) : fd(f) {}
    fd_holder(const fd_holder&) = delete;
    fd_holder& operator=(const fd_holder&) = delete;
    ~fd_holder() {
        if (fd >= 0) ::close(fd);
    }
    void reset(int f) {
        if (fd >= 0) ::close(fd);
        fd = f;
    }
};

std::string human(std::uint64_t bytes) {
    const char* units[] = {"bytes", "KiB", "MiB", "GiB", "TiB"};
    double v = static_cast<double>(bytes);
    int u = 0;
    while (v >= 1024 && u < 4) {
        v /= 1024;
        ++u;
    }
    char buf[48];
    if (u == 0) std::snprintf(buf, sizeof buf, "%llu bytes", static_cast<unsigned long long>(bytes));
    else std::snprintf(buf, sizeof buf, "%.1f %s", v, units[u]);
    return buf;
}

class extractor {
public:
    extractor(const std::filesystem::path& archive, const std::filesystem::path& destination,
              const extract_limits& limits)
        : archive_name_(archive.filename().string()), limits_(limits) {
        root_.reset(::open(destination.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
        if (root_.fd < 0)
            throw std::system_error(errno, std::generic_category(), "cannot open destination " + destination.string());
    }

    void entry(const entry_info& e, const std::function<std::size_t(std::span<char>)>& read) {
        current_ = e.name;
        have_current_ = true;
        if (++result_.entries_seen > limits_.max_entries)
            throw refused("has more than " + std::to_string(limits_.max_entries) +
                          " entries, the limit for extraction; refusing the rest (a zip bomb?)");
        std::vector<std::string> parts = split(e.name);
        if (parts.empty()) {
            if (e.type == entry_type::directory) return;  // "./": the destination itself
            throw refused("has an empty name");
        }
        std::string leaf = std::move(parts.back());
        parts.pop_back();
        switch (e.type) {
            case entry_type::directory: make_directory(parent(parts), leaf, e.mode); break;
            case entry_type::file: write_file(parent(parts), leaf, e, read); break;
            case entry_type::symlink: make_symlink(parent(parts), parts.size(), leaf, e.link_target); break;
            case entry_type::other:
                throw refused(e.link_target.empty()
                                  ? "is a device, FIFO or socket; only files, directories and symbolic links are extracted"
                                  : "is a hard link; only files, directories and symbolic links are extracted");
        }
    }

    std::string describe(const std::string& what) const {
        if (!have_current_) return archive_name_ + ": " + what;
        return archive_name_ + ": entry \"" + printable_name(current_) + "\" " + what;
    }

    extract_result& result() { return result_.r; }

private:
    struct counters {
        extract_result r;
        std::uint64_t entries_seen = 0;
    };

    // Relative, '/'-separated, "." and empty parts dropped; absolute names and ".." refused.
    static std::vector<std::string> split(const std::string& name) {
        if (name.empty()) throw refused("has an empty name");
        if (name.front() == '/') throw refused("has an absolute path; refusing to extract outside the destination");
        std::vector<std::string> parts;
        std::size_t from = 0;
        while (from <= name.size()) {
            std::size_t to = name.find('/', from);
            if (to == std::string::npos) to = name.size();
            std::string part = name.substr(from, to - from);
            if (part == "..")
                throw refused("has a \"..\" path element; refusing to extract outside the destination");
            if (!part.empty() && part != ".") parts.push_back(std::move(part));
            from = to + 1;
        }
        return parts;
    }

    // The directory holding an entry, created as needed; every component must be a real
    // directory (never a symlink).
    int parent(const std::vector<std::string>& parts) {
        if (parts.empty()) return root_.fd;
        std::string key;
        for (const auto& p : parts) key += p + '/';
        if (key == cached_key_) return cached_.fd;
        int cur = root_.fd;
        fd_holder owned;
        std::string walked;
        for (const auto& p : parts) {
            walked += walked.empty() ? p : "/" + p;
            int fd = ::openat(cur, p.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
            if (fd < 0 && errno == ENOENT) {
                if (::mkdirat(cur, p.c_str(), 0755) != 0 && errno != EEXIST) fail("cannot create directory " + walked);
                fd = ::openat(cur, p.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
            }
            if (fd < 0) {
                if (errno == ELOOP || errno == ENOTDIR)
                    throw refused("goes through \"" + printable_name(walked) +
                                  "\", which is a symbolic link or not a directory; refusing to follow it");
                fail("cannot open directory " + walked);
            }
            owned.reset(fd);
            cur = fd;
        }
        cached_.reset(owned.fd);
        owned.fd = -1;
        cached_key_ = key;
        return cached_.fd;
    }

    [[noreturn]] void fail(const std::string& what) {
        throw std::runtime_error(describe(what + ": " + std::strerror(errno)));
    }

    // Removes what is at `leaf` (never a directory) so a new entry can take its place.
    void clear(int dir, const std::string& leaf) {
        struct stat st {};
        if (::fstatat(dir, leaf.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
            if (errno == ENOENT) return;
            fail("cannot inspect");
        }
        if (S_ISDIR(st.st_mode)) throw refused("would replace an existing directory");
        if (::unlinkat(dir, leaf.c_str(), 0) != 0) fail("cannot replace the existing file");
    }

    void make_directory(int dir, const std::string& leaf, std::uint32_t mode) {
        if (::mkdirat(dir, leaf.c_str(), 0755) != 0 && errno != EEXIST) fail("cannot create directory");
        fd_holder fd(::openat(dir, leaf.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
        if (fd.fd < 0) {
            if (errno == ELOOP || errno == ENOTDIR)
                throw refused("is a directory but a symbolic link or file of that name exists; refusing to follow it");
            fail("cannot open directory");
        }
        // Keep the owner able to fill it; the archive's other bits as given.
        if (mode != 0) (void)::fchmod(fd.fd, (mode & 0777) | 0700);
    }

    void write_file(int dir, const std::string& leaf, const entry_info& e,
                    const std::function<std::size_t(std::span<char>)>& read) {
        auto& r = result_.r;
        if (e.size > limits_.max_total_bytes - std::min(r.bytes, limits_.max_total_bytes)) over_limit();
        clear(dir, leaf);
        fd_holder fd(::openat(dir, leaf.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600));
        if (fd.fd < 0) fail("cannot create file");
        try {
            if (buffer_.empty()) buffer_.resize(256 << 10);
            for (;;) {
                std::size_t n = read(std::span<char>(buffer_));
                if (n == 0) break;
                if (n > limits_.max_total_bytes - r.bytes) over_limit();
                const char* p = buffer_.data();
                std::size_t left = n;
                while (left > 0) {
                    ssize_t w = ::write(fd.fd, p, left);
                    if (w < 0) {
                        if (errno == EINTR) continue;
                        fail("cannot write");
                    }
                    p += w;
                    left -= static_cast<std::size_t>(w);
                }
                r.bytes += n;
            }
        } catch (...) {
            ::unlinkat(dir, leaf.c_str(), 0);  // no truncated file left behind
            throw;
        }
        (void)::fchmod(fd.fd, (e.mode & 0777) ? (e.mode & 0777) : 0644);
        if (e.mtime != 0) {
            timespec times[2] = {{0, UTIME_OMIT}, {static_cast<time_t>(e.mtime), 0}};
            (void)::futimens(fd.fd, times);
        }
        ++r.files;
    }

    [[noreturn]] void over_limit() {
        throw refused("would take the extracted size past " + human(limits_.max_total_bytes) +
                      ", the limit for extraction; refusing it (a zip bomb?)");
    }

    // A link may point only downwards from its directory after climbing at most to the
    // destination: leading ".." elements, then names. A ".." after a name is refused because
    // the name may itself be a link, which would make the climb start elsewhere.
    void make_symlink(int dir, std::size_t depth, const std::string& leaf, const std::string& target) {
        if (target.empty()) throw refused("is a symbolic link with an empty target");
        if (target.front() == '/')
            throw refused("is a symbolic link to an absolute path (" + printable_name(target) +
                          "); refusing a link that leads outside the destination");
        std::size_t ups = 0;
        bool named = false;
        std::size_t from = 0;
        while (from <= target.size()) {
            std::size_t to = target.find('/', from);
            if (to == std::string::npos) to = target.size();
            std::string part = target.substr(from, to - from);
            if (part == "..") {
                if (named)
                    throw refused("is a symbolic link whose target (" + printable_name(target) +
                                  ") climbs after descending; refusing a link that may lead outside the destination");
                ++ups;
            } else if (!part.empty() && part != ".") {
                named = true;
            }
            from = to + 1;
        }
        if (ups > depth)
            throw refused("is a symbolic link to " + printable_name(target) +
                          ", which leads outside the destination; refusing it");
        clear(dir, leaf);
        if (::symlinkat(target.c_str(), dir, leaf.c_str()) != 0) fail("cannot create symbolic link");
    }

    std::string archive_name_;
    extract_limits limits_;
    fd_holder root_;
    fd_holder cached_;
    std::string cached_key_;
    std::vector<char> buffer_;
    counters result_;
    std::string current_;
    bool have_current_ = false;
};

}  // namespace

namespace {

extract_result extract(const std::filesystem::path& archive, const std::filesystem::path& destination,
                       const extract_limits& limits) {
    extract_result out;
    try {
        extractor x(archive, destination, limits);
        try {
            read_archive(archive, [&](const entry_info& e, const std::function<std::size_t(std::span<char>)>& read) {
                x.entry(e, read);
            });
        } catch (const refused& r) {
            out = x.result();
            out.error = x.describe(r.what());
            return out;
        } catch (const std::exception& e) {
            out = x.result();
            out.error = e.what();
            return out;
        }
        out = x.result();
        out.ok = true;
    } catch (const std::exception& e) {
        out.ok = false;
        out.error = e.what();
    }
    return out;
}

}  // namespace

std::string printable_name(std::string_view name) {
    std::string out;
    for (char c : name) {
        auto u = static_cast<unsigned char>(c);
        if (u < 0x20 || u == 0x7f) {
            char buf[8];
            std::snprintf(buf, sizeof buf, "\\x%02x", u);
            out += buf;
        } else {
            out += c;
        }
    }
    return out;
}

extract_result extract_archive(const std::filesystem::path& archive, const std::filesystem::path& destination,
                               const extract_limits& limits) {
    return detail::counted(
        archive_operation::extract, [&] { return extract(archive, destination, limits); },
        [](const extract_result& r) { return r.ok ? r.bytes : 0; });
}

}  // namespace kiln::artifacts
