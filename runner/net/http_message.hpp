#pragma once
// Plain HTTP request/response values shared by the transport (Beast, in http_client.cpp) and the
// pure protocol code (runner/gitlab/responses.*), so the latter never sees Beast types.

#include <algorithm>
#include <cctype>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace kiln::net {

/// Header list with case-insensitive lookup (HTTP names are case-insensitive; Go canonicalises
/// them, Rails does not).
struct http_headers {
    std::vector<std::pair<std::string, std::string>> items;

    static bool name_equals(std::string_view a, std::string_view b) {
        return a.size() == b.size() &&
               std::equal(a.begin(), a.end(), b.begin(), [](unsigned char x, unsigned char y) {
                   return std::tolower(x) == std::tolower(y);
               });
    }
    /// First value of `name`, if present.
    std::optional<std::string> get(std::string_view name) const {
        for (const auto& [k, v] : items) {
            if (name_equals(k, name)) {
                return v;
            }
        }
        return std::nullopt;
    }
    void set(std::string name, std::string value) {
        for (auto& [k, v] : items) {
            if (name_equals(k, name)) {
                v = std::move(value);
                return;
            }
        }
        items.emplace_back(std::move(name), std::move(value));
    }
};

struct http_response {
    int status = 0;
    http_headers headers;
    std::string body;
};

}  // namespace kiln::net
