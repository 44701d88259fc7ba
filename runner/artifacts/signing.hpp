#pragma once
// Signed artifacts (docs/artifacts.md): every zip archive a signing runner uploads carries a
// manifest of its files (name, size, SHA-256) and a detached signature of that manifest, as the
// archive's last entries. Consumers — a later job's dependency download, `kiln artifacts
// verify`, or plain `openssl` — check the signature and then every file against the manifest.
// Keys are Ed25519 or ECDSA P-256 (SHA-256), PEM, used through OpenSSL 3's EVP interface.
//
// Everything here is pure or blocking file I/O (keys, archives): call the archive functions
// through util::run_blocking.

#include <array>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "runner/artifacts/archive.hpp"

struct evp_pkey_st;  // OpenSSL's EVP_PKEY, kept out of this header

namespace kiln::gitlab {
struct job_spec;
}
namespace kiln::config {
struct signing_settings;
}

namespace kiln::artifacts {

/// The entries kiln appends to a signed archive, in this order. The manifest covers the
/// provenance statement and its signature like any other file.
inline constexpr std::string_view provenance_entry = ".kiln/provenance.json";
inline constexpr std::string_view provenance_signature_entry = ".kiln/provenance.sig";
inline constexpr std::string_view manifest_entry = ".kiln/manifest.json";
inline constexpr std::string_view signature_entry = ".kiln/manifest.sig";

/// True for the names above: a job's own files of these names cannot be archived when signing
/// (the upload stage leaves them out; they are typically left over from an extracted
/// dependency archive).
bool is_signing_entry(std::string_view name);

/// Removes entries with those names from `entries` (a dependency's manifest extracted into
/// the project: the archive being written gets its own); returns how many.
std::size_t drop_signing_entries(std::vector<archive_entry>& entries);

enum class key_algorithm { ed25519, ecdsa_p256 };

/// "ed25519" or "ecdsa-p256-sha256", as written in manifests.
std::string_view algorithm_name(key_algorithm a);

/// An Ed25519 or ECDSA P-256 key, private (can sign) or public only. Cheap to copy (shared).
class key {
public:
    key_algorithm algorithm() const { return algorithm_; }
    /// "sha256:" + hex SHA-256 of the DER SubjectPublicKeyInfo; the same for a private key and
    /// its public key (`openssl pkey -pubout -outform DER | sha256sum`).
    const std::string& id() const { return id_; }
    bool has_private() const { return private_; }
    /// The file it was read from (or the name given), for messages.
    const std::string& source() const { return source_; }

    evp_pkey_st* native() const { return pkey_.get(); }

private:
    friend struct key_loader;
    std::shared_ptr<evp_pkey_st> pkey_;
    key_algorithm algorithm_ = key_algorithm::ed25519;
    std::string id_;
    std::string source_;
    bool private_ = false;
};

struct key_result {
    std::optional<key> value;
    std::string error;  // one line: "cannot read signing key FILE: …", when !value
};

/// A PEM private key (PKCS#8 "PRIVATE KEY" or "EC PRIVATE KEY"), unencrypted.
key_result load_signing_key(const std::filesystem::path& pem_file);
key_result signing_key_from_pem(std::string_view pem, std::string_view source);

/// A PEM public key ("PUBLIC KEY"); a private key file is accepted too (its public half).
key_result load_verify_key(const std::filesystem::path& pem_file);
key_result verify_key_from_pem(std::string_view pem, std::string_view source);

/// The keys of a runner's [runners.signing], read from their files (small, blocking reads).
struct runner_keys {
    std::optional<key> signer;  // key_file
    bool provenance = true;
    std::vector<key> verifiers;  // verify_key_files
    std::string error;           // the first key file that cannot be used, when not empty
};
runner_keys load_runner_keys(const config::signing_settings& settings);

/// Detached signature of `message`: 64 raw bytes for Ed25519, DER ECDSA-Sig-Value over
/// SHA-256(message) for P-256 — what `openssl pkeyutl -sign -rawin` and `openssl dgst -sha256
/// -sign` produce. Throws std::runtime_error if OpenSSL fails (a public-only key, for one).
std::string sign_message(const key& k, std::string_view message);
bool verify_message(const key& k, std::string_view message, std::string_view signature);

/// Lowercase hex of a digest.
std::string to_hex(const std::array<unsigned char, 32>& digest);

/// What a signature vouches for besides the files: where they were built.
struct signing_facts {
    std::int64_t job_id = 0;
    std::string job_url;
    std::string project;     // path with namespace, e.g. "group/service"
    std::string commit_sha;
    std::string ref;
    std::string pipeline_id;
    std::string image;       // the job's image; empty for the shell executor
    std::string runner;      // the runner's short token
    std::string created;     // RFC 3339 UTC; empty: the time the archive is signed
};

/// The facts of a job as GitLab sent it (CI_JOB_URL, CI_PROJECT_PATH, … from its variables).
signing_facts facts_for_job(const gitlab::job_spec& job, std::string_view runner_token);

struct manifest_file {
    std::string name;
    std::uint64_t size = 0;
    std::string sha256;  // lowercase hex
};

struct manifest_symlink {
    std::string name;
    std::string target;
};

struct manifest {
    int version = 1;
    std::string algorithm;  // algorithm_name()
    std::string key_id;     // key::id() of the signer
    signing_facts facts;
    std::vector<manifest_file> files;        // sorted by name (bytes)
    std::vector<manifest_symlink> symlinks;  // sorted by name
};

/// The signed bytes: compact JSON, keys sorted, files and symlinks sorted by name, no trailing
/// newline, so the same inputs always give the same bytes. Throws std::invalid_argument when a
/// name or fact is not valid UTF-8 (JSON cannot carry it faithfully).
std::string canonical_json(const manifest& m);

struct manifest_parse_result {
    std::optional<manifest> value;
    std::string error;
};
manifest_parse_result parse_manifest(std::string_view json);

/// The in-toto Statement (v1, SLSA provenance v1 predicate) for `files` built by `facts`;
/// canonical JSON like the manifest.
std::string provenance_statement(const std::vector<manifest_file>& files,
                                 const signing_facts& facts);

using trailer_function =
    std::function<std::vector<generated_file>(const std::vector<file_digest>&)>;

/// A zip_options::trailer that signs the archive being written: given the digests of its files
/// it returns [provenance.json, provenance.sig (when `provenance`)], manifest.json,
/// manifest.sig. `entries` are the archive's entries; its symlinks are recorded with their
/// targets. Throws std::runtime_error (the upload fails) when a job file uses a reserved
/// .kiln/ name or a name that is not UTF-8.
trailer_function make_signing_trailer(key signer, signing_facts facts,
                                      const std::vector<archive_entry>& entries,
                                      bool provenance = true);

/// One entry of an archive as read back: what verification compares with the manifest.
struct observed_entry {
    std::string name;
    entry_type type = entry_type::other;
    std::uint64_t size = 0;
    std::array<unsigned char, 32> sha256{};  // of a file's bytes
    std::string link_target;
};

struct verify_result {
    bool ok = false;
    std::string error;  // one line, when !ok
    std::optional<manifest> signed_manifest;  // set when the signature was valid
    std::string key_id;                        // the key that verified it
    std::uint64_t files = 0;                   // the job's files (without .kiln/ entries)
    std::uint64_t bytes = 0;
    bool has_provenance = false;
};

/// Checks an archive's signed manifest: the signature is valid for one of `keys`, and the
/// archive holds exactly the manifest's files (same size and SHA-256) and symlinks (same
/// target); directories are not signed and ignored. `manifest_json`/`signature` are nullopt
/// when the archive has no such entry.
verify_result verify_entries(const std::vector<observed_entry>& entries,
                             const std::optional<std::string>& manifest_json,
                             const std::optional<std::string>& signature,
                             const std::vector<key>& keys);

/// Reads `archive` (read_archive: zip or tar), hashing every file, and verifies it as above.
/// A corrupt archive is a failed result, not an exception.
verify_result verify_archive(const std::filesystem::path& archive, const std::vector<key>& keys);

}  // namespace kiln::artifacts
