#include "runner/artifacts/artifact_rules.hpp"

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstdlib>

namespace kiln::artifacts {

std::string expand_variables(std::string_view text,
                             const std::vector<std::pair<std::string, std::string>>& env) {
    auto lookup = [&env](std::string_view key) {
        std::string value;
        for (const auto& [k, v] : env) {
            if (k == key) {
                value = v;
            }
        }
        return value;
    };
    auto is_name = [](char c) {
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
               c == '_';
    };
    std::string out;
    for (std::size_t i = 0; i < text.size(); ++i) {
        if (text[i] != '$' || i + 1 >= text.size()) {
            out += text[i];
            continue;
        }
        if (text[i + 1] == '$') {
            out += '$';
            ++i;
        } else if (text[i + 1] == '{') {
            auto close = text.find('}', i + 2);
            if (close == std::string_view::npos) {
                out += text.substr(i);
                break;
            }
            out += lookup(text.substr(i + 2, close - i - 2));
            i = close;
        } else if (is_name(text[i + 1])) {
            std::size_t j = i + 1;
            while (j < text.size() && is_name(text[j])) {
                ++j;
            }
            out += lookup(text.substr(i + 1, j - i - 1));
            i = j - 1;
        } else {
            out += '$';
        }
    }
    return out;
}

std::string artifact_file_name(std::string_view expanded_name, std::string_view format) {
    std::string name(expanded_name.empty() ? std::string_view("artifacts") : expanded_name);
    while (name.size() > 1 && name.back() == '/') {
        name.pop_back();
    }
    auto slash = name.rfind('/');
    std::string base = slash == std::string::npos ? name : name.substr(slash + 1);
    if (base.empty() || base == "." || base == "/") {
        base = "default";
    }
    if (format == "zip" || format == "zipzstd") {
        base += ".zip";
    } else if (format == "gzip") {
        base += ".gz";
    } else if (format == "tarzstd") {
        base += ".tar.zst";
    }
    return base;
}

std::string effective_format(const gitlab::artifact_spec& a) {
    return a.artifact_format.empty() ? std::string("zip") : a.artifact_format;
}

std::string format_size(std::uint64_t bytes) {
    if (bytes < 1024) {
        return std::to_string(bytes) + " B";
    }
    const char* units[] = {"KiB", "MiB", "GiB", "TiB"};
    double v = static_cast<double>(bytes) / 1024.0;
    int u = 0;
    while (v >= 1024.0 && u < 3) {
        v /= 1024.0;
        ++u;
    }
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.1f %s", v, units[u]);
    return buf;
}

std::uint64_t extract_limit(std::uint64_t archive_size, std::string_view override_text) {
    if (!override_text.empty()) {
        std::string t(override_text);
        char* end = nullptr;
        double v = std::strtod(t.c_str(), &end);
        std::string unit = end != nullptr ? std::string(end) : std::string();
        unit.erase(std::remove(unit.begin(), unit.end(), ' '), unit.end());
        for (auto& c : unit) {
            c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
        }
        double mul = 0;
        if (unit.empty() || unit == "b") {
            mul = 1;
        } else if (unit == "k" || unit == "kb" || unit == "kib") {
            mul = 1024.0;
        } else if (unit == "m" || unit == "mb" || unit == "mib") {
            mul = 1024.0 * 1024;
        } else if (unit == "g" || unit == "gb" || unit == "gib") {
            mul = 1024.0 * 1024 * 1024;
        }
        if (end != t.c_str() && mul > 0 && v > 0) {
            return static_cast<std::uint64_t>(v * mul);
        }
    }
    // Real artifacts (binaries, reports) expand 2-20x; a zip bomb expands thousands of times.
    // At least 1 GiB, at most 16 GiB.
    constexpr std::uint64_t floor = 1ULL << 30;
    constexpr std::uint64_t ceiling = 16ULL << 30;
    const std::uint64_t by_ratio = archive_size > ceiling / 200 ? ceiling : archive_size * 200;
    return std::clamp(by_ratio, floor, ceiling);
}

}  // namespace kiln::artifacts
