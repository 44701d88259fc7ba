#pragma once
// The zip container (APPNOTE 6.3): local headers, data descriptors, the central directory,
// zip64 records, Unix modes and the extended-timestamp extra field. Internal to
// runner/artifacts; the byte layout is checked by unzip and Python's zipfile in the tests.

#include <cstddef>
#include <cstdint>
#include <ctime>
#include <filesystem>
#include <string>
#include <vector>

namespace kiln::artifacts::detail::zip {

inline constexpr std::uint16_t method_store = 0;
inline constexpr std::uint16_t method_deflate = 8;

struct entry_record {
    std::string name;
    std::uint32_t mode = 0;  // st_mode: type and permission bits
    std::time_t mtime = 0;
    std::string link_target;
    std::uint64_t offset = 0;  // of the local header
    std::uint32_t crc = 0;
    std::uint64_t size = 0;
    std::uint64_t size_hint = 0;  // the file's size when it was listed
    std::uint64_t compressed = 0;
    std::uint16_t method = method_store;
    bool split = false;        // sizes and CRC follow the data (data descriptor)
    bool zip64_local = false;  // the local header carries a zip64 field (data descriptor too)
};

/// A split entry's local header must say up front whether it uses zip64; deflate may expand
/// incompressible data a little, so decide with a margin.
bool needs_zip64_local(std::uint64_t size);

/// Buffered, strictly sequential output (never seeks, so a pipe works too).
class output_file {
public:
    explicit output_file(const std::filesystem::path& path);
    /// Writes to a descriptor the caller owns (not closed here).
    explicit output_file(int fd);
    ~output_file();
    output_file(const output_file&) = delete;
    output_file& operator=(const output_file&) = delete;

    void write(const void* data, std::size_t len);
    std::uint64_t offset() const { return written_ + buffer_.size(); }
    void close();

private:
    void flush();
    void write_direct(const unsigned char* p, std::size_t len);

    std::filesystem::path path_;
    int fd_ = -1;
    bool owned_ = true;
    std::vector<unsigned char> buffer_;
    std::uint64_t written_ = 0;
};

void write_local_header(output_file& out, const entry_record& r);
void write_data_descriptor(output_file& out, const entry_record& r);
/// Writes the central directory and end records; returns the archive's total size.
std::uint64_t write_central_directory(output_file& out, const std::vector<entry_record>& records);

}  // namespace kiln::artifacts::detail::zip
