#include "runner/net/tls.hpp"

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <unistd.h>

#include <boost/asio/ssl/context.hpp>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <stdexcept>

namespace kiln::net {

std::string last_openssl_error() {
    std::string out;
    while (unsigned long e = ::ERR_get_error()) {
        const char* reason = ::ERR_reason_error_string(e);
        if (!out.empty()) {
            out += "; ";
        }
        out += reason != nullptr ? reason : "unknown OpenSSL error";
    }
    return out;
}

namespace {

// OpenSSL reports a missing file as "system lib"; say it the way an operator reads it.
void require_readable(const std::string& path, const char* key) {
    if (::access(path.c_str(), R_OK) != 0) {
        throw std::runtime_error(std::string("cannot read ") + key + " " + path + ": " +
                                 std::strerror(errno));
    }
}

bool is_system_bundle(const char* path) {
    std::error_code a;
    std::error_code b;
    auto given = std::filesystem::canonical(path, a);
    auto system = std::filesystem::canonical(X509_get_default_cert_file(), b);
    return !a && !b && given == system;
}

}  // namespace

std::shared_ptr<boost::asio::ssl::context> make_client_tls_context(const tls_settings& s) {
    namespace ssl = boost::asio::ssl;
    auto ctx = std::make_shared<ssl::context>(ssl::context::tls_client);
    SSL_CTX* native = ctx->native_handle();
    ::SSL_CTX_set_min_proto_version(native, TLS1_2_VERSION);
    ctx->set_verify_mode(ssl::verify_peer);

    // The hashed certificate directory is searched lazily per issuer, so trusting the system
    // store costs nothing until a certificate needs it; loading the whole bundle file eagerly
    // costs about 1 MiB of memory per context. SSL_CERT_FILE/SSL_CERT_DIR are honoured; an
    // SSL_CERT_FILE that is the distribution's bundle adds nothing the directory lacks.
    ::ERR_clear_error();
    const char* file_env = std::getenv(X509_get_default_cert_file_env());
    if (file_env != nullptr && *file_env != '\0' && !is_system_bundle(file_env)) {
        ::SSL_CTX_load_verify_file(native, file_env);
    }
    const char* dir_env = std::getenv(X509_get_default_cert_dir_env());
    ::SSL_CTX_load_verify_dir(native, dir_env != nullptr && *dir_env != '\0'
                                          ? dir_env
                                          : X509_get_default_cert_dir());
    ::ERR_clear_error();

    if (!s.ca_file.empty()) {
        require_readable(s.ca_file, "tls-ca-file");
        if (::SSL_CTX_load_verify_file(native, s.ca_file.c_str()) != 1) {
            throw std::runtime_error("cannot use tls-ca-file " + s.ca_file + ": " +
                                     last_openssl_error());
        }
    }
    if (!s.cert_file.empty() || !s.key_file.empty()) {
        if (s.cert_file.empty() || s.key_file.empty()) {
            throw std::runtime_error(
                "tls-cert-file and tls-key-file must be given together for a client certificate"
            );
        }
        require_readable(s.cert_file, "tls-cert-file");
        require_readable(s.key_file, "tls-key-file");
        if (::SSL_CTX_use_certificate_chain_file(native, s.cert_file.c_str()) != 1) {
            throw std::runtime_error("cannot use tls-cert-file " + s.cert_file + ": " +
                                     last_openssl_error());
        }
        if (::SSL_CTX_use_PrivateKey_file(native, s.key_file.c_str(), SSL_FILETYPE_PEM) != 1) {
            throw std::runtime_error("cannot use tls-key-file " + s.key_file + ": " +
                                     last_openssl_error());
        }
        if (::SSL_CTX_check_private_key(native) != 1) {
            throw std::runtime_error("tls-key-file " + s.key_file +
                                     " does not match tls-cert-file " + s.cert_file);
        }
    }
    return ctx;
}

}  // namespace kiln::net
