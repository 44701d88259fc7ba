#include "runner/artifacts/zip_format.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <system_error>

namespace kiln::artifacts::detail::zip {

namespace {

constexpr std::size_t buffer_capacity = 256 << 10;
constexpr std::uint32_t max32 = 0xffffffffU;

class bytes {
public:
    void u8(std::uint32_t v) { b_.push_back(static_cast<unsigned char>(v)); }
    void u16(std::uint32_t v) {
        b_.push_back(static_cast<unsigned char>(v));
        b_.push_back(static_cast<unsigned char>(v >> 8));
    }
    void u32(std::uint32_t v) {
        u16(v & 0xffff);
        u16(v >> 16);
    }
    void u64(std::uint64_t v) {
        u32(static_cast<std::uint32_t>(v));
        u32(static_cast<std::uint32_t>(v >> 32));
    }
    void str(const std::string& s) { b_.insert(b_.end(), s.begin(), s.end()); }
    void append(const bytes& o) { b_.insert(b_.end(), o.b_.begin(), o.b_.end()); }
    std::size_t size() const { return b_.size(); }
    const unsigned char* data() const { return b_.data(); }
    void clear() { b_.clear(); }

private:
    std::vector<unsigned char> b_;
};

bool is_ascii(const std::string& s) {
    return std::all_of(s.begin(), s.end(), [](char c) { return static_cast<unsigned char>(c) < 0x80; });
}

// MS-DOS date and time in local time, as zip tools expect; clamped to the format's range.
std::pair<std::uint16_t, std::uint16_t> dos_time(std::time_t t) {
    std::tm tm{};
    localtime_r(&t, &tm);
    if (tm.tm_year < 80) return {0, (1 << 5) | 1};  // 1980-01-01 00:00
    if (tm.tm_year > 207) tm.tm_year = 207;
    auto time = static_cast<std::uint16_t>((tm.tm_hour << 11) | (tm.tm_min << 5) | (tm.tm_sec / 2));
    auto date = static_cast<std::uint16_t>(((tm.tm_year - 80) << 9) | ((tm.tm_mon + 1) << 5) | tm.tm_mday);
    return {time, date};
}

std::uint32_t unix_time32(std::time_t t) {
    if (t < 0) return 0;
    if (static_cast<std::uint64_t>(t) > max32) return max32;
    return static_cast<std::uint32_t>(t);
}

std::uint16_t flags_of(const entry_record& r) {
    std::uint16_t f = 0;
    if (r.split) f |= 0x0008;           // sizes and CRC in the data descriptor
    if (!is_ascii(r.name)) f |= 0x0800;  // name is UTF-8
    return f;
}

// Extended timestamp (0x5455): the modification time in Unix seconds, which unzip and
// Python's zipfile prefer to the 2-second local DOS time.
void timestamp_extra(bytes& b, const entry_record& r) {
    b.u16(0x5455);
    b.u16(5);
    b.u8(0x01);  // flags: mtime present
    b.u32(unix_time32(r.mtime));
}

}  // namespace

bool needs_zip64_local(std::uint64_t size) {
    return size + size / 64 + (1 << 20) >= max32;
}

output_file::output_file(const std::filesystem::path& path) : path_(path) {
    fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd_ < 0) throw std::system_error(errno, std::generic_category(), "cannot create " + path.string());
    buffer_.reserve(buffer_capacity);
}

output_file::output_file(int fd) : path_("the archive output"), fd_(fd), owned_(false) {
    buffer_.reserve(buffer_capacity);
}

output_file::~output_file() {
    if (fd_ >= 0 && owned_) ::close(fd_);
}

void output_file::write_direct(const unsigned char* p, std::size_t len) {
    while (len > 0) {
        ssize_t n = ::write(fd_, p, len);
        if (n < 0) {
            if (errno == EINTR) continue;
            throw std::system_error(errno, std::generic_category(), "cannot write " + path_.string());
        }
        p += n;
        len -= static_cast<std::size_t>(n);
        written_ += static_cast<std::uint64_t>(n);
    }
}

void output_file::flush() {
    write_direct(buffer_.data(), buffer_.size());
    buffer_.clear();
}

void output_file::write(const void* data, std::size_t len) {
    const auto* p = static_cast<const unsigned char*>(data);
    if (buffer_.size() + len > buffer_capacity) flush();
    if (len >= buffer_capacity) {
        write_direct(p, len);
        return;
    }
    buffer_.insert(buffer_.end(), p, p + len);
}

void output_file::close() {
    flush();
    if (!owned_) return;
    int fd = fd_;
    fd_ = -1;
    if (::close(fd) != 0) throw std::system_error(errno, std::generic_category(), "cannot write " + path_.string());
}

void write_local_header(output_file& out, const entry_record& r) {
    bytes extra;
    if (r.zip64_local) {
        extra.u16(0x0001);
        extra.u16(16);
        extra.u64(0);
        extra.u64(0);
    }
    timestamp_extra(extra, r);
    auto [time, date] = dos_time(r.mtime);
    bytes h;
    h.u32(0x04034b50);
    h.u16(r.zip64_local ? 45 : 20);
    h.u16(flags_of(r));
    h.u16(r.method);
    h.u16(time);
    h.u16(date);
    if (r.split) {
        h.u32(0);
        h.u32(r.zip64_local ? max32 : 0);
        h.u32(r.zip64_local ? max32 : 0);
    } else {
        h.u32(r.crc);
        h.u32(static_cast<std::uint32_t>(r.compressed));
        h.u32(static_cast<std::uint32_t>(r.size));
    }
    h.u16(static_cast<std::uint32_t>(r.name.size()));
    h.u16(static_cast<std::uint32_t>(extra.size()));
    h.str(r.name);
    h.append(extra);
    out.write(h.data(), h.size());
}

void write_data_descriptor(output_file& out, const entry_record& r) {
    bytes d;
    d.u32(0x08074b50);
    d.u32(r.crc);
    if (r.zip64_local) {
        d.u64(r.compressed);
        d.u64(r.size);
    } else {
        d.u32(static_cast<std::uint32_t>(r.compressed));
        d.u32(static_cast<std::uint32_t>(r.size));
    }
    out.write(d.data(), d.size());
}

std::uint64_t write_central_directory(output_file& out, const std::vector<entry_record>& records) {
    const std::uint64_t cd_offset = out.offset();
    bytes h;
    for (const auto& r : records) {
        h.clear();
        const bool big_size = r.zip64_local || r.size >= max32;
        const bool big_compressed = r.zip64_local || r.compressed >= max32;
        const bool big_offset = r.offset >= max32;
        const bool zip64 = big_size || big_compressed || big_offset;
        bytes extra;
        if (zip64) {
            extra.u16(0x0001);
            extra.u16((big_size ? 8 : 0) + (big_compressed ? 8 : 0) + (big_offset ? 8 : 0));
            if (big_size) extra.u64(r.size);
            if (big_compressed) extra.u64(r.compressed);
            if (big_offset) extra.u64(r.offset);
        }
        timestamp_extra(extra, r);
        auto [time, date] = dos_time(r.mtime);
        std::uint32_t external = (r.mode & 0xffff) << 16;
        if (S_ISDIR(r.mode)) external |= 0x10;  // MS-DOS directory attribute
        h.u32(0x02014b50);
        h.u16((3 << 8) | (zip64 ? 45 : 20));  // made by: Unix
        h.u16(zip64 ? 45 : 20);
        h.u16(flags_of(r));
        h.u16(r.method);
        h.u16(time);
        h.u16(date);
        h.u32(r.crc);
        h.u32(big_compressed ? max32 : static_cast<std::uint32_t>(r.compressed));
        h.u32(big_size ? max32 : static_cast<std::uint32_t>(r.size));
        h.u16(static_cast<std::uint32_t>(r.name.size()));
        h.u16(static_cast<std::uint32_t>(extra.size()));
        h.u16(0);  // comment
        h.u16(0);  // disk
        h.u16(0);  // internal attributes
        h.u32(external);
        h.u32(big_offset ? max32 : static_cast<std::uint32_t>(r.offset));
        h.str(r.name);
        h.append(extra);
        out.write(h.data(), h.size());
    }
    const std::uint64_t cd_size = out.offset() - cd_offset;
    const std::uint64_t count = records.size();
    h.clear();
    if (count >= 0xffff || cd_size >= max32 || cd_offset >= max32) {
        const std::uint64_t zip64_eocd = out.offset();
        h.u32(0x06064b50);
        h.u64(44);
        h.u16((3 << 8) | 45);
        h.u16(45);
        h.u32(0);
        h.u32(0);
        h.u64(count);
        h.u64(count);
        h.u64(cd_size);
        h.u64(cd_offset);
        h.u32(0x07064b50);  // locator
        h.u32(0);
        h.u64(zip64_eocd);
        h.u32(1);
    }
    h.u32(0x06054b50);
    h.u16(0);
    h.u16(0);
    h.u16(static_cast<std::uint32_t>(std::min<std::uint64_t>(count, 0xffff)));
    h.u16(static_cast<std::uint32_t>(std::min<std::uint64_t>(count, 0xffff)));
    h.u32(static_cast<std::uint32_t>(std::min<std::uint64_t>(cd_size, max32)));
    h.u32(static_cast<std::uint32_t>(std::min<std::uint64_t>(cd_offset, max32)));
    h.u16(0);  // comment
    out.write(h.data(), h.size());
    return out.offset();
}

}  // namespace kiln::artifacts::detail::zip
