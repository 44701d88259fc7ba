#include "runner/net/tls.hpp"

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <map>
#include <mutex>
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

// Identifies a file's current content well enough to notice a replaced or rewritten file.
std::string file_identity(const std::string& path) {
    if (path.empty()) {
        return "-";
    }
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) {
        return path + "?";  // unreadable: no context is cached for it (loading throws)
    }
    return path + "|" + std::to_string(st.st_dev) + ":" + std::to_string(st.st_ino) + "|" +
           std::to_string(st.st_size) + "|" + std::to_string(st.st_mtim.tv_sec) + "." +
           std::to_string(st.st_mtim.tv_nsec);
}

std::shared_ptr<SSL_CTX> load_client_tls_context(const tls_settings& s) {
    std::shared_ptr<SSL_CTX> ctx(::SSL_CTX_new(::TLS_client_method()), ::SSL_CTX_free);
    if (!ctx) {
        throw std::runtime_error("cannot create a TLS context: " + last_openssl_error());
    }
    SSL_CTX* native = ctx.get();
    ::SSL_CTX_set_min_proto_version(native, TLS1_2_VERSION);
    ::SSL_CTX_set_verify(native, SSL_VERIFY_PEER, nullptr);
    // Idle kept-alive connections (one per held long poll) then hold no record buffers.
    ::SSL_CTX_set_mode(native, SSL_MODE_RELEASE_BUFFERS);

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

}  // namespace

std::shared_ptr<SSL_CTX> make_client_tls_context(const tls_settings& s) {
    static std::mutex mutex;
    static std::map<std::string, std::weak_ptr<SSL_CTX>> cache;
    const std::string key = file_identity(s.ca_file) + "\n" + file_identity(s.cert_file) +
                            "\n" + file_identity(s.key_file);
    std::lock_guard lock(mutex);
    for (auto it = cache.begin(); it != cache.end();) {
        it = it->second.expired() ? cache.erase(it) : std::next(it);
    }
    if (auto it = cache.find(key); it != cache.end()) {
        if (auto ctx = it->second.lock()) {
            return ctx;
        }
    }
    auto ctx = load_client_tls_context(s);
    cache[key] = ctx;
    return ctx;
}

}  // namespace kiln::net
