// What signing costs: write_zip of the same tree with and without the signing trailer (the
// SHA-256 of every file, computed by the archive engine from the bytes it compresses, plus the
// manifest and its signature), and verify_archive (read, inflate and hash everything once) on
// the signed archive. The tree is /usr/lib/x86_64-linux-gnu's shared libraries from the 101st
// largest down, then /usr/include headers, up to --mb MB; page cache warm; best of --runs.
//
//   signing_bench [--threads 2] [--mb 300] [--runs 3]

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include <openssl/evp.h>
#include <openssl/pem.h>

#include "runner/artifacts/archive.hpp"
#include "runner/artifacts/signing.hpp"

namespace fs = std::filesystem;
using namespace kiln::artifacts;

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

std::uint64_t build_tree(const fs::path& tree, std::uint64_t target) {
    std::vector<std::pair<std::uint64_t, fs::path>> libs;
    for (auto& e : fs::directory_iterator("/usr/lib/x86_64-linux-gnu")) {
        if (e.is_regular_file() && !e.is_symlink() &&
            e.path().filename().string().find(".so") != std::string::npos) {
            libs.emplace_back(e.file_size(), e.path());
        }
    }
    std::sort(libs.begin(), libs.end(), std::greater<>());
    std::uint64_t total = 0;
    auto copy = [&](const fs::path& from, const fs::path& to) {
        fs::create_directories(to.parent_path());
        fs::copy_file(from, to, fs::copy_options::overwrite_existing);
        total += fs::file_size(to);
    };
    for (std::size_t i = 100; i < libs.size() && i < 400 && total < target; ++i) {
        copy(libs[i].second, tree / "lib" / libs[i].second.filename());
    }
    std::vector<fs::path> headers;
    for (auto it = fs::recursive_directory_iterator("/usr/include");
         it != fs::recursive_directory_iterator(); ++it) {
        if (it->is_regular_file() && !it->is_symlink()) {
            headers.push_back(it->path());
        }
    }
    std::sort(headers.begin(), headers.end());
    for (const auto& h : headers) {
        if (total >= target) {
            break;
        }
        copy(h, tree / "include" / fs::relative(h, "/usr/include"));
    }
    return total;
}

std::vector<archive_entry> walk(const fs::path& root, std::uint64_t& bytes) {
    std::vector<archive_entry> entries;
    const std::size_t prefix = root.string().size() + 1;
    std::vector<char> buf(1 << 20);
    for (auto it = fs::recursive_directory_iterator(root); it != fs::recursive_directory_iterator();
         ++it) {
        std::string name = it->path().string().substr(prefix);
        if (it->symlink_status().type() == fs::file_type::directory) {
            name += '/';
        } else if (it->is_regular_file()) {
            bytes += it->file_size();
            int fd = ::open(it->path().c_str(), O_RDONLY);  // warm the page cache
            while (::read(fd, buf.data(), buf.size()) > 0) {
            }
            ::close(fd);
        }
        entries.push_back({name, it->path()});
    }
    return entries;
}

key make_key() {
    EVP_PKEY* pkey = EVP_PKEY_Q_keygen(nullptr, nullptr, "ED25519");
    BIO* bio = BIO_new(BIO_s_mem());
    PEM_write_bio_PrivateKey(bio, pkey, nullptr, nullptr, 0, nullptr, nullptr);
    char* data = nullptr;
    long len = BIO_get_mem_data(bio, &data);
    auto k = signing_key_from_pem(std::string_view(data, static_cast<std::size_t>(len)), "bench");
    BIO_free(bio);
    EVP_PKEY_free(pkey);
    return *k.value;
}

}  // namespace

int main(int argc, char** argv) {
    unsigned threads = 2;
    std::uint64_t mb = 300;
    int runs = 3;
    for (int i = 1; i + 1 < argc; i += 2) {
        std::string a = argv[i];
        if (a == "--threads") {
            threads = static_cast<unsigned>(std::atoi(argv[i + 1]));
        } else if (a == "--mb") {
            mb = std::strtoull(argv[i + 1], nullptr, 10);
        } else if (a == "--runs") {
            runs = std::atoi(argv[i + 1]);
        } else {
            std::fprintf(stderr, "usage: signing_bench [--threads N] [--mb N] [--runs N]\n");
            return 2;
        }
    }
    std::string templ = (fs::temp_directory_path() / "kiln-signing-bench-XXXXXX").string();
    const fs::path work = ::mkdtemp(templ.data());
    const fs::path tree = work / "tree";
    build_tree(tree, mb * 1000 * 1000);
    std::uint64_t bytes = 0;
    auto entries = walk(tree, bytes);
    std::printf("tree: %.1f MB in %zu entries; %u threads; level default; best of %d runs\n",
                bytes / 1e6, entries.size(), threads, runs);

    const key signer = make_key();
    signing_facts facts;
    facts.job_id = 1;
    facts.commit_sha = std::string(40, 'a');
    auto best = [&](auto&& f) {
        double b = 1e9;
        for (int i = 0; i < runs; ++i) {
            auto t0 = std::chrono::steady_clock::now();
            f();
            b = std::min(b, seconds_since(t0));
        }
        return b;
    };
    auto report = [&](const char* what, double s) {
        std::printf("%-44s %8.3f s %8.0f MB/s\n", what, s, bytes / 1e6 / s);
        std::fflush(stdout);
    };
    const fs::path plain_zip = work / "plain.zip";
    const fs::path signed_zip = work / "signed.zip";
    zip_options plain;
    plain.threads = threads;
    report("write_zip", best([&] { write_zip(entries, plain_zip, plain); }));
    double trailer_seconds = 1e9;
    report("write_zip + signing trailer (with provenance)", best([&] {
               zip_options o = plain;
               auto sign = make_signing_trailer(signer, facts, entries, true);
               o.trailer = [&sign, &trailer_seconds](const std::vector<file_digest>& d) {
                   auto t0 = std::chrono::steady_clock::now();
                   auto out = sign(d);
                   trailer_seconds = std::min(trailer_seconds, seconds_since(t0));
                   return out;
               };
               write_zip(entries, signed_zip, o);
           }));
    std::printf("  of which the trailer (manifest, provenance, 2 signatures): %.3f s\n",
                trailer_seconds);
    std::vector<key> keys{signer};
    verify_result r;
    report("verify_archive (signed archive)", best([&] { r = verify_archive(signed_zip, keys); }));
    if (!r.ok) {
        std::printf("verification FAILED: %s\n", r.error.c_str());
        return 1;
    }
    std::printf("signed archive: %llu files verified; %.1f MB (+%.1f KB of .kiln/ entries)\n",
                static_cast<unsigned long long>(r.files), fs::file_size(signed_zip) / 1e6,
                (static_cast<double>(fs::file_size(signed_zip)) -
                 static_cast<double>(fs::file_size(plain_zip))) / 1e3);
    fs::remove_all(work);
    return 0;
}
