// Signed artifact manifests (runner/artifacts/signing.hpp): canonical form, signatures with both
// key types, and every way verification must fail.

#include <catch2/catch.hpp>

#include <filesystem>
#include <string>
#include <unistd.h>
#include <vector>

#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include <nlohmann/json.hpp>

#include "config/settings.hpp"
#include "runner/artifacts/signing.hpp"
#include "tests/unit/artifacts/archive_test_util.hpp"

using namespace kiln::artifacts;

namespace {

struct pem_pair {
    std::string private_pem;
    std::string public_pem;
};

std::string bio_text(BIO* bio) {
    char* data = nullptr;
    long len = BIO_get_mem_data(bio, &data);
    return std::string(data, static_cast<std::size_t>(len));
}

pem_pair make_pem(const char* type, const char* curve = nullptr) {
    EVP_PKEY* pkey = nullptr;
    if (curve != nullptr) {
        pkey = EVP_PKEY_Q_keygen(nullptr, nullptr, type, curve);
    } else if (std::string_view(type) == "RSA") {
        pkey = EVP_PKEY_Q_keygen(nullptr, nullptr, type, std::size_t{2048});
    } else {
        pkey = EVP_PKEY_Q_keygen(nullptr, nullptr, type);
    }
    REQUIRE(pkey != nullptr);
    BIO* priv = BIO_new(BIO_s_mem());
    BIO* pub = BIO_new(BIO_s_mem());
    REQUIRE(PEM_write_bio_PrivateKey(priv, pkey, nullptr, nullptr, 0, nullptr, nullptr) == 1);
    REQUIRE(PEM_write_bio_PUBKEY(pub, pkey) == 1);
    pem_pair out{bio_text(priv), bio_text(pub)};
    BIO_free(priv);
    BIO_free(pub);
    EVP_PKEY_free(pkey);
    return out;
}

struct key_pair {
    key signer;
    key verifier;
};

key_pair make_keys(key_algorithm a) {
    auto pem = a == key_algorithm::ed25519 ? make_pem("ED25519") : make_pem("EC", "P-256");
    auto s = signing_key_from_pem(pem.private_pem, "signing.pem");
    auto v = verify_key_from_pem(pem.public_pem, "verify.pub.pem");
    REQUIRE(s.value);
    REQUIRE(v.value);
    return {*s.value, *v.value};
}

std::array<unsigned char, 32> sha256(std::string_view data) {
    std::array<unsigned char, 32> out{};
    unsigned int len = 0;
    EVP_Digest(data.data(), data.size(), out.data(), &len, EVP_sha256(), nullptr);
    return out;
}

/// An archive in memory: what the archive engine hands the trailer, and what verification
/// reads back.
struct fake_archive {
    std::vector<std::pair<std::string, std::string>> files;  // name, content

    std::vector<file_digest> digests() const {
        std::vector<file_digest> out;
        for (const auto& [name, content] : files) {
            out.push_back(file_digest{name, content.size(), sha256(content)});
        }
        return out;
    }
};

struct signed_archive {
    std::vector<observed_entry> entries;
    std::optional<std::string> manifest_json;
    std::optional<std::string> signature;
};

observed_entry file_entry(const std::string& name, const std::string& content) {
    observed_entry e;
    e.name = name;
    e.type = entry_type::file;
    e.size = content.size();
    e.sha256 = sha256(content);
    return e;
}

signing_facts sample_facts() {
    signing_facts f;
    f.job_id = 4242;
    f.job_url = "https://gitlab.example.com/group/service/-/jobs/4242";
    f.project = "group/service";
    f.commit_sha = "1f0e2d3c4b5a69788796a5b4c3d2e1f001122334";
    f.ref = "main";
    f.pipeline_id = "77";
    f.image = "golang:1.22";
    f.runner = "t1_abcdef";
    f.created = "2026-11-25T03:00:00Z";
    return f;
}

signed_archive sign_archive(const fake_archive& a, const key& signer, bool provenance = false) {
    auto trailer = make_signing_trailer(signer, sample_facts(), {}, provenance);
    auto generated = trailer(a.digests());
    signed_archive out;
    for (const auto& [name, content] : a.files) {
        out.entries.push_back(file_entry(name, content));
    }
    for (const auto& g : generated) {
        out.entries.push_back(file_entry(g.name, g.content));
        if (g.name == manifest_entry) {
            out.manifest_json = g.content;
        } else if (g.name == signature_entry) {
            out.signature = g.content;
        }
    }
    return out;
}

verify_result check(const signed_archive& s, const key& k) {
    return verify_entries(s.entries, s.manifest_json, s.signature, {k});
}

const fake_archive sample{{
    {"bin/service", std::string("\x7f" "ELF binary bytes", 17)},
    {"bin/tool", "another build output"},
    {"README.md", "# built by kiln\n"},
}};

}  // namespace

TEST_CASE("the manifest's canonical form is sorted, compact and stable", "[artifacts][signing]") {
    manifest m;
    m.algorithm = "ed25519";
    m.key_id = "sha256:" + std::string(64, 'a');
    m.facts = sample_facts();
    m.files = {
        {"z.txt", 3, std::string(64, '1')},
        {"a/b \"q\".bin", 0, std::string(64, '2')},
    };
    m.symlinks = {{"link", "a/b \"q\".bin"}};
    const std::string expected =
        R"({"algorithm":"ed25519","commit_sha":"1f0e2d3c4b5a69788796a5b4c3d2e1f001122334",)"
        R"("created":"2026-11-25T03:00:00Z","files":[{"name":"a/b \"q\".bin","sha256":")" +
        std::string(64, '2') + R"(","size":0},{"name":"z.txt","sha256":")" +
        std::string(64, '1') +
        R"(","size":3}],"image":"golang:1.22","job":{"id":4242,"url":)"
        R"("https://gitlab.example.com/group/service/-/jobs/4242"},"key_id":"sha256:)" +
        std::string(64, 'a') +
        R"(","pipeline_id":"77","project":"group/service","ref":"main","runner":"t1_abcdef",)"
        R"("symlinks":[{"name":"link","target":"a/b \"q\".bin"}],"version":1})";
    CHECK(canonical_json(m) == expected);

    // Input order does not matter.
    std::swap(m.files[0], m.files[1]);
    CHECK(canonical_json(m) == expected);

    // It reads back to the same manifest.
    auto parsed = parse_manifest(expected);
    REQUIRE(parsed.value);
    CHECK(canonical_json(*parsed.value) == expected);
    CHECK(parsed.value->facts.job_id == 4242);
    REQUIRE(parsed.value->files.size() == 2);
    CHECK(parsed.value->files[0].name == "a/b \"q\".bin");
}

TEST_CASE("manifest and provenance are what a JSON library writes for them", "[artifacts][signing]") {
    // The canonical writer must agree with nlohmann::json's sorted, compact dump for any names:
    // quotes, backslashes, control bytes, non-ASCII.
    manifest m;
    m.algorithm = "ecdsa-p256-sha256";
    m.key_id = "sha256:00";
    m.facts = sample_facts();
    m.facts.image = "";
    m.files = {{"tab\there\\\"x\"", 1, std::string(64, 'c')},
               {"ctl\x01\x1f\x7f.bin", 2, std::string(64, 'd')},
               {"gr\xC3\xBC\xC3\x9F/\xE2\x82\xAC \xF0\x9F\x94\x91", 3, std::string(64, 'e')},
               {"a\r\n\b\f", 0, std::string(64, 'f')}};
    m.symlinks = {{"l\"nk", "t\\rget"}};
    auto text = canonical_json(m);
    CHECK(nlohmann::json::parse(text).dump() == text);
    auto statement = provenance_statement(m.files, m.facts);
    CHECK(nlohmann::json::parse(statement).dump() == statement);
    m.facts.commit_sha.clear();
    m.facts.image = "golang:1.22";
    statement = provenance_statement({}, m.facts);
    CHECK(nlohmann::json::parse(statement).dump() == statement);
}

TEST_CASE("a name that is not UTF-8 cannot go into a manifest", "[artifacts][signing]") {
    manifest m;
    m.files = {{"bad\xff.bin", 1, std::string(64, '0')}};
    CHECK_THROWS_AS(canonical_json(m), std::invalid_argument);

    auto keys = make_keys(key_algorithm::ed25519);
    auto trailer = make_signing_trailer(keys.signer, sample_facts(), {}, false);
    try {
        trailer({file_digest{"bad\xff.bin", 1, {}}});
        FAIL("the trailer signed a non-UTF-8 name");
    } catch (const std::runtime_error& e) {
        CHECK(std::string(e.what()).find("is not valid UTF-8; rename it") != std::string::npos);
    }
}

TEST_CASE("parse_manifest rejects what it cannot trust", "[artifacts][signing]") {
    CHECK(parse_manifest("not json").error == "the manifest is not valid: not a JSON object");
    CHECK(parse_manifest(R"({"version":2,"algorithm":"ed25519","key_id":"k","files":[]})").error ==
          "the manifest is not valid: version 2; this kiln reads version 1 (upgrade kiln)");
    CHECK_FALSE(parse_manifest(R"({"version":1,"algorithm":"ed25519","key_id":"k",)"
                               R"("files":[{"name":"a","size":1,"sha256":"xyz"}]})")
                    .value);
    const std::string h(64, 'b');
    CHECK(parse_manifest(R"({"version":1,"algorithm":"ed25519","key_id":"k","files":[)"
                         R"({"name":"a","size":1,"sha256":")" + h + R"("},)"
                         R"({"name":"a","size":1,"sha256":")" + h + R"("}]})")
              .error == "the manifest is not valid: file a is listed twice");
}

TEST_CASE("keys: both algorithms load, the key id is the public key's", "[artifacts][signing]") {
    for (auto a : {key_algorithm::ed25519, key_algorithm::ecdsa_p256}) {
        auto keys = make_keys(a);
        CHECK(keys.signer.algorithm() == a);
        CHECK(keys.verifier.algorithm() == a);
        CHECK(keys.signer.has_private());
        CHECK_FALSE(keys.verifier.has_private());
        CHECK(keys.signer.id() == keys.verifier.id());
        CHECK(keys.signer.id().rfind("sha256:", 0) == 0);
        CHECK(keys.signer.id().size() == 7 + 64);
    }
    CHECK(make_keys(key_algorithm::ed25519).signer.id() !=
          make_keys(key_algorithm::ed25519).signer.id());
}

TEST_CASE("keys: unusable PEM files get a clear error", "[artifacts][signing]") {
    auto missing = load_signing_key("/nonexistent/kiln-signing.pem");
    CHECK_FALSE(missing.value);
    CHECK(missing.error ==
          "cannot read signing key /nonexistent/kiln-signing.pem: No such file or directory");

    auto rsa = make_pem("RSA");
    auto r = signing_key_from_pem(rsa.private_pem, "rsa.pem");
    CHECK_FALSE(r.value);
    CHECK(r.error.rfind("cannot read signing key rsa.pem: a RSA key; kiln signs with Ed25519 or "
                        "ECDSA P-256 keys",
                        0) == 0);

    auto p384 = make_pem("EC", "P-384");
    auto e = verify_key_from_pem(p384.public_pem, "p384.pub.pem");
    CHECK_FALSE(e.value);
    CHECK(e.error == "cannot read verification key p384.pub.pem: an ECDSA key on curve "
                     "secp384r1; kiln signs with Ed25519 or ECDSA P-256 (prime256v1) keys");

    auto ed = make_pem("ED25519");
    auto pub_as_private = signing_key_from_pem(ed.public_pem, "pub.pem");
    CHECK(pub_as_private.error ==
          "cannot read signing key pub.pem: this is a public key; signing needs the private key");

    auto garbage = verify_key_from_pem("hello", "junk.pem");
    CHECK(garbage.error == "cannot read verification key junk.pem: not a PEM file (expected "
                           "-----BEGIN PUBLIC KEY-----)");

    // A private key file serves for verification too (its public half).
    auto from_private = verify_key_from_pem(ed.private_pem, "key.pem");
    REQUIRE(from_private.value);
    CHECK(from_private.value->id() == signing_key_from_pem(ed.private_pem, "k").value->id());
}

TEST_CASE("keys: an encrypted private key is refused without prompting", "[artifacts][signing]") {
    EVP_PKEY* pkey = EVP_PKEY_Q_keygen(nullptr, nullptr, "ED25519");
    BIO* bio = BIO_new(BIO_s_mem());
    REQUIRE(PEM_write_bio_PKCS8PrivateKey(bio, pkey, EVP_aes_256_cbc(), nullptr, 0, nullptr,
                                          const_cast<char*>("secret")) == 1);
    std::string pem = bio_text(bio);
    BIO_free(bio);
    EVP_PKEY_free(pkey);
    auto r = signing_key_from_pem(pem, "enc.pem");
    CHECK_FALSE(r.value);
    CHECK(r.error.rfind("cannot read signing key enc.pem: the key is encrypted", 0) == 0);
}

TEST_CASE("sign and verify round trip with both key types", "[artifacts][signing]") {
    auto a = GENERATE(key_algorithm::ed25519, key_algorithm::ecdsa_p256);
    auto keys = make_keys(a);
    auto s = sign_archive(sample, keys.signer);
    auto r = check(s, keys.verifier);
    INFO(r.error);
    REQUIRE(r.ok);
    CHECK(r.files == 3);
    CHECK(r.bytes == 17 + 20 + 16);
    CHECK(r.key_id == keys.verifier.id());
    REQUIRE(r.signed_manifest);
    CHECK(r.signed_manifest->facts.commit_sha == sample_facts().commit_sha);
    CHECK(r.signed_manifest->algorithm == algorithm_name(a));
    CHECK_FALSE(r.has_provenance);

    // The signature is over the manifest's bytes exactly.
    CHECK(verify_message(keys.verifier, *s.manifest_json, *s.signature));
    if (a == key_algorithm::ed25519) {
        CHECK(s.signature->size() == 64);
    }
}

TEST_CASE("Ed25519 manifests are reproducible byte for byte", "[artifacts][signing]") {
    auto keys = make_keys(key_algorithm::ed25519);
    auto one = sign_archive(sample, keys.signer);
    auto two = sign_archive(sample, keys.signer);
    CHECK(*one.manifest_json == *two.manifest_json);
    CHECK(*one.signature == *two.signature);  // Ed25519 is deterministic
}

TEST_CASE("a changed byte fails verification", "[artifacts][signing]") {
    auto keys = make_keys(key_algorithm::ed25519);
    auto s = sign_archive(sample, keys.signer);
    std::string tampered = "another build outpuT";
    s.entries[1] = file_entry("bin/tool", tampered);
    auto r = check(s, keys.verifier);
    CHECK_FALSE(r.ok);
    CHECK(r.error == "file bin/tool changed: sha256 " + to_hex(sha256(tampered)) + " != " +
                         to_hex(sha256("another build output")));

    s.entries[1] = file_entry("bin/tool", "another build output!");
    r = check(s, keys.verifier);
    CHECK(r.error.find(" (size 21 != 20)") != std::string::npos);
}

TEST_CASE("a wrong key fails verification", "[artifacts][signing]") {
    auto keys = make_keys(key_algorithm::ed25519);
    auto other = make_keys(key_algorithm::ecdsa_p256);
    auto s = sign_archive(sample, keys.signer);
    auto r = check(s, other.verifier);
    CHECK_FALSE(r.ok);
    CHECK(r.error == "signature does not match key " + other.verifier.id() +
                         " (verify.pub.pem); the archive names key " + keys.verifier.id());
    CHECK_FALSE(r.signed_manifest);

    // Several keys: any one that matches is enough (key rotation).
    r = verify_entries(s.entries, s.manifest_json, s.signature, {other.verifier, keys.verifier});
    CHECK(r.ok);
    r = verify_entries(s.entries, s.manifest_json, s.signature,
                       {other.verifier, make_keys(key_algorithm::ed25519).verifier});
    CHECK(r.error.rfind("signature does not match any of the 2 keys", 0) == 0);
}

TEST_CASE("a changed or truncated signature or manifest fails", "[artifacts][signing]") {
    auto a = GENERATE(key_algorithm::ed25519, key_algorithm::ecdsa_p256);
    auto keys = make_keys(a);
    auto s = sign_archive(sample, keys.signer);
    const std::string mismatch = "signature does not match key " + keys.verifier.id() +
                                 " (verify.pub.pem); the manifest or its signature was changed "
                                 "after signing";

    auto truncated = s;
    truncated.signature->pop_back();
    CHECK(check(truncated, keys.verifier).error == mismatch);

    auto empty = s;
    empty.signature->clear();
    CHECK(check(empty, keys.verifier).error == mismatch);

    auto flipped = s;
    (*flipped.signature)[10] = static_cast<char>((*flipped.signature)[10] ^ 1);
    CHECK(check(flipped, keys.verifier).error == mismatch);

    // A manifest edited to match a changed file no longer matches its signature.
    auto edited = s;
    auto pos = edited.manifest_json->find("\"size\":20");
    REQUIRE(pos != std::string::npos);
    edited.manifest_json->replace(pos, 9, "\"size\":21");
    CHECK(check(edited, keys.verifier).error == mismatch);
}

TEST_CASE("missing and extra files fail verification", "[artifacts][signing]") {
    auto keys = make_keys(key_algorithm::ecdsa_p256);
    auto s = sign_archive(sample, keys.signer);

    auto missing = s;
    missing.entries.erase(missing.entries.begin());
    CHECK(check(missing, keys.verifier).error ==
          "file bin/service is in the manifest but not in the archive");

    auto extra = s;
    extra.entries.push_back(file_entry("bin/backdoor", "evil"));
    CHECK(check(extra, keys.verifier).error == "file bin/backdoor not in manifest");

    auto twice = s;
    twice.entries.push_back(file_entry("bin/tool", "another build output"));
    CHECK(check(twice, keys.verifier).error == "file bin/tool appears twice in the archive");

    auto unsigned_archive = s;
    unsigned_archive.manifest_json.reset();
    CHECK(check(unsigned_archive, keys.verifier).error.rfind(
              "the archive is not signed: it has no .kiln/manifest.json", 0) == 0);
    auto no_sig = s;
    no_sig.signature.reset();
    CHECK(check(no_sig, keys.verifier).error ==
          "the archive is not signed: it has .kiln/manifest.json but no .kiln/manifest.sig");

    // Directories carry nothing and are not signed.
    auto with_dir = s;
    observed_entry dir;
    dir.name = "bin/";
    dir.type = entry_type::directory;
    with_dir.entries.insert(with_dir.entries.begin(), dir);
    CHECK(check(with_dir, keys.verifier).ok);
}

TEST_CASE("the provenance statement is signed and covered by the manifest", "[artifacts][signing]") {
    auto keys = make_keys(key_algorithm::ed25519);
    auto trailer = make_signing_trailer(keys.signer, sample_facts(), {}, true);
    auto generated = trailer(sample.digests());
    REQUIRE(generated.size() == 4);
    CHECK(generated[0].name == provenance_entry);
    CHECK(generated[1].name == provenance_signature_entry);
    CHECK(generated[2].name == manifest_entry);
    CHECK(generated[3].name == signature_entry);
    CHECK(verify_message(keys.verifier, generated[0].content, generated[1].content));

    auto statement = nlohmann::json::parse(generated[0].content);
    CHECK(statement["_type"] == "https://in-toto.io/Statement/v1");
    CHECK(statement["predicateType"] == "https://slsa.dev/provenance/v1");
    REQUIRE(statement["subject"].size() == 3);
    CHECK(statement["subject"][0]["name"] == "README.md");
    CHECK(statement["subject"][1]["digest"]["sha256"] == to_hex(sha256(sample.files[0].second)));
    const auto& build = statement["predicate"]["buildDefinition"];
    CHECK(build["resolvedDependencies"][0]["digest"]["gitCommit"] == sample_facts().commit_sha);
    CHECK(build["internalParameters"]["image"] == "golang:1.22");
    CHECK(build["externalParameters"]["job_id"] == 4242);
    CHECK(statement["predicate"]["runDetails"]["metadata"]["invocationId"] ==
          sample_facts().job_url);

    auto s = sign_archive(sample, keys.signer, true);
    auto r = check(s, keys.verifier);
    REQUIRE(r.ok);
    CHECK(r.has_provenance);
    CHECK(r.files == 3);  // the job's files; kiln's own entries are not counted

    // The statement is a signed file like the others.
    for (auto& e : s.entries) {
        if (e.name == provenance_entry) {
            e = file_entry(e.name, "{}");
        }
    }
    CHECK(check(s, keys.verifier).error.rfind("file .kiln/provenance.json changed", 0) == 0);
}

TEST_CASE("a job file with a reserved name cannot be signed", "[artifacts][signing]") {
    auto keys = make_keys(key_algorithm::ed25519);
    auto trailer = make_signing_trailer(keys.signer, sample_facts(), {}, false);
    CHECK_THROWS_WITH(trailer({file_digest{".kiln/manifest.json", 2, {}}}),
                      Catch::Contains("has the name of kiln's signed manifest"));
    CHECK(is_signing_entry(".kiln/manifest.sig"));
    CHECK_FALSE(is_signing_entry(".kiln/other"));
}

TEST_CASE("symlinks are signed with their targets", "[artifacts][signing]") {
    namespace fs = std::filesystem;
    auto dir = fs::temp_directory_path() / ("kiln-signing-test-" + std::to_string(::getpid()));
    fs::remove_all(dir);
    fs::create_directories(dir);
    fs::create_symlink("bin/service", dir / "current");

    auto keys = make_keys(key_algorithm::ed25519);
    std::vector<archive_entry> entries{{"bin/service", dir / "service"}, {"current", dir / "current"}};
    auto trailer = make_signing_trailer(keys.signer, sample_facts(), entries, false);
    auto generated = trailer({file_digest{"bin/service", 3, sha256("abc")}});
    fs::remove_all(dir);

    signed_archive s;
    s.entries.push_back(file_entry("bin/service", "abc"));
    observed_entry link;
    link.name = "current";
    link.type = entry_type::symlink;
    link.link_target = "bin/service";
    s.entries.push_back(link);
    s.manifest_json = generated[0].content;
    s.signature = generated[1].content;
    REQUIRE(check(s, keys.verifier).ok);

    s.entries[1].link_target = "/etc/passwd";
    CHECK(check(s, keys.verifier).error ==
          "symlink current changed: target /etc/passwd != bin/service");
    s.entries.pop_back();
    CHECK(check(s, keys.verifier).error ==
          "symlink current is in the manifest but not in the archive");
}

TEST_CASE("write_zip with the signing trailer makes archives that verify", "[artifacts][signing]") {
    namespace t = kiln::artifacts::testing;
    t::temp_dir tmp;
    auto src = tmp.path / "src";
    t::write_file(src / "bin/service", t::mixed_content(300'000, 1));
    t::write_file(src / "docs/notes.txt", "release notes\n");
    std::filesystem::create_symlink("bin/service", src / "current");
    std::vector<archive_entry> entries{{"bin/", src / "bin"},
                                       {"bin/service", src / "bin/service"},
                                       {"current", src / "current"},
                                       {"docs/notes.txt", src / "docs/notes.txt"}};
    auto keys = make_keys(key_algorithm::ecdsa_p256);
    zip_options options;
    options.threads = 2;
    options.trailer = make_signing_trailer(keys.signer, sample_facts(), entries, true);
    auto signed_zip = tmp.path / "signed.zip";
    write_zip(entries, signed_zip, options);

    auto r = verify_archive(signed_zip, {keys.verifier});
    INFO(r.error);
    REQUIRE(r.ok);
    CHECK(r.files == 3);  // two files and a symlink
    CHECK(r.bytes == 300'000 + 14);
    CHECK(r.has_provenance);

    auto wrong = verify_archive(signed_zip, {make_keys(key_algorithm::ed25519).verifier});
    CHECK(wrong.error.rfind("signature does not match key", 0) == 0);

    // The same archive rebuilt with one changed byte and the original manifest and signature.
    auto kiln_dir = tmp.path / "kiln";
    std::vector<archive_entry> tampered_entries = entries;
    read_archive(signed_zip, [&](const entry_info& info, const auto& read) {
        if (info.name.rfind(".kiln/", 0) != 0) {
            return;
        }
        std::string content;
        char buf[4096];
        for (std::size_t n; (n = read(std::span<char>(buf, sizeof buf))) > 0;) {
            content.append(buf, n);
        }
        t::write_file(kiln_dir / info.name, content);
        tampered_entries.push_back({info.name, kiln_dir / info.name});
    });
    REQUIRE(tampered_entries.size() == entries.size() + 4);
    std::string bytes = t::read_file(src / "bin/service");
    bytes[123'456] = static_cast<char>(bytes[123'456] ^ 0x01);
    t::write_file(src / "bin/service", bytes);
    auto tampered_zip = tmp.path / "tampered.zip";
    write_zip(tampered_entries, tampered_zip, zip_options{});
    auto bad = verify_archive(tampered_zip, {keys.verifier});
    CHECK_FALSE(bad.ok);
    CHECK(bad.error.rfind("file bin/service changed: sha256 ", 0) == 0);

    // A file that is not an archive.
    t::write_file(tmp.path / "junk.zip", "not a zip");
    auto junk = verify_archive(tmp.path / "junk.zip", {keys.verifier});
    CHECK(junk.error.rfind("cannot read the archive: ", 0) == 0);
}

TEST_CASE("load_runner_keys reads [runners.signing] and names a bad file", "[artifacts][signing]") {
    namespace t = kiln::artifacts::testing;
    t::temp_dir tmp;
    auto pem = make_pem("ED25519");
    t::write_file(tmp.path / "sign.pem", pem.private_pem);
    t::write_file(tmp.path / "verify.pub.pem", pem.public_pem);
    kiln::config::signing_settings s;
    s.key_file = (tmp.path / "sign.pem").string();
    s.verify_key_files = {(tmp.path / "verify.pub.pem").string()};
    s.provenance = false;
    auto keys = load_runner_keys(s);
    REQUIRE(keys.error.empty());
    REQUIRE(keys.signer);
    REQUIRE(keys.verifiers.size() == 1);
    CHECK(keys.signer->id() == keys.verifiers[0].id());
    CHECK_FALSE(keys.provenance);

    s.verify_key_files.push_back((tmp.path / "sign.pub.pem").string());
    CHECK(load_runner_keys(s).error == "cannot read verification key " +
                                           (tmp.path / "sign.pub.pem").string() +
                                           ": No such file or directory");
    s.key_file = (tmp.path / "verify.pub.pem").string();
    CHECK(load_runner_keys(s).error.find("this is a public key") != std::string::npos);
}
