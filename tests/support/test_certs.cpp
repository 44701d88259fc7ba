#include "tests/support/test_certs.hpp"

#include <cerrno>
#include <cstdlib>
#include <stdexcept>
#include <system_error>

namespace kiln::test {
namespace {

std::string quoted(const std::filesystem::path& p) {
    std::string out = "'";
    for (char c : p.string()) {
        out += c == '\'' ? std::string("'\\''") : std::string(1, c);
    }
    return out + "'";
}

void run(const std::string& command) {
    if (std::system(command.c_str()) != 0) {
        throw std::runtime_error("test certificates: command failed: " + command);
    }
}

}  // namespace

cert_paths make_test_certs(const std::filesystem::path& dir) {
    auto f = [&](const char* name) { return (dir / name).string(); };
    cert_paths paths{f("ca.pem"),         f("server.pem"),     f("server-key.pem"),
                     f("client.pem"),     f("client-key.pem"), f("other-ca.pem"),
                     f("wrong-name.pem"), f("wrong-name-key.pem")};
    // Both scripts below move finished files into place last, so when every file is there the
    // set is complete; this saves two shell runs in every test process (ctest runs one per case).
    const auto complete = [&] {
        for (const auto* name :
             {"ca.pem", "ca-key.pem", "server.pem", "server-key.pem", "client.pem",
              "client-key.pem", "other-ca.pem", "other-ca-key.pem", "wrong-name.pem",
              "wrong-name-key.pem"}) {
            std::error_code ec;
            if (std::filesystem::file_size(dir / name, ec) == 0 || ec) {
                return false;
            }
        }
        return true;
    };
    if (complete()) {
        return paths;
    }
    std::filesystem::create_directories(dir);
    run("bash " + quoted(std::filesystem::path(KILN_SOURCE_DIR) / "tests/emulator/make_certs.sh") +
        " " + quoted(dir));
    // make_certs.sh has no certificate for a name other than localhost; a hostname-mismatch
    // test needs one. Locked, like make_certs.sh, because ctest runs test cases in parallel.
    const auto d = quoted(dir);
    run("cd " + d +
        " && flock .wrong_name.lock sh -c '"
        "test -s wrong-name.pem &&"
        " openssl verify -CAfile ca.pem wrong-name.pem >/dev/null 2>&1 || {"
        " openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
        " -keyout wrong-name-key.pem -out wrong-name.csr -subj /CN=other.example 2>/dev/null &&"
        " printf \"subjectAltName=DNS:other.example\\nextendedKeyUsage=serverAuth\\n\""
        " > wrong-name.ext &&"
        " openssl x509 -req -in wrong-name.csr -CA ca.pem -CAkey ca-key.pem"
        " -set_serial 0x$(openssl rand -hex 16) -days 825 -sha256 -extfile wrong-name.ext"
        " -out wrong-name.tmp 2>/dev/null &&"
        " mv wrong-name.tmp wrong-name.pem && rm -f wrong-name.csr wrong-name.ext; }'");
    return paths;
}

const cert_paths& test_certs() {
    static const cert_paths paths = make_test_certs(KILN_TEST_CERTS_DIR);
    return paths;
}

temp_dir::temp_dir() {
    auto base = std::filesystem::temp_directory_path();
    std::string pattern = (base / "kiln-test-XXXXXX").string();
    if (::mkdtemp(pattern.data()) == nullptr) {
        throw std::system_error(errno, std::generic_category(), "mkdtemp " + pattern);
    }
    path_ = pattern;
}

temp_dir::~temp_dir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
}

}  // namespace kiln::test
