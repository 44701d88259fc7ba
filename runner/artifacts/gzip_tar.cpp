// write_gzip (reports) and write_tar_zstd (cache archives with CACHE_COMPRESSION_FORMAT=tarzstd).

#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <libdeflate.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <system_error>

#include "runner/artifacts/archive.hpp"
#include "runner/artifacts/archive_metrics.hpp"
#include "runner/artifacts/deflate.hpp"
#include "runner/artifacts/utf8_locale.hpp"
#include "runner/artifacts/zip_format.hpp"
#include "runner/util/crc32.hpp"

namespace kiln::artifacts {

namespace {

constexpr std::size_t piece_size = 1 << 20;
constexpr std::size_t dict_size = 32 << 10;

struct fd_holder {
    int fd = -1;
    ~fd_holder() {
        if (fd >= 0) ::close(fd);
    }
};

[[noreturn]] void throw_errno(const std::string& what, const std::filesystem::path& p) {
    throw std::system_error(errno, std::generic_category(), what + " " + p.string());
}

std::size_t read_some(int fd, const std::filesystem::path& path, unsigned char* buf, std::size_t len) {
    std::size_t got = 0;
    while (got < len) {
        ssize_t n = ::read(fd, buf + got, len - got);
        if (n < 0) {
            if (errno == EINTR) continue;
            throw_errno("cannot read", path);
        }
        if (n == 0) break;
        got += static_cast<std::size_t>(n);
    }
    return got;
}

// gitlab-runner's gzip comment: the path as is when plain ASCII without '%', else "e:" and the
// path URL-escaped (helpers/archives/gzip_create.go).
std::string gzip_comment(std::string_view name) {
    bool plain = true;
    for (unsigned char c : name)
        if (c >= 0x80 || c == '%' || c == 0) plain = false;
    if (plain) return std::string(name);
    static const char hex[] = "0123456789ABCDEF";
    std::string out = "e:";
    for (unsigned char c : name) {
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_' ||
            c == '.' || c == '~' || c == '/') {
            out += static_cast<char>(c);
        } else {
            out += '%';
            out += hex[c >> 4];
            out += hex[c & 15];
        }
    }
    return out;
}

int zstd_level(compression_level level) {
    switch (level) {
        case compression_level::fastest: return 1;
        case compression_level::fast: return 2;
        case compression_level::normal: return 3;
        case compression_level::slow: return 7;
        case compression_level::slowest: return 11;
    }
    return 3;
}

}  // namespace

namespace {

archive_stats gzip_file(const std::filesystem::path& source, const std::filesystem::path& out,
                        compression_level level, std::string_view relative_name) {
    fd_holder in{::open(source.c_str(), O_RDONLY | O_CLOEXEC)};
    if (in.fd < 0) throw_errno("cannot open", source);
    struct stat st {};
    if (::fstat(in.fd, &st) != 0) throw_errno("cannot stat", source);
    archive_stats stats;
    try {
        detail::zip::output_file o(out);
        std::string header = {'\x1f', '\x8b', 8, static_cast<char>(relative_name.empty() ? 0x08 : 0x18)};
        auto mtime = static_cast<std::uint32_t>(st.st_mtime > 0 ? st.st_mtime : 0);
        for (int i = 0; i < 4; ++i) header += static_cast<char>(mtime >> (8 * i));
        header += '\0';  // extra flags
        header += '\3';  // OS: Unix
        header += source.filename().string();
        header += '\0';
        if (!relative_name.empty()) {
            header += gzip_comment(relative_name);
            header += '\0';
        }
        o.write(header.data(), header.size());

        detail::deflater d(level);
        std::vector<unsigned char> buf(dict_size + piece_size), next(piece_size);
        detail::byte_vector packed;
        std::size_t dict_len = 0;
        std::uint32_t crc = 0;
        std::uint64_t total = 0;
        // Read one piece ahead so the last piece is known as last.
        std::size_t n = read_some(in.fd, source, buf.data() + dict_len, piece_size);
        for (;;) {
            std::size_t m = n == piece_size ? read_some(in.fd, source, next.data(), piece_size) : 0;
            bool last = m == 0;
            std::span<const unsigned char> data(buf.data() + dict_len, n);
            crc = util::crc32_update(crc, data.data(), data.size());
            total += n;
            packed.clear();
            d.compress_piece(std::span<const unsigned char>(buf.data(), dict_len), data, last, packed);
            o.write(packed.data(), packed.size());
            if (last) break;
            // The new dictionary: the last 32 KiB of this piece, then the next piece after it.
            std::size_t keep = std::min(dict_size, n);
            std::memmove(buf.data(), buf.data() + dict_len + n - keep, keep);
            dict_len = keep;
            std::memcpy(buf.data() + dict_len, next.data(), m);
            n = m;
        }
        unsigned char trailer[8];
        for (int i = 0; i < 4; ++i) trailer[i] = static_cast<unsigned char>(crc >> (8 * i));
        for (int i = 0; i < 4; ++i) trailer[4 + i] = static_cast<unsigned char>(total >> (8 * i));
        o.write(trailer, sizeof trailer);
        stats.archive_bytes = o.offset();
        o.close();
        stats.entries = 1;
        stats.uncompressed_bytes = total;
    } catch (...) {
        std::error_code ignored;
        std::filesystem::remove(out, ignored);
        throw;
    }
    return stats;
}

}  // namespace

archive_stats write_gzip(const std::filesystem::path& source, const std::filesystem::path& out,
                         compression_level level, std::string_view relative_name) {
    return detail::counted(
        archive_operation::create, [&] { return gzip_file(source, out, level, relative_name); },
        [](const archive_stats& s) { return s.uncompressed_bytes; });
}

namespace {

struct write_deleter {
    void operator()(archive* a) const { archive_write_free(a); }
};
struct entry_deleter {
    void operator()(::archive_entry* e) const { archive_entry_free(e); }
};

[[noreturn]] void tar_failed(archive* a, const std::filesystem::path& out) {
    const char* msg = archive_error_string(a);
    throw std::runtime_error("cannot write " + out.string() + ": " + (msg ? msg : "unknown error"));
}

}  // namespace

namespace {

archive_stats tar_zstd(const std::vector<archive_entry>& entries, const std::filesystem::path& out,
                       compression_level level) {
    archive_stats stats;
    detail::utf8_locale utf8;
    try {
        std::unique_ptr<archive, write_deleter> a(archive_write_new());
        if (!a) throw std::bad_alloc();
        if (archive_write_set_format_pax_restricted(a.get()) != ARCHIVE_OK ||
            archive_write_add_filter_zstd(a.get()) != ARCHIVE_OK)
            tar_failed(a.get(), out);
        std::string lvl = std::to_string(zstd_level(level));
        if (archive_write_set_filter_option(a.get(), "zstd", "compression-level", lvl.c_str()) < ARCHIVE_WARN)
            tar_failed(a.get(), out);
        archive_write_set_bytes_in_last_block(a.get(), 1);
        if (archive_write_open_filename(a.get(), out.c_str()) != ARCHIVE_OK) tar_failed(a.get(), out);
        std::vector<unsigned char> buf(256 << 10);
        for (const auto& e : entries) {
            struct stat st {};
            if (::lstat(e.source.c_str(), &st) != 0) throw_errno("cannot archive", e.source);
            std::unique_ptr<::archive_entry, entry_deleter> ae(archive_entry_new());
            std::string name = e.name;
            fd_holder fd;
            if (S_ISDIR(st.st_mode)) {
                if (name.back() != '/') name += '/';
            } else if (S_ISLNK(st.st_mode)) {
                std::string target(static_cast<std::size_t>(st.st_size > 0 ? st.st_size : 4096) + 1, '\0');
                ssize_t n = ::readlink(e.source.c_str(), target.data(), target.size());
                if (n < 0) throw_errno("cannot read symbolic link", e.source);
                target.resize(static_cast<std::size_t>(n));
                archive_entry_copy_symlink(ae.get(), target.c_str());
            } else if (S_ISREG(st.st_mode)) {
                fd.fd = ::open(e.source.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
                if (fd.fd < 0) throw_errno("cannot open", e.source);
                if (::fstat(fd.fd, &st) != 0) throw_errno("cannot stat", e.source);
            } else {
                continue;  // sockets, FIFOs, devices: not archived
            }
            archive_entry_copy_pathname(ae.get(), name.c_str());
            archive_entry_set_filetype(ae.get(), st.st_mode & S_IFMT);
            archive_entry_set_perm(ae.get(), st.st_mode & 07777);
            archive_entry_set_mtime(ae.get(), st.st_mtime, 0);
            archive_entry_set_size(ae.get(), S_ISREG(st.st_mode) ? st.st_size : 0);
            if (archive_write_header(a.get(), ae.get()) < ARCHIVE_WARN) tar_failed(a.get(), out);
            ++stats.entries;
            if (S_ISREG(st.st_mode)) {
                // The header promised st_size bytes: write exactly that many (padding with zeros
                // if the file shrank meanwhile, cutting if it grew).
                auto left = static_cast<std::uint64_t>(st.st_size);
                while (left > 0) {
                    std::size_t want = static_cast<std::size_t>(std::min<std::uint64_t>(left, buf.size()));
                    std::size_t n = read_some(fd.fd, e.source, buf.data(), want);
                    if (n < want) std::fill(buf.begin() + static_cast<std::ptrdiff_t>(n), buf.begin() + static_cast<std::ptrdiff_t>(want), 0);
                    if (archive_write_data(a.get(), buf.data(), want) < 0) tar_failed(a.get(), out);
                    left -= want;
                }
                stats.uncompressed_bytes += static_cast<std::uint64_t>(st.st_size);
            }
        }
        if (archive_write_close(a.get()) != ARCHIVE_OK) tar_failed(a.get(), out);
        stats.archive_bytes = std::filesystem::file_size(out);
    } catch (...) {
        std::error_code ignored;
        std::filesystem::remove(out, ignored);
        throw;
    }
    return stats;
}

}  // namespace

archive_stats write_tar_zstd(const std::vector<archive_entry>& entries, const std::filesystem::path& out,
                             compression_level level) {
    return detail::counted(
        archive_operation::create, [&] { return tar_zstd(entries, out, level); },
        [](const archive_stats& s) { return s.uncompressed_bytes; });
}

}  // namespace kiln::artifacts
