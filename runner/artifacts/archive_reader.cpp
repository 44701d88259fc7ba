// read_archive over libarchive: zip (through its central directory when the file is
// seekable) and tar, plain or compressed with gzip or zstd.

#include <archive.h>
#include <archive_entry.h>

#include <memory>
#include <stdexcept>
#include <string>

#include "runner/artifacts/archive.hpp"
#include "runner/artifacts/utf8_locale.hpp"

namespace kiln::artifacts {

namespace {

struct archive_deleter {
    void operator()(archive* a) const { archive_read_free(a); }
};

std::string one_line(const char* text) {
    std::string s = text ? text : "unknown error";
    for (char& c : s)
        if (c == '\n' || c == '\r') c = ' ';
    return s;
}

[[noreturn]] void corrupt(const std::filesystem::path& path, archive* a) {
    throw std::runtime_error(path.filename().string() + " is not a readable zip or tar archive (" +
                             one_line(archive_error_string(a)) + "); it may be truncated or corrupt");
}

}  // namespace

void read_archive(const std::filesystem::path& path,
                  const std::function<void(const entry_info& entry,
                                           const std::function<std::size_t(std::span<char>)>& read)>& visit) {
    detail::utf8_locale utf8;
    std::unique_ptr<archive, archive_deleter> a(archive_read_new());
    if (!a) throw std::bad_alloc();
    archive_read_support_format_zip(a.get());
    archive_read_support_format_tar(a.get());
    archive_read_support_filter_gzip(a.get());
    archive_read_support_filter_zstd(a.get());
    if (archive_read_open_filename(a.get(), path.c_str(), 256 << 10) != ARCHIVE_OK) {
        if (archive_errno(a.get()) == ENOENT)
            throw std::runtime_error("cannot open " + path.string() + ": no such file");
        corrupt(path, a.get());
    }
    ::archive_entry* e = nullptr;
    for (;;) {
        int r = archive_read_next_header(a.get(), &e);
        if (r == ARCHIVE_EOF) break;
        if (r < ARCHIVE_WARN) corrupt(path, a.get());
        entry_info info;
        const char* name = archive_entry_pathname_utf8(e);
        if (!name) name = archive_entry_pathname(e);
        if (!name) throw std::runtime_error(path.filename().string() + " has an entry whose name cannot be read");
        info.name = name;
        if (archive_entry_hardlink(e)) {
            info.type = entry_type::other;
            info.link_target = archive_entry_hardlink(e);
        } else {
            switch (archive_entry_filetype(e)) {
                case AE_IFREG: info.type = entry_type::file; break;
                case AE_IFDIR: info.type = entry_type::directory; break;
                case AE_IFLNK: info.type = entry_type::symlink; break;
                default: info.type = entry_type::other; break;
            }
            if (info.type == entry_type::symlink) {
                const char* target = archive_entry_symlink_utf8(e);
                if (!target) target = archive_entry_symlink(e);
                info.link_target = target ? target : "";
            }
        }
        info.size = archive_entry_size_is_set(e) ? static_cast<std::uint64_t>(archive_entry_size(e)) : 0;
        info.mode = static_cast<std::uint32_t>(archive_entry_perm(e));
        info.mtime = archive_entry_mtime_is_set(e) ? archive_entry_mtime(e) : 0;
        const std::function<std::size_t(std::span<char>)> read = [&](std::span<char> buf) -> std::size_t {
            if (info.type != entry_type::file) return 0;
            la_ssize_t n = archive_read_data(a.get(), buf.data(), buf.size());
            if (n < 0) corrupt(path, a.get());
            return static_cast<std::size_t>(n);
        };
        visit(info, read);
    }
}

}  // namespace kiln::artifacts
