#pragma once
// Throw-away TLS material for tests, made once and kept in the build tree.

#include <filesystem>
#include <string>

namespace kiln::test {

struct cert_paths {
    std::string ca;          // test CA
    std::string server;      // signed by ca; SAN IP:127.0.0.1, IP:::1, DNS:localhost
    std::string server_key;
    std::string client;      // signed by ca, clientAuth
    std::string client_key;
    std::string other_ca;    // an unrelated CA
    std::string wrong_name;  // signed by ca, SAN DNS:other.example only
    std::string wrong_name_key;
};

/// Runs tests/emulator/make_certs.sh (idempotent, locked) into `dir`, plus a server certificate
/// for a name no test connects to. Throws when openssl fails.
cert_paths make_test_certs(const std::filesystem::path& dir);

/// make_test_certs(KILN_TEST_CERTS_DIR), once per process.
const cert_paths& test_certs();

/// A fresh directory under the system temp dir, removed with everything in it on destruction.
class temp_dir {
public:
    temp_dir();
    ~temp_dir();
    temp_dir(const temp_dir&) = delete;
    temp_dir& operator=(const temp_dir&) = delete;
    const std::filesystem::path& path() const { return path_; }
    std::filesystem::path operator/(const std::string& name) const { return path_ / name; }

private:
    std::filesystem::path path_;
};

}  // namespace kiln::test
