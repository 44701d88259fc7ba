#include "runner/go_module.hpp"

#include <algorithm>
#include <cctype>

namespace kiln::go_module {
namespace {

enum class token_kind { word, string, lparen, rparen, newline, end };

struct token {
    token_kind kind;
    std::string text;
    std::size_t line;
};

// The go.mod lexer: whitespace, `//` comments to the end of the line, parentheses, strings and
// "identifiers" (any run of other characters).
class lexer {
public:
    explicit lexer(std::string_view s) : s_(s) {}

    // A lexical error is reported through error(); the token is then `end`.
    token next() {
        for (;;) {
            if (pos_ >= s_.size()) {
                return {token_kind::end, {}, line_};
            }
            const char c = s_[pos_];
            if (c == ' ' || c == '\t' || c == '\r') {
                ++pos_;
                continue;
            }
            if (c == '\n') {
                ++pos_;
                return {token_kind::newline, {}, line_++};
            }
            if (s_.substr(pos_, 2) == "//") {
                while (pos_ < s_.size() && s_[pos_] != '\n') {
                    ++pos_;
                }
                continue;
            }
            break;
        }
        const char c = s_[pos_];
        if (c == '(') {
            ++pos_;
            return {token_kind::lparen, "(", line_};
        }
        if (c == ')') {
            ++pos_;
            return {token_kind::rparen, ")", line_};
        }
        if (c == '"') {
            return interpreted();
        }
        if (c == '`') {
            const auto end = s_.find('`', pos_ + 1);
            if (end == std::string_view::npos) {
                return fail("unterminated raw string");
            }
            std::string text(s_.substr(pos_ + 1, end - pos_ - 1));
            const auto start_line = line_;
            line_ += static_cast<std::size_t>(std::count(text.begin(), text.end(), '\n'));
            pos_ = end + 1;
            return {token_kind::string, std::move(text), start_line};
        }
        const auto start = pos_;
        while (pos_ < s_.size()) {
            const char d = s_[pos_];
            if (d == ' ' || d == '\t' || d == '\r' || d == '\n' || d == '(' || d == ')' ||
                d == '"' || d == '`' || s_.substr(pos_, 2) == "//") {
                break;
            }
            ++pos_;
        }
        return {token_kind::word, std::string(s_.substr(start, pos_ - start)), line_};
    }

    const std::string& error() const { return error_; }
    std::size_t line() const { return line_; }

private:
    token fail(std::string why) {
        error_ = std::move(why);
        pos_ = s_.size();
        return {token_kind::end, {}, line_};
    }

    // A Go "interpreted" string literal; module paths need only the simple escapes.
    token interpreted() {
        std::string out;
        std::size_t i = pos_ + 1;
        while (i < s_.size() && s_[i] != '"') {
            char c = s_[i];
            if (c == '\n') {
                return fail("newline in string");
            }
            if (c == '\\') {
                if (i + 1 >= s_.size()) {
                    break;
                }
                const char e = s_[i + 1];
                switch (e) {
                    case '\\': out += '\\'; break;
                    case '"': out += '"'; break;
                    case 'n': out += '\n'; break;
                    case 't': out += '\t'; break;
                    default: return fail(std::string("unsupported escape \\") + e + " in string");
                }
                i += 2;
                continue;
            }
            out += c;
            ++i;
        }
        if (i >= s_.size()) {
            return fail("unterminated string");
        }
        pos_ = i + 1;
        return {token_kind::string, std::move(out), line_};
    }

    std::string_view s_;
    std::size_t pos_ = 0;
    std::size_t line_ = 1;
    std::string error_;
};

bool valid_path(const std::string& p) {
    if (p.empty() || p.front() == '/' || p.back() == '/') {
        return false;
    }
    return std::none_of(p.begin(), p.end(), [](unsigned char c) {
        return std::isspace(c) != 0 || c < 0x20 || c == '\\';
    });
}

bool all_digits(std::string_view s) {
    return !s.empty() && std::all_of(s.begin(), s.end(), [](unsigned char c) {
        return std::isdigit(c) != 0;
    });
}

// "v2", "v10": a major-version element (v0 and v1 never appear as suffixes).
bool is_major_suffix(std::string_view e) {
    return e.size() >= 2 && e[0] == 'v' && all_digits(e.substr(1)) && e != "v0" && e != "v1";
}

std::vector<std::string> split(std::string_view path) {
    std::vector<std::string> out;
    std::size_t start = 0;
    for (;;) {
        const auto slash = path.find('/', start);
        out.emplace_back(path.substr(start, slash == std::string_view::npos ? slash : slash - start));
        if (slash == std::string_view::npos) {
            break;
        }
        start = slash + 1;
    }
    std::erase_if(out, [](const std::string& e) { return e.empty(); });
    return out;
}

// Elements without the major-version suffix; gopkg.in's `name.vN` loses its `.vN`.
std::vector<std::string> meaningful_elements(std::string_view module_path) {
    auto elems = split(module_path);
    if (elems.size() > 1 && is_major_suffix(elems.back())) {
        elems.pop_back();
    }
    if (!elems.empty() && elems.front() == "gopkg.in") {
        auto& last = elems.back();
        const auto dot = last.rfind(".v");
        if (dot != std::string::npos && dot > 0 && all_digits(std::string_view(last).substr(dot + 2))) {
            last.resize(dot);
        }
    }
    return elems;
}

}  // namespace

parse_result parse_module_path(std::string_view text) {
    if (text.starts_with("\xef\xbb\xbf")) {
        text.remove_prefix(3);  // a UTF-8 byte-order mark some editors write
    }
    lexer lx(text);
    parse_result result;
    std::optional<std::string> found;
    std::size_t found_line = 0;
    bool at_line_start = true;
    int depth = 0;  // inside a `verb ( ... )` block: lines there are not directives
    auto fail = [&](std::string why, std::size_t line) {
        parse_result r;
        r.error = std::move(why);
        r.line = line;
        return r;
    };
    for (;;) {
        token t = lx.next();
        if (t.kind == token_kind::end) {
            if (!lx.error().empty()) {
                return fail(lx.error(), lx.line());
            }
            break;
        }
        if (t.kind == token_kind::newline) {
            at_line_start = true;
            continue;
        }
        if (!at_line_start) {
            if (t.kind == token_kind::lparen) {
                ++depth;
            }
            continue;
        }
        at_line_start = false;
        if (t.kind == token_kind::rparen) {
            depth = std::max(0, depth - 1);
            continue;
        }
        if (depth > 0 || t.kind != token_kind::word || t.text != "module") {
            if (t.kind == token_kind::lparen) {
                ++depth;
            }
            continue;
        }
        // module directive
        token arg = lx.next();
        if (arg.kind == token_kind::lparen) {
            // module (
            //     path
            // )
            token nl = lx.next();
            while (nl.kind == token_kind::newline) {
                nl = lx.next();
            }
            if (nl.kind == token_kind::rparen) {
                return fail("empty module block", nl.line);
            }
            arg = nl;
            if (arg.kind != token_kind::word && arg.kind != token_kind::string) {
                return fail("expected a module path in the module block", arg.line);
            }
            token close = lx.next();
            while (close.kind == token_kind::newline) {
                close = lx.next();
            }
            if (close.kind != token_kind::rparen) {
                return fail("a module block holds exactly one module path", close.line);
            }
        } else if (arg.kind != token_kind::word && arg.kind != token_kind::string) {
            if (!lx.error().empty()) {
                return fail(lx.error(), lx.line());
            }
            return fail("module directive without a module path", t.line);
        } else {
            token rest = lx.next();
            if (rest.kind != token_kind::newline && rest.kind != token_kind::end) {
                return fail("unexpected text after the module path", rest.line);
            }
            if (!lx.error().empty()) {
                return fail(lx.error(), lx.line());
            }
            at_line_start = true;
        }
        if (found) {
            return fail("repeated module directive (first on line " + std::to_string(found_line) +
                            ")",
                        t.line);
        }
        if (!valid_path(arg.text)) {
            return fail("invalid module path \"" + arg.text + "\"", arg.line);
        }
        found = arg.text;
        found_line = t.line;
    }
    if (!found) {
        return fail("no module directive", 0);
    }
    result.module_path = std::move(found);
    return result;
}

std::string short_name(std::string_view module_path) {
    auto elems = meaningful_elements(module_path);
    return elems.empty() ? std::string(module_path) : elems.back();
}

std::vector<std::string> qualifiers(std::string_view module_path) {
    auto elems = meaningful_elements(module_path);
    std::vector<std::string> out;
    if (elems.size() > 1) {
        for (auto it = elems.rbegin() + 1; it != elems.rend(); ++it) {
            out.push_back(*it);
        }
    }
    return out;
}

std::vector<named_module> assign_names(std::string_view project,
                                       const std::vector<std::string>& module_paths,
                                       const std::set<std::string>& taken) {
    const std::string prefix = "runner-" + std::string(project) + "-";
    // Qualify by as many preceding elements as it takes for the modules sharing a short name
    // to differ (`a/cmd/tools`, `b/cmd/tools` → `a-cmd-tools`, `b-cmd-tools`).
    std::vector<std::string> element(module_paths.size());
    std::vector<std::size_t> depth(module_paths.size(), 0);
    auto element_at = [&](std::size_t i) {
        std::string e = short_name(module_paths[i]);
        const auto q = qualifiers(module_paths[i]);
        for (std::size_t k = 0; k < depth[i] && k < q.size(); ++k) {
            e = q[k] + "-" + e;
        }
        return e;
    };
    for (std::size_t i = 0; i < module_paths.size(); ++i) {
        element[i] = element_at(i);
    }
    // Every module in a clash is qualified in the same round, so none keeps the bare name.
    for (bool changed = true; changed;) {
        changed = false;
        std::vector<bool> clash(module_paths.size(), false);
        for (std::size_t i = 0; i < module_paths.size(); ++i) {
            clash[i] = taken.count(prefix + element[i]) != 0;
            for (std::size_t j = 0; j < module_paths.size() && !clash[i]; ++j) {
                clash[i] = j != i && element[j] == element[i];
            }
        }
        for (std::size_t i = 0; i < module_paths.size(); ++i) {
            if (clash[i] && depth[i] < qualifiers(module_paths[i]).size()) {
                ++depth[i];
                element[i] = element_at(i);
                changed = true;
            }
        }
    }
    std::vector<named_module> out;
    std::set<std::string> used = taken;
    for (std::size_t i = 0; i < module_paths.size(); ++i) {
        std::string e = element[i];
        for (int n = 2; used.count(prefix + e) != 0; ++n) {
            e = element[i] + "-" + std::to_string(n);
        }
        used.insert(prefix + e);
        out.push_back({module_paths[i], prefix + e, e});
    }
    return out;
}

std::vector<std::filesystem::path> find_go_mod_files(const std::filesystem::path& dir) {
    namespace fs = std::filesystem;
    std::vector<fs::path> out;
    std::error_code ec;
    fs::recursive_directory_iterator it(dir, fs::directory_options::none, ec);
    if (ec) {
        throw fs::filesystem_error("cannot read the directory", dir, ec);
    }
    for (const fs::recursive_directory_iterator end; it != end; it.increment(ec)) {
        if (ec) {
            throw fs::filesystem_error("cannot read the directory", it->path(), ec);
        }
        const auto name = it->path().filename().string();
        if (it->is_directory(ec) && !it->is_symlink(ec)) {
            if (name == "vendor" || name == "testdata" || name.starts_with('.') ||
                name.starts_with('_')) {
                it.disable_recursion_pending();
            }
            continue;
        }
        if (name == "go.mod" && it->is_regular_file(ec)) {
            out.push_back(it->path());
        }
    }
    std::sort(out.begin(), out.end());
    return out;
}

}  // namespace kiln::go_module
