#include "runner/artifacts/path_match.hpp"

#include <algorithm>
#include <map>
#include <tuple>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

using namespace kiln::artifacts;

namespace {

constexpr const char* project = "/builds/t/0/acme/widgets";

// An in-memory project directory: "path" → kind (and link target). Parent directories are
// created implicitly. Like the kernel, a link in the directory part of a path is followed.
class memory_fs : public fs_view {
public:
    memory_fs& file(const std::string& p) { return add(p, node_kind::file); }
    memory_fs& dir(const std::string& p) { return add(p, node_kind::directory); }
    memory_fs& link(const std::string& p, const std::string& target) {
        add(p, node_kind::symlink);
        targets_[p] = target;
        return *this;
    }

    node_kind lstat(const std::string& path) const override {
        auto p = real(path);
        if (p == ".") {
            return node_kind::directory;
        }
        auto it = nodes_.find(p);
        return it == nodes_.end() ? node_kind::missing : it->second;
    }
    std::vector<std::string> list(const std::string& dir) const override {
        auto d = real(dir, true);
        std::vector<std::string> out;
        const std::string prefix = d == "." ? "" : d + "/";
        for (const auto& [p, kind] : nodes_) {
            if (p.compare(0, prefix.size(), prefix) == 0 &&
                p.find('/', prefix.size()) == std::string::npos) {
                out.push_back(p.substr(prefix.size()));
            }
        }
        std::reverse(out.begin(), out.end());  // the selection must not rely on the order
        return out;
    }
    std::string read_link(const std::string& path) const override {
        auto it = targets_.find(real(path));
        return it == targets_.end() ? std::string() : it->second;
    }

private:
    memory_fs& add(const std::string& p, node_kind kind) {
        auto slash = p.rfind('/');
        if (slash != std::string::npos) {
            auto parent = p.substr(0, slash);
            if (nodes_.find(parent) == nodes_.end()) {
                dir(parent);
            }
        }
        nodes_[p] = kind;
        return *this;
    }
    // Follows links in the directory part (relative targets inside only; enough for tests).
    std::string real(const std::string& path, bool follow_last = false) const {
        std::string done;
        std::size_t start = 0;
        while (start < path.size()) {
            auto end = path.find('/', start);
            bool last = end == std::string::npos;
            auto e = path.substr(start, last ? std::string::npos : end - start);
            std::string cand = done.empty() || done == "." ? e : done + "/" + e;
            if (!last || follow_last) {
                auto t = targets_.find(cand);
                if (t != targets_.end()) {
                    auto base = done.empty() ? std::string(".") : done;
                    cand = clean_path(base + "/" + t->second);
                }
            }
            done = cand;
            if (last) {
                break;
            }
            start = end + 1;
        }
        return done.empty() ? "." : done;
    }
    std::map<std::string, node_kind> nodes_;
    std::map<std::string, std::string> targets_;
};

std::vector<std::string> paths_of(const selection& s) {
    std::vector<std::string> out;
    for (const auto& e : s.entries) {
        out.push_back(e.path);
    }
    return out;
}

std::vector<std::string> warnings_of(const selection& s) {
    std::vector<std::string> out;
    for (const auto& m : s.messages) {
        if (m.warning) {
            out.push_back(m.text);
        }
    }
    return out;
}

std::string messages_text(const selection& s) {
    std::string out;
    for (const auto& m : s.messages) {
        out += (m.warning ? "WARNING: " : "") + m.text + "\n";
    }
    return out;
}

}  // namespace

TEST_CASE("clean_path is Go's path.Clean", "[artifacts][path_match]") {
    const std::vector<std::pair<std::string, std::string>> rows{
        {"", "."},          {".", "."},           {"./a//b/", "a/b"}, {"a/./b", "a/b"},
        {"a/../b", "b"},    {"a/../..", ".."},    {"../a", "../a"},  {"/../a", "/a"},
        {"/", "/"},         {"//a///b//", "/a/b"}, {"a/b/../../..", ".."},
        {"foo//*.txt", "foo/*.txt"},
    };
    for (const auto& [in, want] : rows) {
        INFO(in);
        CHECK(clean_path(in) == want);
    }
}

TEST_CASE("split_pattern is doublestar.SplitPattern", "[artifacts][path_match]") {
    const std::vector<std::tuple<std::string, std::string, std::string>> rows{
        {"a/b/*.c", "a/b", "*.c"},  {"*.c", ".", "*.c"},     {"/x/*", "/x", "*"},
        {"/*", "/", "*"},           {"a/**/b", "a", "**/b"}, {"a/b", "a", "b"},
        {"a\\*b/c*", "a\\*b", "c*"}, {"{a,b}/c", ".", "{a,b}/c"},
    };
    for (const auto& [in, base, rest] : rows) {
        INFO(in);
        auto [b, r] = split_pattern(in);
        CHECK(b == base);
        CHECK(r == rest);
    }
}

TEST_CASE("glob_match follows doublestar", "[artifacts][path_match]") {
    struct row {
        const char* pattern;
        const char* path;
        bool match;
    };
    const std::vector<row> rows{
        // gitlab-runner's Test_isExcluded cases (relative form)
        {"file.txt", "file.txt", true},
        {"**/*.txt", "foo/bar/file.txt", true},
        // '*' and '?' never cross '/'
        {"*.txt", "a/b.txt", false},
        {"*.txt", "b.txt", true},
        {"*", ".hidden", true},
        {"a/?/c", "a/b/c", true},
        {"a/?/c", "a/bb/c", false},
        {"a?c", "a/c", false},
        // '**' crosses directories, and matches zero of them
        {"foo/**/*.txt", "foo/file.txt", true},
        {"foo/**/*.txt", "foo/bar/baz/file.extra.dots.txt", true},
        {"foo/**/*.txt", "foo/bar/baz/file.txt.md", false},
        {"foo/**", "foo", true},
        {"foo/**", "foo/a/b", true},
        {"foo/**", "foobar", false},
        {"**", "a/b/c", true},
        {"**/*.bin", "foo/bar/file.bin", true},
        {"**/*.bin", "file.bin", true},
        {"**/*even-this*", "foo/wow-even-this.go", true},
        {"foo/**/xfile.txt", "foo/xfile.txt", true},
        {"foo/**//*/*.*", "foo/file.txt", false},
        {"foo/**/*/*.*", "foo/bar/file.txt", true},
        {"bin/**/*.tmp", "bin/x.tmp", true},
        {"bin/**/*.tmp", "bin/linux/amd64/x.tmp", true},
        {"bin/**/*.tmp", "bin/linux/amd64/x.tmpl", false},
        // classes, braces, escapes
        {"file[0-9].txt", "file7.txt", true},
        {"file[0-9].txt", "filex.txt", false},
        {"file[!0-9].txt", "filex.txt", true},
        {"file[^0-9].txt", "file1.txt", false},
        {"*.{go,mod}", "main.go", true},
        {"*.{go,mod}", "go.mod", true},
        {"*.{go,mod}", "go.sum", false},
        {"{cmd,internal}/**/*.go", "internal/x/y.go", true},
        {"{a,b/c}/d", "b/c/d", true},
        {"a\\*b", "a*b", true},
        {"a\\*b", "axb", false},
        {"файл?.txt", "файлы.txt", true},
        // malformed patterns match nothing
        {"file[", "file[", false},
        {"a[]b", "a]b", false},
    };
    for (const auto& r : rows) {
        INFO(r.pattern << " vs " << r.path);
        CHECK(glob_match(r.pattern, r.path) == r.match);
    }
}

TEST_CASE("relative_in_project keeps paths inside the project", "[artifacts][path_match]") {
    struct row {
        std::string path;
        bool ok;
        std::string rel;
    };
    const std::string wd = project;
    // gitlab-runner's TestFileArchiver_pathIsInProject cases, plus patterns.
    const std::vector<row> rows{
        {"in/the/project/for/realzy", true, "in/the/project/for/realzy"},
        {"../nope", false, ""},
        {"../*.*", false, ""},
        {wd + "/yo/i/am/in", true, "yo/i/am/in"},
        {"/totally/not/in/the/project", false, ""},
        {wd, true, "."},
        {wd + "/", true, "."},
        {"../widgets", true, "."},
        {"../widgets/foo/*.txt", true, "foo/*.txt"},
        {"/absolute.txt", false, ""},
        {"/**/absolute.txt", false, ""},
        {"../../../relative.txt", false, ""},
        {"./a//b/", true, "a/b"},
        {"a/*/../../../etc/passwd", false, ""},
        {wd + "/*.thing", true, "*.thing"},
        {"/builds/t/0/acme/widgets-other/x", false, ""},
    };
    for (const auto& r : rows) {
        INFO(r.path);
        auto got = relative_in_project(project, r.path);
        CHECK(got.ok == r.ok);
        if (r.ok) {
            CHECK(got.path == r.rel);
        } else {
            CHECK_THAT(got.error, Catch::Contains("not a subpath of project directory"));
        }
    }
}

namespace {

// The tree of gitlab-runner's TestGlobbedFilePath, with every file its cases create.
memory_fs runner_tree() {
    memory_fs fs;
    for (const char* f :
         {"file.txt", "file.thing", "file2.thing", "root.txt", "bar/foo/test.txt", "foo/file.txt",
          "foo/file2.txt", "foo/xfile.txt", "foo/file.bin", "foo/file.txt.md",
          "foo/wow-even-this.go", "foo/bar/file.txt", "foo/bar/xfile.txt", "foo/bar/file.bin",
          "foo/bar/file2.bin", "foo/bar/file.txt.md", "foo/bar/baz/file.txt",
          "foo/bar/baz/xfile.txt", "foo/bar/baz/file.bin", "foo/bar/baz/file.txt.md",
          "foo/bar/baz/file.extra.dots.txt", "foo/bar/baz/file.extra.dots.txt.md",
          "foo/bar/baz2/file.txt", "foo/bar/baz2/file.bin"}) {
        fs.file(f);
    }
    return fs;
}

}  // namespace

TEST_CASE("select_files: gitlab-runner's TestGlobbedFilePath cases", "[artifacts][path_match]") {
    struct row {
        const char* name;
        std::vector<std::string> paths;
        std::vector<std::string> exclude;
        std::vector<std::string> expected;
        int excluded = 0;
        std::string warning;
    };
    const std::string wd = project;
    const std::vector<row> rows{
        {"find nothing with empty path", {""}, {}, {}, 0, "No matching files. Path is empty."},
        {"files by extension at several depths",
         {"foo/**/*.txt"},
         {},
         {"foo/bar/baz/file.extra.dots.txt", "foo/bar/baz/file.txt", "foo/bar/baz/xfile.txt",
          "foo/bar/baz2/file.txt", "foo/bar/file.txt", "foo/bar/xfile.txt", "foo/file.txt",
          "foo/file2.txt", "foo/xfile.txt"}},
        {"files by extension at several depths - with exclude",
         {"foo/**/*.txt"},
         {"foo/**/xfile.txt"},
         {"foo/bar/baz/file.extra.dots.txt", "foo/bar/baz/file.txt", "foo/bar/baz2/file.txt",
          "foo/bar/file.txt", "foo/file.txt", "foo/file2.txt"},
         3},
        {"double slash matches a single slash",
         {"foo//*.txt"},
         {},
         {"foo/file.txt", "foo/file2.txt", "foo/xfile.txt"}},
        {"double slash matches a single slash - with exclude",
         {"foo//*.txt"},
         {"foo//*2.txt"},
         {"foo/file.txt", "foo/xfile.txt"},
         1},
        {"absolute path to working directory", {wd + "/*.thing"}, {}, {"file.thing", "file2.thing"}},
        {"absolute path to working directory - with exclude",
         {wd + "/*.thing"},
         {wd + "/*2.thing"},
         {"file.thing"},
         1},
        {"absolute path to nested directory - with exclude",
         {wd + "/foo/bar/*.bin"},
         {wd + "/foo/bar/*2.bin"},
         {"foo/bar/file.bin"},
         1},
        {"double slash and multiple stars - must be at least two dirs deep - with exclude",
         {"./foo/**//*/*.*"},
         {"**/*.bin"},
         {"foo/bar/baz/file.extra.dots.txt", "foo/bar/baz/file.extra.dots.txt.md",
          "foo/bar/baz/file.txt", "foo/bar/baz/file.txt.md", "foo/bar/baz/xfile.txt",
          "foo/bar/baz2/file.txt", "foo/bar/file.txt", "foo/bar/file.txt.md", "foo/bar/xfile.txt"},
         // foo/bar/file.bin, foo/bar/file2.bin, baz/file.bin, baz2/file.bin
         4},
        {"all the things - dirs included",
         {"foo/**"},
         {"**/*.txt", "**/*.md", "**/*.go"},
         {"foo", "foo/bar", "foo/bar/baz", "foo/bar/baz/file.bin", "foo/bar/baz2",
          "foo/bar/baz2/file.bin", "foo/bar/file.bin", "foo/bar/file2.bin", "foo/file.bin"},
         0},
        {"relative path that leaves project and returns - with exclude",
         {"../widgets/foo/*.txt"},
         {"../widgets/foo/*2.txt"},
         {"foo/file.txt", "foo/xfile.txt"},
         1},
        {"invalid path",
         {">/**"},
         {},
         {},
         0,
         "no matching files. Ensure that the artifact path is relative to the working directory"},
        {"cancel out everything",
         {"**"},
         {"**"},
         {},
         0,
         "no matching files. Ensure that the artifact path is relative to the working directory"},
        {"absolute file outside", {"/absolute.txt"}, {}, {}, 0, "not a subpath of project directory"},
        {"absolute double star outside",
         {"/**/absolute.txt"},
         {},
         {},
         0,
         "not a subpath of project directory"},
        {"relative file outside",
         {"../../../relative.txt"},
         {},
         {},
         0,
         "not a subpath of project directory"},
    };
    auto fs = runner_tree();
    for (const auto& r : rows) {
        INFO(r.name);
        selection_spec spec;
        spec.paths = r.paths;
        spec.exclude = r.exclude;
        auto s = select_files(project, spec, fs);
        INFO(messages_text(s));
        CHECK(paths_of(s) == r.expected);
        if (r.excluded > 0) {
            std::int64_t n = 0;
            for (const auto& m : s.messages) {
                auto pos = m.text.find(": excluded ");
                if (pos != std::string::npos) {
                    n += std::stoll(m.text.substr(pos + 11));
                }
            }
            CHECK(n == r.excluded);
        }
        if (!r.warning.empty()) {
            auto w = warnings_of(s);
            REQUIRE(w.size() == 1);
            CHECK_THAT(w[0], Catch::Contains(r.warning));
        }
    }
}

TEST_CASE("select_files: a directory brings its subtree; exclusions are counted per rule",
          "[artifacts][path_match]") {
    // gitlab-runner's TestExcludedFilePaths.
    memory_fs fs;
    for (const char* f : {"foo/test/bar/baz/1.txt", "foo/test/bar/baz/1.md", "foo/test/bar/baz/2.txt",
                          "foo/test/bar/baz/2.md", "foo/test/bar/baz/3.txt"}) {
        fs.file(f);
    }
    selection_spec spec;
    spec.paths = {"foo/test/"};
    spec.exclude = {"foo/test/bar/baz/3.txt", "foo/**/*.md"};
    auto s = select_files(project, spec, fs);
    CHECK(paths_of(s) == std::vector<std::string>{"foo/test", "foo/test/bar", "foo/test/bar/baz",
                                                  "foo/test/bar/baz/1.txt",
                                                  "foo/test/bar/baz/2.txt"});
    auto text = messages_text(s);
    CHECK_THAT(text, Catch::Contains("foo/test/bar/baz/3.txt: excluded 1 files"));
    CHECK_THAT(text, Catch::Contains("foo/**/*.md: excluded 2 files"));
    CHECK_THAT(text, Catch::Contains("foo/test/: found 5 matching artifact files and directories"));
    CHECK(warnings_of(s).empty());
}

TEST_CASE("select_files: kinds, untracked files and an exclude outside the project",
          "[artifacts][path_match]") {
    memory_fs fs;
    fs.file("bin/app").file("bin/app.tmp").file("coverage.out").file("build/out.o").file("src/x.go");
    selection_spec spec;
    spec.paths = {"bin/", "coverage.out", "missing.txt"};
    spec.exclude = {"bin/**/*.tmp", "../*.*"};
    spec.untracked = true;
    spec.untracked_files = {"build/out.o", "../escape.txt", "coverage.out"};
    auto s = select_files(project, spec, fs);
    CHECK(paths_of(s) == std::vector<std::string>{"bin", "bin/app", "build/out.o", "coverage.out"});
    CHECK(s.entries[0].kind == node_kind::directory);
    CHECK(s.entries[1].kind == node_kind::file);
    auto text = messages_text(s);
    CHECK_THAT(text, Catch::Contains("WARNING: exclude: artifact path is not a subpath of project "
                                     "directory: ../*.*"));
    CHECK_THAT(text, Catch::Contains("WARNING: missing.txt: no matching files"));
    CHECK_THAT(text, Catch::Contains("WARNING: ../escape.txt: not supported: outside build directory"));
    CHECK_THAT(text, Catch::Contains("untracked: found 2 files"));
    CHECK_THAT(text, Catch::Contains("bin/**/*.tmp: excluded 1 files"));
}

TEST_CASE("select_files: symlinks leading outside are refused, inside ones kept as links",
          "[artifacts][path_match]") {
    memory_fs fs;
    fs.file("real/data.txt")
        .link("out/etc", "/etc")                          // absolute, outside
        .link("out/up", "../../..")                       // relative, outside
        .link("out/chain", "hop")                         // via another link, outside
        .link("out/hop", "../../outside")
        .link("in/rel", "../real/data.txt")               // relative, inside
        .link("in/abs", std::string(project) + "/real")   // absolute, inside
        .link("in/dirlink", "../real");
    selection_spec spec;
    spec.paths = {"out/", "in/", "out/up/passwd", "in/dirlink/*.txt", "out/etc/*"};
    auto s = select_files(project, spec, fs);
    CHECK(paths_of(s) == std::vector<std::string>{"in", "in/abs", "in/dirlink", "in/dirlink/data.txt",
                                                  "in/rel", "out"});
    CHECK(s.entries[1].kind == node_kind::symlink);
    auto text = messages_text(s);
    INFO(text);
    for (const char* refused : {"out/etc", "out/up", "out/chain", "out/hop"}) {
        CHECK_THAT(text, Catch::Contains(std::string("WARNING: ") + refused +
                                         ": symbolic link leads outside the project directory"));
    }
    // Paths through an outside link are never looked up behind it.
    CHECK_THAT(text, Catch::Contains("WARNING: out/up: symbolic link leads outside the project "
                                     "directory; not followed"));
}

TEST_CASE("resolve_inside resolves links lexically", "[artifacts][path_match]") {
    memory_fs fs;
    fs.dir("a/b").link("a/l", "b").link("top", "a/l").link("loop1", "loop2").link("loop2", "loop1");
    auto r = resolve_inside(fs, project, "top/x", true);
    CHECK(r.inside);
    CHECK(r.path == "a/b/x");
    CHECK(resolve_inside(fs, project, "top", false).path == "top");
    CHECK_FALSE(resolve_inside(fs, project, "loop1", true).inside);
    CHECK_FALSE(resolve_inside(fs, project, "..", true).inside);
}

TEST_CASE("expand_braces", "[artifacts][path_match]") {
    CHECK(expand_braces("a{b,c{d,e}}f") == std::vector<std::string>{"abf", "acdf", "acef"});
    CHECK(expand_braces("x{y") == std::vector<std::string>{"x{y"});
    CHECK(expand_braces("\\{a,b}") == std::vector<std::string>{"\\{a,b}"});
}
