#pragma once
// Archive formats for artifacts and the cache: writing zip (deflate compressed in parallel),
// gzip and tar.zst, and reading/extracting zip and tar archives safely.
// Everything here is blocking file I/O: call it through util::run_blocking, never on the I/O
// thread.

#include <array>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace kiln::artifacts {

/// ARTIFACT_COMPRESSION_LEVEL / CACHE_COMPRESSION_LEVEL, as gitlab-runner names them.
enum class compression_level { fastest, fast, normal, slow, slowest };

/// "fastest", "fast", "default", "slow", "slowest" → the level; empty or unknown → normal.
compression_level parse_compression_level(std::string_view text);

/// One thing to archive. `name` is its path inside the archive: relative, '/'-separated, no
/// "." or ".." elements; a directory's name ends with '/'. `source` is the file, directory or
/// symbolic link on disk (a symlink is stored as a link, never followed).
struct archive_entry {
    std::string name;
    std::filesystem::path source;
};

struct archive_stats {
    std::uint64_t entries = 0;
    std::uint64_t uncompressed_bytes = 0;  // sum of the regular files' sizes
    std::uint64_t archive_bytes = 0;       // size of the written archive
};

/// SHA-256 of one regular file as it was archived (for signed manifests).
struct file_digest {
    std::string name;
    std::uint64_t size = 0;
    std::array<unsigned char, 32> sha256{};
};

/// An extra regular file, made in memory, added at the end of an archive.
struct generated_file {
    std::string name;
    std::string content;
};

struct zip_options {
    compression_level level = compression_level::normal;
    unsigned threads = 0;  // compression workers; 0 = one per core
    /// When set, the SHA-256 of every regular file is computed from the very bytes compressed
    /// (no second read, no window for the file to change), and once all entries are written
    /// this is called with them in archive order; the files it returns are appended before the
    /// central directory. kiln's signed manifest is made this way (signing.hpp).
    std::function<std::vector<generated_file>(const std::vector<file_digest>&)> trailer;
};

/// Writes `entries` (in order) as a zip file at `out`: deflate (stored when that is smaller),
/// CRC-32, Unix modes and mtimes, symlinks as links, zip64 when sizes or counts need it, so
/// `unzip -t` and Python's zipfile accept it. Throws std::system_error naming the file on I/O
/// errors.
archive_stats write_zip(const std::vector<archive_entry>& entries,
                        const std::filesystem::path& out, const zip_options& options);

/// The same, with entries produced one at a time by `next` (it fills the entry and returns
/// true, or returns false at the end): a walk of a big tree need not hold a list of paths
/// (a std::filesystem::path costs ~500 bytes; 23,000 of them are 13 MiB).
archive_stats write_zip(const std::function<bool(archive_entry&)>& next,
                        const std::filesystem::path& out, const zip_options& options);

/// The same, written to a descriptor the caller owns (a pipe into an upload, say): the output
/// is strictly sequential, never seeks, and the descriptor is not closed. On error nothing is
/// removed; the reader must discard what it got.
archive_stats write_zip(const std::function<bool(archive_entry&)>& next, int out_fd,
                        const zip_options& options);

/// gzip of one file (artifact reports with artifact_format gzip), one gzip member as
/// gitlab-runner writes it: header name = the file's base name, header comment =
/// `relative_name` (its path in the project, "e:"+URL-escaped when not plain ASCII).
archive_stats write_gzip(const std::filesystem::path& source, const std::filesystem::path& out,
                         compression_level level, std::string_view relative_name = {});

/// tar compressed with zstd (cache archives when CACHE_COMPRESSION_FORMAT=tarzstd).
archive_stats write_tar_zstd(const std::vector<archive_entry>& entries,
                             const std::filesystem::path& out, compression_level level);

enum class entry_type { file, directory, symlink, other };

struct entry_info {
    std::string name;  // as stored in the archive, unvalidated
    entry_type type = entry_type::other;
    std::uint64_t size = 0;  // declared size of a file
    std::uint32_t mode = 0;  // permission bits
    std::string link_target;  // for symlinks (for a tar hard link, type other: its target)
    std::int64_t mtime = 0;   // modification time, Unix seconds (0 when the archive has none)
};

/// Reads a zip or tar (plain, gzip or zstd) archive, format detected from its content, and
/// calls `visit` for each entry in archive order. For a file, `read` returns its next bytes
/// into the buffer (0 at the end). Throws std::runtime_error with a readable message for a
/// corrupt or unsupported archive.
void read_archive(const std::filesystem::path& archive,
                  const std::function<void(const entry_info& entry,
                                           const std::function<std::size_t(std::span<char>)>& read)>&
                      visit);

/// A name from an archive or a manifest for messages: as it is, with control bytes escaped
/// (\x1b…), so a hostile name cannot rewrite the job log.
std::string printable_name(std::string_view name);

struct extract_limits {
    std::uint64_t max_total_bytes = 16ULL << 30;  // bytes written in all (zip-bomb guard)
    std::uint64_t max_entries = 1'000'000;
};

/// Archive work this process has done, for kiln's metrics: bytes of file data put into archives
/// or extracted from them, and the time that took. Thread-safe.
enum class archive_operation { create, extract };
struct archive_totals {
    std::uint64_t bytes = 0;
    double seconds = 0;
};
archive_totals archive_work(archive_operation op);

struct extract_result {
    bool ok = false;
    std::string error;  // one line naming the entry and what to do, when !ok
    std::uint64_t files = 0;
    std::uint64_t bytes = 0;
};

/// Extracts into the existing directory `destination`, refusing (with `error`) any entry whose
/// name is absolute or has "..", any path that would pass through a symlink, and any symlink
/// whose target leads outside `destination`; stops when a limit is exceeded. Nothing is ever
/// written outside `destination`.
extract_result extract_archive(const std::filesystem::path& archive,
                               const std::filesystem::path& destination,
                               const extract_limits& limits);

}  // namespace kiln::artifacts
