#include "runner/cache/sigv4.hpp"

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <stdexcept>

namespace kiln::cache::sigv4 {
namespace {

constexpr char hex_digits[] = "0123456789abcdef";

std::string to_hex(const unsigned char* p, std::size_t n) {
    std::string out;
    out.reserve(n * 2);
    for (std::size_t i = 0; i < n; ++i) {
        out += hex_digits[p[i] >> 4];
        out += hex_digits[p[i] & 0xf];
    }
    return out;
}

std::string hmac_raw(std::string_view key, std::string_view data) {
    std::array<unsigned char, EVP_MAX_MD_SIZE> mac{};
    unsigned int len = 0;
    if (HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
             reinterpret_cast<const unsigned char*>(data.data()), data.size(), mac.data(),
             &len) == nullptr) {
        throw std::runtime_error("HMAC-SHA256 failed");  // only without a usable libcrypto
    }
    return std::string(reinterpret_cast<const char*>(mac.data()), len);
}

std::string lower(std::string_view s) {
    std::string out(s);
    std::transform(out.begin(), out.end(), out.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    return out;
}

// Header values: leading/trailing spaces trimmed, inner runs of spaces collapsed to one.
std::string canonical_value(std::string_view v) {
    std::string out;
    bool space = false;
    for (char c : v) {
        if (c == ' ' || c == '\t') {
            space = !out.empty();
            continue;
        }
        if (space) {
            out += ' ';
            space = false;
        }
        out += c;
    }
    return out;
}

std::vector<std::pair<std::string, std::string>> sorted_headers(const request& r) {
    std::vector<std::pair<std::string, std::string>> h;
    for (const auto& [k, v] : r.headers) {
        h.emplace_back(lower(k), canonical_value(v));
    }
    std::stable_sort(h.begin(), h.end(),
                     [](const auto& a, const auto& b) { return a.first < b.first; });
    // Repeated names become one comma-separated value.
    std::vector<std::pair<std::string, std::string>> merged;
    for (auto& [k, v] : h) {
        if (!merged.empty() && merged.back().first == k) {
            merged.back().second += "," + v;
        } else {
            merged.emplace_back(std::move(k), std::move(v));
        }
    }
    return merged;
}

std::string scope_of(std::string_view date8, std::string_view region, std::string_view service) {
    std::string s(date8);
    s += '/';
    s += region;
    s += '/';
    s += service;
    s += "/aws4_request";
    return s;
}

struct endpoint {
    std::string host;  // without brackets
    std::uint16_t port = 0;
    bool explicit_port = false;
};

endpoint split_server_address(std::string_view address, bool tls) {
    endpoint e;
    e.port = tls ? 443 : 80;
    std::string_view host = address;
    std::string_view port;
    if (!address.empty() && address.front() == '[') {
        auto close = address.find(']');
        if (close != std::string_view::npos) {
            host = address.substr(1, close - 1);
            if (close + 1 < address.size() && address[close + 1] == ':') {
                port = address.substr(close + 2);
            }
        }
    } else if (auto colon = address.rfind(':'); colon != std::string_view::npos &&
                                                address.find(':') == colon) {
        host = address.substr(0, colon);
        port = address.substr(colon + 1);
    }
    e.host = std::string(host);
    if (!port.empty() && std::all_of(port.begin(), port.end(),
                                     [](unsigned char c) { return std::isdigit(c); })) {
        unsigned long p = std::stoul(std::string(port));
        if (p > 0 && p < 65536) {
            e.port = static_cast<std::uint16_t>(p);
            e.explicit_port = true;
        }
    }
    return e;
}

bool ends_with(std::string_view s, std::string_view suffix) {
    return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

}  // namespace

std::string sha256_hex(std::string_view data) {
    std::array<unsigned char, EVP_MAX_MD_SIZE> md{};
    unsigned int len = 0;
    if (EVP_Digest(data.data(), data.size(), md.data(), &len, EVP_sha256(), nullptr) != 1) {
        throw std::runtime_error("SHA-256 failed");
    }
    return to_hex(md.data(), len);
}

std::string hmac_sha256_hex(std::string_view key, std::string_view data) {
    auto raw = hmac_raw(key, data);
    return to_hex(reinterpret_cast<const unsigned char*>(raw.data()), raw.size());
}

std::string uri_encode(std::string_view s, bool keep_slash) {
    static constexpr char upper_hex[] = "0123456789ABCDEF";
    std::string out;
    out.reserve(s.size());
    for (unsigned char c : s) {
        if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~' ||
            (keep_slash && c == '/')) {
            out += static_cast<char>(c);
        } else {
            out += '%';
            out += upper_hex[c >> 4];
            out += upper_hex[c & 0xf];
        }
    }
    return out;
}

std::string amz_date(std::time_t t) {
    std::tm tm{};
    gmtime_r(&t, &tm);
    char buf[32];
    std::strftime(buf, sizeof buf, "%Y%m%dT%H%M%SZ", &tm);
    return buf;
}

std::string signing_key(std::string_view secret, std::string_view yyyymmdd,
                        std::string_view region, std::string_view service) {
    auto k_date = hmac_raw("AWS4" + std::string(secret), yyyymmdd);
    auto k_region = hmac_raw(k_date, region);
    auto k_service = hmac_raw(k_region, service);
    return hmac_raw(k_service, "aws4_request");
}

std::string canonical_query(const std::vector<std::pair<std::string, std::string>>& query) {
    std::vector<std::pair<std::string, std::string>> enc;
    enc.reserve(query.size());
    for (const auto& [k, v] : query) {
        enc.emplace_back(uri_encode(k, false), uri_encode(v, false));
    }
    std::sort(enc.begin(), enc.end());
    std::string out;
    for (const auto& [k, v] : enc) {
        if (!out.empty()) {
            out += '&';
        }
        out += k;
        out += '=';
        out += v;
    }
    return out;
}

std::string signed_headers(const request& r) {
    std::string out;
    for (const auto& [k, v] : sorted_headers(r)) {
        if (!out.empty()) {
            out += ';';
        }
        out += k;
    }
    return out;
}

std::string canonical_request(const request& r) {
    std::string out = r.method + "\n" + (r.path.empty() ? std::string("/") : r.path) + "\n" +
                      canonical_query(r.query) + "\n";
    for (const auto& [k, v] : sorted_headers(r)) {
        out += k + ":" + v + "\n";
    }
    out += "\n" + signed_headers(r) + "\n" + r.payload_hash;
    return out;
}

std::string string_to_sign(std::string_view date, std::string_view scope,
                           std::string_view canonical) {
    std::string out = "AWS4-HMAC-SHA256\n";
    out += date;
    out += '\n';
    out += scope;
    out += '\n';
    out += sha256_hex(canonical);
    return out;
}

std::string authorization_header(const request& r, const credentials& c, std::string_view region,
                                 std::string_view service, std::time_t now) {
    const auto date = amz_date(now);
    const auto scope = scope_of(date.substr(0, 8), region, service);
    const auto sts = string_to_sign(date, scope, canonical_request(r));
    const auto key = signing_key(c.secret_key, date.substr(0, 8), region, service);
    return "AWS4-HMAC-SHA256 Credential=" + c.access_key + "/" + scope +
           ", SignedHeaders=" + signed_headers(r) + ", Signature=" + hmac_sha256_hex(key, sts);
}

bool virtual_host_supported(std::string_view host, bool tls, std::string_view bucket) {
    if (tls && bucket.find('.') != std::string_view::npos) {
        return false;  // bucket.with.dots.host would not match the certificate
    }
    const auto h = lower(host);
    return h == "s3.amazonaws.com" || ends_with(h, ".amazonaws.com") ||
           ends_with(h, ".amazonaws.com.cn") || h == "storage.googleapis.com" ||
           ends_with(h, ".aliyuncs.com");
}

presigned_url presign(const s3_target& target, const credentials& c, std::string_view method,
                      std::string_view object, std::int64_t expires_seconds, std::time_t now) {
    const std::string region = target.region.empty() ? "us-east-1" : target.region;
    const bool tls = !target.insecure;
    endpoint ep;
    bool path_style = false;
    if (target.server_address.empty()) {
        // AWS itself, regional endpoint, bucket in the host name unless told otherwise.
        ep.host = "s3." + region + ".amazonaws.com";
        ep.port = tls ? 443 : 80;
        path_style = target.path_style.value_or(false);
    } else {
        ep = split_server_address(target.server_address, tls);
        path_style = target.path_style.value_or(!virtual_host_supported(ep.host, tls,
                                                                        target.bucket));
    }

    presigned_url out;
    out.tls = tls;
    out.port = ep.port;
    out.host = path_style ? ep.host : target.bucket + "." + ep.host;
    std::string host_header =
        out.host.find(':') != std::string::npos ? "[" + out.host + "]" : out.host;
    if (ep.port != (tls ? 443 : 80)) {
        host_header += ":" + std::to_string(ep.port);
    }

    std::string path = "/";
    if (path_style) {
        path += uri_encode(target.bucket, false) + "/";
    }
    path += uri_encode(object, true);

    const auto date = amz_date(now);
    const auto scope = scope_of(date.substr(0, 8), region, "s3");
    expires_seconds = std::clamp<std::int64_t>(expires_seconds, 1, 7 * 24 * 3600);

    request r;
    r.method = std::string(method);
    r.path = path;
    r.query = {
        {"X-Amz-Algorithm", "AWS4-HMAC-SHA256"},
        {"X-Amz-Credential", c.access_key + "/" + scope},
        {"X-Amz-Date", date},
        {"X-Amz-Expires", std::to_string(expires_seconds)},
        {"X-Amz-SignedHeaders", "host"},
    };
    if (!c.session_token.empty()) {
        r.query.emplace_back("X-Amz-Security-Token", c.session_token);
    }
    r.headers = {{"host", host_header}};
    r.payload_hash = "UNSIGNED-PAYLOAD";

    const auto sts = string_to_sign(date, scope, canonical_request(r));
    const auto signature =
        hmac_sha256_hex(signing_key(c.secret_key, date.substr(0, 8), region, "s3"), sts);

    out.target = path + "?" + canonical_query(r.query) + "&X-Amz-Signature=" + signature;
    const std::string scheme = tls ? "https://" : "http://";
    out.clean_url = scheme + host_header + path;
    out.url = scheme + host_header + out.target;
    return out;
}

}  // namespace kiln::cache::sigv4
