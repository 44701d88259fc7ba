#include "runner/util/glob.hpp"

namespace kiln::util {
namespace {

// One code point from UTF-8 at `i` (advancing it); invalid bytes stand for themselves.
char32_t next_rune(std::string_view s, std::size_t& i) {
    auto c = static_cast<unsigned char>(s[i]);
    int len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 1;
    if (i + len > s.size()) {
        len = 1;
    }
    char32_t r = len == 1 ? c : c & (0x7f >> len);
    for (int k = 1; k < len; ++k) {
        r = (r << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3f);
    }
    i += len;
    return r;
}


// A bracket class starting after '[' at `pi`; on success `pi` is past the ']'.
element_match match_class(std::string_view p, std::size_t& pi, char32_t c) {
    bool negate = false;
    if (pi < p.size() && (p[pi] == '!' || p[pi] == '^')) {
        negate = true;
        ++pi;
    }
    bool matched = false;
    bool first = true;
    for (;;) {
        if (pi >= p.size()) {
            return element_match::bad;
        }
        if (p[pi] == ']' && !first) {
            ++pi;
            break;
        }
        if (p[pi] == ']') {
            return element_match::bad;  // empty class
        }
        first = false;
        if (p[pi] == '\\') {
            ++pi;
            if (pi >= p.size()) {
                return element_match::bad;
            }
        }
        char32_t lo = next_rune(p, pi);
        char32_t hi = lo;
        if (pi + 1 < p.size() && p[pi] == '-' && p[pi + 1] != ']') {
            ++pi;
            if (p[pi] == '\\') {
                ++pi;
                if (pi >= p.size()) {
                    return element_match::bad;
                }
            }
            hi = next_rune(p, pi);
        }
        if (lo <= c && c <= hi) {
            matched = true;
        }
    }
    return matched != negate ? element_match::yes : element_match::no;
}

// One path element against one pattern element (no '/', no braces), with backtracking on '*'.
element_match segment(std::string_view p, std::string_view s) {
    std::size_t pi = 0;
    std::size_t si = 0;
    std::size_t star_p = std::string_view::npos;
    std::size_t star_s = 0;
    while (si < s.size()) {
        if (pi < p.size()) {
            char pc = p[pi];
            if (pc == '*') {
                while (pi < p.size() && p[pi] == '*') {
                    ++pi;
                }
                star_p = pi;
                star_s = si;
                continue;
            }
            std::size_t save_si = si;
            if (pc == '?') {
                ++pi;
                next_rune(s, si);
                continue;
            }
            if (pc == '[') {
                std::size_t q = pi + 1;
                char32_t c = next_rune(s, si);
                auto m = match_class(p, q, c);
                if (m == element_match::bad) {
                    return m;
                }
                if (m == element_match::yes) {
                    pi = q;
                    continue;
                }
                si = save_si;
            } else {
                std::size_t q = pi;
                if (pc == '\\') {
                    ++q;
                    if (q >= p.size()) {
                        return element_match::bad;
                    }
                }
                if (p[q] == s[si]) {
                    pi = q + 1;
                    ++si;
                    continue;
                }
            }
        }
        if (star_p == std::string_view::npos) {
            return element_match::no;
        }
        pi = star_p;
        next_rune(s, star_s);
        si = star_s;
    }
    while (pi < p.size() && p[pi] == '*') {
        ++pi;
    }
    if (pi == p.size()) {
        return element_match::yes;
    }
    // What is left of the pattern must still be well formed to report "no" rather than "bad".
    return element_match::no;
}

bool match_elements(const std::vector<std::string>& ps, std::size_t i,
                    const std::vector<std::string>& ss, std::size_t j) {
    if (i == ps.size()) {
        return j == ss.size();
    }
    if (ps[i] == "**") {
        for (std::size_t k = j; k <= ss.size(); ++k) {
            if (match_elements(ps, i + 1, ss, k)) {
                return true;
            }
        }
        return false;
    }
    if (j == ss.size()) {
        return false;
    }
    return segment(ps[i], ss[j]) == element_match::yes && match_elements(ps, i + 1, ss, j + 1);
}

constexpr std::size_t max_brace_alternatives = 1024;

void expand_into(std::string_view p, std::vector<std::string>& out) {
    if (out.size() >= max_brace_alternatives) {
        return;
    }
    std::size_t open = std::string_view::npos;
    for (std::size_t i = 0; i < p.size(); ++i) {
        if (p[i] == '\\') {
            ++i;
        } else if (p[i] == '{') {
            open = i;
            break;
        }
    }
    if (open == std::string_view::npos) {
        out.emplace_back(p);
        return;
    }
    int depth = 0;
    std::vector<std::size_t> commas;
    std::size_t close = std::string_view::npos;
    for (std::size_t i = open; i < p.size(); ++i) {
        if (p[i] == '\\') {
            ++i;
        } else if (p[i] == '{') {
            ++depth;
        } else if (p[i] == '}') {
            if (--depth == 0) {
                close = i;
                break;
            }
        } else if (p[i] == ',' && depth == 1) {
            commas.push_back(i);
        }
    }
    if (close == std::string_view::npos) {
        out.emplace_back(p);  // unbalanced: taken literally
        return;
    }
    auto prefix = p.substr(0, open);
    auto suffix = p.substr(close + 1);
    std::size_t start = open + 1;
    commas.push_back(close);
    for (auto end : commas) {
        std::string alt(prefix);
        alt += p.substr(start, end - start);
        alt += suffix;
        expand_into(alt, out);
        start = end + 1;
    }
}

}  // namespace

bool has_glob_meta(std::string_view text) {
    return text.find_first_of("*?[{") != std::string_view::npos;
}

std::vector<std::string> expand_braces(std::string_view pattern) {
    std::vector<std::string> out;
    expand_into(pattern, out);
    return out;
}

bool glob_match(std::string_view pattern, std::string_view path) {
    const auto ss = split_path(path);
    for (const auto& alt : expand_braces(pattern)) {
        if (match_elements(split_path(alt), 0, ss, 0)) {
            return true;
        }
    }
    return false;
}

std::vector<std::string> split_path(std::string_view p) {
    std::vector<std::string> out;
    std::size_t start = 0;
    while (start <= p.size()) {
        auto end = p.find('/', start);
        if (end == std::string_view::npos) {
            end = p.size();
        }
        out.emplace_back(p.substr(start, end - start));
        start = end + 1;
    }
    return out;
}

element_match match_glob_element(std::string_view pattern, std::string_view name) {
    return segment(pattern, name);
}

}  // namespace kiln::util
