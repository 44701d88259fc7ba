// Zip archiving speed: kiln's write_zip at each ARTIFACT_COMPRESSION_LEVEL against Info-ZIP
// `zip -r -1` and `tar | pigz -p 2 -1`, on the same ~300 MB tree of headers and shared
// libraries (as performance-anchors.md §3.1: the 101st-400th largest .so files of
// /usr/lib/x86_64-linux-gnu plus /usr/include files up to the size), page cache warm.
// Each kiln run is a child process (this binary with --write-zip), so its peak RSS is the
// archiver's alone; the archive is checked with `unzip -tq` once per level.
//
//   archive_bench [--threads 2] [--mb 300] [--runs 3] [--keep DIR]

#include <fcntl.h>
#include <spawn.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "runner/artifacts/archive.hpp"

extern char** environ;

namespace fs = std::filesystem;
using namespace kiln::artifacts;

namespace {

struct run_result {
    double seconds = 0;
    double cpu_seconds = 0;  // user + system, the child and what it waited for
    long max_rss_kib = 0;
    int status = 0;
};

// Runs argv (through /bin/sh -c when shell is set), timing it and taking its peak RSS.
run_result timed(const std::vector<std::string>& argv) {
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    auto start = std::chrono::steady_clock::now();
    pid_t pid = 0;
    if (posix_spawnp(&pid, args[0], nullptr, nullptr, args.data(), environ) != 0) {
        std::perror("posix_spawnp");
        std::exit(1);
    }
    int status = 0;
    rusage ru{};
    wait4(pid, &status, 0, &ru);
    run_result r;
    r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    r.max_rss_kib = ru.ru_maxrss;
    r.cpu_seconds = static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
                    static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
    r.status = WIFEXITED(status) ? WEXITSTATUS(status) : 128;
    return r;
}

// The archiving a job does: walk the tree and zip it, entries streamed from the walk.
int write_zip_child(const fs::path& tree, const fs::path& out, const std::string& level, unsigned threads) {
    zip_options o;
    o.level = parse_compression_level(level);
    o.threads = threads;
    const std::size_t prefix = tree.string().size() + 1;
    auto it = fs::recursive_directory_iterator(tree);
    archive_stats s = write_zip(
        [&](archive_entry& e) {
            if (it == fs::recursive_directory_iterator()) return false;
            // (fs::relative would canonicalise every path: a readlink per component.)
            e.name = it->path().string().substr(prefix);
            if (it->symlink_status().type() == fs::file_type::directory) e.name += '/';
            e.source = it->path();
            ++it;
            return true;
        },
        out, o);
    return s.archive_bytes > 0 ? 0 : 1;
}

std::uint64_t copy_into_tree(const fs::path& from, const fs::path& to) {
    fs::create_directories(to.parent_path());
    fs::copy_file(from, to, fs::copy_options::overwrite_existing);
    return fs::file_size(to);
}

// The tree: shared libraries first (41-62 MB), then headers until `target` bytes.
std::uint64_t build_tree(const fs::path& tree, std::uint64_t target) {
    std::vector<std::pair<std::uint64_t, fs::path>> libs;
    for (auto& e : fs::directory_iterator("/usr/lib/x86_64-linux-gnu")) {
        if (!e.is_regular_file() || e.is_symlink()) continue;
        if (e.path().filename().string().find(".so") == std::string::npos) continue;
        libs.emplace_back(e.file_size(), e.path());
    }
    std::sort(libs.begin(), libs.end(), std::greater<>());
    std::uint64_t total = 0;
    for (std::size_t i = 100; i < libs.size() && i < 400; ++i)
        total += copy_into_tree(libs[i].second, tree / "lib" / libs[i].second.filename());
    std::vector<fs::path> headers;
    for (auto it = fs::recursive_directory_iterator("/usr/include"); it != fs::recursive_directory_iterator(); ++it)
        if (it->is_regular_file() && !it->is_symlink()) headers.push_back(it->path());
    std::sort(headers.begin(), headers.end());
    for (const auto& h : headers) {
        if (total >= target) break;
        total += copy_into_tree(h, tree / "include" / fs::relative(h, "/usr/include"));
    }
    return total;
}

void warm(const fs::path& tree) {
    std::vector<char> buf(1 << 20);
    for (auto& e : fs::recursive_directory_iterator(tree)) {
        if (!e.is_regular_file()) continue;
        int fd = ::open(e.path().c_str(), O_RDONLY);
        while (::read(fd, buf.data(), buf.size()) > 0) {
        }
        ::close(fd);
    }
}

}  // namespace

int main(int argc, char** argv) {
    if (argc == 6 && std::string(argv[1]) == "--write-zip")
        return write_zip_child(argv[2], argv[3], argv[4], static_cast<unsigned>(std::atoi(argv[5])));

    unsigned threads = 2;
    std::uint64_t mb = 300;
    int runs = 3;
    fs::path keep;
    for (int i = 1; i + 1 < argc; i += 2) {
        std::string a = argv[i];
        if (a == "--threads") threads = static_cast<unsigned>(std::atoi(argv[i + 1]));
        else if (a == "--mb") mb = std::strtoull(argv[i + 1], nullptr, 10);
        else if (a == "--runs") runs = std::atoi(argv[i + 1]);
        else if (a == "--keep") keep = argv[i + 1];
        else {
            std::fprintf(stderr, "usage: archive_bench [--threads N] [--mb N] [--runs N] [--keep DIR]\n");
            return 2;
        }
    }
    std::string templ = (fs::temp_directory_path() / "kiln-archive-bench-XXXXXX").string();
    fs::path work = keep.empty() ? fs::path(::mkdtemp(templ.data())) : keep;
    fs::path tree = work / "tree";
    std::uint64_t bytes = 0;
    std::size_t files = 0;
    if (!fs::exists(tree)) build_tree(tree, mb * 1000 * 1000);
    for (auto& e : fs::recursive_directory_iterator(tree))
        if (e.is_regular_file()) {
            bytes += e.file_size();
            ++files;
        }
    warm(tree);
    std::printf("tree: %.1f MB in %zu files (%s); %u compression threads; best of %d runs\n", bytes / 1e6, files,
                tree.c_str(), threads, runs);
    std::printf("load average before: %s", [] {
        char buf[128] = "?\n";
        if (FILE* f = std::fopen("/proc/loadavg", "r")) {
            if (!std::fgets(buf, sizeof buf, f)) buf[0] = 0;
            std::fclose(f);
        }
        return std::string(buf);
    }().c_str());
    std::printf("%-28s %8s %7s %8s %11s %6s %10s\n", "archiver", "wall s", "MB/s", "CPU s", "compressed", "ratio",
                "peak RSS");

    auto report = [&](const std::string& name, const std::vector<std::string>& argv, const fs::path& out) {
        run_result best;
        best.seconds = 1e9;
        for (int i = 0; i < runs; ++i) {
            fs::remove(out);
            run_result r = timed(argv);
            if (r.status != 0) {
                std::printf("%-28s failed (exit %d)\n", name.c_str(), r.status);
                return std::uint64_t{0};
            }
            if (r.seconds < best.seconds) best = r;
        }
        std::uint64_t size = fs::file_size(out);
        std::printf("%-28s %8.3f %7.0f %8.3f %8.1f MB %6.3f %6.1f MiB\n", name.c_str(), best.seconds,
                    bytes / 1e6 / best.seconds, best.cpu_seconds, size / 1e6,
                    static_cast<double>(size) / static_cast<double>(bytes), best.max_rss_kib / 1024.0);
        std::fflush(stdout);
        return size;
    };

    const std::string self = fs::canonical("/proc/self/exe").string();
    fs::path zip_out = work / "kiln.zip";
    std::uint64_t kiln_default = 0;
    for (const char* level : {"fastest", "fast", "default", "slow", "slowest"}) {
        std::uint64_t size = report(std::string("kiln write_zip ") + level,
                                    {self, "--write-zip", tree.string(), zip_out.string(), level, std::to_string(threads)},
                                    zip_out);
        if (std::string(level) == "default") kiln_default = size;
        run_result t = timed({"unzip", "-tqq", zip_out.string()});
        if (t.status != 0) std::printf("  unzip -t FAILED on the %s archive\n", level);
    }
    fs::path info_zip = work / "info.zip";
    std::uint64_t zip1 = report("zip -r -1 -q", {"/bin/sh", "-c", "cd '" + tree.string() + "' && zip -r -1 -q '" + info_zip.string() + "' ."},
                                info_zip);
    fs::path tgz = work / "tree.tar.gz";
    report("tar | pigz -p " + std::to_string(threads) + " -1",
           {"/bin/sh", "-c", "tar -C '" + tree.string() + "' -cf - . | pigz -p " + std::to_string(threads) + " -1 > '" + tgz.string() + "'"},
           tgz);
    if (zip1 && kiln_default)
        std::printf("kiln default vs zip -1: compressed size %+.1f%%\n",
                    100.0 * (static_cast<double>(kiln_default) - static_cast<double>(zip1)) / static_cast<double>(zip1));
    if (keep.empty()) fs::remove_all(work);
    return 0;
}
