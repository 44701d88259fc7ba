#pragma once
// Helpers for the archive tests: a temporary directory, files, and running unzip/python3.

#include <stdlib.h>
#include <sys/wait.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <utility>

namespace kiln::artifacts::testing {

namespace fs = std::filesystem;

struct temp_dir {
    fs::path path;
    temp_dir() {
        std::string templ = (fs::temp_directory_path() / "kiln-archive-XXXXXX").string();
        if (!::mkdtemp(templ.data())) throw std::runtime_error("mkdtemp failed");
        path = templ;
    }
    ~temp_dir() {
        std::error_code ec;
        // Restore permissions a test may have removed, then delete everything.
        for (auto it = fs::recursive_directory_iterator(path, ec); !ec && it != fs::recursive_directory_iterator();
             it.increment(ec))
            if (!it->is_symlink() && it->is_directory()) fs::permissions(it->path(), fs::perms::owner_all, fs::perm_options::add, ec);
        fs::remove_all(path, ec);
    }
    temp_dir(const temp_dir&) = delete;
    temp_dir& operator=(const temp_dir&) = delete;
};

inline void write_file(const fs::path& p, const std::string& content) {
    fs::create_directories(p.parent_path());
    std::ofstream f(p, std::ios::binary | std::ios::trunc);
    f << content;
}

inline std::string read_file(const fs::path& p) {
    std::ifstream f(p, std::ios::binary);
    return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

// Text that compresses like source code, mixed with random bytes that do not compress.
inline std::string mixed_content(std::size_t size, unsigned seed) {
    std::mt19937 rng(seed);
    std::string s;
    s.reserve(size);
    static const char* words[] = {"int ", "return ", "struct ", "namespace ", "kiln", "::", "(", ");\n",
                                  "const ", "std::vector<", ">", "{\n", "}\n", "if (", "0x", "    "};
    while (s.size() < size) {
        if (rng() % 8 == 0) {
            for (int i = 0; i < 200 && s.size() < size; ++i) s += static_cast<char>(rng());
        } else {
            for (int i = 0; i < 40 && s.size() < size; ++i) s += words[rng() % 16];
        }
    }
    s.resize(size);
    return s;
}

// Runs a shell command; returns its exit status and combined output.
inline std::pair<int, std::string> run(const std::string& command) {
    std::string out;
    FILE* p = ::popen((command + " 2>&1").c_str(), "r");
    if (!p) return {-1, "popen failed"};
    char buf[4096];
    std::size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
    int status = ::pclose(p);
    return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

inline std::string quote(const fs::path& p) {
    std::string s = "'";
    for (char c : p.string()) {
        if (c == '\'') s += "'\\''";
        else s += c;
    }
    return s + "'";
}

// Runs a Python 3 script (written to a file in `dir`) with the given arguments.
inline std::pair<int, std::string> python(const fs::path& dir, const std::string& script, const std::string& args) {
    static int counter = 0;
    fs::path file = dir / ("script" + std::to_string(++counter) + ".py");
    write_file(file, script);
    return run("python3 " + quote(file) + " " + args);
}

}  // namespace kiln::artifacts::testing
