#include "runner/gitlab/tokens.hpp"

#include <array>
#include <cctype>
#include <stdexcept>

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

namespace kiln::gitlab {

namespace {

constexpr std::size_t short_token_length = 9;
constexpr std::size_t system_id_length = 12;
constexpr std::string_view alphanumerics =
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";

bool starts_with(std::string_view s, std::string_view prefix) {
    return s.substr(0, prefix.size()) == prefix;
}

bool is_partition_prefix(std::string_view s) {
    return s.size() >= 3 && s[0] == 't' && s[1] >= '1' && s[1] <= '3' && s[2] == '_';
}

bool is_alnum(char c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

}  // namespace

std::string short_token(std::string_view t) {
    // Three anchored patterns applied one after another, each at most once.
    if (starts_with(t, "glrt-")) {
        t.remove_prefix(5);
        if (is_partition_prefix(t)) {
            t.remove_prefix(3);
        }
    } else if (is_partition_prefix(t)) {
        t.remove_prefix(3);
    } else if (starts_with(t, "glrtr-")) {
        t.remove_prefix(6);
    }
    if (starts_with(t, "glcbt-")) {
        t.remove_prefix(6);
    }
    if (t.size() >= 9 && t.substr(0, 2) == "GR" &&
        t.substr(2, 7).find_first_not_of("0123456789abcdefABCDEF") == std::string_view::npos) {
        t.remove_prefix(9);
    }
    return std::string(t.substr(0, short_token_length));
}

bool is_created_runner_token(std::string_view token) { return starts_with(token, "glrt-"); }

bool is_valid_system_id(std::string_view id) {
    if (id.size() != 2 + system_id_length || (id[0] != 's' && id[0] != 'r') || id[1] != '_') {
        return false;
    }
    for (char c : id.substr(2)) {
        if (!is_alnum(c)) {
            return false;
        }
    }
    return true;
}

std::optional<std::string> system_id_from_machine_id(std::string_view text) {
    while (!text.empty() && std::isspace(static_cast<unsigned char>(text.front()))) {
        text.remove_prefix(1);
    }
    while (!text.empty() && std::isspace(static_cast<unsigned char>(text.back()))) {
        text.remove_suffix(1);
    }
    if (text.empty()) {
        return std::nullopt;
    }
    constexpr std::string_view message = "gitlab-runner";
    std::array<unsigned char, EVP_MAX_MD_SIZE> mac{};
    unsigned int mac_len = 0;
    if (HMAC(
            EVP_sha256(),
            text.data(),
            static_cast<int>(text.size()),
            reinterpret_cast<const unsigned char*>(message.data()),
            message.size(),
            mac.data(),
            &mac_len
        ) == nullptr) {
        throw std::runtime_error("HMAC-SHA256 failed");  // only without a usable libcrypto
    }
    static constexpr std::string_view hex = "0123456789abcdef";
    std::string id = "s_";
    for (std::size_t i = 0; i < system_id_length / 2; ++i) {
        id += hex[mac[i] >> 4];
        id += hex[mac[i] & 0x0f];
    }
    return id;
}

std::string random_system_id(const std::function<std::uint8_t()>& random_byte) {
    // Rejection sampling keeps the 62 characters equally likely: 248 = 4 * 62.
    constexpr unsigned limit = 256 - 256 % alphanumerics.size();
    std::string id = "r_";
    while (id.size() < 2 + system_id_length) {
        const unsigned b = random_byte();
        if (b < limit) {
            id += alphanumerics[b % alphanumerics.size()];
        }
    }
    return id;
}

std::string random_system_id() {
    return random_system_id([] {
        unsigned char b = 0;
        if (RAND_bytes(&b, 1) != 1) {
            throw std::runtime_error("OpenSSL RAND_bytes failed");
        }
        return static_cast<std::uint8_t>(b);
    });
}

}  // namespace kiln::gitlab
