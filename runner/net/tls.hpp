#pragma once
// TLS client configuration for connections to GitLab (and later the Docker engine over TCP).

#include <memory>
#include <string>

struct ssl_ctx_st;  // OpenSSL's SSL_CTX

namespace kiln::net {

struct tls_settings {
    std::string ca_file;    // trusted in addition to the system store (tls-ca-file)
    std::string cert_file;  // client certificate chain, PEM (tls-cert-file)
    std::string key_file;   // its private key, PEM (tls-key-file)
};

/// A client context that verifies the peer against the system store plus `ca_file`, and
/// presents a client certificate when both cert and key are given. Host name verification is
/// set per connection. Throws std::runtime_error naming the file and OpenSSL's reason when a
/// file cannot be used.
///
/// Contexts are shared: callers asking for the same files get the same context while any of
/// them holds it (50 runner entries with one CA load it once). A file that changed since (size,
/// mtime or inode) gives a fresh context, so a renewed CA or certificate is picked up.
std::shared_ptr<ssl_ctx_st> make_client_tls_context(const tls_settings& settings);

/// OpenSSL's reason for the most recent failure on this thread, e.g. "no such file"; empty when
/// the error queue is empty. Clears the queue.
std::string last_openssl_error();

}  // namespace kiln::net
