// extract_archive against malicious and broken archives made here with Python's zipfile and
// tarfile (independent writers that do not sanitise names): each is refused with a one-line
// message naming the entry, and nothing appears outside the destination.

#include <catch2/catch.hpp>
#include <sys/stat.h>

#include "archive_test_util.hpp"
#include "runner/artifacts/archive.hpp"

using namespace kiln::artifacts;
using namespace kiln::artifacts::testing;

namespace {

// Python that builds one archive from a list of (kind, name, payload) in sys.argv[2] (JSON).
const char* make_archive_py = R"(
import sys, json, zipfile, tarfile, io, stat
out = sys.argv[1]
spec = [(k, n, bytes.fromhex(p)) for k, n, p in json.load(open(sys.argv[2]))]
if out.endswith('.zip'):
    with zipfile.ZipFile(out, 'w', zipfile.ZIP_DEFLATED) as z:
        for kind, name, payload in spec:
            i = zipfile.ZipInfo(name)
            i.create_system = 3
            if kind == 'file':
                i.external_attr = (stat.S_IFREG | 0o644) << 16
                i.compress_type = zipfile.ZIP_DEFLATED
                z.writestr(i, payload)
            elif kind == 'zeros':
                i.external_attr = (stat.S_IFREG | 0o644) << 16
                i.compress_type = zipfile.ZIP_DEFLATED
                with z.open(i, 'w', force_zip64=True) as f:
                    chunk = b'\0' * (1 << 20)
                    for _ in range(int(payload.decode())):
                        f.write(chunk)
            elif kind == 'link':
                i.external_attr = (stat.S_IFLNK | 0o777) << 16
                z.writestr(i, payload)
            elif kind == 'dir':
                i.external_attr = (stat.S_IFDIR | 0o755) << 16 | 0x10
                z.writestr(i, '')
else:
    mode = 'w:gz' if out.endswith('.gz') else 'w'
    with tarfile.open(out, mode, format=tarfile.PAX_FORMAT) as t:
        for kind, name, payload in spec:
            i = tarfile.TarInfo(name)
            data = None
            if kind == 'file':
                data = payload
                i.size = len(data)
            elif kind == 'link':
                i.type, i.linkname = tarfile.SYMTYPE, payload.decode()
            elif kind == 'hardlink':
                i.type, i.linkname = tarfile.LNKTYPE, payload.decode()
            elif kind == 'dir':
                i.type = tarfile.DIRTYPE
            elif kind == 'chardev':
                i.type, i.devmajor, i.devminor = tarfile.CHRTYPE, 1, 3
            elif kind == 'fifo':
                i.type = tarfile.FIFOTYPE
            t.addfile(i, io.BytesIO(data) if data is not None else None)
)";

std::string json_escape(const std::string& s) {
    std::string o;
    for (char c : s) {
        if (c == '"' || c == '\\') o += '\\';
        o += c;
    }
    return o;
}

std::string hex(const std::string& s) {
    static const char digits[] = "0123456789abcdef";
    std::string o;
    for (unsigned char c : s) {
        o += digits[c >> 4];
        o += digits[c & 15];
    }
    return o;
}

struct item {
    std::string kind, name, payload;
};

fs::path make_archive(const temp_dir& d, const std::string& file, const std::vector<item>& items) {
    std::string spec = "[";
    for (const auto& i : items) {
        if (spec.size() > 1) spec += ",";
        spec += "[\"" + i.kind + "\",\"" + json_escape(i.name) + "\",\"" + hex(i.payload) + "\"]";
    }
    spec += "]";
    fs::path out = d.path / file;
    fs::path spec_file = d.path / (file + ".json");
    write_file(spec_file, spec);
    auto [rc, text] = python(d.path, make_archive_py, quote(out) + " " + quote(spec_file));
    INFO(text);
    REQUIRE(rc == 0);
    return out;
}

// What exists under `dir`, as sorted relative names (symlinks not followed).
std::vector<std::string> listing(const fs::path& dir) {
    std::vector<std::string> out;
    for (auto it = fs::recursive_directory_iterator(dir); it != fs::recursive_directory_iterator(); ++it)
        out.push_back(fs::relative(it->path(), dir).string());
    std::sort(out.begin(), out.end());
    return out;
}

// The layout every case uses: root/dest is the destination, root/outside a directory next to
// it (holding one file) that must stay exactly as it was.
struct sandbox {
    temp_dir root;
    fs::path dest, outside;
    sandbox() : dest(root.path / "work" / "dest"), outside(root.path / "work" / "outside") {
        fs::create_directories(dest);
        write_file(outside / "keep.txt", "original\n");
    }
    void check_outside_untouched() const {
        CHECK(listing(outside) == std::vector<std::string>{"keep.txt"});
        CHECK(read_file(outside / "keep.txt") == "original\n");
        std::vector<std::string> top = listing(root.path / "work");
        for (const auto& n : top) {
            INFO(n);
            CHECK((n.rfind("dest", 0) == 0 || n.rfind("outside", 0) == 0));
        }
        CHECK_FALSE(fs::exists("/tmp/kiln-evil.txt"));
    }
};

}  // namespace

TEST_CASE("extract_archive refuses malicious archives and writes nothing outside", "[artifacts][extract]") {
    struct malicious {
        const char* what;
        const char* file;
        std::vector<item> items;
        const char* message;  // a fragment of the error
    };
    const std::vector<malicious> cases = {
        {"zip-slip with ../", "slip.zip", {{"file", "ok.txt", "fine"}, {"file", "../outside/evil.txt", "x"}}, "\"..\" path element"},
        {"../ deep inside a path", "slip2.zip", {{"file", "a/b/../../../outside/keep.txt", "x"}}, "\"..\" path element"},
        {"absolute path in a zip", "abs.zip", {{"file", "/tmp/kiln-evil.txt", "x"}}, "absolute path"},
        {"absolute path in a tar", "abs.tar", {{"file", "/tmp/kiln-evil.txt", "x"}}, "absolute path"},
        {"../ in a tar.gz", "slip.tar.gz", {{"file", "./../outside/evil.txt", "x"}}, "\"..\" path element"},
        {"symlink out, then a write through it", "escape.zip",
         {{"link", "escape", "../outside"}, {"file", "escape/evil.txt", "x"}}, "leads outside the destination"},
        {"symlink to an absolute path", "abslink.tar", {{"link", "etc", "/etc"}}, "absolute path"},
        {"symlink inside, then a write through it", "through.zip",
         {{"dir", "sub/", ""}, {"link", "l", "sub"}, {"file", "l/evil.txt", "x"}}, "goes through \"l\""},
        {"symlink chain that climbs after descending", "chain.tar",
         {{"dir", "x/y/", ""}, {"link", "x/y/l", "../.."}, {"link", "m", "x/y/l/../outside"}}, "climbs after descending"},
        {"tar symlink then a file of the same path below it", "tarthrough.tar",
         {{"link", "d", "."}, {"file", "d/evil.txt", "x"}}, "goes through \"d\""},
        {"hard link in a tar", "hard.tar", {{"hardlink", "h", "/etc/passwd"}}, "hard link"},
        {"device file in a tar", "dev.tar", {{"chardev", "null", ""}}, "device, FIFO or socket"},
        {"FIFO in a tar", "fifo.tar", {{"fifo", "pipe", ""}}, "device, FIFO or socket"},
    };
    for (const auto& c : cases) {
        DYNAMIC_SECTION(c.what) {
            sandbox s;
            fs::path archive = make_archive(s.root, c.file, c.items);
            extract_result r = extract_archive(archive, s.dest, extract_limits{});
            INFO(r.error);
            CHECK_FALSE(r.ok);
            CHECK(r.error.find(c.message) != std::string::npos);
            CHECK(r.error.find(c.file) != std::string::npos);  // names the archive
            CHECK(r.error.find('\n') == std::string::npos);
            s.check_outside_untouched();
        }
    }
}

TEST_CASE("extract_archive never follows a symlink already in the destination", "[artifacts][extract]") {
    sandbox s;
    fs::create_directory_symlink("../outside", s.dest / "escape");
    fs::create_symlink("../outside/keep.txt", s.dest / "keep.txt");

    SECTION("a file below a pre-existing symlink to a directory is refused") {
        fs::path a = make_archive(s.root, "pre.zip", {{"file", "escape/evil.txt", "x"}});
        extract_result r = extract_archive(a, s.dest, extract_limits{});
        CHECK_FALSE(r.ok);
        CHECK(r.error.find("goes through \"escape\"") != std::string::npos);
    }
    SECTION("a file over a pre-existing symlink replaces the link, not its target") {
        fs::path a = make_archive(s.root, "over.zip", {{"file", "keep.txt", "new content"}});
        extract_result r = extract_archive(a, s.dest, extract_limits{});
        INFO(r.error);
        CHECK(r.ok);
        CHECK_FALSE(fs::is_symlink(s.dest / "keep.txt"));
        CHECK(read_file(s.dest / "keep.txt") == "new content");
    }
    s.check_outside_untouched();
}

TEST_CASE("extract_archive stops a zip bomb by the bytes it writes", "[artifacts][extract]") {
    sandbox s;
    // 64 MiB of zeros deflate to about 64 KiB.
    fs::path bomb = make_archive(s.root, "bomb.zip", {{"file", "small.txt", "ok"}, {"zeros", "zeros.bin", "64"}});
    REQUIRE(fs::file_size(bomb) < (1 << 20));
    extract_limits limits;
    limits.max_total_bytes = 8 << 20;
    extract_result r = extract_archive(bomb, s.dest, limits);
    INFO(r.error);
    CHECK_FALSE(r.ok);
    CHECK(r.error.find("zeros.bin") != std::string::npos);
    CHECK(r.error.find("limit") != std::string::npos);
    CHECK(r.bytes <= limits.max_total_bytes);
    CHECK_FALSE(fs::exists(s.dest / "zeros.bin"));  // no truncated file left
    CHECK(read_file(s.dest / "small.txt") == "ok");
    s.check_outside_untouched();

    SECTION("and an archive with too many entries") {
        std::vector<item> many;
        for (int i = 0; i < 20; ++i) many.push_back({"file", "f" + std::to_string(i), "x"});
        fs::path a = make_archive(s.root, "many.tar", many);
        extract_limits l;
        l.max_entries = 10;
        extract_result m = extract_archive(a, s.dest, l);
        CHECK_FALSE(m.ok);
        CHECK(m.error.find("more than 10 entries") != std::string::npos);
        CHECK_FALSE(fs::exists(s.dest / "f10"));
    }
}

TEST_CASE("extract_archive reports a truncated or corrupt archive on one line", "[artifacts][extract]") {
    sandbox s;
    std::string big = mixed_content(300000, 5);
    std::vector<item> items{{"file", "a.txt", "hello"}, {"file", "b.txt", big}};
    for (const char* name : {"good.zip", "good.tar.gz"}) {
        DYNAMIC_SECTION(name) {
            fs::path a = make_archive(s.root, name, items);
            std::string bytes = read_file(a);
            SECTION("cut in half") {
                fs::path cut = s.root.path / (std::string("cut-") + name);
                write_file(cut, bytes.substr(0, bytes.size() / 2));
                extract_result r = extract_archive(cut, s.dest, extract_limits{});
                INFO(r.error);
                CHECK_FALSE(r.ok);
                CHECK(r.error.find("cut-") != std::string::npos);
                CHECK(r.error.find("truncated or corrupt") != std::string::npos);
                CHECK(r.error.find('\n') == std::string::npos);
                CHECK_FALSE(fs::exists(s.dest / "b.txt"));
            }
            // zip checks a CRC-32 per entry; tar has no checksum over file data.
            if (std::string(name).ends_with(".zip")) SECTION("a flipped byte in the compressed data") {
                fs::path bad = s.root.path / (std::string("flip-") + name);
                std::string b = bytes;
                b[b.size() / 2] = static_cast<char>(b[b.size() / 2] ^ 0x55);
                write_file(bad, b);
                extract_result r = extract_archive(bad, s.dest, extract_limits{});
                INFO(r.error);
                CHECK_FALSE(r.ok);
                CHECK(r.error.find('\n') == std::string::npos);
            }
        }
    }
    SECTION("not an archive at all") {
        fs::path junk = s.root.path / "junk.zip";
        write_file(junk, "<html>502 Bad Gateway</html>\n");
        extract_result r = extract_archive(junk, s.dest, extract_limits{});
        CHECK_FALSE(r.ok);
        CHECK(r.error.find("junk.zip is not a readable zip or tar archive") != std::string::npos);
    }
    SECTION("a missing archive") {
        extract_result r = extract_archive(s.root.path / "nope.zip", s.dest, extract_limits{});
        CHECK_FALSE(r.ok);
        CHECK(r.error.find("nope.zip") != std::string::npos);
    }
    s.check_outside_untouched();
}

TEST_CASE("extract_archive takes benign archives from other tools", "[artifacts][extract]") {
    sandbox s;
    fs::path a = make_archive(s.root, "benign.tar",
                              {{"dir", "./", ""},
                               {"dir", "./pkg/", ""},
                               {"file", "./pkg/main.go", "package main\n"},
                               {"link", "./pkg/bin", "../tools/bin"},
                               {"link", "./current", "pkg"},
                               {"file", "tools/bin/run", "#!/bin/sh\n"}});
    extract_result r = extract_archive(a, s.dest, extract_limits{});
    INFO(r.error);
    REQUIRE(r.ok);
    CHECK(r.files == 2);
    CHECK(read_file(s.dest / "pkg/main.go") == "package main\n");
    CHECK(fs::read_symlink(s.dest / "pkg/bin") == "../tools/bin");
    CHECK(read_file(s.dest / "current/main.go") == "package main\n");  // the link works
    s.check_outside_untouched();
}
