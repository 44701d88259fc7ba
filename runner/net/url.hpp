#pragma once
// Splitting a configured GitLab URL into what the transport needs. Pure.

#include <cstdint>
#include <string>
#include <string_view>
#include <variant>

namespace kiln::net {

struct origin {
    bool tls = false;
    std::string host;  // without brackets for IPv6 literals
    std::uint16_t port = 0;

    /// "https://host:port" with brackets around IPv6 literals; the form Host headers and
    /// messages use.
    std::string to_string() const;
    /// Host header value: host, plus ":port" when not the scheme's default.
    std::string host_header() const;
    bool operator==(const origin&) const = default;
};

struct base_url {
    net::origin origin;
    std::string path;  // without a trailing '/', e.g. "" or "/gitlab"
};

struct url_error {
    std::string message;  // says what is wrong and what is expected
};

/// Parses an absolute http(s) URL. Anything else (other schemes, no host, user info, a bad
/// port) is an error saying what is expected.
std::variant<base_url, url_error> parse_base_url(std::string_view text);

/// gitlab-runner's fixCIURL: strips trailing '/' and a trailing "/ci", so "https://h/ci/" and
/// "https://h" name the same instance; the API lives at path + "/api/v4".
std::variant<base_url, url_error> parse_gitlab_url(std::string_view text);

/// Splits an absolute URL (e.g. a redirect Location) into origin and target ("/path?query").
std::variant<std::pair<origin, std::string>, url_error> split_absolute_url(std::string_view text);

/// Percent-encodes a query parameter value (everything but RFC 3986 unreserved characters).
std::string query_escape(std::string_view value);

}  // namespace kiln::net
