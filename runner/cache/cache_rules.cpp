#include "runner/cache/cache_rules.hpp"

#include <cctype>

#include "runner/cache/sigv4.hpp"
#include "runner/gitlab/job_payload.hpp"

namespace kiln::cache {
namespace {

// Go's path.Clean: "." elements and repeated slashes go, ".." removes the element before it
// (and at the root stays at the root); "" becomes ".".
std::string clean_path(std::string_view p) {
    const bool rooted = !p.empty() && p.front() == '/';
    std::vector<std::string_view> parts;
    std::size_t dotdots = 0;  // leading ".." kept in a relative path
    std::size_t i = 0;
    while (i <= p.size()) {
        auto j = p.find('/', i);
        if (j == std::string_view::npos) {
            j = p.size();
        }
        auto part = p.substr(i, j - i);
        if (part.empty() || part == ".") {
            // skip
        } else if (part == "..") {
            if (parts.size() > dotdots) {
                parts.pop_back();
            } else if (!rooted) {
                parts.push_back(part);
                ++dotdots;
            }
        } else {
            parts.push_back(part);
        }
        i = j + 1;
    }
    std::string out = rooted ? "/" : "";
    for (std::size_t k = 0; k < parts.size(); ++k) {
        if (k > 0) {
            out += '/';
        }
        out += parts[k];
    }
    return out.empty() ? "." : out;
}

// Go's path.Join: the non-empty elements joined with '/', then cleaned ("" if all empty).
std::string join_path(std::initializer_list<std::string_view> elems) {
    std::string joined;
    for (auto e : elems) {
        if (e.empty()) {
            continue;
        }
        if (!joined.empty()) {
            joined += '/';
        }
        joined += e;
    }
    return joined.empty() ? std::string() : clean_path(joined);
}

bool is_space(unsigned char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r';
}

bool ends_with(std::string_view s, std::string_view suffix) {
    return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

bool is_shell_special(char c) {
    return c == '*' || c == '#' || c == '$' || c == '@' || c == '!' || c == '?' || c == '-' ||
           (c >= '0' && c <= '9');
}

bool is_name_char(char c) {
    return c == '_' || std::isalnum(static_cast<unsigned char>(c));
}

// gitlab-runner's variable mapping (spec.Variables.Get): "$$" is a literal dollar, the shell's
// special parameters are left as written, names are looked up.
std::string lookup_value(std::string_view name, const variable_lookup& lookup) {
    if (name == "$") {
        return "$";
    }
    if (name.size() == 1 && is_shell_special(name[0])) {
        return "$" + std::string(name);
    }
    auto v = lookup ? lookup(name) : std::nullopt;
    return v ? *v : std::string();
}

int hex_value(char c) {
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    if (c >= 'A' && c <= 'F') {
        return c - 'A' + 10;
    }
    return -1;
}

std::string percent_decode(std::string_view s) {
    std::string out;
    for (std::size_t i = 0; i < s.size(); ++i) {
        if (s[i] == '%' && i + 2 < s.size() && hex_value(s[i + 1]) >= 0 && hex_value(s[i + 2]) >= 0) {
            out += static_cast<char>(hex_value(s[i + 1]) * 16 + hex_value(s[i + 2]));
            i += 2;
        } else {
            out += s[i];
        }
    }
    return out;
}

}  // namespace

std::string go_quote(std::string_view s) {
    std::string out = "\"";
    for (unsigned char c : s) {
        switch (c) {
            case '"': out += "\\\""; break;
            case '\\': out += "\\\\"; break;
            case '\n': out += "\\n"; break;
            case '\r': out += "\\r"; break;
            case '\t': out += "\\t"; break;
            default:
                if (c < 0x20 || c == 0x7f) {
                    static constexpr char hex[] = "0123456789abcdef";
                    out += "\\x";
                    out += hex[c >> 4];
                    out += hex[c & 0xf];
                } else {
                    out += static_cast<char>(c);
                }
        }
    }
    out += '"';
    return out;
}

sanitized_key sanitize_key(std::string_view raw) {
    if (raw.empty()) {
        return {};
    }
    // One left-to-right pass, as Go's strings.Replacer does.
    std::string normal = "/";
    for (std::size_t i = 0; i < raw.size(); ++i) {
        if (raw[i] == '%' && i + 2 < raw.size()) {
            auto code = raw.substr(i + 1, 2);
            if (code == "2f" || code == "2F") {
                normal += '/';
                i += 2;
                continue;
            }
            if (code == "2e" || code == "2E") {
                normal += '.';
                i += 2;
                continue;
            }
        }
        normal += raw[i] == '\\' ? '/' : raw[i];
    }
    const auto cleaned = clean_path(normal);  // rooted: ".." cannot climb out

    std::vector<std::string> parts;
    std::string_view rest = std::string_view(cleaned).substr(1);
    while (true) {
        auto slash = rest.find('/');
        parts.emplace_back(rest.substr(0, slash));
        if (slash == std::string_view::npos) {
            break;
        }
        rest = rest.substr(slash + 1);
    }
    std::size_t n = parts.size();
    while (n > 0) {
        auto& last = parts[n - 1];
        while (!last.empty() && is_space(static_cast<unsigned char>(last.back()))) {
            last.pop_back();
        }
        if (!last.empty()) {
            break;
        }
        --n;
    }
    sanitized_key out;
    for (std::size_t k = 0; k < n; ++k) {
        if (k > 0) {
            out.key += '/';
        }
        out.key += parts[k];
    }
    if (out.key.empty()) {
        out.warning = "cache key " + go_quote(raw) + " could not be sanitized";
    } else if (out.key != raw) {
        out.warning = "cache key " + go_quote(raw) + " sanitized to " + go_quote(out.key);
    }
    return out;
}

std::string expand_variables(std::string_view s, const variable_lookup& lookup) {
    std::string out;
    std::size_t i = 0;  // start of the text not yet copied
    for (std::size_t j = 0; j < s.size(); ++j) {
        if (s[j] != '$' || j + 1 >= s.size()) {
            continue;
        }
        out.append(s.substr(i, j - i));
        auto rest = s.substr(j + 1);
        std::string_view name;
        std::size_t width = 0;
        if (rest[0] == '{') {
            if (rest.size() > 2 && is_shell_special(rest[1]) && rest[2] == '}') {
                name = rest.substr(1, 1);
                width = 3;
            } else {
                auto close = rest.find('}');
                if (close == std::string_view::npos) {
                    width = 1;  // bad syntax: "${" is eaten
                } else if (close == 1) {
                    width = 2;  // "${}" is eaten
                } else {
                    name = rest.substr(1, close - 1);
                    width = close + 1;
                }
            }
        } else if (is_shell_special(rest[0])) {
            name = rest.substr(0, 1);
            width = 1;
        } else {
            while (width < rest.size() && is_name_char(rest[width])) {
                ++width;
            }
            name = rest.substr(0, width);
        }
        if (name.empty() && width == 0) {
            out += '$';  // "$" not followed by a name stays
        } else if (!name.empty()) {
            out += lookup_value(name, lookup);
        }
        j += width;
        i = j + 1;
    }
    if (i < s.size()) {
        out.append(s.substr(i));
    }
    return out;
}

std::optional<policy> parse_policy(std::string_view text) {
    if (text.empty() || text == "pull-push") {
        return policy::pull_push;
    }
    if (text == "pull") {
        return policy::pull;
    }
    if (text == "push") {
        return policy::push;
    }
    return std::nullopt;
}

bool should_archive(std::string_view when, bool job_succeeded) {
    if (job_succeeded) {
        return when.empty() || when == "on_success" || when == "always";
    }
    return when == "on_failure" || when == "always";
}

format_choice parse_compression_format(std::string_view text) {
    if (text.empty() || text == "zip") {
        return {};
    }
    if (text == "tarzstd") {
        return {archive_format::tar_zstd, {}};
    }
    return {archive_format::zip,
            "CACHE_COMPRESSION_FORMAT " + go_quote(text) +
                " is not supported by kiln (use zip or tarzstd); writing zip"};
}

std::optional<cache_key> resolve_key(std::string_view user_key, const job_facts& job,
                                     const variable_lookup& lookup,
                                     std::vector<message>& messages) {
    std::string raw;
    if (user_key.empty()) {
        raw = join_path({"/", job.job_name, job.git_ref}).substr(1);
    } else {
        raw = expand_variables(user_key, lookup);
    }
    cache_key key;
    if (job.hash_keys) {
        key.human = raw;
    } else {
        auto s = sanitize_key(raw);
        if (!s.warning.empty()) {
            messages.push_back({message::level::warning, s.warning});
        }
        key.human = s.key;
    }
    if (key.human.empty()) {
        return std::nullopt;
    }
    key.storage = job.hash_keys ? sigv4::sha256_hex(key.human) : key.human;
    return key;
}

bool has_files(const gitlab::cache_spec& entry) {
    return !entry.paths.empty() || entry.untracked;
}

restore_plan plan_restore(const gitlab::cache_spec& entry, const job_facts& job,
                          const variable_lookup& lookup) {
    restore_plan plan;
    if (!has_files(entry)) {
        return plan;
    }
    auto primary = resolve_key(entry.key, job, lookup, plan.messages);
    if (!primary) {
        plan.messages.push_back(
            {message::level::notice, "Skipping cache extraction due to empty cache key"});
        return plan;
    }
    const auto pol_text = expand_variables(entry.policy, lookup);
    auto pol = parse_policy(pol_text);
    if (!pol) {
        plan.error = "unknown cache policy " + pol_text + " for " + primary->human +
                     " (use pull, push or pull-push)";
        return plan;
    }
    if (*pol == policy::push) {
        plan.messages.push_back(
            {message::level::notice, "Not downloading cache " + primary->human + " due to policy"});
        return plan;
    }
    plan.keys.push_back(*primary);
    auto add = [&](const std::string& key, bool refuse_protected) {
        if (key.empty()) {
            return;
        }
        std::vector<message> notes;
        auto k = resolve_key(key, job, lookup, notes);
        if (refuse_protected && k && ends_with(k->human, "-protected")) {
            plan.messages.push_back({message::level::warning,
                                     "CACHE_FALLBACK_KEY " + go_quote(k->human) +
                                         " not allowed to end in \"-protected\""});
            plan.messages.insert(plan.messages.end(), notes.begin(), notes.end());
            return;
        }
        plan.messages.insert(plan.messages.end(), notes.begin(), notes.end());
        if (!k) {
            plan.messages.push_back(
                {message::level::notice, "Skipping cache extraction due to empty cache key"});
            return;
        }
        plan.keys.push_back(*k);
    };
    // gitlab-runner expands fallback_keys here and once more when it resolves them.
    for (const auto& fk : entry.fallback_keys) {
        add(expand_variables(fk, lookup), false);
    }
    auto fallback = lookup ? lookup("CACHE_FALLBACK_KEY") : std::nullopt;
    if (fallback) {
        add(*fallback, true);
    }
    return plan;
}

archive_plan plan_archive(const gitlab::cache_spec& entry, const job_facts& job,
                          const variable_lookup& lookup, bool job_succeeded) {
    archive_plan plan;
    if (!should_archive(entry.when, job_succeeded) || !has_files(entry)) {
        return plan;
    }
    auto key = resolve_key(entry.key, job, lookup, plan.messages);
    if (!key) {
        plan.messages.push_back(
            {message::level::notice, "Skipping cache archiving due to empty cache key"});
        return plan;
    }
    const auto pol_text = expand_variables(entry.policy, lookup);
    auto pol = parse_policy(pol_text);
    if (!pol) {
        plan.error = "unknown cache policy " + pol_text + " for " + key->human +
                     " (use pull, push or pull-push)";
        return plan;
    }
    if (*pol == policy::pull) {
        plan.messages.push_back(
            {message::level::notice, "Not uploading cache " + key->human + " due to policy"});
        return plan;
    }
    plan.key = std::move(key);
    return plan;
}

std::string project_cache_dir(const job_facts& job) {
    std::string slug;
    const std::string_view url = job.repo_url;
    if (auto scheme = url.find("://"); scheme != std::string_view::npos) {
        auto rest = url.substr(scheme + 3);
        auto slash = rest.find('/');
        auto host = rest.substr(0, slash);
        if (!host.empty() && slash != std::string_view::npos) {
            auto path = rest.substr(slash);
            path = path.substr(0, path.find_first_of("?#"));
            auto decoded = percent_decode(path);
            if (ends_with(decoded, ".git")) {
                decoded.resize(decoded.size() - 4);
            }
            auto cleaned = clean_path(decoded);
            if (cleaned.find("..") == std::string::npos) {
                while (!cleaned.empty() && cleaned.front() == '/') {
                    cleaned.erase(0, 1);
                }
                if (cleaned != ".") {
                    slug = cleaned;
                }
            }
        }
    }
    if (slug.empty()) {
        slug = "project-" + std::to_string(job.project_id);
    }
    if (job.git_strategy_empty) {
        slug += "-empty";
    }
    return slug;
}

std::string local_archive_path(const job_facts& job, const cache_key& key) {
    return project_cache_dir(job) + "/" + key.storage + "/cache.zip";
}

object_location object_name(std::string_view config_path, bool shared,
                            std::string_view short_token, std::int64_t project_id,
                            const cache_key& key, bool hashed) {
    object_location out;
    std::string ns = shared ? std::string() : join_path({"runner", short_token});
    const auto id = std::to_string(project_id);
    auto base = join_path({config_path, ns, "project", id});
    std::string shard;
    if (hashed && key.storage.size() >= 2) {
        shard = key.storage.substr(0, 2);
    }
    auto full = join_path({base, shard, key.storage});
    if (full.rfind(base + "/", 0) != 0) {
        out.error = "computed cache path outside of project bucket. Please remove `../` from "
                    "cache key";
        return out;
    }
    out.path = full;
    return out;
}

}  // namespace kiln::cache
