#pragma once
// AWS Signature Version 4 (HMAC-SHA256 over a canonical request, with OpenSSL) and the S3
// presigned GET/PUT URLs the distributed cache uses. Pure: the time is a parameter.
// References: AWS's "Signature Version 4 signing process" and S3's "Authenticating Requests:
// Using Query Parameters"; tested against their published examples.

#include <cstdint>
#include <ctime>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace kiln::cache::sigv4 {

/// Lower-case hex SHA-256 of `data`.
std::string sha256_hex(std::string_view data);

/// Lower-case hex of HMAC-SHA256(key, data).
std::string hmac_sha256_hex(std::string_view key, std::string_view data);

/// RFC 3986 percent-encoding as SigV4 wants it: unreserved characters (A-Z a-z 0-9 - _ . ~)
/// stay, everything else is %XX (upper-case hex); '/' stays only when `keep_slash`.
std::string uri_encode(std::string_view s, bool keep_slash);

/// "20130524T000000Z" for a UTC time.
std::string amz_date(std::time_t t);

struct credentials {
    std::string access_key;
    std::string secret_key;
    std::string session_token;  // temporary credentials; empty otherwise
};

/// The key derived from the secret for one day, region and service
/// (kSigning = HMAC(HMAC(HMAC(HMAC("AWS4"+secret, date), region), service), "aws4_request")),
/// as raw bytes.
std::string signing_key(std::string_view secret, std::string_view yyyymmdd,
                        std::string_view region, std::string_view service);

/// A request as SigV4 sees it. Query parameters and header values are given unencoded; the
/// canonical forms are built here.
struct request {
    std::string method;
    std::string path = "/";  // already URI-encoded, as sent
    std::vector<std::pair<std::string, std::string>> query;
    std::vector<std::pair<std::string, std::string>> headers;  // must include host
    std::string payload_hash;  // hex SHA-256 of the body, or "UNSIGNED-PAYLOAD"
};

std::string canonical_query(const std::vector<std::pair<std::string, std::string>>& query);
std::string canonical_request(const request& r);
std::string signed_headers(const request& r);  // "host;x-amz-date"
std::string string_to_sign(std::string_view amz_date, std::string_view scope,
                           std::string_view canonical_request);

/// Signs `r` with an Authorization header (the form the SigV4 test suite uses); `r` must carry
/// x-amz-date. Returns the header value.
std::string authorization_header(const request& r, const credentials& c, std::string_view region,
                                 std::string_view service, std::time_t now);

/// Where the distributed cache lives ([runners.cache.s3]).
struct s3_target {
    std::string server_address;  // "host", "host:port", or empty for AWS itself
    std::string bucket;
    std::string region;          // BucketLocation; empty means us-east-1
    bool insecure = false;       // http instead of https
    std::optional<bool> path_style;  // unset: path style unless the endpoint is AWS or Google
};

struct presigned_url {
    bool tls = true;
    std::string host;        // the Host header / TLS name (may be "bucket.host")
    std::uint16_t port = 0;
    std::string target;      // "/bucket/object?X-Amz-..." (origin form)
    std::string url;         // the whole URL
    std::string clean_url;   // without the query (what a trace may show)
};

/// A presigned URL for `method` ("GET", "PUT" or "HEAD") on `object` (unencoded, '/'-separated)
/// valid `expires_seconds` (1 s … 7 days) from `now`. Only the host header is signed and the
/// payload is UNSIGNED-PAYLOAD, as S3's presigned URLs are.
presigned_url presign(const s3_target& target, const credentials& c, std::string_view method,
                      std::string_view object, std::int64_t expires_seconds, std::time_t now);

/// minio-go's IsVirtualHostSupported, which gitlab-runner's PathStyle auto-detection uses:
/// AWS and Google endpoints take bucket.host, except a dotted bucket over https.
bool virtual_host_supported(std::string_view host, bool tls, std::string_view bucket);

}  // namespace kiln::cache::sigv4
