// write_zip, write_gzip and write_tar_zstd, checked by independent readers: unzip -t,
// Python's zipfile/gzip/tarfile, and kiln's own read_archive/extract_archive.

#include <catch2/catch.hpp>
#include <openssl/sha.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <map>
#include <thread>
#include <system_error>

#include "archive_test_util.hpp"
#include "runner/artifacts/archive.hpp"

using namespace kiln::artifacts;
using namespace kiln::artifacts::testing;

namespace {

// A tree with every kind of entry: nested directories, an empty file, small text files, an
// executable, a file split over several 1 MiB pieces, a symlink, a non-ASCII name.
struct sample_tree {
    temp_dir dir;
    fs::path src;
    std::vector<archive_entry> entries;
    std::map<std::string, std::string> files;  // name -> content

    sample_tree() : src(dir.path / "src") {
        ::umask(022);  // the listing below expects 0644/0755
        add_file("README.md", "hello kiln\n");
        add_file("empty.txt", "");
        add_file("bin/tool.sh", "#!/bin/sh\necho tool\n");
        ::chmod((src / "bin/tool.sh").c_str(), 0755);
        add_file("include/deep/nested/header.h", mixed_content(40000, 1));
        add_file("lib/libbig.so", mixed_content(3 * (1 << 20) + 12345, 2));
        add_file("lib/exactly-one-piece.bin", mixed_content(1 << 20, 3));
        add_file("données/été.txt", "non-ASCII name\n");
        fs::create_symlink("libbig.so", src / "lib/libbig.so.1");
        fs::create_directories(src / "empty-dir");
        for (const char* d : {"bin/", "include/", "include/deep/", "include/deep/nested/", "lib/", "données/", "empty-dir/"})
            entries.push_back({d, src / d});
        for (auto& [name, content] : files) entries.push_back({name, src / name});
        entries.push_back({"lib/libbig.so.1", src / "lib/libbig.so.1"});
    }

    void add_file(const std::string& name, const std::string& content) {
        write_file(src / name, content);
        files[name] = content;
    }
};

const char* verify_zip_py = R"(
import sys, zipfile, stat, hashlib
z = zipfile.ZipFile(sys.argv[1])
bad = z.testzip()
assert bad is None, "bad entry " + str(bad)
for i in z.infolist():
    mode = i.external_attr >> 16
    kind = "l" if stat.S_ISLNK(mode) else "d" if stat.S_ISDIR(mode) else "f" if stat.S_ISREG(mode) else "?"
    data = z.read(i)
    print(kind, oct(mode & 0o777), i.file_size, hashlib.sha256(data).hexdigest(), i.filename)
)";

std::string sha256_hex(const std::string& s) {
    unsigned char d[32];
    SHA256(reinterpret_cast<const unsigned char*>(s.data()), s.size(), d);
    char hex[65];
    for (int i = 0; i < 32; ++i) std::snprintf(hex + 2 * i, 3, "%02x", d[i]);
    return hex;
}

}  // namespace

TEST_CASE("parse_compression_level takes gitlab-runner's names", "[artifacts]") {
    CHECK(parse_compression_level("fastest") == compression_level::fastest);
    CHECK(parse_compression_level("fast") == compression_level::fast);
    CHECK(parse_compression_level("default") == compression_level::normal);
    CHECK(parse_compression_level("slow") == compression_level::slow);
    CHECK(parse_compression_level("SLOWEST") == compression_level::slowest);
    CHECK(parse_compression_level("") == compression_level::normal);
    CHECK(parse_compression_level("turbo") == compression_level::normal);
}

TEST_CASE("write_zip makes archives that unzip and Python's zipfile accept, at every level", "[artifacts]") {
    sample_tree t;
    for (auto level : {compression_level::fastest, compression_level::fast, compression_level::normal,
                       compression_level::slow, compression_level::slowest}) {
        for (unsigned threads : {1u, 2u}) {
            DYNAMIC_SECTION("level " << static_cast<int>(level) << ", " << threads << " threads") {
                fs::path zip = t.dir.path / "out.zip";
                zip_options o;
                o.level = level;
                o.threads = threads;
                archive_stats s = write_zip(t.entries, zip, o);
                CHECK(s.entries == t.entries.size());
                std::uint64_t total = 0;
                for (auto& [n, c] : t.files) total += c.size();
                CHECK(s.uncompressed_bytes == total);
                CHECK(s.archive_bytes == fs::file_size(zip));
                CHECK(s.archive_bytes < total);  // it did compress

                auto [rc, out] = run("unzip -t -q " + quote(zip));
                INFO(out);
                CHECK(rc == 0);

                auto [prc, listing] = python(t.dir.path, verify_zip_py, quote(zip));
                INFO(listing);
                REQUIRE(prc == 0);
                for (auto& [name, content] : t.files) {
                    bool exec = name == "bin/tool.sh";
                    std::string line = std::string("f ") + (exec ? "0o755" : "0o644") + " " +
                                       std::to_string(content.size()) + " " + sha256_hex(content) + " " + name + "\n";
                    CHECK(listing.find(line) != std::string::npos);
                }
                CHECK(listing.find("l 0o777 9 " + sha256_hex("libbig.so") + " lib/libbig.so.1\n") != std::string::npos);
                CHECK(listing.find(" include/deep/nested/\n") != std::string::npos);
                CHECK(listing.find("d 0o755 0 ") != std::string::npos);
            }
        }
    }
}

TEST_CASE("write_zip output round-trips through extract_archive with modes, links and mtimes", "[artifacts]") {
    sample_tree t;
    struct timespec times[2] = {{0, UTIME_OMIT}, {1600000000, 0}};
    REQUIRE(::utimensat(AT_FDCWD, (t.src / "README.md").c_str(), times, 0) == 0);
    fs::path zip = t.dir.path / "out.zip";
    write_zip(t.entries, zip, zip_options{});
    fs::path dest = t.dir.path / "dest";
    fs::create_directories(dest);
    extract_result r = extract_archive(zip, dest, extract_limits{});
    INFO(r.error);
    REQUIRE(r.ok);
    CHECK(r.files == t.files.size());
    for (auto& [name, content] : t.files) CHECK(read_file(dest / name) == content);
    CHECK(fs::is_symlink(dest / "lib/libbig.so.1"));
    CHECK(fs::read_symlink(dest / "lib/libbig.so.1") == "libbig.so");
    CHECK(fs::is_directory(dest / "empty-dir"));
    struct stat st {};
    REQUIRE(::stat((dest / "bin/tool.sh").c_str(), &st) == 0);
    CHECK((st.st_mode & 0777) == 0755);
    REQUIRE(::stat((dest / "README.md").c_str(), &st) == 0);
    CHECK(st.st_mtime == 1600000000);
}

TEST_CASE("archive work is counted for the metrics: file bytes in and out, and time", "[artifacts]") {
    sample_tree t;
    std::uint64_t file_bytes = 0;
    for (auto& [name, content] : t.files) file_bytes += content.size();
    const auto created = archive_work(archive_operation::create);
    const auto extracted = archive_work(archive_operation::extract);
    fs::path zip = t.dir.path / "out.zip";
    auto st = write_zip(t.entries, zip, zip_options{});
    fs::path dest = t.dir.path / "dest";
    fs::create_directories(dest);
    REQUIRE(extract_archive(zip, dest, extract_limits{}).ok);
    const auto created_after = archive_work(archive_operation::create);
    const auto extracted_after = archive_work(archive_operation::extract);
    CHECK(created_after.bytes - created.bytes == st.uncompressed_bytes);
    CHECK(created_after.seconds > created.seconds);
    CHECK(extracted_after.bytes - extracted.bytes == file_bytes);
    CHECK(extracted_after.seconds > extracted.seconds);
    // A refused archive counts nothing.
    fs::path junk = t.dir.path / "junk.zip";
    write_file(junk, "not an archive");
    CHECK_FALSE(extract_archive(junk, dest, extract_limits{}).ok);
    CHECK(archive_work(archive_operation::extract).bytes == extracted_after.bytes);
}

TEST_CASE("write_zip hashes every file and appends the trailer's files", "[artifacts]") {
    sample_tree t;
    fs::path zip = t.dir.path / "signed.zip";
    zip_options o;
    o.threads = 2;
    std::vector<file_digest> seen;
    o.trailer = [&](const std::vector<file_digest>& d) {
        seen = d;
        return std::vector<generated_file>{{".kiln/manifest.txt", "manifest of " + std::to_string(d.size()) + " files\n"}};
    };
    archive_stats s = write_zip(t.entries, zip, o);
    CHECK(s.entries == t.entries.size() + 1);
    REQUIRE(seen.size() == t.files.size());
    // Archive order, regular files only.
    std::vector<std::string> order;
    for (auto& e : t.entries)
        if (t.files.count(e.name)) order.push_back(e.name);
    for (std::size_t i = 0; i < seen.size(); ++i) {
        CHECK(seen[i].name == order[i]);
        const std::string& content = t.files[order[i]];
        CHECK(seen[i].size == content.size());
        unsigned char d[32];
        SHA256(reinterpret_cast<const unsigned char*>(content.data()), content.size(), d);
        CHECK(std::equal(std::begin(d), std::end(d), seen[i].sha256.begin()));
    }
    std::map<std::string, std::string> got;
    read_archive(zip, [&](const entry_info& e, const std::function<std::size_t(std::span<char>)>& read) {
        std::string data;
        char buf[7000];
        while (std::size_t n = read(buf)) data.append(buf, n);
        got[e.name] = data;
    });
    CHECK(got[".kiln/manifest.txt"] == "manifest of " + std::to_string(t.files.size()) + " files\n");
    CHECK(got["lib/libbig.so"] == t.files["lib/libbig.so"]);
    auto [rc, out] = run("unzip -t -q " + quote(zip));
    INFO(out);
    CHECK(rc == 0);
}

TEST_CASE("write_zip switches to zip64 past 65535 entries", "[artifacts]") {
    temp_dir d;
    write_file(d.path / "one", "x");
    std::vector<archive_entry> entries;
    for (int i = 0; i < 70000; ++i) entries.push_back({"f/" + std::to_string(i), d.path / "one"});
    fs::path zip = d.path / "many.zip";
    archive_stats s = write_zip(entries, zip, zip_options{});
    CHECK(s.entries == 70000);
    auto [rc, out] = python(d.path, "import sys, zipfile\nz = zipfile.ZipFile(sys.argv[1])\nassert z.testzip() is None\nprint(len(z.infolist()))\n",
                            quote(zip));
    INFO(out);
    CHECK(rc == 0);
    CHECK(out == "70000\n");
    auto [urc, uout] = run("unzip -t -q " + quote(zip));
    INFO(uout);
    CHECK(urc == 0);
}

TEST_CASE("write_zip names the missing file and leaves no partial archive", "[artifacts]") {
    temp_dir d;
    write_file(d.path / "a", "a");
    fs::path zip = d.path / "out.zip";
    std::vector<archive_entry> entries{{"a", d.path / "a"}, {"gone", d.path / "gone"}};
    try {
        write_zip(entries, zip, zip_options{});
        FAIL("no error");
    } catch (const std::system_error& e) {
        CHECK(std::string(e.what()).find("gone") != std::string::npos);
    }
    CHECK_FALSE(fs::exists(zip));
}

TEST_CASE("write_gzip writes a gzip member Python reads back, with gitlab-runner's name and comment", "[artifacts]") {
    temp_dir d;
    std::string content = mixed_content(2 * (1 << 20) + 777, 9);
    write_file(d.path / "reports/junit.xml", content);
    fs::path gz = d.path / "junit.xml.gz";
    archive_stats s = write_gzip(d.path / "reports/junit.xml", gz, compression_level::normal, "reports/junit.xml");
    CHECK(s.uncompressed_bytes == content.size());
    CHECK(s.archive_bytes == fs::file_size(gz));
    auto [rc, out] = python(d.path, R"(
import sys, gzip, hashlib
raw = open(sys.argv[1], 'rb').read()
flags = raw[3]
assert flags == 0x18, flags
rest = raw[10:]
name, rest = rest.split(b'\0', 1)
comment, rest = rest.split(b'\0', 1)
print(name.decode(), comment.decode(), hashlib.sha256(gzip.decompress(raw)).hexdigest())
)",
                            quote(gz));
    INFO(out);
    CHECK(rc == 0);
    CHECK(out == "junit.xml reports/junit.xml " + sha256_hex(content) + "\n");

    write_file(d.path / "empty", "");
    write_gzip(d.path / "empty", d.path / "empty.gz", compression_level::fastest);
    auto [erc, eout] = run("gzip -t " + quote(d.path / "empty.gz") + " && gzip -dc " + quote(d.path / "empty.gz") + " | wc -c");
    CHECK(erc == 0);
    CHECK(eout == "0\n");
}

TEST_CASE("write_tar_zstd writes a tar.zst that read_archive and extract_archive read back", "[artifacts]") {
    sample_tree t;
    fs::path tz = t.dir.path / "cache.tar.zst";
    archive_stats s = write_tar_zstd(t.entries, tz, compression_level::fast);
    CHECK(s.entries == t.entries.size());
    CHECK(s.archive_bytes == fs::file_size(tz));
    fs::path dest = t.dir.path / "dest";
    fs::create_directories(dest);
    extract_result r = extract_archive(tz, dest, extract_limits{});
    INFO(r.error);
    REQUIRE(r.ok);
    for (auto& [name, content] : t.files) CHECK(read_file(dest / name) == content);
    CHECK(fs::read_symlink(dest / "lib/libbig.so.1") == "libbig.so");
    auto [rc, out] = run("zstd -V >/dev/null 2>&1 || exit 0; tar --zstd -tf " + quote(tz) + " | wc -l");
    INFO(out);
    CHECK(rc == 0);
}

TEST_CASE("write_zip streams entries from a generator into a pipe, byte for byte the same archive", "[artifacts]") {
    sample_tree t;
    fs::path zip = t.dir.path / "from-list.zip";
    zip_options o;
    o.threads = 2;
    write_zip(t.entries, zip, o);

    int fds[2];
    REQUIRE(::pipe(fds) == 0);
    std::string piped;
    std::thread reader([&] {
        char buf[65536];
        ssize_t n;
        while ((n = ::read(fds[0], buf, sizeof buf)) > 0) piped.append(buf, static_cast<std::size_t>(n));
        ::close(fds[0]);
    });
    std::size_t i = 0;
    archive_stats s = write_zip(
        [&](archive_entry& e) {
            if (i == t.entries.size()) return false;
            e = t.entries[i++];
            return true;
        },
        fds[1], o);
    ::close(fds[1]);
    reader.join();
    CHECK(s.archive_bytes == piped.size());
    CHECK(piped == read_file(zip));
}

// Hidden (takes ~30 s and 5 GB of sparse file): run with  kiln_unit_tests "[.zip64-big]".
TEST_CASE("write_zip writes a file over 4 GiB with zip64 sizes and offsets", "[.zip64-big]") {
    temp_dir d;
    fs::path big = d.path / "big.bin";
    {
        std::ofstream f(big, std::ios::binary);
        f << "head";
    }
    fs::resize_file(big, (4ULL << 30) + 12345);  // sparse: reads as zeros
    write_file(d.path / "after.txt", "after the big one\n");
    fs::path zip = d.path / "big.zip";
    zip_options o;
    o.level = compression_level::fastest;
    o.threads = 2;
    archive_stats s = write_zip({{"big.bin", big}, {"after.txt", d.path / "after.txt"}}, zip, o);
    CHECK(s.uncompressed_bytes == (4ULL << 30) + 12345 + 18);
    auto [rc, out] = python(d.path, R"(
import sys, zipfile, zlib
z = zipfile.ZipFile(sys.argv[1])
for i in z.infolist():
    crc = 0
    with z.open(i) as f:
        while True:
            b = f.read(1 << 24)
            if not b: break
            crc = zlib.crc32(b, crc)
    print(i.filename, i.file_size, crc == i.CRC, i.header_offset > 0xffffffff)
)",
                            quote(zip));
    INFO(out);
    CHECK(rc == 0);
    CHECK(out == "big.bin 4294979641 True False\nafter.txt 18 True " +
                     std::string(s.archive_bytes > 0xffffffffULL ? "True" : "False") + "\n");
    auto [urc, uout] = run("unzip -tqq " + quote(zip));
    INFO(uout);
    CHECK(urc == 0);
}
