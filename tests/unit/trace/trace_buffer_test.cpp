#include <catch2/catch.hpp>

#include <dirent.h>
#include <libdeflate.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <csignal>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <optional>
#include <random>
#include <thread>
#include <string>

#include "runner/trace/trace_buffer.hpp"
#include "tests/support/run_coroutine_test.hpp"

using kiln::trace::trace_buffer;

namespace {

std::string crc_of(const std::string& s) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "crc32:%08x", libdeflate_crc32(0, s.data(), s.size()));
    return buf;
}

std::string notice(std::size_t limit) {
    return "\n\x1b[33;1mJob's log exceeded limit of " + std::to_string(limit) +
           " bytes.\nJob execution will continue but no more output will be collected.\x1b[0;m\n";
}

// Resident set size of this process, in KiB.
long vm_rss_kib() {
    std::ifstream f("/proc/self/status");
    std::string line;
    while (std::getline(f, line)) {
        if (line.rfind("VmRSS:", 0) == 0) {
            return std::stol(line.substr(6));
        }
    }
    return -1;
}

std::size_t entries_in(const std::string& dir) {
    std::size_t n = 0;
    if (DIR* d = ::opendir(dir.c_str())) {
        while (auto* e = ::readdir(d)) {
            n += std::string(e->d_name) != "." && std::string(e->d_name) != "..";
        }
        ::closedir(d);
    }
    return n;
}

}  // namespace

TEST_CASE("masked values are replaced before output becomes visible", "[trace]") {
    trace_buffer b(1 << 20, {"s3cr3t-Passw0rd", "  glcbt-64_token  ", ""});
    b.write("password=s3cr3t-Passw0rd token=glcbt-64_token\n");
    b.close();
    CHECK(b.contents() == "password=[MASKED] token=[MASKED]\n");
}

TEST_CASE("a secret split at every byte offset across two writes is masked", "[trace]") {
    const std::string secret = "s3cr3t-Passw0rd";
    const std::string text = "before " + secret + " after\n";
    for (std::size_t cut = 0; cut <= text.size(); ++cut) {
        trace_buffer b(1 << 20, {secret});
        b.write(text.substr(0, cut));
        // Whatever is visible after the first write must not contain any part of the secret
        // that could complete later, nor the secret itself.
        CHECK(b.contents().find(secret) == std::string::npos);
        CHECK(std::string("before [MASKED] after\n").rfind(b.contents(), 0) == 0);
        b.write(text.substr(cut));
        b.close();
        CHECK(b.contents() == "before [MASKED] after\n");
    }
}

TEST_CASE("a secret written one byte at a time is masked", "[trace]") {
    const std::string secret = "abcdefgh12";
    trace_buffer b(1 << 20, {secret});
    for (char c : "x" + secret + secret + "y") {
        b.write(std::string(1, c));
    }
    b.close();
    CHECK(b.contents() == "x[MASKED][MASKED]y");
}

TEST_CASE("the longest of overlapping secrets wins", "[trace]") {
    trace_buffer b(1 << 20, {"token", "token-extended"});
    b.write("a token-extended b token c");
    b.close();
    CHECK(b.contents() == "a [MASKED] b [MASKED] c");
}

TEST_CASE("bytes that only look like the start of a secret are released on close", "[trace]") {
    trace_buffer b(1 << 20, {"secretvalue"});
    b.write("ends with secr");
    CHECK(b.contents() == "ends with ");
    b.close();
    CHECK(b.contents() == "ends with secr");
}

TEST_CASE("output past the limit is cut with gitlab-runner's notice", "[trace]") {
    trace_buffer b(10, {});
    b.write("0123456789ABCDEF");
    b.write("more output");
    b.close();
    const std::string expected = "0123456789" + notice(10);
    CHECK(b.contents() == expected);
    CHECK(b.truncated());
    CHECK(b.size() == expected.size());
    CHECK(b.checksum() == crc_of(expected));
}

TEST_CASE("output that ends exactly at the limit gets no notice until more comes", "[trace]") {
    trace_buffer b(10, {});
    b.write("0123456789");
    CHECK_FALSE(b.truncated());
    CHECK(b.contents() == "0123456789");
    b.write("x");
    CHECK(b.contents() == "0123456789" + notice(10));
}

TEST_CASE("the limit never splits a UTF-8 sequence", "[trace]") {
    trace_buffer b(5, {});
    b.write("abcd\xc3\xa9z");  // "é" would straddle the limit
    CHECK(b.contents() == "abcd" + notice(5));
    trace_buffer c(6, {});
    c.write("abcd\xf0\x9f\x94\x91z");  // a 4-byte character straddling it
    CHECK(c.contents() == "abcd" + notice(6));
}

TEST_CASE("the limit counts masked bytes, and a secret across it is never shown", "[trace]") {
    trace_buffer b(12, {"hidden-secret"});
    b.write("abc hidden-");
    b.write("secret and more");
    b.close();
    CHECK(b.contents() == "abc [MASKED]" + notice(12));
    CHECK(b.checksum() == crc_of(b.contents()));
}

TEST_CASE("invalid UTF-8 is replaced by U+FFFD before it counts", "[trace]") {
    trace_buffer b(1 << 20, {});
    b.write("ok \xff\xfe ok \xe2\x82");
    b.write("\xac split \xe2\x82");
    b.close();
    CHECK(b.contents() == "ok \xef\xbf\xbd\xef\xbf\xbd ok \xe2\x82\xac split \xef\xbf\xbd\xef\xbf\xbd");
    CHECK(b.size() == b.contents().size());
}

TEST_CASE("tokens and URL parameters are masked, prefixes from the payload too", "[trace]") {
    kiln::trace::trace_options o;
    o.token_prefixes = {"mytok_"};
    trace_buffer b(1 << 20, {}, o);
    b.write("git clone https://gitlab-ci-token:glcbt-64_abc@gitlab.example.com/g/p.git\n");
    b.write("curl https://x.example/api?private_token=abc123&page=2 mytok_secret\n");
    b.close();
    CHECK(b.contents() ==
          "git clone https://gitlab-ci-token:glcbt-[MASKED]@gitlab.example.com/g/p.git\n"
          "curl https://x.example/api?private_token=[MASKED]&page=2 mytok_[MASKED]\n");
}

TEST_CASE("checksum and slices cover exactly the final bytes", "[trace]") {
    trace_buffer b(1 << 20, {"hidden-secret"});
    std::string expected;
    for (int i = 0; i < 100; ++i) {
        b.write("line " + std::to_string(i) + " hidden-secret\n");
        expected += "line " + std::to_string(i) + " [MASKED]\n";
    }
    b.close();
    CHECK(b.contents() == expected);
    CHECK(b.size() == expected.size());
    CHECK(b.checksum() == crc_of(expected));
    CHECK(b.slice(5, 3) == expected.substr(5, 3));
    CHECK(b.slice(expected.size(), 10).empty());
    CHECK(b.slice(expected.size() - 2, 10) == expected.substr(expected.size() - 2));
}

TEST_CASE("chunks for PATCHes come from disk and memory alike, at any offset", "[trace]") {
    // Fast and slow output mixed, so the log is in large and small blocks, some written and
    // some not; chunks are read as trace_streamer reads them (on an io_context, the disk part
    // on the blocking pool), at offsets that are not block- or page-aligned.
    const bool direct = GENERATE(true, false);
    INFO("direct I/O " << direct);
    kiln::trace::trace_options options;
    options.direct_io = direct;
    trace_buffer b(64 << 20, {}, options);
    REQUIRE(b.spooled());
    std::mt19937 rng(11);
    std::string expected;
    for (int round = 0; round < 6; ++round) {
        std::string burst;
        while (burst.size() < 700 * 1024 + 333 * static_cast<std::size_t>(round)) {
            burst += "burst " + std::to_string(round) + " line " + std::to_string(rng()) + "\n";
        }
        for (std::size_t i = 0; i < burst.size(); i += 48 * 1024) {
            b.write(std::string_view(burst).substr(i, 48 * 1024));
        }
        expected += burst;
        for (int i = 0; i < 500; ++i) {
            const auto line = "quiet " + std::to_string(round) + "." + std::to_string(i) + "\n";
            b.write(line);
            expected += line;
        }
    }
    std::string streamed;
    kiln::test::run_coroutine_test(
        [&]() -> boost::asio::awaitable<void> {
            while (streamed.size() < b.size()) {
                const auto c = co_await b.chunk(streamed.size(), 1 + rng() % (1 << 20));
                REQUIRE_FALSE(c.bytes.empty());
                streamed.append(c.bytes);
            }
        },
        std::chrono::seconds(60));
    CHECK(streamed == expected);
    b.close();
    kiln::test::run_coroutine_test(
        [&]() -> boost::asio::awaitable<void> {
            for (std::size_t off : {std::size_t{0}, std::size_t{4095}, std::size_t{1 << 20},
                                    expected.size() - 10}) {
                const auto c = co_await b.chunk(off, 5000);
                CHECK(c.bytes == std::string_view(expected).substr(off, 5000));
            }
        },
        std::chrono::seconds(60));
}

TEST_CASE("slices read back across the spool file and the unwritten tail", "[trace]") {
    // Enough output that part is in the file and part still in memory, read in odd slices
    // while writing, as trace_streamer does.
    std::mt19937 rng(3);
    trace_buffer b(64 << 20, {"p4ssw0rd-xyz"});
    REQUIRE(b.spooled());
    std::string expected;
    std::string streamed;
    for (int i = 0; i < 3000; ++i) {
        std::string line = "step " + std::to_string(i) + (i % 7 == 0 ? " p4ssw0rd-xyz" : " ok") + "\n";
        b.write(line);
        if (i % 7 == 0) {
            line = "step " + std::to_string(i) + " [MASKED]\n";
        }
        expected += line;
        if (rng() % 5 == 0) {
            streamed += b.slice(streamed.size(), 1 + rng() % 40000);
        }
    }
    b.close();
    while (streamed.size() < b.size()) {
        streamed += b.slice(streamed.size(), 1 << 20);
    }
    CHECK(streamed == expected);
    CHECK(b.checksum() == crc_of(streamed));
    CHECK(b.slice(1000, 5000) == expected.substr(1000, 5000));
}

TEST_CASE("the log is spooled to an unlinked file: 50 MB of output, memory stays flat", "[trace]") {
    const std::size_t total = 50u << 20;
    std::string chunk;
    for (int i = 0; chunk.size() < 64 * 1024; ++i) {
        chunk += "[" + std::to_string(i) + "] compiling src/module_" + std::to_string(i % 97) +
                 ".cpp with SECRET=hunter2-hunter2 glpat-0123456789abcdefghij\n";
    }
    std::string masked_chunk;
    {
        trace_buffer probe(1u << 30, {"hunter2-hunter2"});
        probe.write(chunk);
        probe.close();
        masked_chunk = probe.contents();
    }
    REQUIRE(masked_chunk.find("SECRET=[MASKED] glpat-[MASKED]\n") != std::string::npos);

    // With O_DIRECT (where /tmp takes it) and through the page cache.
    const bool direct = GENERATE(true, false);
    INFO("direct I/O " << direct);
    kiln::trace::trace_options options;
    options.direct_io = direct;
    trace_buffer b(1u << 30, {"hunter2-hunter2"}, options);
    REQUIRE(b.spooled());
    if (!direct) {
        CHECK_FALSE(b.spooled_direct());
    }
    const long rss_before = vm_rss_kib();
    std::size_t written = 0;
    std::size_t max_footprint = 0;
    std::uint32_t crc = 0;
    while (written < total) {
        b.write(chunk);
        written += chunk.size();
        crc = libdeflate_crc32(crc, masked_chunk.data(), masked_chunk.size());
        max_footprint = std::max(max_footprint, b.memory_footprint());
    }
    b.close();
    const long rss_after = vm_rss_kib();
    CHECK(b.size() == masked_chunk.size() * (written / chunk.size()));
    char want[32];
    std::snprintf(want, sizeof want, "crc32:%08x", crc);
    CHECK(b.checksum() == want);
    // While output comes fast: the block being filled, at most two being written and a spare.
    CHECK(max_footprint < 4 * kiln::trace::spool_file::large_block + 64 * 1024);
    // After close, once the writer thread has written the full blocks, only the last, partly
    // filled block is left.
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (b.memory_footprint() >= kiln::trace::spool_file::large_block + 64 * 1024 &&
           std::chrono::steady_clock::now() < deadline) {
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    CHECK(b.memory_footprint() < kiln::trace::spool_file::large_block + 64 * 1024);
    INFO("VmRSS before " << rss_before << " KiB, after " << rss_after << " KiB");
    CHECK(rss_after - rss_before < 8 * 1024);  // far below the 50 MB written
    // The bytes really are there: read back in PATCH-sized slices and compare.
    std::uint32_t back = 0;
    for (std::size_t off = 0; off < b.size(); off += 1 << 20) {
        const auto s = b.slice(off, 1 << 20);
        REQUIRE(!s.empty());
        back = libdeflate_crc32(back, s.data(), s.size());
    }
    CHECK(back == crc);
    CHECK(b.slice(masked_chunk.size() * 100 + 7, 64) == masked_chunk.substr(7, 64));
}

TEST_CASE("a quiet job's log costs small blocks, and a burst's memory is given back", "[trace]") {
    const bool direct = GENERATE(true, false);
    INFO("direct I/O " << direct);
    kiln::trace::trace_options options;
    options.direct_io = direct;
    trace_buffer b(1u << 30, {}, options);
    REQUIRE(b.spooled());
    std::string expected;
    std::size_t max_footprint = 0;
    for (int i = 0; i < 20000; ++i) {  // 1.4 MB in lines, as a build prints them
        const auto line = "step " + std::to_string(i) + " of the build done\n";
        b.write(line);
        expected += line;
        max_footprint = std::max(max_footprint, b.memory_footprint());
    }
    CHECK(max_footprint < 4 * kiln::trace::spool_file::small_block);
    const std::string burst(8u << 20, 'b');  // one fast burst
    for (std::size_t i = 0; i < burst.size(); i += 64 * 1024) {
        b.write(std::string_view(burst).substr(i, 64 * 1024));
    }
    expected += burst;
    for (int i = 0; i < 100; ++i) {
        b.write("quiet again\n");
        expected += "quiet again\n";
    }
    // Once the burst's blocks are on disk (the writer thread is not waited for here).
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (b.memory_footprint() >= 4 * kiln::trace::spool_file::small_block &&
           std::chrono::steady_clock::now() < deadline) {
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    CHECK(b.memory_footprint() < 4 * kiln::trace::spool_file::small_block);
    b.close();
    CHECK(b.contents() == expected);
}

TEST_CASE("the spool file is created in the given directory and never has a name there", "[trace]") {
    char tmpl[] = "/tmp/kiln-spool-test-XXXXXX";
    REQUIRE(::mkdtemp(tmpl) != nullptr);
    const std::string dir = tmpl;
    {
        kiln::trace::trace_options o;
        o.spool_dir = dir;
        trace_buffer b(1 << 20, {}, o);
        CHECK(b.spooled());
        b.write(std::string(100000, 'x'));
        CHECK(entries_in(dir) == 0);
        CHECK(b.slice(99990, 100) == std::string(10, 'x'));
    }
    CHECK(entries_in(dir) == 0);
    ::rmdir(dir.c_str());
}

namespace {

struct temp_dir {
    std::string path;
    temp_dir() {
        char tmpl[] = "/tmp/kiln-save-test-XXXXXX";
        REQUIRE(::mkdtemp(tmpl) != nullptr);
        path = tmpl;
    }
    ~temp_dir() { std::system(("rm -rf '" + path + "'").c_str()); }
};

std::string file_text(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return std::string((std::istreambuf_iterator<char>(in)), {});
}

mode_t file_mode(const std::string& path) {
    struct stat st {};
    REQUIRE(::stat(path.c_str(), &st) == 0);
    return st.st_mode & 07777;
}

// Sets an environment variable for one scope.
struct scoped_env {
    std::string name;
    std::optional<std::string> old;
    scoped_env(std::string n, const char* value) : name(std::move(n)) {
        if (const char* v = std::getenv(name.c_str())) {
            old = v;
        }
        ::setenv(name.c_str(), value, 1);
    }
    ~scoped_env() {
        if (old) {
            ::setenv(name.c_str(), old->c_str(), 1);
        } else {
            ::unsetenv(name.c_str());
        }
    }
};

}  // namespace

TEST_CASE("an unusable spool directory falls back to $TMPDIR", "[trace]") {
    temp_dir tmp;
    scoped_env env("TMPDIR", tmp.path.c_str());
    kiln::trace::trace_options o;
    o.spool_dir = "/nonexistent/kiln-spool";
    trace_buffer b(1 << 20, {"abcdefgh"}, o);
    CHECK(b.spooled());
    b.write("x abcdefgh y\n");
    b.close();
    CHECK(b.contents() == "x [MASKED] y\n");
}

TEST_CASE("without any usable directory the log stays in memory and still works", "[trace]") {
    scoped_env env("TMPDIR", "/nonexistent/kiln-tmp");
    kiln::trace::trace_options o;
    o.spool_dir = "/nonexistent/kiln-spool";
    trace_buffer b(1 << 20, {"abcdefgh"}, o);
    CHECK_FALSE(b.spooled());
    std::string expected;
    for (int i = 0; i < 5000; ++i) {
        b.write("x abcdefgh y\n");
        expected += "x [MASKED] y\n";
    }
    b.close();
    CHECK(b.contents() == expected);
    CHECK(b.checksum() == crc_of(expected));

    // save_as writes what memory holds.
    temp_dir out;
    b.save_as(out.path + "/job.trace");
    CHECK(file_text(out.path + "/job.trace") == expected);
    CHECK(file_mode(out.path + "/job.trace") == 0600);
}

TEST_CASE("save_as names the spool file itself when it is on the same file system", "[trace]") {
    const bool direct = GENERATE(true, false);
    INFO("direct I/O " << direct);
    temp_dir spool;
    kiln::trace::trace_options o;
    o.spool_dir = spool.path;
    o.direct_io = direct;
    trace_buffer b(1 << 24, {"abcdefgh"}, o);
    REQUIRE(b.spooled());
    std::string expected;
    for (int i = 0; i < 50000; ++i) {
        b.write("line " + std::to_string(i) + " abcdefgh\n");
        expected += "line " + std::to_string(i) + " [MASKED]\n";
    }
    b.close();
    const auto path = spool.path + "/job-1.trace";
    b.save_as(path);
    CHECK(file_text(path) == expected);
    CHECK(file_mode(path) == 0600);
    // Linked, not copied: the name and the buffer's file are one inode, so the buffer keeps
    // reading what the name holds, and the file has a link count of one (its only name).
    struct stat st {};
    REQUIRE(::stat(path.c_str(), &st) == 0);
    CHECK(st.st_nlink == 1);
    CHECK(b.slice(0, 16) == expected.substr(0, 16));
    bool found = false;
    for (int fd = 3; fd < 1024 && !found; ++fd) {
        struct stat fst {};
        found = ::fstat(fd, &fst) == 0 && fst.st_ino == st.st_ino && fst.st_dev == st.st_dev;
    }
    CHECK(found);
    // An existing file is not overwritten.
    CHECK_THROWS(b.save_as(path));
}

TEST_CASE("save_as copies the log when the spool file is elsewhere", "[trace]") {
    temp_dir live;
    temp_dir spool;
    kiln::trace::trace_options o;
    o.spool_dir = live.path;
    trace_buffer b(1 << 24, {}, o);
    std::string expected;
    for (int i = 0; i < 30000; ++i) {
        expected += "output line " + std::to_string(i) + "\n";
    }
    b.write(expected);
    b.close();
    // Another directory: on the same file system linkat would still work, so name a file
    // system the spool file cannot be on when one is there.
    const bool shm = ::access("/dev/shm", W_OK) == 0;
    const std::string target = shm ? "/dev/shm/kiln-save-test-" + std::to_string(::getpid())
                                   : spool.path + "/job.trace";
    b.save_as(target);
    CHECK(file_text(target) == expected);
    CHECK(file_mode(target) == 0600);
    ::unlink(target.c_str());
}

TEST_CASE("when the spool file cannot grow, the rest of the log stays in memory", "[trace]") {
    // RLIMIT_FSIZE makes writes past 64 KiB fail with EFBIG (SIGXFSZ ignored).
    rlimit old{};
    REQUIRE(::getrlimit(RLIMIT_FSIZE, &old) == 0);
    auto* old_handler = std::signal(SIGXFSZ, SIG_IGN);
    rlimit small = old;
    small.rlim_cur = 64 * 1024;
    REQUIRE(::setrlimit(RLIMIT_FSIZE, &small) == 0);

    std::string expected;
    bool spooled_at_first = false;
    std::string contents;
    std::string checksum;
    bool spooled_at_end = true;
    trace_buffer b(1 << 22, {"abcdefgh"});
    spooled_at_first = b.spooled();
    for (int i = 0; i < 20000; ++i) {
        b.write("line " + std::to_string(i) + " abcdefgh\n");
        expected += "line " + std::to_string(i) + " [MASKED]\n";
    }
    b.close();
    spooled_at_end = b.spooled();
    contents = b.contents();
    checksum = b.checksum();
    ::setrlimit(RLIMIT_FSIZE, &old);
    std::signal(SIGXFSZ, old_handler);

    CHECK(spooled_at_first);
    CHECK_FALSE(spooled_at_end);
    CHECK(contents == expected);
    CHECK(checksum == crc_of(expected));
    // The spool entry gets the file's part and then what stayed in memory.
    temp_dir out;
    b.save_as(out.path + "/job.trace");
    CHECK(file_text(out.path + "/job.trace") == expected);
}

// ---- FF_TIMESTAMPS ---------------------------------------------------------------------------

namespace {

using kiln::trace::source;
using namespace std::chrono;

// Starts at 2026-03-02T10:15:09.000000Z and advances 1 ms per reading, so each prefix shows
// which line was stamped when.
kiln::trace::trace_options stamped_options() {
    kiln::trace::trace_options o;
    o.timestamps = true;
    // One clock for all streams (each stream's timestamper holds a copy of the function).
    auto t = std::make_shared<system_clock::time_point>(sys_days{year{2026} / 3 / 2} + hours{10} +
                                                        minutes{15} + seconds{9});
    o.clock = [t] {
        auto now = *t;
        *t += milliseconds{1};
        return now;
    };
    return o;
}

std::string at(int ms, std::string_view stream) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "2026-03-02T10:15:09.%03d000Z %.*s", ms,
                  static_cast<int>(stream.size()), stream.data());
    return buf;
}

}  // namespace

TEST_CASE("timestamps: kiln's lines are stream 00, the job's stdout 01O and stderr 01E", "[trace]") {
    trace_buffer b(1 << 20, {}, stamped_options());
    CHECK(b.timestamps());
    b.write("Running with kiln\n");
    b.write(source::job_stdout, "out one\nout two\n");
    b.write(source::job_stderr, "err one\n");
    b.end_job_output();
    b.write("Job succeeded\n");
    b.close();
    CHECK(b.contents() == at(0, "00O ") + "Running with kiln\n" +
                              at(1, "01O ") + "out one\n" +
                              at(2, "01O ") + "out two\n" +
                              at(3, "01E ") + "err one\n" +
                              at(4, "00O ") + "Job succeeded\n");
    CHECK(b.checksum() == crc_of(b.contents()));
}

TEST_CASE("timestamps: each stream keeps its own partial line; end of a stage ends it", "[trace]") {
    trace_buffer b(1 << 20, {}, stamped_options());
    b.write(source::job_stdout, "downloading ");
    b.write(source::job_stderr, "warning: slow\n");
    b.write(source::job_stdout, "done\n");
    b.write(source::job_stdout, "no newline at the end");
    b.end_job_output();
    b.write("section_end:1:step_script\r\x1b[0K");
    b.write("\x1b[32;1mJob succeeded\x1b[0;m\n");
    b.close();
    // A line goes out when it is complete, with the time it started.
    CHECK(b.contents() == at(1, "01E ") + "warning: slow\n" +
                              at(0, "01O ") + "downloading done\n" +
                              at(2, "01O ") + "no newline at the end\n" +
                              at(3, "00O ") + "section_end:1:step_script\r\x1b[0K\n" +
                              at(4, "00O+") + "\x1b[32;1mJob succeeded\x1b[0;m\n");
}

TEST_CASE("timestamps: a secret split across writes is masked on each stream, whatever comes between",
          "[trace]") {
    const std::string secret = "s3cr3t-Passw0rd";
    for (std::size_t cut = 1; cut < secret.size(); ++cut) {
        for (auto stream : {source::job_stdout, source::job_stderr}) {
            const auto other = stream == source::job_stdout ? source::job_stderr : source::job_stdout;
            trace_buffer b(1 << 20, {secret}, stamped_options());
            b.write(stream, "pw=" + secret.substr(0, cut));
            b.write(other, "interleaved\n");
            b.write(stream, secret.substr(cut) + " end\n");
            b.end_job_output();
            b.close();
            const auto text = b.contents();
            INFO("cut at " << cut);
            CHECK(text.find(secret.substr(0, std::max<std::size_t>(cut, 4))) == std::string::npos);
            CHECK(text.find("pw=[MASKED] end\n") != std::string::npos);
            CHECK(text.find("interleaved\n") != std::string::npos);
        }
    }
}

TEST_CASE("without timestamps every source goes through one masker, in the order written", "[trace]") {
    // What the shell executor's single pipe did before sources existed: a secret split between
    // stdout and stderr writes is still one secret.
    trace_buffer merged(1 << 20, {"s3cr3t-Passw0rd"});
    CHECK_FALSE(merged.timestamps());
    merged.write("Running\n");
    merged.write(source::job_stdout, "pw=s3cr3t");
    merged.write(source::job_stderr, "-Passw0rd\npartial");
    merged.end_job_output();
    merged.write(" kiln\n");
    merged.close();
    CHECK(merged.contents() == "Running\npw=[MASKED]\npartial kiln\n");
}

namespace {

// Output that exercises every way the masker's output can differ from its input: a masked value
// and a token, each also split across reads; URL parameters (an empty value grows into
// [MASKED]); invalid UTF-8 (one byte grows into three); a character split across reads; and
// runs of growing output longer than any room a reader could leave.
std::string hostile_output(std::mt19937& rng, std::size_t size) {
    static const char* alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    std::string out;
    while (out.size() < size) {
        switch (rng() % 12) {
            case 0: out += "password=hunter2-hunter2 "; break;
            case 1: out += "glpat-0123456789abcdefghij "; break;
            case 2: out += "GET /api?private_token=&page=&x= "; break;
            case 3: out += "\xff\xfe bad bytes \xc3"; break;
            case 4: out += "caf\xc3\xa9 "; break;
            case 5:
                for (int i = 0; i < 4000; ++i) {
                    out += "?a=&b=";  // each grows by 16 bytes
                }
                break;
            case 6: out += "hunter2-hun"; break;  // the start of the secret, never finished
            default:
                for (int i = 0; i < 100; ++i) {
                    out += alphabet[rng() % 64];
                }
                out += '\n';
        }
    }
    return out;
}

}  // namespace

TEST_CASE("output read straight into the spool block comes out as if it had been written", "[trace]") {
    // The shell executor reads a fast job's pipe into the room prepare() gives and calls
    // placed(): unchanged bytes stay where they are, held-back bytes go in front, and output
    // that would overwrite bytes the masker has not read yet is set aside. The result must be
    // byte for byte what write() of the same reads gives, whatever the reads' sizes.
    const bool direct = GENERATE(true, false);
    const std::size_t limit = GENERATE(std::size_t{1} << 30, std::size_t{3'000'000});
    INFO("direct I/O " << direct << ", limit " << limit);
    std::mt19937 rng(direct ? 5 : 6);
    const std::string output = hostile_output(rng, 6u << 20);
    const std::vector<std::string> secrets = {"hunter2-hunter2"};

    kiln::trace::trace_options options;
    options.direct_io = direct;
    trace_buffer written(limit, secrets, options);
    trace_buffer placed(limit, secrets, options);
    REQUIRE(placed.spooled());
    std::size_t placed_reads = 0;
    std::size_t placed_bytes = 0;
    int small_run = 0;  // reads left in a run of small ones, which ends a burst
    for (std::size_t at = 0; at < output.size();) {
        // Mostly whole 64 KiB reads, some short ones, now and then a run of small ones that
        // ends the burst; kiln's own message in between now and then.
        std::size_t want = 64 * 1024;
        const auto r = rng() % 10;
        if (r < 3) {
            want = 1 + rng() % (64 * 1024);
        } else if (r == 3 || small_run > 0) {
            want = 1 + rng() % 100;
            small_run = small_run > 0 ? small_run - 1 : (rng() % 8 == 0 ? 9 : 0);
        }
        want = std::min(want, output.size() - at);
        const auto room = placed.prepare(source::job_stdout, 64 * 1024);
        if (room.empty()) {
            placed.write(source::job_stdout, std::string_view(output).substr(at, want));
        } else {
            want = std::min(want, room.size());
            std::memcpy(room.data(), output.data() + at, want);
            placed.placed(source::job_stdout, want);
            ++placed_reads;
            placed_bytes += want;
        }
        written.write(source::job_stdout, std::string_view(output).substr(at, want));
        at += want;
        if (rng() % 50 == 0) {
            placed.write("kiln says hello\n");
            written.write("kiln says hello\n");
        }
    }
    written.close();
    placed.close();
    // Most of it went the placed way, including the hostile parts.
    CHECK(placed_reads > 50);
    CHECK(placed_bytes > std::min(limit, output.size()) / 2);
    const std::string expected = written.contents();
    REQUIRE(expected.find("password=[MASKED] glpat-[MASKED]") != std::string::npos);
    REQUIRE(expected.find("hunter2-hunter2") == std::string::npos);
    CHECK(placed.size() == written.size());
    CHECK(placed.truncated() == written.truncated());
    CHECK(placed.checksum() == written.checksum());
    CHECK(placed.checksum() == crc_of(expected));
    const std::string got = placed.contents();
    CHECK(got.size() == expected.size());
    CHECK((got == expected));
}

TEST_CASE("no room is lent for slow output or with timestamps", "[trace]") {
    trace_buffer slow(1 << 20, {});
    slow.write("a line\n");
    CHECK(slow.prepare(source::job_stdout, 64 * 1024).empty());

    kiln::trace::trace_options o;
    o.timestamps = true;
    trace_buffer stamped(1 << 20, {}, o);
    stamped.write(source::job_stdout, std::string(64 * 1024, 'x'));
    CHECK(stamped.prepare(source::job_stdout, 64 * 1024).empty());

    trace_buffer fast(1 << 20, {});
    fast.write(source::job_stdout, std::string(64 * 1024, 'x'));
    const auto room = fast.prepare(source::job_stdout, 64 * 1024);
    CHECK(room.size() == 64 * 1024);
}
