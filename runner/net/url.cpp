#include "runner/net/url.hpp"

#include <boost/url/parse.hpp>
#include <boost/url/encode.hpp>
#include <boost/url/rfc/unreserved_chars.hpp>
#include <boost/url/url_view.hpp>

namespace kiln::net {
namespace {

std::variant<std::pair<origin, boost::urls::url_view>, url_error> split(std::string_view text) {
    auto parsed = boost::urls::parse_absolute_uri(text);
    if (!parsed) {
        return url_error{"\"" + std::string(text) +
                         "\" is not a valid URL; expected e.g. https://gitlab.example.com"};
    }
    const auto& u = *parsed;
    origin o;
    if (u.scheme_id() == boost::urls::scheme::https) {
        o.tls = true;
    } else if (u.scheme_id() != boost::urls::scheme::http) {
        return url_error{"URL \"" + std::string(text) + "\" has scheme \"" +
                         std::string(u.scheme()) + "\"; only http and https are supported"};
    }
    if (!u.has_authority() || u.encoded_host().empty()) {
        return url_error{"URL \"" + std::string(text) + "\" has no host"};
    }
    if (u.has_userinfo()) {
        return url_error{"URL \"" + std::string(text) +
                         "\" contains credentials; put the token in --token instead"};
    }
    if (u.host_type() == boost::urls::host_type::ipv6) {
        o.host = u.host_ipv6_address().to_string();
    } else {
        o.host = u.host();
    }
    if (u.has_port()) {
        if (u.port().empty() || u.port_number() == 0) {
            return url_error{"URL \"" + std::string(text) + "\" has an invalid port"};
        }
        o.port = u.port_number();
    } else {
        o.port = o.tls ? 443 : 80;
    }
    return std::pair{o, u};
}

}  // namespace

std::string origin::to_string() const {
    std::string h = host.find(':') != std::string::npos ? "[" + host + "]" : host;
    return std::string(tls ? "https://" : "http://") + h + ":" + std::to_string(port);
}

std::string origin::host_header() const {
    std::string h = host.find(':') != std::string::npos ? "[" + host + "]" : host;
    if ((tls && port == 443) || (!tls && port == 80)) {
        return h;
    }
    return h + ":" + std::to_string(port);
}

std::variant<base_url, url_error> parse_base_url(std::string_view text) {
    auto r = split(text);
    if (auto* e = std::get_if<url_error>(&r)) {
        return *e;
    }
    auto& [o, u] = std::get<0>(r);
    std::string path(u.encoded_path());
    while (!path.empty() && path.back() == '/') {
        path.pop_back();
    }
    return base_url{o, path};
}

std::variant<base_url, url_error> parse_gitlab_url(std::string_view text) {
    auto r = parse_base_url(text);
    if (auto* b = std::get_if<base_url>(&r)) {
        if (b->path.size() >= 3 && b->path.compare(b->path.size() - 3, 3, "/ci") == 0) {
            b->path.resize(b->path.size() - 3);
        }
        while (!b->path.empty() && b->path.back() == '/') {
            b->path.pop_back();
        }
    }
    return r;
}

std::variant<std::pair<origin, std::string>, url_error> split_absolute_url(std::string_view text) {
    auto r = split(text);
    if (auto* e = std::get_if<url_error>(&r)) {
        return *e;
    }
    auto& [o, u] = std::get<0>(r);
    std::string target(u.encoded_path());
    if (target.empty()) {
        target = "/";
    }
    if (u.has_query()) {
        target += "?" + std::string(u.encoded_query());
    }
    return std::pair{o, target};
}

std::string query_escape(std::string_view value) {
    return boost::urls::encode(value, boost::urls::unreserved_chars);
}

}  // namespace kiln::net
