#include "config/loader.hpp"

#include <algorithm>
#include <array>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <initializer_list>
#include <span>
#include <utility>

#include <fcntl.h>
#include <unistd.h>

#include "config/toml_model.hpp"

namespace kiln::config {

std::string diagnostic::to_string() const {
    std::string out = source;
    if (line > 0) {
        out += ':' + std::to_string(line);
        if (column > 0) {
            out += ':' + std::to_string(column);
        }
    }
    out += severity == level::error ? ": error: " : ": warning: ";
    if (!key.empty()) {
        out += key;
        out += ": ";
    }
    out += message;
    return out;
}

std::vector<diagnostic> load_result::errors() const {
    std::vector<diagnostic> out;
    std::copy_if(
        diagnostics.begin(),
        diagnostics.end(),
        std::back_inserter(out),
        [](const auto& d) { return d.severity == diagnostic::level::error; }
    );
    return out;
}

std::vector<diagnostic> load_result::warnings() const {
    std::vector<diagnostic> out;
    std::copy_if(
        diagnostics.begin(),
        diagnostics.end(),
        std::back_inserter(out),
        [](const auto& d) { return d.severity == diagnostic::level::warning; }
    );
    return out;
}

namespace {

using namespace std::chrono_literals;
using namespace std::string_view_literals;
using string_map = std::map<std::string, std::string>;
using strings = std::vector<std::string>;

// ---------------------------------------------------------------------------------------------
// Diagnostics

class checker {
public:
    explicit checker(std::string_view source) : source_(source) {}

    void error(const toml::source_region& where, std::string key, std::string message) {
        add(diagnostic::level::error, where, std::move(key), std::move(message));
    }

    void warning(const toml::source_region& where, std::string key, std::string message) {
        add(diagnostic::level::warning, where, std::move(key), std::move(message));
    }

    /// A real gitlab-runner setting kiln has no implementation for.
    void ignored(const toml::source_region& where, std::string key, std::string_view why = {}) {
        if (quiet_ignored) {
            return;
        }
        warning(
            where,
            std::move(key),
            why.empty() ? "kiln does not implement this gitlab-runner setting and ignores it"
                        : std::string(why)
        );
    }

    bool has_errors() const {
        return std::any_of(diagnostics_.begin(), diagnostics_.end(), [](const auto& d) {
            return d.severity == diagnostic::level::error;
        });
    }

    std::vector<diagnostic> take() && { return std::move(diagnostics_); }

    // Set while reading a runner kiln will not run: its unimplemented settings do not matter,
    // and one warning about the executor says so.
    bool quiet_ignored = false;

private:
    void add(
        diagnostic::level severity,
        const toml::source_region& where,
        std::string key,
        std::string message
    ) {
        diagnostic d;
        d.severity = severity;
        d.source = source_;
        d.line = static_cast<int>(where.begin.line);
        d.key = std::move(key);
        d.message = std::move(message);
        diagnostics_.push_back(std::move(d));
    }

    std::string source_;
    std::vector<diagnostic> diagnostics_;
};

std::string_view type_name(const toml::node& n) {
    switch (n.type()) {
        case toml::node_type::string:
            return "a string";
        case toml::node_type::integer:
            return "an integer";
        case toml::node_type::floating_point:
            return "a floating-point number";
        case toml::node_type::boolean:
            return "a boolean";
        case toml::node_type::date:
            return "a date";
        case toml::node_type::time:
            return "a time";
        case toml::node_type::date_time:
            return "a date-time";
        case toml::node_type::array:
            return "an array";
        case toml::node_type::table:
            return "a table";
        case toml::node_type::none:
            break;
    }
    return "nothing";
}

/// A value as it would be written in TOML, so that a diagnostic stays on one line.
std::string quote(std::string_view s) {
    std::string out = "\"";
    for (char ch : s) {
        if (ch == '"' || ch == '\\') {
            out += '\\';
            out += ch;
        } else if (ch == '\n') {
            out += "\\n";
        } else if (static_cast<unsigned char>(ch) < 0x20 || ch == 0x7f) {
            char buf[8];
            std::snprintf(buf, sizeof buf, "\\u%04X", static_cast<unsigned>(ch));
            out += buf;
        } else {
            out += ch;
        }
    }
    return out + '"';
}

/// What was found, for "expected …, found …": the value itself for scalars a reader can
/// recognise, the type otherwise.
std::string found(const toml::node& n) {
    if (auto s = n.as_string()) {
        return quote(s->get());
    }
    if (auto i = n.as_integer()) {
        return std::to_string(i->get());
    }
    if (auto f = n.as_floating_point()) {
        char buf[32];
        auto [end, ec] = std::to_chars(buf, buf + sizeof buf, f->get());
        return ec == std::errc{} ? std::string(buf, end) : std::string(type_name(n));
    }
    return std::string(type_name(n));
}

std::string expected(std::string_view what, const toml::node& n) {
    return "expected " + std::string(what) + ", found " + found(n);
}

bool is_bare_key(std::string_view k) {
    return !k.empty() && std::all_of(k.begin(), k.end(), [](char c) {
        return std::isalnum(static_cast<unsigned char>(c)) != 0 || c == '_' || c == '-';
    });
}

std::string child_key(const std::string& parent, std::string_view name) {
    std::string part = is_bare_key(name) ? std::string(name) : quote(name);
    return parent.empty() ? part : parent + "." + part;
}

std::string lowered(std::string_view s) {
    std::string out(s);
    std::transform(out.begin(), out.end(), out.begin(), [](unsigned char c) {
        return static_cast<char>(std::tolower(c));
    });
    return out;
}

// ---------------------------------------------------------------------------------------------
// "Did you mean": optimal string alignment distance on keys normalised for case and -/_, so
// that `tls_ca_file` finds `tls-ca-file` and `bucketname` finds `BucketName`.

std::string normalised_key(std::string_view s) {
    std::string out = lowered(s);
    std::replace(out.begin(), out.end(), '-', '_');
    return out;
}

std::size_t edit_distance(std::string_view a, std::string_view b) {
    std::vector<std::vector<std::size_t>> d(a.size() + 1, std::vector<std::size_t>(b.size() + 1));
    for (std::size_t i = 0; i <= a.size(); ++i) {
        d[i][0] = i;
    }
    for (std::size_t j = 0; j <= b.size(); ++j) {
        d[0][j] = j;
    }
    for (std::size_t i = 1; i <= a.size(); ++i) {
        for (std::size_t j = 1; j <= b.size(); ++j) {
            std::size_t cost = a[i - 1] == b[j - 1] ? 0 : 1;
            d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost});
            if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1]) {
                d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
            }
        }
    }
    return d[a.size()][b.size()];
}

std::optional<std::string_view> closest(
    std::string_view key, std::initializer_list<std::span<const std::string_view>> candidate_lists
) {
    const std::string k = normalised_key(key);
    const std::size_t limit = k.size() <= 3 ? 1 : (k.size() <= 8 ? 2 : 3);
    std::optional<std::string_view> best;
    std::size_t best_distance = limit + 1;
    for (auto list : candidate_lists) {
        for (auto candidate : list) {
            std::size_t d = edit_distance(k, normalised_key(candidate));
            if (d < best_distance) {
                best = candidate;
                best_distance = d;
            }
        }
    }
    return best;
}

// ---------------------------------------------------------------------------------------------
// Value readers. Each reports its own error and returns nullopt on a bad value.

std::optional<std::string> read_string(checker& c, const toml::node& n, const std::string& key) {
    if (auto s = n.as_string()) {
        return s->get();
    }
    c.error(n.source(), key, expected("a string", n));
    return std::nullopt;
}

std::optional<std::int64_t> read_int(
    checker& c,
    const toml::node& n,
    const std::string& key,
    std::optional<std::int64_t> min = std::nullopt
) {
    auto i = n.as_integer();
    if (i != nullptr && (!min || i->get() >= *min)) {
        return i->get();
    }
    std::string what = "an integer";
    if (min) {
        what += " ≥ " + std::to_string(*min);
    }
    c.error(n.source(), key, expected(what, n));
    return std::nullopt;
}

std::optional<bool> read_bool(checker& c, const toml::node& n, const std::string& key) {
    if (auto b = n.as_boolean()) {
        return b->get();
    }
    c.error(n.source(), key, expected("true or false", n));
    return std::nullopt;
}

std::optional<strings> read_strings(
    checker& c, const toml::node& n, const std::string& key, bool allow_single = false
) {
    std::string_view what =
        allow_single ? "a string or an array of strings" : "an array of strings";
    if (allow_single) {
        if (auto s = n.as_string()) {
            return strings{s->get()};
        }
    }
    auto arr = n.as_array();
    if (arr == nullptr) {
        c.error(n.source(), key, expected(what, n));
        return std::nullopt;
    }
    strings out;
    for (std::size_t i = 0; i < arr->size(); ++i) {
        const toml::node& item = *arr->get(i);
        auto s = item.as_string();
        if (s == nullptr) {
            c.error(
                item.source(),
                key,
                "expected " + std::string(what) + ", found " + std::string(type_name(item)) +
                    " at index " + std::to_string(i)
            );
            return std::nullopt;
        }
        out.push_back(s->get());
    }
    return out;
}

std::optional<string_map> read_string_map(checker& c, const toml::node& n, const std::string& key) {
    auto tbl = n.as_table();
    if (tbl == nullptr) {
        c.error(n.source(), key, expected("a table of strings, e.g. { \"/tmp\" = \"rw\" }", n));
        return std::nullopt;
    }
    string_map out;
    bool ok = true;
    for (auto&& [k, v] : *tbl) {
        if (auto s = read_string(c, v, child_key(key, k.str()))) {
            out.emplace(std::string(k.str()), std::move(*s));
        } else {
            ok = false;
        }
    }
    return ok ? std::optional<string_map>(std::move(out)) : std::nullopt;
}

bool contains(std::span<const std::string_view> list, std::string_view s) {
    return std::find(list.begin(), list.end(), s) != list.end();
}

std::string one_of(std::span<const std::string_view> choices) {
    std::string out = "one of: ";
    for (std::size_t i = 0; i < choices.size(); ++i) {
        out += i == 0 ? "" : ", ";
        out += choices[i];
    }
    return out;
}

std::optional<std::string> read_choice(
    checker& c,
    const toml::node& n,
    const std::string& key,
    std::span<const std::string_view> choices,
    bool ignore_case = false
) {
    auto s = n.as_string();
    if (s != nullptr) {
        std::string value = ignore_case ? lowered(s->get()) : s->get();
        if (std::find(choices.begin(), choices.end(), value) != choices.end()) {
            return value;
        }
    }
    c.error(n.source(), key, expected(one_of(choices), n));
    return std::nullopt;
}

/// Go's time.ParseDuration: "1h30m", "90s", "1.5h", "300ms", "0"; a sign is allowed.
std::optional<std::chrono::nanoseconds> parse_go_duration(std::string_view s) {
    bool negative = false;
    if (!s.empty() && (s.front() == '-' || s.front() == '+')) {
        negative = s.front() == '-';
        s.remove_prefix(1);
    }
    if (s == "0") {
        return std::chrono::nanoseconds{0};
    }
    if (s.empty()) {
        return std::nullopt;
    }
    static constexpr std::array<std::pair<std::string_view, double>, 8> units{{
        {"ns", 1.0},
        {"us", 1e3},
        {"\xC2\xB5s", 1e3},  // U+00B5 micro sign
        {"\xCE\xBCs", 1e3},  // U+03BC Greek mu
        {"ms", 1e6},
        {"s", 1e9},
        {"m", 60e9},
        {"h", 3600e9},
    }};
    double total = 0;
    while (!s.empty()) {
        std::size_t i = 0;
        double value = 0;
        bool digits = false;
        while (i < s.size() && std::isdigit(static_cast<unsigned char>(s[i])) != 0) {
            value = value * 10 + (s[i] - '0');
            digits = true;
            ++i;
        }
        if (i < s.size() && s[i] == '.') {
            ++i;
            double scale = 0.1;
            while (i < s.size() && std::isdigit(static_cast<unsigned char>(s[i])) != 0) {
                value += (s[i] - '0') * scale;
                scale /= 10;
                digits = true;
                ++i;
            }
        }
        if (!digits) {
            return std::nullopt;
        }
        std::size_t unit_end = i;
        while (unit_end < s.size() && s[unit_end] != '.' &&
               std::isdigit(static_cast<unsigned char>(s[unit_end])) == 0) {
            ++unit_end;
        }
        std::string_view unit = s.substr(i, unit_end - i);
        auto u = std::find_if(units.begin(), units.end(), [&](const auto& p) {
            return p.first == unit;
        });
        if (u == units.end()) {
            return std::nullopt;
        }
        total += value * u->second;
        s.remove_prefix(unit_end);
    }
    // time.Duration is an int64 of nanoseconds.
    if (!std::isfinite(total) || total > 9.2e18) {
        return std::nullopt;
    }
    auto ns = std::chrono::nanoseconds{static_cast<std::int64_t>(total)};
    return negative ? -ns : ns;
}

/// A Go duration in whole seconds; a positive duration under a second becomes one second so
/// that it does not turn into "0 = disabled".
std::optional<std::chrono::seconds> read_duration(
    checker& c, const toml::node& n, const std::string& key, std::string_view example
) {
    if (auto s = n.as_string()) {
        if (auto d = parse_go_duration(s->get())) {
            auto secs = std::chrono::duration_cast<std::chrono::seconds>(*d);
            if (*d > 0ns && secs == 0s) {
                secs = 1s;
            }
            return secs;
        }
    }
    c.error(
        n.source(),
        key,
        expected("a string such as \"" + std::string(example) + "\" (units h, m, s, ms)", n)
    );
    return std::nullopt;
}

/// gitlab-runner writes token times as TOML date-times; a string in RFC 3339 is accepted too.
/// Returns the empty string for "not set".
std::optional<std::string> read_timestamp(checker& c, const toml::node& n, const std::string& key) {
    if (auto dt = n.as_date_time()) {
        return internal::format_rfc3339(dt->get());
    }
    if (auto s = n.as_string()) {
        if (s->get().empty()) {
            return std::string{};
        }
        if (auto dt = internal::parse_rfc3339(s->get())) {
            return internal::format_rfc3339(*dt);
        }
    }
    c.error(n.source(), key, expected("an RFC 3339 date-time such as 2026-01-02T03:04:05Z", n));
    return std::nullopt;
}

/// Docker's size strings as go-units' RAMInBytes reads them: "512m", "2g", "1.5GiB", "1024".
bool is_docker_size(std::string_view s) {
    std::size_t i = 0;
    auto digits = [&] {
        std::size_t start = i;
        while (i < s.size() && std::isdigit(static_cast<unsigned char>(s[i])) != 0) {
            ++i;
        }
        return i > start;
    };
    if (!digits()) {
        return false;
    }
    while (i < s.size() && s[i] == '.') {
        ++i;
        if (!digits()) {
            return false;
        }
    }
    if (i < s.size() && s[i] == ' ') {
        ++i;
    }
    if (i < s.size() && std::string_view("kKmMgGtTpP").find(s[i]) != std::string_view::npos) {
        ++i;
    }
    if (i < s.size() && (s[i] == 'i' || s[i] == 'I')) {
        ++i;
    }
    if (i < s.size() && (s[i] == 'b' || s[i] == 'B')) {
        ++i;
    }
    return i == s.size();
}

/// gitlab-runner reads `cpus` as a rational number: "1.5", "0.25", "3/2".
bool is_cpu_count(std::string_view s) {
    auto number = [](std::string_view t) {
        if (t.empty()) {
            return false;
        }
        bool seen_dot = false;
        bool seen_digit = false;
        for (char ch : t) {
            if (ch == '.' && !seen_dot) {
                seen_dot = true;
            } else if (std::isdigit(static_cast<unsigned char>(ch)) != 0) {
                seen_digit = true;
            } else {
                return false;
            }
        }
        return seen_digit;
    };
    auto slash = s.find('/');
    if (slash == std::string_view::npos) {
        return number(s);
    }
    return number(s.substr(0, slash)) && number(s.substr(slash + 1));
}

// ---------------------------------------------------------------------------------------------
// Table schemas. A field reads one key into a model struct; `walk` dispatches every key of a
// table to its field, or reports it as ignored (a real gitlab-runner key kiln does not
// implement) or unknown (probably a typo).

template <class T>
struct field {
    std::string_view name;
    void (*read)(checker&, const toml::node&, const std::string&, T&);
};

template <class T>
void walk(
    checker& c,
    const toml::table& tbl,
    const std::string& path,
    std::span<const field<T>> fields,
    std::span<const std::string_view> ignored,
    T& out
) {
    std::vector<std::string_view> names;
    for (const auto& f : fields) {
        names.push_back(f.name);
    }
    for (auto&& [k, v] : tbl) {
        const std::string key = child_key(path, k.str());
        auto f = std::find_if(fields.begin(), fields.end(), [&](const auto& f) {
            return f.name == k.str();
        });
        if (f != fields.end()) {
            f->read(c, v, key, out);
        } else if (std::find(ignored.begin(), ignored.end(), k.str()) != ignored.end()) {
            c.ignored(k.source(), key);
        } else {
            std::string message = "unknown key";
            const std::span<const std::string_view> modelled(names);
            if (auto guess = closest(k.str(), {modelled, ignored})) {
                message += " (did you mean \"" + std::string(*guess) + "\"?)";
            }
            c.warning(k.source(), key, std::move(message));
        }
    }
}

template <class T, std::string T::*M>
void string_field(checker& c, const toml::node& n, const std::string& key, T& out) {
    if (auto v = read_string(c, n, key)) {
        out.*M = std::move(*v);
    }
}

template <class T, bool T::*M>
void bool_field(checker& c, const toml::node& n, const std::string& key, T& out) {
    if (auto v = read_bool(c, n, key)) {
        out.*M = *v;
    }
}

template <class T, std::optional<bool> T::*M>
void optional_bool_field(checker& c, const toml::node& n, const std::string& key, T& out) {
    if (auto v = read_bool(c, n, key)) {
        out.*M = *v;
    }
}

template <class T, std::int64_t T::*M>
void int_field(checker& c, const toml::node& n, const std::string& key, T& out) {
    if (auto v = read_int(c, n, key)) {
        out.*M = *v;
    }
}

template <class T, std::int64_t T::*M>
void natural_field(checker& c, const toml::node& n, const std::string& key, T& out) {
    if (auto v = read_int(c, n, key, 0)) {
        out.*M = *v;
    }
}

template <class T, strings T::*M>
void strings_field(checker& c, const toml::node& n, const std::string& key, T& out) {
    if (auto v = read_strings(c, n, key)) {
        out.*M = std::move(*v);
    }
}

template <class T, string_map T::*M>
void string_map_field(checker& c, const toml::node& n, const std::string& key, T& out) {
    if (auto v = read_string_map(c, n, key)) {
        out.*M = std::move(*v);
    }
}

template <class T, std::string T::*M>
void size_field(checker& c, const toml::node& n, const std::string& key, T& out) {
    auto s = n.as_string();
    if (s != nullptr && (s->get().empty() || is_docker_size(s->get()))) {
        out.*M = s->get();
        return;
    }
    c.error(n.source(), key, expected("a size string such as \"512m\" or \"2g\"", n));
}

// ---------------------------------------------------------------------------------------------
// [[runners.docker.services]] and [runners.docker]

constexpr std::array<std::string_view, 3> pull_policies{"always", "if-not-present", "never"};

const field<docker_service> service_fields[] = {
    {"name", string_field<docker_service, &docker_service::name>},
    {"alias", string_field<docker_service, &docker_service::alias>},
    {"entrypoint", strings_field<docker_service, &docker_service::entrypoint>},
    {"command", strings_field<docker_service, &docker_service::command>},
    {"environment", strings_field<docker_service, &docker_service::environment>},
};

void read_pull_policies(checker& c, const toml::node& n, const std::string& key, strings& out) {
    auto v = read_strings(c, n, key, true);
    if (!v) {
        return;
    }
    for (const auto& p : *v) {
        if (std::find(pull_policies.begin(), pull_policies.end(), p) == pull_policies.end()) {
            c.error(n.source(), key, "expected " + one_of(pull_policies) + ", found " + quote(p));
            return;
        }
    }
    out = std::move(*v);
}

void read_services(checker& c, const toml::node& n, const std::string& key, docker_settings& d) {
    auto arr = n.as_array();
    if (arr == nullptr) {
        c.error(n.source(), key, expected("[[runners.docker.services]] tables", n));
        return;
    }
    d.services.clear();
    for (std::size_t i = 0; i < arr->size(); ++i) {
        const toml::node& item = *arr->get(i);
        const std::string item_key = key + "[" + std::to_string(i) + "]";
        auto tbl = item.as_table();
        if (tbl == nullptr) {
            c.error(item.source(), item_key, expected("a table with name and alias", item));
            continue;
        }
        docker_service s;
        walk<docker_service>(c, *tbl, item_key, service_fields, {}, s);
        if (s.name.empty()) {
            c.error(item.source(), item_key + ".name", "required key is missing or empty");
        }
        d.services.push_back(std::move(s));
    }
}

const field<docker_settings> docker_fields[] = {
    {"host", string_field<docker_settings, &docker_settings::host>},
    {"tls_verify", bool_field<docker_settings, &docker_settings::tls_verify>},
    {"tls_cert_path", string_field<docker_settings, &docker_settings::tls_cert_path>},
    {"image", string_field<docker_settings, &docker_settings::image>},
    {"pull_policy",
     [](checker& c, const toml::node& n, const std::string& key, docker_settings& d) {
         read_pull_policies(c, n, key, d.pull_policy);
     }},
    {"allowed_pull_policies",
     [](checker& c, const toml::node& n, const std::string& key, docker_settings& d) {
         read_pull_policies(c, n, key, d.allowed_pull_policies);
     }},
    {"allowed_images", strings_field<docker_settings, &docker_settings::allowed_images>},
    {"allowed_services", strings_field<docker_settings, &docker_settings::allowed_services>},
    {"allowed_privileged_images",
     strings_field<docker_settings, &docker_settings::allowed_privileged_images>},
    {"allowed_privileged_services",
     strings_field<docker_settings, &docker_settings::allowed_privileged_services>},
    {"allowed_users", strings_field<docker_settings, &docker_settings::allowed_users>},
    {"user", string_field<docker_settings, &docker_settings::user>},
    {"privileged", bool_field<docker_settings, &docker_settings::privileged>},
    {"services_privileged",
     optional_bool_field<docker_settings, &docker_settings::services_privileged>},
    {"volumes", strings_field<docker_settings, &docker_settings::volumes>},
    {"volumes_from", strings_field<docker_settings, &docker_settings::volumes_from>},
    {"volume_driver", string_field<docker_settings, &docker_settings::volume_driver>},
    {"volume_keep", bool_field<docker_settings, &docker_settings::volume_keep>},
    {"cache_dir", string_field<docker_settings, &docker_settings::cache_dir>},
    {"disable_cache", bool_field<docker_settings, &docker_settings::disable_cache>},
    {"memory", size_field<docker_settings, &docker_settings::memory>},
    {"memory_swap", size_field<docker_settings, &docker_settings::memory_swap>},
    {"memory_reservation", size_field<docker_settings, &docker_settings::memory_reservation>},
    {"cpus",
     [](checker& c, const toml::node& n, const std::string& key, docker_settings& d) {
         auto s = n.as_string();
         if (s != nullptr && (s->get().empty() || is_cpu_count(s->get()))) {
             d.cpus = s->get();
             return;
         }
         c.error(n.source(), key, expected("a string with a number of CPUs such as \"1.5\"", n));
     }},
    {"cpuset_cpus", string_field<docker_settings, &docker_settings::cpuset_cpus>},
    {"cpuset_mems", string_field<docker_settings, &docker_settings::cpuset_mems>},
    {"cpu_shares", natural_field<docker_settings, &docker_settings::cpu_shares>},
    {"cgroup_parent", string_field<docker_settings, &docker_settings::cgroup_parent>},
    {"oom_kill_disable", bool_field<docker_settings, &docker_settings::oom_kill_disable>},
    {"oom_score_adjust", int_field<docker_settings, &docker_settings::oom_score_adjust>},
    {"pids_limit",
     [](checker& c, const toml::node& n, const std::string& key, docker_settings& d) {
         if (auto v = read_int(c, n, key)) {
             d.pids_limit = *v;
         }
     }},
    {"shm_size", natural_field<docker_settings, &docker_settings::shm_size>},
    {"tmpfs", string_map_field<docker_settings, &docker_settings::tmpfs>},
    {"services_tmpfs", string_map_field<docker_settings, &docker_settings::services_tmpfs>},
    {"ulimit", string_map_field<docker_settings, &docker_settings::ulimit>},
    {"sysctls", string_map_field<docker_settings, &docker_settings::sysctls>},
    {"cap_add", strings_field<docker_settings, &docker_settings::cap_add>},
    {"cap_drop", strings_field<docker_settings, &docker_settings::cap_drop>},
    {"security_opt", strings_field<docker_settings, &docker_settings::security_opt>},
    {"devices", strings_field<docker_settings, &docker_settings::devices>},
    {"device_cgroup_rules", strings_field<docker_settings, &docker_settings::device_cgroup_rules>},
    {"gpus", string_field<docker_settings, &docker_settings::gpus>},
    {"userns_mode", string_field<docker_settings, &docker_settings::userns_mode>},
    {"group_add", strings_field<docker_settings, &docker_settings::group_add>},
    {"network_mode", string_field<docker_settings, &docker_settings::network_mode>},
    {"network_mtu", natural_field<docker_settings, &docker_settings::network_mtu>},
    {"enable_ipv6", bool_field<docker_settings, &docker_settings::enable_ipv6>},
    {"dns", strings_field<docker_settings, &docker_settings::dns>},
    {"dns_search", strings_field<docker_settings, &docker_settings::dns_search>},
    {"extra_hosts", strings_field<docker_settings, &docker_settings::extra_hosts>},
    {"hostname", string_field<docker_settings, &docker_settings::hostname>},
    {"runtime", string_field<docker_settings, &docker_settings::runtime>},
    {"wait_for_services_timeout",
     [](checker& c, const toml::node& n, const std::string& key, docker_settings& d) {
         // As in gitlab-runner: 0 means the default, a negative value disables the wait.
         if (auto v = read_int(c, n, key)) {
             d.wait_for_services_timeout = *v == 0 ? 30 : (*v < 0 ? -1 : *v);
         }
     }},
    {"services", read_services},
    {"services_limit", int_field<docker_settings, &docker_settings::services_limit>},
    {"helper_image", string_field<docker_settings, &docker_settings::helper_image>},
    {"helper_image_flavor", string_field<docker_settings, &docker_settings::helper_image_flavor>},
    {"disable_entrypoint_overwrite",
     bool_field<docker_settings, &docker_settings::disable_entrypoint_overwrite>},
    {"container_labels", string_map_field<docker_settings, &docker_settings::container_labels>},
    {"gomemlimit_ratio",
     [](checker& c, const toml::node& n, const std::string& key, docker_settings& d) {
         std::optional<double> v;
         if (auto f = n.as_floating_point()) {
             v = f->get();
         } else if (auto i = n.as_integer()) {
             v = static_cast<double>(i->get());
         }
         if (v && *v > 0 && *v <= 1) {
             d.gomemlimit_ratio = *v;
             return;
         }
         c.error(
             n.source(), key, expected("a number greater than 0 and at most 1, such as 0.9", n)
         );
     }},
    {"go_cache", optional_bool_field<docker_settings, &docker_settings::go_cache>},
};

constexpr std::string_view docker_ignored[] = {
    "volume_driver_ops",
    "services_security_opt",
    "services_devices",
    "service_gpus",
    "service_memory",
    "service_memory_swap",
    "service_memory_reservation",
    "service_cgroup_parent",
    "service_slot_cgroup_template",
    "service_cpuset_cpus",
    "service_cpus",
    "service_cpu_shares",
    "mac_address",
    "pid_mode",
    "ipcmode",
    "links",
    "isolation",
    "log_options",
};

// ---------------------------------------------------------------------------------------------
// [runners.cache], [runners.cache.s3], [runners.custom_build_dir]

constexpr std::string_view cache_types[] = {"s3", "gcs", "azure"};
constexpr std::string_view s3_auth_types[] = {"iam", "access-key"};

const field<cache_s3_settings> s3_fields[] = {
    {"ServerAddress", string_field<cache_s3_settings, &cache_s3_settings::server_address>},
    {"AccessKey", string_field<cache_s3_settings, &cache_s3_settings::access_key>},
    {"SecretKey", string_field<cache_s3_settings, &cache_s3_settings::secret_key>},
    {"SessionToken", string_field<cache_s3_settings, &cache_s3_settings::session_token>},
    {"BucketName", string_field<cache_s3_settings, &cache_s3_settings::bucket_name>},
    {"BucketLocation", string_field<cache_s3_settings, &cache_s3_settings::bucket_location>},
    {"Insecure", bool_field<cache_s3_settings, &cache_s3_settings::insecure>},
    {"AuthenticationType",
     [](checker& c, const toml::node& n, const std::string& key, cache_s3_settings& s3) {
         // gitlab-runner compares it case-insensitively and treats "" as "decide from keys".
         if (auto s = n.as_string(); s != nullptr && s->get().empty()) {
             s3.authentication_type.clear();
         } else if (auto v = read_choice(c, n, key, s3_auth_types, true)) {
             s3.authentication_type = *v;
         }
     }},
    {"PathStyle", optional_bool_field<cache_s3_settings, &cache_s3_settings::path_style>},
};

constexpr std::string_view s3_ignored[] = {
    "ServerSideEncryption",
    "ServerSideEncryptionKeyID",
    "DualStack",
    "Accelerate",
    "RoleARN",
    "UploadRoleARN",
};

constexpr std::string_view gcs_keys[] = {
    "AccessID",
    "PrivateKey",
    "CredentialsFile",
    "BucketName",
    "UniverseDomain",
};
constexpr std::string_view azure_keys[] = {
    "AccountName",
    "AccountKey",
    "ContainerName",
    "StorageDomain",
};

const toml::table* expect_table(checker& c, const toml::node& n, const std::string& key) {
    auto tbl = n.as_table();
    if (tbl == nullptr) {
        c.error(n.source(), key, expected("a table", n));
    }
    return tbl;
}

/// [runners.cache.gcs] and [runners.cache.azure]: known, not implemented. gitlab-runner's
/// register writes them empty, so only a table with settings in it gets a warning.
void read_unsupported_cache(
    checker& c, const toml::node& n, const std::string& key, std::span<const std::string_view> known
) {
    auto tbl = expect_table(c, n, key);
    if (tbl == nullptr) {
        return;
    }
    bool configured = false;
    for (auto&& [k, v] : *tbl) {
        if (contains(known, k.str())) {
            configured = true;
            continue;
        }
        std::string message = "unknown key";
        if (auto guess = closest(k.str(), {known})) {
            message += " (did you mean \"" + std::string(*guess) + "\"?)";
        }
        c.warning(k.source(), child_key(key, k.str()), std::move(message));
    }
    if (configured) {
        c.ignored(n.source(), key, "kiln implements only the s3 cache; this section is ignored");
    }
}

const field<cache_settings> cache_fields[] = {
    {"Type",
     [](checker& c, const toml::node& n, const std::string& key, cache_settings& cache) {
         if (auto s = n.as_string(); s != nullptr && s->get().empty()) {
             cache.type.clear();
             return;
         }
         if (auto v = read_choice(c, n, key, cache_types)) {
             cache.type = *v;
             if (*v != "s3") {
                 c.ignored(
                     n.source(),
                     key,
                     "kiln implements only the s3 cache and ignores this one; the runner gets no "
                     "distributed cache"
                 );
             }
         }
     }},
    {"Path", string_field<cache_settings, &cache_settings::path>},
    {"Shared", bool_field<cache_settings, &cache_settings::shared>},
    {"MaxUploadedArchiveSize",
     natural_field<cache_settings, &cache_settings::max_uploaded_archive_size>},
    {"s3",
     [](checker& c, const toml::node& n, const std::string& key, cache_settings& cache) {
         if (auto tbl = expect_table(c, n, key)) {
             cache_s3_settings s3;
             walk<cache_s3_settings>(c, *tbl, key, s3_fields, s3_ignored, s3);
             cache.s3 = std::move(s3);
         }
     }},
    {"gcs",
     [](checker& c, const toml::node& n, const std::string& key, cache_settings&) {
         read_unsupported_cache(c, n, key, gcs_keys);
     }},
    {"azure",
     [](checker& c, const toml::node& n, const std::string& key, cache_settings&) {
         read_unsupported_cache(c, n, key, azure_keys);
     }},
};

const field<custom_build_dir_settings> custom_build_dir_fields[] = {
    {"enabled",
     optional_bool_field<custom_build_dir_settings, &custom_build_dir_settings::enabled>},
};

// ---------------------------------------------------------------------------------------------
// [runners.signing] (kiln's own section)

/// A key file path: absolute, so that it does not depend on the directory kiln starts in.
std::optional<std::string> read_key_path(checker& c, const toml::node& n, const std::string& key) {
    auto s = n.as_string();
    if (s != nullptr && !s->get().empty() && s->get().front() == '/') {
        return s->get();
    }
    c.error(n.source(), key, expected("the absolute path of a PEM key file", n));
    return std::nullopt;
}

const field<signing_settings> signing_fields[] = {
    {"key_file",
     [](checker& c, const toml::node& n, const std::string& key, signing_settings& s) {
         if (auto v = read_key_path(c, n, key)) {
             s.key_file = *v;
         }
     }},
    {"verify_key_files",
     [](checker& c, const toml::node& n, const std::string& key, signing_settings& s) {
         auto v = read_strings(c, n, key, true);
         if (!v) {
             return;
         }
         s.verify_key_files.clear();
         for (std::size_t i = 0; i < v->size(); ++i) {
             const toml::node& item = n.is_array() ? *n.as_array()->get(i) : n;
             if (auto path = read_key_path(c, item, key)) {
                 s.verify_key_files.push_back(*path);
             }
         }
     }},
    {"provenance", bool_field<signing_settings, &signing_settings::provenance>},
};

// ---------------------------------------------------------------------------------------------
// [[runners]]

constexpr std::string_view kiln_executors[] = {"shell", "docker"};
constexpr std::string_view other_executors[] = {
    "docker-windows",
    "docker+machine",
    "docker-autoscaler",
    "docker-ssh",
    "docker-ssh+machine",
    "kubernetes",
    "ssh",
    "parallels",
    "virtualbox",
    "custom",
    "instance",
};
constexpr std::string_view shells[] = {"bash", "sh", "pwsh", "powershell", "cmd"};

template <class T, std::chrono::seconds T::*M, std::int64_t Default>
void seconds_or_default_field(checker& c, const toml::node& n, const std::string& key, T& out) {
    // gitlab-runner reads 0 and negative values as "use the default".
    if (auto v = read_int(c, n, key)) {
        out.*M = std::chrono::seconds{*v > 0 ? *v : Default};
    }
}

template <class T, std::int64_t T::*M, std::int64_t Default>
void positive_or_default_field(checker& c, const toml::node& n, const std::string& key, T& out) {
    if (auto v = read_int(c, n, key)) {
        out.*M = *v > 0 ? *v : Default;
    }
}

template <class T, std::optional<std::string> T::*M>
void timestamp_field(checker& c, const toml::node& n, const std::string& key, T& out) {
    if (auto v = read_timestamp(c, n, key)) {
        out.*M = v->empty() ? std::nullopt : std::optional<std::string>(std::move(*v));
    }
}

const field<runner_entry> runner_fields[] = {
    {"name", string_field<runner_entry, &runner_entry::name>},
    {"url", string_field<runner_entry, &runner_entry::url>},
    {"id", int_field<runner_entry, &runner_entry::id>},
    {"token", string_field<runner_entry, &runner_entry::token>},
    {"token_obtained_at", timestamp_field<runner_entry, &runner_entry::token_obtained_at>},
    {"token_expires_at", timestamp_field<runner_entry, &runner_entry::token_expires_at>},
    {"tls-ca-file", string_field<runner_entry, &runner_entry::tls_ca_file>},
    {"tls-cert-file", string_field<runner_entry, &runner_entry::tls_cert_file>},
    {"tls-key-file", string_field<runner_entry, &runner_entry::tls_key_file>},
    {"executor",
     [](checker& c, const toml::node& n, const std::string& key, runner_entry& r) {
         auto v = read_string(c, n, key);
         if (!v) {
             return;
         }
         if (!contains(kiln_executors, *v) && !contains(other_executors, *v)) {
             std::string message = "unknown executor " + quote(*v);
             if (auto guess = closest(*v, {kiln_executors, other_executors})) {
                 message += " (did you mean \"" + std::string(*guess) + "\"?)";
             }
             c.error(n.source(), key, message + "; kiln runs shell and docker");
             return;
         }
         r.executor = std::move(*v);
     }},
    {"shell",
     [](checker& c, const toml::node& n, const std::string& key, runner_entry& r) {
         if (auto s = n.as_string(); s != nullptr && s->get().empty()) {
             r.shell.clear();
         } else if (auto v = read_choice(c, n, key, shells)) {
             r.shell = *v;
         }
     }},
    {"builds_dir", string_field<runner_entry, &runner_entry::builds_dir>},
    {"cache_dir", string_field<runner_entry, &runner_entry::cache_dir>},
    {"environment",
     [](checker& c, const toml::node& n, const std::string& key, runner_entry& r) {
         auto v = read_strings(c, n, key);
         if (!v) {
             return;
         }
         r.environment.clear();
         for (std::size_t i = 0; i < v->size(); ++i) {
             auto& entry = (*v)[i];
             if (entry.find('=') == std::string::npos || entry.front() == '=') {
                 // gitlab-runner drops such entries without a word; keep them out of the model
                 // too, but tell the operator.
                 c.warning(
                     n.as_array()->get(i)->source(),
                     key,
                     quote(entry) + " is not of the form KEY=value and is ignored"
                 );
                 continue;
             }
             r.environment.push_back(std::move(entry));
         }
     }},
    {"tags", strings_field<runner_entry, &runner_entry::tags>},
    {"request_concurrency",
     positive_or_default_field<runner_entry, &runner_entry::request_concurrency, 1>},
    {"limit",
     [](checker& c, const toml::node& n, const std::string& key, runner_entry& r) {
         // gitlab-runner only limits when limit > 0.
         if (auto v = read_int(c, n, key)) {
             r.limit = std::max<std::int64_t>(*v, 0);
         }
     }},
    {"output_limit", positive_or_default_field<runner_entry, &runner_entry::output_limit, 4096>},
    {"strict_check_interval", bool_field<runner_entry, &runner_entry::strict_check_interval>},
    {"pre_get_sources_script", string_field<runner_entry, &runner_entry::pre_get_sources_script>},
    {"post_get_sources_script", string_field<runner_entry, &runner_entry::post_get_sources_script>},
    {"pre_build_script", string_field<runner_entry, &runner_entry::pre_build_script>},
    {"post_build_script", string_field<runner_entry, &runner_entry::post_build_script>},
    {"clone_url", string_field<runner_entry, &runner_entry::clone_url>},
    {"debug_trace_disabled", bool_field<runner_entry, &runner_entry::debug_trace_disabled>},
    {"clean_git_config", optional_bool_field<runner_entry, &runner_entry::clean_git_config>},
    {"unhealthy_requests_limit",
     positive_or_default_field<runner_entry, &runner_entry::unhealthy_requests_limit, 3>},
    {"unhealthy_interval",
     [](checker& c, const toml::node& n, const std::string& key, runner_entry& r) {
         if (auto v = read_duration(c, n, key, "1h30m")) {
             r.unhealthy_interval = *v > 0s ? *v : std::chrono::seconds{3600};
         }
     }},
    {"job_status_final_update_retry_limit",
     positive_or_default_field<
         runner_entry,
         &runner_entry::job_status_final_update_retry_limit,
         10>},
    {"feature_flags",
     [](checker& c, const toml::node& n, const std::string& key, runner_entry& r) {
         auto tbl = n.as_table();
         if (tbl == nullptr) {
             c.error(n.source(), key, expected("a table of FF_* = true/false", n));
             return;
         }
         for (auto&& [k, v] : *tbl) {
             if (auto b = read_bool(c, v, child_key(key, k.str()))) {
                 r.feature_flags[std::string(k.str())] = *b;
             }
         }
     }},
    {"docker",
     [](checker& c, const toml::node& n, const std::string& key, runner_entry& r) {
         if (auto tbl = expect_table(c, n, key)) {
             docker_settings d;
             walk<docker_settings>(c, *tbl, key, docker_fields, docker_ignored, d);
             r.docker = std::move(d);
         }
     }},
    {"cache",
     [](checker& c, const toml::node& n, const std::string& key, runner_entry& r) {
         if (auto tbl = expect_table(c, n, key)) {
             cache_settings cache;
             walk<cache_settings>(c, *tbl, key, cache_fields, {}, cache);
             r.cache = std::move(cache);
         }
     }},
    {"custom_build_dir",
     [](checker& c, const toml::node& n, const std::string& key, runner_entry& r) {
         if (auto tbl = expect_table(c, n, key)) {
             walk<custom_build_dir_settings>(
                 c, *tbl, key, custom_build_dir_fields, {}, r.custom_build_dir
             );
         }
     }},
    {"signing",
     [](checker& c, const toml::node& n, const std::string& key, runner_entry& r) {
         if (auto tbl = expect_table(c, n, key)) {
             signing_settings s;
             walk<signing_settings>(c, *tbl, key, signing_fields, {}, s);
             if (!tbl->contains("key_file") && !tbl->contains("verify_key_files")) {
                 c.warning(
                     n.source(),
                     key,
                     "neither key_file nor verify_key_files is set; artifacts are neither "
                     "signed nor verified"
                 );
             }
             r.signing = std::move(s);
         }
     }},
};

constexpr std::string_view runner_ignored[] = {
    "labels",
    "safe_directory_checkout",
    "referees",
    "prepare_timeout",
    "get_sources_timeout",
    "artifact",
    "monitoring",
    "use_slot_cgroups",
    "slot_cgroup_template",
    "proxy_exec",
    "step_runner_image",
    "experimental",
    "pre_clone_script",
    "post_clone_script",
    "instance",
    "ssh",
    "parallels",
    "virtualbox",
    "machine",
    "kubernetes",
    "custom",
    "autoscaler",
};

runner_entry read_runner(checker& c, const toml::table& tbl, const std::string& path) {
    const auto executor = tbl["executor"].value<std::string>();
    const bool other = executor && contains(other_executors, *executor);

    runner_entry r;
    c.quiet_ignored = other;
    walk<runner_entry>(c, tbl, path, runner_fields, runner_ignored, r);
    c.quiet_ignored = false;

    for (auto [name, value] : {std::pair{"url", &r.url}, std::pair{"token", &r.token}}) {
        if (value->empty() && !(tbl.contains(name) && !tbl[name].is_string())) {
            c.error(tbl.source(), child_key(path, name), "required key is missing or empty");
        }
    }
    if (other) {
        c.warning(
            tbl.get("executor")->source(),
            child_key(path, "executor"),
            "kiln runs only the shell and docker executors; it will not run this runner (" +
                quote(*executor) + ")"
        );
    } else if (!tbl.contains("executor")) {
        c.warning(
            tbl.source(),
            child_key(path, "executor"),
            "missing; kiln will not run this runner (use \"shell\" or \"docker\")"
        );
    }
    return r;
}

// ---------------------------------------------------------------------------------------------
// Global section

constexpr std::string_view log_levels[] = {
    "debug",
    "info",
    "warn",
    "warning",
    "error",
    "fatal",
    "panic",
};
constexpr std::string_view log_formats[] = {"runner", "text", "json"};

struct session_server_settings {
    std::string listen_address;
    std::string advertise_address;
    std::int64_t session_timeout = 1800;
};

const field<session_server_settings> session_server_fields[] = {
    {"listen_address",
     string_field<session_server_settings, &session_server_settings::listen_address>},
    {"advertise_address",
     string_field<session_server_settings, &session_server_settings::advertise_address>},
    {"session_timeout",
     int_field<session_server_settings, &session_server_settings::session_timeout>},
};

const field<settings> root_fields[] = {
    {"concurrent",
     [](checker& c, const toml::node& n, const std::string& key, settings& s) {
         // gitlab-runner refuses to start with concurrent = 0.
         if (auto v = read_int(c, n, key, 1)) {
             s.concurrent = *v;
         }
     }},
    {"check_interval", seconds_or_default_field<settings, &settings::check_interval, 3>},
    {"log_level",
     [](checker& c, const toml::node& n, const std::string& key, settings& s) {
         // logrus parses levels case-insensitively.
         if (auto v = read_choice(c, n, key, log_levels, true)) {
             s.log_level = *v;
         }
     }},
    {"log_format",
     [](checker& c, const toml::node& n, const std::string& key, settings& s) {
         if (auto v = read_choice(c, n, key, log_formats)) {
             s.log_format = *v;
         }
     }},
    {"listen_address", string_field<settings, &settings::listen_address>},
    {"shutdown_timeout", seconds_or_default_field<settings, &settings::shutdown_timeout, 30>},
    {"connection_max_age",
     [](checker& c, const toml::node& n, const std::string& key, settings& s) {
         if (auto v = read_duration(c, n, key, "15m")) {
             s.connection_max_age = std::max(*v, std::chrono::seconds{0});
         }
     }},
    {"sentry_dsn", string_field<settings, &settings::sentry_dsn>},
    {"spool_dir", string_field<settings, &settings::spool_dir>},
    {"prune_older_than",
     [](checker& c, const toml::node& n, const std::string& key, settings& s) {
         if (auto v = read_duration(c, n, key, "168h")) {
             s.prune_older_than = std::max(*v, std::chrono::seconds{0});
         }
     }},
    {"user", string_field<settings, &settings::user>},
    {"session_server",
     [](checker& c, const toml::node& n, const std::string& key, settings&) {
         auto tbl = expect_table(c, n, key);
         if (tbl == nullptr) {
             return;
         }
         session_server_settings server;
         walk<session_server_settings>(c, *tbl, key, session_server_fields, {}, server);
         // register writes the section with only session_timeout; it does nothing without an
         // address, so only a configured server is worth a warning.
         if (!server.listen_address.empty() || !server.advertise_address.empty()) {
             c.ignored(
                 n.source(),
                 key,
                 "kiln has no session server (interactive web terminal); this section is ignored"
             );
         }
     }},
    {"runners",
     [](checker& c, const toml::node& n, const std::string& key, settings& s) {
         auto arr = n.as_array();
         if (arr == nullptr) {
             c.error(n.source(), key, expected("[[runners]] entries (an array of tables)", n));
             return;
         }
         for (std::size_t i = 0; i < arr->size(); ++i) {
             const toml::node& item = *arr->get(i);
             const std::string item_key = key + "[" + std::to_string(i) + "]";
             if (auto tbl = item.as_table()) {
                 s.runners.push_back(read_runner(c, *tbl, item_key));
             } else {
                 c.error(item.source(), item_key, expected("a [[runners]] table", item));
             }
         }
     }},
};

constexpr std::string_view root_ignored[] = {"labels", "experimental", "machine"};

std::string two_digits(unsigned value) {
    char buf[3];
    std::snprintf(buf, sizeof buf, "%02u", value % 100);
    return buf;
}

}  // namespace

namespace internal {

load_result settings_from_toml(const toml::table& root, std::string_view source) {
    checker c(source);
    settings s;
    walk<settings>(c, root, "", root_fields, root_ignored, s);

    load_result result;
    if (!c.has_errors()) {
        result.value = std::move(s);
    }
    result.diagnostics = std::move(c).take();
    // toml++ tables iterate in key order; report in file order.
    std::stable_sort(
        result.diagnostics.begin(),
        result.diagnostics.end(),
        [](const diagnostic& a, const diagnostic& b) { return a.line < b.line; }
    );
    return result;
}

runner_entry runner_from_toml(const toml::table& runner) {
    checker scratch("");
    return read_runner(scratch, runner, "runners[]");
}

diagnostic syntax_error(const toml::parse_error& error, std::string_view source) {
    diagnostic d;
    d.severity = diagnostic::level::error;
    d.source = std::string(source);
    d.line = static_cast<int>(error.source().begin.line);
    d.column = static_cast<int>(error.source().begin.column);
    d.message = std::string(error.description());
    return d;
}

std::optional<toml::date_time> parse_rfc3339(std::string_view text) {
    // Parsed by toml++ itself (a TOML offset date-time is RFC 3339); the guard keeps the text
    // a single value.
    if (text.empty() || text.front() == ' ' || text.back() == ' ' ||
        text.find_first_of("\n\r\t\"'#=[]{},") != std::string_view::npos) {
        return std::nullopt;
    }
    try {
        auto doc = toml::parse("v = " + std::string(text));
        if (auto dt = doc["v"].as_date_time(); dt != nullptr && dt->get().offset) {
            return dt->get();
        }
    } catch (const toml::parse_error&) {
        // not a date-time
    }
    return std::nullopt;
}

std::string format_rfc3339(const toml::date_time& value) {
    char buf[40];
    std::snprintf(
        buf,
        sizeof buf,
        "%04u-%02u-%02uT%02u:%02u:%02u",
        static_cast<unsigned>(value.date.year),
        static_cast<unsigned>(value.date.month),
        static_cast<unsigned>(value.date.day),
        static_cast<unsigned>(value.time.hour),
        static_cast<unsigned>(value.time.minute),
        static_cast<unsigned>(value.time.second)
    );
    std::string out = buf;
    if (value.time.nanosecond != 0) {
        std::snprintf(buf, sizeof buf, ".%09u", static_cast<unsigned>(value.time.nanosecond));
        std::string fraction = buf;
        fraction.erase(fraction.find_last_not_of('0') + 1);
        out += fraction;
    }
    if (value.offset) {
        int minutes = value.offset->minutes;
        if (minutes == 0) {
            out += 'Z';
        } else {
            out += minutes < 0 ? '-' : '+';
            auto abs = static_cast<unsigned>(minutes < 0 ? -minutes : minutes);
            out += two_digits(abs / 60) + ":" + two_digits(abs % 60);
        }
    }
    return out;
}

}  // namespace internal

load_result parse_config(std::string_view text, std::string_view source) {
    toml::table root;
    try {
        root = toml::parse(text, source);
    } catch (const toml::parse_error& e) {
        load_result result;
        result.diagnostics.push_back(internal::syntax_error(e, source));
        return result;
    }
    return internal::settings_from_toml(root, source);
}

load_result load_config_file(const std::filesystem::path& path) {
    const std::string name = path.string();
    std::string text;
    int err = 0;
    if (int fd = ::open(name.c_str(), O_RDONLY | O_CLOEXEC); fd < 0) {
        err = errno;
    } else {
        char buf[16384];
        for (;;) {
            ssize_t n = ::read(fd, buf, sizeof buf);
            if (n > 0) {
                text.append(buf, static_cast<std::size_t>(n));
            } else if (n == 0) {
                break;
            } else if (errno != EINTR) {
                err = errno;
                break;
            }
        }
        ::close(fd);
    }
    if (err != 0) {
        diagnostic d;
        d.source = name;
        d.message = std::string("cannot read the file: ") + std::strerror(err);
        load_result result;
        result.diagnostics.push_back(std::move(d));
        return result;
    }
    return parse_config(text, name);
}

}  // namespace kiln::config
