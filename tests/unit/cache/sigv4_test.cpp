#include "runner/cache/sigv4.hpp"

#include <catch2/catch.hpp>

using namespace kiln::cache::sigv4;

namespace {

// 2015-08-30T12:36:00Z, the time of AWS's SigV4 test suite.
constexpr std::time_t suite_time = 1440938160;
// 2013-05-24T00:00:00Z, the time of S3's documented examples.
constexpr std::time_t s3_doc_time = 1369353600;

const credentials suite_credentials{"AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", ""};
const credentials s3_doc_credentials{"AKIAIOSFODNN7EXAMPLE",
                                     "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", ""};
const std::string empty_sha256 =
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

request suite_request(std::string method, std::vector<std::pair<std::string, std::string>> query) {
    request r;
    r.method = std::move(method);
    r.path = "/";
    r.query = std::move(query);
    r.headers = {{"Host", "example.amazonaws.com"}, {"X-Amz-Date", "20150830T123600Z"}};
    r.payload_hash = empty_sha256;
    return r;
}

}  // namespace

TEST_CASE("SHA-256 and HMAC-SHA256 known answers", "[cache][sigv4]") {
    CHECK(sha256_hex("") == empty_sha256);
    CHECK(sha256_hex("abc") ==
          "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    // RFC 4231 test case 2.
    CHECK(hmac_sha256_hex("Jefe", "what do ya want for nothing?") ==
          "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
}

TEST_CASE("the signing key matches AWS's documented derivation example", "[cache][sigv4]") {
    auto key = signing_key("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "20120215", "us-east-1",
                           "iam");
    std::string hex;
    for (unsigned char c : key) {
        static constexpr char d[] = "0123456789abcdef";
        hex += d[c >> 4];
        hex += d[c & 0xf];
    }
    CHECK(hex == "f4780e2d9f65fa895f9c67b32ce1baf0b0d8a43505a000a1a9e090d414db404d");
}

TEST_CASE("SigV4 test suite: get-vanilla", "[cache][sigv4]") {
    auto r = suite_request("GET", {});
    CHECK(canonical_request(r) ==
          "GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\n"
          "host;x-amz-date\n" + empty_sha256);
    CHECK(sha256_hex(canonical_request(r)) ==
          "bb579772317eb040ac9ed261061d46c1f17a8133879d6129b6e1c25292927e63");
    CHECK(authorization_header(r, suite_credentials, "us-east-1", "service", suite_time) ==
          "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, "
          "SignedHeaders=host;x-amz-date, "
          "Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31");
}

TEST_CASE("SigV4 test suite: get-vanilla-query-order-key-case and post-vanilla",
          "[cache][sigv4]") {
    auto q = suite_request("GET", {{"Param2", "value2"}, {"Param1", "value1"}});
    CHECK(canonical_query(q.query) == "Param1=value1&Param2=value2");
    CHECK(authorization_header(q, suite_credentials, "us-east-1", "service", suite_time)
              .ends_with("Signature=b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500"));
    auto p = suite_request("POST", {});
    CHECK(authorization_header(p, suite_credentials, "us-east-1", "service", suite_time)
              .ends_with("Signature=5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b"));
}

TEST_CASE("S3's documented presigned GET example", "[cache][sigv4]") {
    s3_target t;
    t.server_address = "s3.amazonaws.com";
    t.bucket = "examplebucket";
    auto url = presign(t, s3_doc_credentials, "GET", "test.txt", 86400, s3_doc_time);
    CHECK(url.url ==
          "https://examplebucket.s3.amazonaws.com/test.txt"
          "?X-Amz-Algorithm=AWS4-HMAC-SHA256"
          "&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request"
          "&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host"
          "&X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404");
    CHECK(url.tls);
    CHECK(url.host == "examplebucket.s3.amazonaws.com");
    CHECK(url.port == 443);
    CHECK(url.clean_url == "https://examplebucket.s3.amazonaws.com/test.txt");
    CHECK(url.target.starts_with("/test.txt?X-Amz-Algorithm="));
}

TEST_CASE("the S3 example's canonical request hashes as documented", "[cache][sigv4]") {
    request r;
    r.method = "GET";
    r.path = "/test.txt";
    r.query = {{"X-Amz-Algorithm", "AWS4-HMAC-SHA256"},
               {"X-Amz-Credential", "AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request"},
               {"X-Amz-Date", "20130524T000000Z"},
               {"X-Amz-Expires", "86400"},
               {"X-Amz-SignedHeaders", "host"}};
    r.headers = {{"host", "examplebucket.s3.amazonaws.com"}};
    r.payload_hash = "UNSIGNED-PAYLOAD";
    CHECK(sha256_hex(canonical_request(r)) ==
          "3bfa292879f6447bbcda7001decf97f4a54dc650c8942174ae0a9121cf58ad04");
}

TEST_CASE("path style, ports, http, regions and session tokens", "[cache][sigv4]") {
    s3_target t;
    t.server_address = "127.0.0.1:9000";
    t.bucket = "kiln-cache";
    t.insecure = true;
    credentials c{"S3RVER", "S3RVER", ""};

    SECTION("a custom server is addressed path style, with its port in Host") {
        auto u = presign(t, c, "PUT", "runner/abc/project/7/my key/x", 600, s3_doc_time);
        CHECK_FALSE(u.tls);
        CHECK(u.host == "127.0.0.1");
        CHECK(u.port == 9000);
        CHECK(u.clean_url == "http://127.0.0.1:9000/kiln-cache/runner/abc/project/7/my%20key/x");
        CHECK(u.target.find("X-Amz-Credential=S3RVER%2F20130524%2Fus-east-1%2Fs3%2Faws4_request") !=
              std::string::npos);
        CHECK(u.target.find("X-Amz-Expires=600&") != std::string::npos);
    }
    SECTION("BucketLocation is the signing region") {
        t.region = "eu-central-1";
        auto u = presign(t, c, "GET", "k", 60, s3_doc_time);
        CHECK(u.target.find("%2Feu-central-1%2Fs3%2F") != std::string::npos);
    }
    SECTION("the default port of the scheme is left out of Host") {
        t.server_address = "minio.example:80";
        auto u = presign(t, c, "GET", "k", 60, s3_doc_time);
        CHECK(u.clean_url == "http://minio.example/kiln-cache/k");
    }
    SECTION("a session token is part of the signed query") {
        c.session_token = "token/with+chars";
        auto with = presign(t, c, "GET", "k", 60, s3_doc_time);
        CHECK(with.target.find("X-Amz-Security-Token=token%2Fwith%2Bchars") != std::string::npos);
        c.session_token.clear();
        auto without = presign(t, c, "GET", "k", 60, s3_doc_time);
        CHECK(with.target.substr(with.target.find("X-Amz-Signature=")) !=
              without.target.substr(without.target.find("X-Amz-Signature=")));
    }
    SECTION("PathStyle = false puts the bucket in the host name") {
        t.path_style = false;
        auto u = presign(t, c, "GET", "k", 60, s3_doc_time);
        CHECK(u.host == "kiln-cache.127.0.0.1");
        CHECK(u.clean_url == "http://kiln-cache.127.0.0.1:9000/k");
    }
    SECTION("without ServerAddress: AWS's regional endpoint, virtual host") {
        t.server_address.clear();
        t.insecure = false;
        t.region = "eu-west-1";
        auto u = presign(t, c, "GET", "k", 60, s3_doc_time);
        CHECK(u.clean_url == "https://kiln-cache.s3.eu-west-1.amazonaws.com/k");
    }
    SECTION("expiry is clamped to S3's limits") {
        auto u = presign(t, c, "GET", "k", 30 * 24 * 3600, s3_doc_time);
        CHECK(u.target.find("X-Amz-Expires=604800&") != std::string::npos);
    }
    SECTION("IPv6 literals keep their brackets in Host") {
        t.server_address = "[::1]:9000";
        auto u = presign(t, c, "GET", "k", 60, s3_doc_time);
        CHECK(u.host == "::1");
        CHECK(u.clean_url == "http://[::1]:9000/kiln-cache/k");
    }
}

TEST_CASE("virtual-host auto-detection follows minio-go", "[cache][sigv4]") {
    CHECK(virtual_host_supported("s3.amazonaws.com", true, "bucket"));
    CHECK(virtual_host_supported("s3.eu-west-1.amazonaws.com", true, "bucket"));
    CHECK_FALSE(virtual_host_supported("s3.amazonaws.com", true, "my.bucket"));
    CHECK(virtual_host_supported("s3.amazonaws.com", false, "my.bucket"));
    CHECK(virtual_host_supported("storage.googleapis.com", true, "b"));
    CHECK_FALSE(virtual_host_supported("minio.internal", true, "b"));
    CHECK_FALSE(virtual_host_supported("127.0.0.1", false, "b"));
}

TEST_CASE("URI encoding", "[cache][sigv4]") {
    CHECK(uri_encode("a b/c~d_e-f.g", true) == "a%20b/c~d_e-f.g");
    CHECK(uri_encode("a b/c", false) == "a%20b%2Fc");
    CHECK(uri_encode("\xc3\xa9", false) == "%C3%A9");
    CHECK(amz_date(s3_doc_time) == "20130524T000000Z");
}
