#include "runner/artifacts/signing.hpp"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <map>
#include <set>
#include <stdexcept>
#include <system_error>
#include <utility>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <nlohmann/json.hpp>

#include "config/settings.hpp"
#include "runner/gitlab/job_payload.hpp"
#include "runner/gitlab/tokens.hpp"
#include "runner/version.hpp"

namespace kiln::artifacts {

namespace {

using json = nlohmann::json;

constexpr std::size_t max_key_file = 64 * 1024;
constexpr std::size_t max_manifest = 256ULL << 20;
constexpr std::size_t max_signature = 4096;

/// The most useful line of OpenSSL's error queue (the first, which says what failed at the
/// bottom), and the queue emptied.
std::string openssl_reason() {
    unsigned long first = ERR_get_error();
    ERR_clear_error();
    if (first == 0) {
        return "unknown OpenSSL error";
    }
    const char* reason = ERR_reason_error_string(first);
    if (reason != nullptr) {
        return reason;
    }
    char buf[256];
    ERR_error_string_n(first, buf, sizeof buf);
    return buf;
}

struct bio_deleter {
    void operator()(BIO* b) const { BIO_free(b); }
};
struct md_ctx_deleter {
    void operator()(EVP_MD_CTX* c) const { EVP_MD_CTX_free(c); }
};
using bio_ptr = std::unique_ptr<BIO, bio_deleter>;
using md_ctx_ptr = std::unique_ptr<EVP_MD_CTX, md_ctx_deleter>;

// Never prompt on a terminal for an encrypted key's passphrase: fail instead.
int no_passphrase(char*, int, int, void*) { return 0; }

std::array<unsigned char, 32> sha256_of(std::string_view data) {
    std::array<unsigned char, 32> out{};
    unsigned int len = 0;
    if (EVP_Digest(data.data(), data.size(), out.data(), &len, EVP_sha256(), nullptr) != 1) {
        throw std::runtime_error("SHA-256 failed: " + openssl_reason());
    }
    return out;
}

bool is_hex_digest(std::string_view s) {
    return s.size() == 64 && std::all_of(s.begin(), s.end(), [](char c) {
               return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
           });
}

bool is_utf8(std::string_view s) {
    std::size_t i = 0;
    while (i < s.size()) {
        auto c = static_cast<unsigned char>(s[i]);
        std::size_t extra = 0;
        std::uint32_t cp = 0;
        if (c < 0x80) {
            ++i;
            continue;
        } else if ((c & 0xE0) == 0xC0) {
            extra = 1;
            cp = c & 0x1F;
        } else if ((c & 0xF0) == 0xE0) {
            extra = 2;
            cp = c & 0x0F;
        } else if ((c & 0xF8) == 0xF0) {
            extra = 3;
            cp = c & 0x07;
        } else {
            return false;
        }
        if (i + extra >= s.size()) {
            return false;
        }
        for (std::size_t k = 1; k <= extra; ++k) {
            auto cc = static_cast<unsigned char>(s[i + k]);
            if ((cc & 0xC0) != 0x80) {
                return false;
            }
            cp = (cp << 6) | (cc & 0x3F);
        }
        const std::uint32_t min[] = {0, 0x80, 0x800, 0x10000};
        if (cp < min[extra] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
            return false;
        }
        i += extra + 1;
    }
    return true;
}

std::string utc_now() {
    std::time_t t = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
    std::tm tm{};
    gmtime_r(&t, &tm);
    char buf[32];
    std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
    return buf;
}

/// The whole file, or an error text (strerror) when it cannot be read.
std::optional<std::string> read_small_file(const std::filesystem::path& path, std::string& error) {
    std::FILE* f = std::fopen(path.c_str(), "rb");
    if (f == nullptr) {
        error = std::strerror(errno);
        return std::nullopt;
    }
    std::string text;
    char buf[8192];
    for (;;) {
        std::size_t n = std::fread(buf, 1, sizeof buf, f);
        text.append(buf, n);
        if (text.size() > max_key_file) {
            std::fclose(f);
            error = "the file is larger than a PEM key can be (64 KiB)";
            return std::nullopt;
        }
        if (n < sizeof buf) {
            if (std::ferror(f) != 0) {
                error = std::strerror(errno);
                std::fclose(f);
                return std::nullopt;
            }
            break;
        }
    }
    std::fclose(f);
    return text;
}

}  // namespace

// Builds key objects; a friend of `key`.
struct key_loader {
    static key_result make(EVP_PKEY* raw, bool is_private, std::string_view source,
                           std::string_view what) {
        std::shared_ptr<EVP_PKEY> pkey(raw, EVP_PKEY_free);
        auto fail = [&](const std::string& why) {
            return key_result{std::nullopt,
                              "cannot read " + std::string(what) + " " + std::string(source) +
                                  ": " + why};
        };
        key k;
        if (EVP_PKEY_is_a(raw, "ED25519") == 1) {
            k.algorithm_ = key_algorithm::ed25519;
        } else if (EVP_PKEY_is_a(raw, "EC") == 1) {
            char group[64] = {};
            std::size_t len = 0;
            if (EVP_PKEY_get_group_name(raw, group, sizeof group, &len) != 1 ||
                (std::string_view(group) != "prime256v1" && std::string_view(group) != "P-256")) {
                return fail("an ECDSA key on curve " + std::string(group[0] ? group : "?") +
                            "; kiln signs with Ed25519 or ECDSA P-256 (prime256v1) keys");
            }
            k.algorithm_ = key_algorithm::ecdsa_p256;
        } else {
            return fail(std::string("a ") + EVP_PKEY_get0_type_name(raw) +
                        " key; kiln signs with Ed25519 or ECDSA P-256 keys (make one with "
                        "`openssl genpkey -algorithm ed25519 -out key.pem`)");
        }
        unsigned char* der = nullptr;
        int der_len = i2d_PUBKEY(raw, &der);
        if (der_len <= 0) {
            return fail("cannot encode its public key: " + openssl_reason());
        }
        auto digest = sha256_of(std::string_view(reinterpret_cast<char*>(der),
                                                 static_cast<std::size_t>(der_len)));
        OPENSSL_free(der);
        k.id_ = "sha256:" + to_hex(digest);
        k.pkey_ = std::move(pkey);
        k.source_ = std::string(source);
        k.private_ = is_private;
        return key_result{std::move(k), {}};
    }
};

std::string_view algorithm_name(key_algorithm a) {
    return a == key_algorithm::ed25519 ? "ed25519" : "ecdsa-p256-sha256";
}

bool is_signing_entry(std::string_view name) {
    return name == manifest_entry || name == signature_entry || name == provenance_entry ||
           name == provenance_signature_entry;
}

std::size_t drop_signing_entries(std::vector<archive_entry>& entries) {
    return std::erase_if(entries, [](const archive_entry& e) { return is_signing_entry(e.name); });
}

std::string to_hex(const std::array<unsigned char, 32>& digest) {
    static constexpr char digits[] = "0123456789abcdef";
    std::string out;
    out.reserve(64);
    for (unsigned char b : digest) {
        out += digits[b >> 4];
        out += digits[b & 0xF];
    }
    return out;
}

key_result signing_key_from_pem(std::string_view pem, std::string_view source) {
    constexpr std::string_view what = "signing key";
    ERR_clear_error();
    bio_ptr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
    EVP_PKEY* raw = PEM_read_bio_PrivateKey(bio.get(), nullptr, no_passphrase, nullptr);
    if (raw == nullptr) {
        std::string reason = openssl_reason();
        std::string why;
        if (pem.find("ENCRYPTED") != std::string_view::npos) {
            why = "the key is encrypted; kiln needs it unencrypted (openssl pkey -in ENCRYPTED.pem "
                  "-out KEY.pem) in a file only kiln's user can read";
        } else if (pem.find("PUBLIC KEY") != std::string_view::npos) {
            why = "this is a public key; signing needs the private key";
        } else if (pem.find("-----BEGIN") == std::string_view::npos) {
            why = "not a PEM file (expected -----BEGIN PRIVATE KEY-----)";
        } else {
            why = "not a usable PEM private key (" + reason + ")";
        }
        return key_result{std::nullopt,
                          "cannot read " + std::string(what) + " " + std::string(source) + ": " +
                              why};
    }
    return key_loader::make(raw, true, source, what);
}

key_result verify_key_from_pem(std::string_view pem, std::string_view source) {
    constexpr std::string_view what = "verification key";
    ERR_clear_error();
    bio_ptr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
    EVP_PKEY* raw = PEM_read_bio_PUBKEY(bio.get(), nullptr, no_passphrase, nullptr);
    bool is_private = false;
    if (raw == nullptr) {
        ERR_clear_error();
        bio.reset(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
        raw = PEM_read_bio_PrivateKey(bio.get(), nullptr, no_passphrase, nullptr);
        is_private = raw != nullptr;
    }
    if (raw == nullptr) {
        std::string reason = openssl_reason();
        std::string why = pem.find("-----BEGIN") == std::string_view::npos
                              ? "not a PEM file (expected -----BEGIN PUBLIC KEY-----)"
                              : "not a usable PEM public key (" + reason + ")";
        return key_result{std::nullopt,
                          "cannot read " + std::string(what) + " " + std::string(source) + ": " +
                              why};
    }
    return key_loader::make(raw, is_private, source, what);
}

key_result load_signing_key(const std::filesystem::path& pem_file) {
    std::string error;
    auto text = read_small_file(pem_file, error);
    if (!text) {
        return key_result{std::nullopt, "cannot read signing key " + pem_file.string() + ": " + error};
    }
    return signing_key_from_pem(*text, pem_file.string());
}

key_result load_verify_key(const std::filesystem::path& pem_file) {
    std::string error;
    auto text = read_small_file(pem_file, error);
    if (!text) {
        return key_result{std::nullopt,
                          "cannot read verification key " + pem_file.string() + ": " + error};
    }
    return verify_key_from_pem(*text, pem_file.string());
}

runner_keys load_runner_keys(const config::signing_settings& settings) {
    runner_keys out;
    out.provenance = settings.provenance;
    if (!settings.key_file.empty()) {
        auto k = load_signing_key(settings.key_file);
        if (!k.value) {
            out.error = k.error;
            return out;
        }
        out.signer = std::move(k.value);
    }
    for (const auto& file : settings.verify_key_files) {
        auto k = load_verify_key(file);
        if (!k.value) {
            out.error = k.error;
            return out;
        }
        out.verifiers.push_back(std::move(*k.value));
    }
    return out;
}

std::string sign_message(const key& k, std::string_view message) {
    if (!k.has_private()) {
        throw std::runtime_error("cannot sign with " + k.source() + ": it is a public key");
    }
    ERR_clear_error();
    md_ctx_ptr ctx(EVP_MD_CTX_new());
    // Ed25519 hashes internally (PureEdDSA) and takes no digest; ECDSA signs SHA-256(message).
    const EVP_MD* md = k.algorithm() == key_algorithm::ed25519 ? nullptr : EVP_sha256();
    std::size_t len = 0;
    auto data = reinterpret_cast<const unsigned char*>(message.data());
    if (!ctx || EVP_DigestSignInit(ctx.get(), nullptr, md, nullptr, k.native()) != 1 ||
        EVP_DigestSign(ctx.get(), nullptr, &len, data, message.size()) != 1) {
        throw std::runtime_error("signing with " + k.source() + " failed: " + openssl_reason());
    }
    std::string sig(len, '\0');
    if (EVP_DigestSign(ctx.get(), reinterpret_cast<unsigned char*>(sig.data()), &len, data,
                       message.size()) != 1) {
        throw std::runtime_error("signing with " + k.source() + " failed: " + openssl_reason());
    }
    sig.resize(len);  // a DER ECDSA signature is usually shorter than the maximum
    return sig;
}

bool verify_message(const key& k, std::string_view message, std::string_view signature) {
    md_ctx_ptr ctx(EVP_MD_CTX_new());
    const EVP_MD* md = k.algorithm() == key_algorithm::ed25519 ? nullptr : EVP_sha256();
    bool ok = ctx && EVP_DigestVerifyInit(ctx.get(), nullptr, md, nullptr, k.native()) == 1 &&
              EVP_DigestVerify(ctx.get(), reinterpret_cast<const unsigned char*>(signature.data()),
                               signature.size(),
                               reinterpret_cast<const unsigned char*>(message.data()),
                               message.size()) == 1;
    ERR_clear_error();  // a bad signature leaves decoding errors behind
    return ok;
}

signing_facts facts_for_job(const gitlab::job_spec& job, std::string_view runner_token) {
    auto var = [&](std::string_view name) {
        const auto* v = gitlab::find_variable(job.variables, name);
        return v != nullptr ? v->value : std::string{};
    };
    signing_facts f;
    f.job_id = job.id;
    f.job_url = var("CI_JOB_URL");
    f.project = job.info.project_full_path.empty() ? var("CI_PROJECT_PATH")
                                                   : job.info.project_full_path;
    f.commit_sha = job.git.sha;
    f.ref = job.git.ref;
    f.pipeline_id = var("CI_PIPELINE_ID");
    f.image = job.image ? job.image->name : std::string{};
    f.runner = gitlab::short_token(runner_token);
    return f;
}

// ---------------------------------------------------------------------------------------------
// Manifest

namespace {

/// Canonical JSON written directly (manifests list tens of thousands of files): the caller
/// writes object keys in sorted order; strings get only the escapes JSON requires, as
/// nlohmann::json's dump() writes them, so `json::parse(x).dump() == x` holds.
class canonical_writer {
public:
    canonical_writer& raw(std::string_view s) {
        out_ += s;
        return *this;
    }
    canonical_writer& string(std::string_view s) {
        if (!is_utf8(s)) {
            throw std::invalid_argument("cannot write the manifest: " + printable_name(s) +
                                        " is not valid UTF-8");
        }
        out_ += '"';
        for (char ch : s) {
            switch (ch) {
                case '"': out_ += "\\\""; break;
                case '\\': out_ += "\\\\"; break;
                case '\b': out_ += "\\b"; break;
                case '\f': out_ += "\\f"; break;
                case '\n': out_ += "\\n"; break;
                case '\r': out_ += "\\r"; break;
                case '\t': out_ += "\\t"; break;
                default:
                    if (static_cast<unsigned char>(ch) < 0x20) {
                        char buf[8];
                        std::snprintf(buf, sizeof buf, "\\u%04x", static_cast<unsigned>(ch));
                        out_ += buf;
                    } else {
                        out_ += ch;
                    }
            }
        }
        out_ += '"';
        return *this;
    }
    /// `"name":` — with a comma before it unless it is the first of its object.
    canonical_writer& key(std::string_view name, bool first = false) {
        if (!first) {
            out_ += ',';
        }
        return string(name).raw(":");
    }
    canonical_writer& number(std::int64_t v) { return raw(std::to_string(v)); }
    canonical_writer& unsigned_number(std::uint64_t v) { return raw(std::to_string(v)); }
    std::string take() && { return std::move(out_); }

private:
    std::string out_;
};

template <class T>
std::vector<const T*> sorted_by_name(const std::vector<T>& items) {
    std::vector<const T*> out;
    out.reserve(items.size());
    for (const auto& i : items) {
        out.push_back(&i);
    }
    std::sort(out.begin(), out.end(), [](auto* a, auto* b) { return a->name < b->name; });
    return out;
}

}  // namespace

std::string canonical_json(const manifest& m) {
    canonical_writer w;
    w.raw("{").key("algorithm", true).string(m.algorithm);
    w.key("commit_sha").string(m.facts.commit_sha);
    w.key("created").string(m.facts.created);
    w.key("files").raw("[");
    bool first = true;
    for (const auto* f : sorted_by_name(m.files)) {
        w.raw(first ? "{" : ",{").key("name", true).string(f->name);
        w.key("sha256").string(f->sha256).key("size").unsigned_number(f->size).raw("}");
        first = false;
    }
    w.raw("]").key("image").string(m.facts.image);
    w.key("job").raw("{").key("id", true).number(m.facts.job_id);
    w.key("url").string(m.facts.job_url).raw("}");
    w.key("key_id").string(m.key_id);
    w.key("pipeline_id").string(m.facts.pipeline_id);
    w.key("project").string(m.facts.project);
    w.key("ref").string(m.facts.ref);
    w.key("runner").string(m.facts.runner);
    w.key("symlinks").raw("[");
    first = true;
    for (const auto* l : sorted_by_name(m.symlinks)) {
        w.raw(first ? "{" : ",{").key("name", true).string(l->name);
        w.key("target").string(l->target).raw("}");
        first = false;
    }
    w.raw("]").key("version").number(m.version).raw("}");
    return std::move(w).take();
}

manifest_parse_result parse_manifest(std::string_view text) {
    auto fail = [](std::string why) {
        return manifest_parse_result{std::nullopt, "the manifest is not valid: " + why};
    };
    json j = json::parse(text, nullptr, false);
    if (j.is_discarded() || !j.is_object()) {
        return fail("not a JSON object");
    }
    manifest m;
    auto version = j.find("version");
    if (version == j.end() || !version->is_number_integer()) {
        return fail("no \"version\"");
    }
    if (version->get<std::int64_t>() != 1) {
        return fail("version " + version->dump() + "; this kiln reads version 1 (upgrade kiln)");
    }
    auto str = [&](const json& obj, const char* name, std::string& out, bool required) {
        auto it = obj.find(name);
        if (it == obj.end() || it->is_null()) {
            return !required;
        }
        if (!it->is_string()) {
            return false;
        }
        out = it->get<std::string>();
        return true;
    };
    if (!str(j, "algorithm", m.algorithm, true) || !str(j, "key_id", m.key_id, true)) {
        return fail("\"algorithm\" and \"key_id\" must be strings");
    }
    for (auto [name, out] : {std::pair{"created", &m.facts.created},
                             std::pair{"project", &m.facts.project},
                             std::pair{"commit_sha", &m.facts.commit_sha},
                             std::pair{"ref", &m.facts.ref},
                             std::pair{"pipeline_id", &m.facts.pipeline_id},
                             std::pair{"image", &m.facts.image},
                             std::pair{"runner", &m.facts.runner}}) {
        if (!str(j, name, *out, false)) {
            return fail(std::string("\"") + name + "\" must be a string");
        }
    }
    if (auto job = j.find("job"); job != j.end() && job->is_object()) {
        if (auto id = job->find("id"); id != job->end() && id->is_number_integer()) {
            m.facts.job_id = id->get<std::int64_t>();
        }
        if (!str(*job, "url", m.facts.job_url, false)) {
            return fail("\"job.url\" must be a string");
        }
    }
    auto files = j.find("files");
    if (files == j.end() || !files->is_array()) {
        return fail("\"files\" must be an array");
    }
    std::set<std::string> names;
    for (const auto& f : *files) {
        manifest_file mf;
        auto size = f.is_object() ? f.find("size") : f.end();
        if (!f.is_object() || !str(f, "name", mf.name, true) || !str(f, "sha256", mf.sha256, true) ||
            size == f.end() || !size->is_number_unsigned() || !is_hex_digest(mf.sha256)) {
            return fail("each of \"files\" needs \"name\", \"size\" and a hex \"sha256\"");
        }
        mf.size = size->get<std::uint64_t>();
        if (!names.insert(mf.name).second) {
            return fail("file " + printable_name(mf.name) + " is listed twice");
        }
        m.files.push_back(std::move(mf));
    }
    if (auto links = j.find("symlinks"); links != j.end()) {
        if (!links->is_array()) {
            return fail("\"symlinks\" must be an array");
        }
        for (const auto& l : *links) {
            manifest_symlink ms;
            if (!l.is_object() || !str(l, "name", ms.name, true) ||
                !str(l, "target", ms.target, true)) {
                return fail("each of \"symlinks\" needs \"name\" and \"target\"");
            }
            if (!names.insert(ms.name).second) {
                return fail("entry " + printable_name(ms.name) + " is listed twice");
            }
            m.symlinks.push_back(std::move(ms));
        }
    }
    return manifest_parse_result{std::move(m), {}};
}

std::string provenance_statement(const std::vector<manifest_file>& files,
                                 const signing_facts& facts) {
    canonical_writer w;
    w.raw("{").key("_type", true).string("https://in-toto.io/Statement/v1");
    w.key("predicate").raw("{").key("buildDefinition", true).raw("{");
    w.key("buildType", true).string("urn:kiln:gitlab-ci-job:v1");
    w.key("externalParameters").raw("{").key("job_id", true).number(facts.job_id);
    w.key("pipeline_id").string(facts.pipeline_id).key("project").string(facts.project);
    w.key("ref").string(facts.ref).raw("}");
    w.key("internalParameters").raw("{");
    if (!facts.image.empty()) {
        w.key("image", true).string(facts.image);
    }
    w.raw("}").key("resolvedDependencies").raw("[");
    if (!facts.commit_sha.empty()) {
        w.raw("{").key("digest", true).raw("{").key("gitCommit", true).string(facts.commit_sha);
        w.raw("}").key("uri").string("git+" + facts.project + "@" + facts.ref).raw("}");
    }
    w.raw("]}");  // buildDefinition
    w.key("runDetails").raw("{").key("builder", true).raw("{");
    w.key("id", true).string("urn:kiln:runner:" + facts.runner);
    w.key("version").raw("{").key("kiln", true).string(version_string()).raw("}}");
    w.key("metadata").raw("{").key("finishedOn", true).string(facts.created);
    w.key("invocationId")
        .string(facts.job_url.empty() ? std::to_string(facts.job_id) : facts.job_url);
    w.raw("}}}");  // metadata, runDetails, predicate
    w.key("predicateType").string("https://slsa.dev/provenance/v1");
    w.key("subject").raw("[");
    bool first = true;
    for (const auto* f : sorted_by_name(files)) {
        w.raw(first ? "{" : ",{").key("digest", true).raw("{").key("sha256", true);
        w.string(f->sha256).raw("}").key("name").string(f->name).raw("}");
        first = false;
    }
    w.raw("]}");
    return std::move(w).take();
}

trailer_function make_signing_trailer(key signer, signing_facts facts,
                                      const std::vector<archive_entry>& entries, bool provenance) {
    // Only the symlinks are kept: their targets are read when the archive is finished.
    std::vector<archive_entry> links;
    for (const auto& e : entries) {
        std::error_code ec;
        if (std::filesystem::symlink_status(e.source, ec).type() ==
            std::filesystem::file_type::symlink) {
            links.push_back(e);
        }
    }
    return [signer = std::move(signer), facts = std::move(facts), links = std::move(links),
            provenance](const std::vector<file_digest>& digests) {
        auto check_name = [](const std::string& name) {
            if (is_signing_entry(name)) {
                throw std::runtime_error(
                    "cannot sign the archive: the job's file " + name +
                    " has the name of kiln's signed manifest; rename it or leave it out of "
                    "artifacts:paths (it is often left over from a dependency's archive)");
            }
            if (!is_utf8(name)) {
                throw std::runtime_error("cannot sign the archive: the file name " +
                                         printable_name(name) + " is not valid UTF-8; rename it");
            }
        };
        manifest m;
        m.algorithm = std::string(algorithm_name(signer.algorithm()));
        m.key_id = signer.id();
        m.facts = facts;
        if (m.facts.created.empty()) {
            m.facts.created = utc_now();
        }
        for (const auto& d : digests) {
            check_name(d.name);
            m.files.push_back(manifest_file{d.name, d.size, to_hex(d.sha256)});
        }
        for (const auto& l : links) {
            check_name(l.name);
            std::error_code ec;
            auto target = std::filesystem::read_symlink(l.source, ec);
            if (ec) {
                throw std::runtime_error("cannot sign the archive: cannot read the symlink " +
                                         l.source.string() + ": " + ec.message());
            }
            m.symlinks.push_back(manifest_symlink{l.name, target.string()});
        }
        std::vector<generated_file> out;
        auto add = [&](std::string_view name, std::string content) {
            m.files.push_back(manifest_file{std::string(name), content.size(),
                                            to_hex(sha256_of(content))});
            out.push_back(generated_file{std::string(name), std::move(content)});
        };
        if (provenance) {
            std::string statement = provenance_statement(m.files, m.facts);
            std::string statement_sig = sign_message(signer, statement);
            add(provenance_entry, std::move(statement));
            add(provenance_signature_entry, std::move(statement_sig));
        }
        std::string text = canonical_json(m);
        std::string sig = sign_message(signer, text);
        out.push_back(generated_file{std::string(manifest_entry), std::move(text)});
        out.push_back(generated_file{std::string(signature_entry), std::move(sig)});
        return out;
    };
}

// ---------------------------------------------------------------------------------------------
// Verification

verify_result verify_entries(const std::vector<observed_entry>& entries,
                             const std::optional<std::string>& manifest_json,
                             const std::optional<std::string>& signature,
                             const std::vector<key>& keys) {
    verify_result r;
    auto fail = [&](std::string why) {
        r.ok = false;
        r.error = std::move(why);
        return r;
    };
    if (!manifest_json) {
        return fail("the archive is not signed: it has no " + std::string(manifest_entry) +
                    " (was it uploaded by a kiln runner with [runners.signing] key_file set?)");
    }
    if (!signature) {
        return fail("the archive is not signed: it has " + std::string(manifest_entry) +
                    " but no " + std::string(signature_entry));
    }
    if (keys.empty()) {
        return fail("no verification key was given");
    }
    const key* signer = nullptr;
    for (const auto& k : keys) {
        if (verify_message(k, *manifest_json, *signature)) {
            signer = &k;
            break;
        }
    }
    if (signer == nullptr) {
        std::string which = keys.size() == 1 ? "key " + keys[0].id() + " (" + keys[0].source() + ")"
                                             : "any of the " + std::to_string(keys.size()) +
                                                   " keys";
        std::string hint;
        // Unauthenticated, only to say which key the archive claims.
        json j = json::parse(*manifest_json, nullptr, false);
        if (j.is_object() && j.contains("key_id") && j["key_id"].is_string()) {
            std::string claimed = j["key_id"].get<std::string>();
            bool ours = std::any_of(keys.begin(), keys.end(),
                                    [&](const key& k) { return k.id() == claimed; });
            hint = ours ? "; the manifest or its signature was changed after signing"
                        : "; the archive names key " + printable_name(claimed);
        }
        return fail("signature does not match " + which + hint);
    }
    auto parsed = parse_manifest(*manifest_json);
    if (!parsed.value) {
        return fail(parsed.error);
    }
    const manifest& m = *parsed.value;
    if (m.key_id != signer->id()) {
        return fail("the manifest names key " + printable_name(m.key_id) + " but was signed by key " +
                    signer->id());
    }
    r.key_id = signer->id();

    std::map<std::string_view, const manifest_file*> files;
    for (const auto& f : m.files) {
        files.emplace(f.name, &f);
    }
    std::map<std::string_view, const manifest_symlink*> links;
    for (const auto& l : m.symlinks) {
        links.emplace(l.name, &l);
    }
    std::set<std::string_view> seen;
    for (const auto& e : entries) {
        if (e.name == manifest_entry || e.name == signature_entry ||
            e.type == entry_type::directory) {
            continue;
        }
        const std::string name = printable_name(e.name);
        if (!seen.insert(e.name).second) {
            return fail("file " + name + " appears twice in the archive");
        }
        if (e.type == entry_type::file) {
            auto it = files.find(e.name);
            if (it == files.end()) {
                return fail("file " + name + " not in manifest");
            }
            std::string actual = to_hex(e.sha256);
            if (actual != it->second->sha256 || e.size != it->second->size) {
                std::string why = "file " + name + " changed: sha256 " + actual + " != " +
                                  it->second->sha256;
                if (e.size != it->second->size) {
                    why += " (size " + std::to_string(e.size) + " != " +
                           std::to_string(it->second->size) + ")";
                }
                return fail(why);
            }
            if (!is_signing_entry(e.name)) {
                ++r.files;
                r.bytes += e.size;
            }
            r.has_provenance = r.has_provenance || e.name == provenance_entry;
        } else if (e.type == entry_type::symlink) {
            auto it = links.find(e.name);
            if (it == links.end()) {
                return fail("symlink " + name + " not in manifest");
            }
            if (e.link_target != it->second->target) {
                return fail("symlink " + name + " changed: target " + printable_name(e.link_target) +
                            " != " + printable_name(it->second->target));
            }
            ++r.files;
        } else {
            return fail("entry " + name +
                        " is not a file, directory or symlink; signed archives hold no such "
                        "entries");
        }
    }
    for (const auto& f : m.files) {
        if (!seen.contains(f.name)) {
            return fail("file " + printable_name(f.name) + " is in the manifest but not in the archive");
        }
    }
    for (const auto& l : m.symlinks) {
        if (!seen.contains(l.name)) {
            return fail("symlink " + printable_name(l.name) +
                        " is in the manifest but not in the archive");
        }
    }
    r.ok = true;
    r.signed_manifest = std::move(parsed.value);
    return r;
}

verify_result verify_archive(const std::filesystem::path& archive, const std::vector<key>& keys) {
    std::vector<observed_entry> entries;
    std::optional<std::string> manifest_json;
    std::optional<std::string> signature;
    std::string problem;
    try {
        std::vector<char> buf(256 * 1024);
        read_archive(archive, [&](const entry_info& info,
                                  const std::function<std::size_t(std::span<char>)>& read) {
            observed_entry e;
            e.name = info.name;
            e.type = info.type;
            e.link_target = info.link_target;
            if (info.type == entry_type::file) {
                std::string* keep = nullptr;
                std::size_t cap = 0;
                if (info.name == manifest_entry || info.name == signature_entry) {
                    auto& slot = info.name == manifest_entry ? manifest_json : signature;
                    if (slot && problem.empty()) {
                        problem = "the archive has two " + info.name + " entries";
                    }
                    slot.emplace();
                    keep = &*slot;
                    cap = info.name == manifest_entry ? max_manifest : max_signature;
                }
                md_ctx_ptr ctx(EVP_MD_CTX_new());
                if (!ctx || EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) != 1) {
                    throw std::runtime_error("SHA-256 failed: " + openssl_reason());
                }
                for (;;) {
                    std::size_t n = read(std::span<char>(buf.data(), buf.size()));
                    if (n == 0) {
                        break;
                    }
                    EVP_DigestUpdate(ctx.get(), buf.data(), n);
                    e.size += n;
                    if (keep != nullptr) {
                        if (keep->size() + n > cap) {
                            if (problem.empty()) {
                                problem = info.name + " is larger than kiln accepts (" +
                                          std::to_string(cap) + " bytes)";
                            }
                            keep = nullptr;
                        } else {
                            keep->append(buf.data(), n);
                        }
                    }
                }
                unsigned int len = 0;
                EVP_DigestFinal_ex(ctx.get(), e.sha256.data(), &len);
            }
            entries.push_back(std::move(e));
        });
    } catch (const std::exception& ex) {
        verify_result r;
        r.error = std::string("cannot read the archive: ") + ex.what();
        return r;
    }
    if (!problem.empty()) {
        verify_result r;
        r.error = problem;
        return r;
    }
    return verify_entries(entries, manifest_json, signature, keys);
}

}  // namespace kiln::artifacts
