#include "config/writer.hpp"

#include <algorithm>
#include <array>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <limits>
#include <span>
#include <stdexcept>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <toml++/toml.h>

#include "config/toml_model.hpp"

namespace kiln::config {

namespace {

using namespace std::string_view_literals;

// ---------------------------------------------------------------------------------------------
// Key order. Keys read from a file keep their place; keys kiln adds go where gitlab-runner
// (or, for [[runners]], kiln's register) puts them.

enum class schema { root, runner, docker, cache, cache_s3, other };

constexpr std::string_view root_order[] = {
    "concurrent",
    "check_interval",
    "log_level",
    "log_format",
    "listen_address",
    "shutdown_timeout",
    "connection_max_age",
    "sentry_dsn",
    "spool_dir",
    "prune_older_than",
    "user",
    "session_server",
    "runners",
};

constexpr std::string_view runner_order[] = {
    "name",
    "url",
    "id",
    "token",
    "token_obtained_at",
    "token_expires_at",
    "executor",
    "shell",
    "builds_dir",
    "cache_dir",
    "limit",
    "request_concurrency",
    "output_limit",
    "environment",
    "tags",
    "tls-ca-file",
    "tls-cert-file",
    "tls-key-file",
    "clone_url",
    "pre_get_sources_script",
    "post_get_sources_script",
    "pre_build_script",
    "post_build_script",
    "debug_trace_disabled",
    "clean_git_config",
    "strict_check_interval",
    "unhealthy_requests_limit",
    "unhealthy_interval",
    "job_status_final_update_retry_limit",
    "feature_flags",
    "docker",
    "custom_build_dir",
    "cache",
};

// gitlab-runner's DockerConfig field order, with kiln's own keys last.
constexpr std::string_view docker_order[] = {
    "host",
    "tls_cert_path",
    "tls_verify",
    "hostname",
    "image",
    "runtime",
    "memory",
    "memory_swap",
    "memory_reservation",
    "cgroup_parent",
    "cpuset_cpus",
    "cpuset_mems",
    "cpus",
    "cpu_shares",
    "dns",
    "dns_search",
    "privileged",
    "services_privileged",
    "disable_entrypoint_overwrite",
    "user",
    "allowed_users",
    "group_add",
    "userns_mode",
    "cap_add",
    "cap_drop",
    "oom_kill_disable",
    "oom_score_adjust",
    "pids_limit",
    "security_opt",
    "devices",
    "device_cgroup_rules",
    "gpus",
    "disable_cache",
    "volumes",
    "volume_driver",
    "volume_keep",
    "cache_dir",
    "extra_hosts",
    "volumes_from",
    "network_mode",
    "services_limit",
    "wait_for_services_timeout",
    "allowed_images",
    "allowed_privileged_images",
    "allowed_privileged_services",
    "allowed_pull_policies",
    "allowed_services",
    "pull_policy",
    "shm_size",
    "helper_image",
    "helper_image_flavor",
    "enable_ipv6",
    "network_mtu",
    "gomemlimit_ratio",
    "go_cache",
    "services",
    "tmpfs",
    "services_tmpfs",
    "sysctls",
    "ulimit",
    "container_labels",
};

constexpr std::string_view cache_order[] = {
    "Type",
    "Path",
    "Shared",
    "MaxUploadedArchiveSize",
    "s3",
    "gcs",
    "azure",
};

constexpr std::string_view s3_order[] = {
    "ServerAddress",
    "AccessKey",
    "SecretKey",
    "SessionToken",
    "BucketName",
    "BucketLocation",
    "Insecure",
    "AuthenticationType",
    "PathStyle",
};

std::span<const std::string_view> order_of(schema s) {
    switch (s) {
        case schema::root:
            return root_order;
        case schema::runner:
            return runner_order;
        case schema::docker:
            return docker_order;
        case schema::cache:
            return cache_order;
        case schema::cache_s3:
            return s3_order;
        case schema::other:
            break;
    }
    return {};
}

schema child_schema(schema parent, std::string_view key) {
    if (parent == schema::root && key == "runners") {
        return schema::runner;
    }
    if (parent == schema::runner && key == "docker") {
        return schema::docker;
    }
    if (parent == schema::runner && key == "cache") {
        return schema::cache;
    }
    if (parent == schema::cache && key == "s3") {
        return schema::cache_s3;
    }
    return schema::other;
}

struct entry {
    const toml::key* key;
    const toml::node* node;
};

constexpr std::size_t unranked = std::numeric_limits<std::size_t>::max();

std::vector<entry> ordered(const toml::table& tbl, schema s) {
    auto order = order_of(s);
    auto rank = [&](const entry& e) {
        auto it = std::find(order.begin(), order.end(), e.key->str());
        return it == order.end() ? unranked : static_cast<std::size_t>(it - order.begin());
    };
    std::vector<entry> from_file;
    std::vector<entry> added;
    for (auto&& [k, v] : tbl) {
        (k.source().begin.line > 0 ? from_file : added).push_back({&k, &v});
    }
    std::stable_sort(from_file.begin(), from_file.end(), [](const entry& a, const entry& b) {
        const auto& x = a.key->source().begin;
        const auto& y = b.key->source().begin;
        return x.line != y.line ? x.line < y.line : x.column < y.column;
    });
    std::stable_sort(added.begin(), added.end(), [&](const entry& a, const entry& b) {
        return rank(a) < rank(b);
    });
    // Each added key goes right after the last key that precedes it in the canonical order.
    std::vector<entry> out = std::move(from_file);
    for (const entry& e : added) {
        const std::size_t r = rank(e);
        std::size_t at = out.size();
        if (r != unranked) {
            at = 0;
            for (std::size_t i = 0; i < out.size(); ++i) {
                if (std::size_t ri = rank(out[i]); ri != unranked && ri < r) {
                    at = i + 1;
                }
            }
            if (at == 0 && !out.empty() && rank(out[0]) == unranked) {
                at = out.size();
            }
        }
        out.insert(out.begin() + static_cast<std::ptrdiff_t>(at), e);
    }
    return out;
}

// ---------------------------------------------------------------------------------------------
// TOML text. toml++'s own formatter sorts keys and spaces arrays differently from
// gitlab-runner's files; this writer keeps the file's order and gitlab-runner's layout
// (two-space indentation per table level, `key = ["a", "b"]`).

std::string escaped(std::string_view s) {
    std::string out = "\"";
    for (unsigned char c : s) {
        switch (c) {
            case '"':
                out += "\\\"";
                break;
            case '\\':
                out += "\\\\";
                break;
            case '\b':
                out += "\\b";
                break;
            case '\t':
                out += "\\t";
                break;
            case '\n':
                out += "\\n";
                break;
            case '\f':
                out += "\\f";
                break;
            case '\r':
                out += "\\r";
                break;
            default:
                if (c < 0x20 || c == 0x7f) {
                    char buf[8];
                    std::snprintf(buf, sizeof buf, "\\u%04X", static_cast<unsigned>(c));
                    out += buf;
                } else {
                    out += static_cast<char>(c);
                }
        }
    }
    return out + '"';
}

std::string key_text(std::string_view k) {
    bool bare = !k.empty() && std::all_of(k.begin(), k.end(), [](char c) {
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
               c == '_' || c == '-';
    });
    return bare ? std::string(k) : escaped(k);
}

std::string float_text(double v) {
    if (std::isnan(v)) {
        return "nan";
    }
    if (std::isinf(v)) {
        return v < 0 ? "-inf" : "inf";
    }
    char buf[64];
    auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);
    std::string out(buf, end);
    if (out.find_first_of(".e") == std::string::npos) {
        out += ".0";
    }
    return out;
}

std::string date_text(const toml::date& d) {
    char buf[16];
    std::snprintf(
        buf,
        sizeof buf,
        "%04u-%02u-%02u",
        static_cast<unsigned>(d.year),
        static_cast<unsigned>(d.month),
        static_cast<unsigned>(d.day)
    );
    return buf;
}

std::string time_text(const toml::time& t) {
    char buf[32];
    std::snprintf(
        buf,
        sizeof buf,
        "%02u:%02u:%02u",
        static_cast<unsigned>(t.hour),
        static_cast<unsigned>(t.minute),
        static_cast<unsigned>(t.second)
    );
    std::string out = buf;
    if (t.nanosecond != 0) {
        std::snprintf(buf, sizeof buf, ".%09u", static_cast<unsigned>(t.nanosecond));
        std::string fraction = buf;
        fraction.erase(fraction.find_last_not_of('0') + 1);
        out += fraction;
    }
    return out;
}

bool is_section(const toml::node& n) {
    if (auto t = n.as_table()) {
        return !t->is_inline();
    }
    if (auto a = n.as_array()) {
        return !a->empty() && std::all_of(a->begin(), a->end(), [](const toml::node& item) {
            return item.is_table() && !item.as_table()->is_inline();
        });
    }
    return false;
}

std::string value_text(const toml::node& n) {
    switch (n.type()) {
        case toml::node_type::string:
            return escaped(n.as_string()->get());
        case toml::node_type::integer:
            return std::to_string(n.as_integer()->get());
        case toml::node_type::floating_point:
            return float_text(n.as_floating_point()->get());
        case toml::node_type::boolean:
            return n.as_boolean()->get() ? "true" : "false";
        case toml::node_type::date:
            return date_text(n.as_date()->get());
        case toml::node_type::time:
            return time_text(n.as_time()->get());
        case toml::node_type::date_time:
            return internal::format_rfc3339(n.as_date_time()->get());
        case toml::node_type::array: {
            std::string out = "[";
            bool first = true;
            for (const toml::node& item : *n.as_array()) {
                out += first ? "" : ", ";
                out += value_text(item);
                first = false;
            }
            return out + "]";
        }
        case toml::node_type::table: {
            const auto& tbl = *n.as_table();
            if (tbl.empty()) {
                return "{}";
            }
            std::string out = "{ ";
            bool first = true;
            for (const entry& e : ordered(tbl, schema::other)) {
                out += first ? "" : ", ";
                out += key_text(e.key->str()) + " = " + value_text(*e.node);
                first = false;
            }
            return out + " }";
        }
        case toml::node_type::none:
            break;
    }
    return "\"\"";
}

class toml_writer {
public:
    std::string text() && { return std::move(out_); }

    void table_body(const toml::table& tbl, schema s) {
        const auto entries = ordered(tbl, s);
        const std::string indent(path_.size() * 2, ' ');
        for (const entry& e : entries) {
            if (!is_section(*e.node)) {
                out_ += indent + key_text(e.key->str()) + " = " + value_text(*e.node) + "\n";
            }
        }
        for (const entry& e : entries) {
            if (!is_section(*e.node)) {
                continue;
            }
            path_.push_back(key_text(e.key->str()));
            const schema child = child_schema(s, e.key->str());
            if (auto sub = e.node->as_table()) {
                header("[" + dotted_path() + "]");
                table_body(*sub, child);
            } else {
                for (const toml::node& item : *e.node->as_array()) {
                    header("[[" + dotted_path() + "]]");
                    table_body(*item.as_table(), child);
                }
            }
            path_.pop_back();
        }
    }

private:
    void header(const std::string& text) {
        // A blank line before each top-level section, as gitlab-runner writes them.
        if (path_.size() == 1 && !out_.empty()) {
            out_ += "\n";
        }
        out_ += std::string((path_.size() - 1) * 2, ' ') + text + "\n";
    }

    std::string dotted_path() const {
        std::string out;
        for (const auto& part : path_) {
            out += out.empty() ? "" : ".";
            out += part;
        }
        return out;
    }

    std::string out_;
    std::vector<std::string> path_;
};

// ---------------------------------------------------------------------------------------------
// runner_entry → [[runners]] table

const std::string zero_time = "0001-01-01T00:00:00Z";

/// Token times are written as TOML date-times, as gitlab-runner does. Anything else would
/// give a file the loader rejects, so it is refused before the document changes.
toml::date_time timestamp(std::string_view key, std::string_view rfc3339) {
    if (auto dt = internal::parse_rfc3339(rfc3339)) {
        return *dt;
    }
    throw std::invalid_argument(
        std::string(key) + ": \"" + std::string(rfc3339) +
        "\" is not an RFC 3339 date-time such as 2026-01-02T03:04:05Z"
    );
}

void put_string(toml::table& t, std::string_view key, const std::string& value) {
    if (!value.empty()) {
        t.insert_or_assign(key, value);
    }
}

void put_strings(toml::table& t, std::string_view key, const std::vector<std::string>& values) {
    if (values.empty()) {
        return;
    }
    toml::array arr;
    for (const auto& v : values) {
        arr.push_back(v);
    }
    t.insert_or_assign(key, std::move(arr));
}

void put_map(toml::table& t, std::string_view key, const std::map<std::string, std::string>& m) {
    if (m.empty()) {
        return;
    }
    toml::table sub;
    for (const auto& [k, v] : m) {
        sub.insert_or_assign(k, v);
    }
    t.insert_or_assign(key, std::move(sub));
}

template <class T>
void put_if(toml::table& t, std::string_view key, const T& value, const T& default_value) {
    if (value != default_value) {
        t.insert_or_assign(key, value);
    }
}

toml::table docker_table(const docker_settings& d) {
    const docker_settings defaults;
    toml::table t;
    put_string(t, "host", d.host);
    put_string(t, "tls_cert_path", d.tls_cert_path);
    // gitlab-runner's register always writes these, defaults included.
    t.insert_or_assign("tls_verify", d.tls_verify);
    t.insert_or_assign("image", d.image);
    t.insert_or_assign("privileged", d.privileged);
    t.insert_or_assign("disable_entrypoint_overwrite", d.disable_entrypoint_overwrite);
    t.insert_or_assign("oom_kill_disable", d.oom_kill_disable);
    t.insert_or_assign("disable_cache", d.disable_cache);
    t.insert_or_assign("shm_size", d.shm_size);
    t.insert_or_assign("network_mtu", d.network_mtu);
    put_strings(t, "volumes", d.volumes);

    put_string(t, "hostname", d.hostname);
    put_string(t, "runtime", d.runtime);
    put_string(t, "memory", d.memory);
    put_string(t, "memory_swap", d.memory_swap);
    put_string(t, "memory_reservation", d.memory_reservation);
    put_string(t, "cgroup_parent", d.cgroup_parent);
    put_string(t, "cpuset_cpus", d.cpuset_cpus);
    put_string(t, "cpuset_mems", d.cpuset_mems);
    put_string(t, "cpus", d.cpus);
    put_if(t, "cpu_shares", d.cpu_shares, defaults.cpu_shares);
    put_strings(t, "dns", d.dns);
    put_strings(t, "dns_search", d.dns_search);
    if (d.services_privileged) {
        t.insert_or_assign("services_privileged", *d.services_privileged);
    }
    put_string(t, "user", d.user);
    put_strings(t, "allowed_users", d.allowed_users);
    put_strings(t, "group_add", d.group_add);
    put_string(t, "userns_mode", d.userns_mode);
    put_strings(t, "cap_add", d.cap_add);
    put_strings(t, "cap_drop", d.cap_drop);
    put_if(t, "oom_score_adjust", d.oom_score_adjust, defaults.oom_score_adjust);
    if (d.pids_limit) {
        t.insert_or_assign("pids_limit", *d.pids_limit);
    }
    put_strings(t, "security_opt", d.security_opt);
    put_strings(t, "devices", d.devices);
    put_strings(t, "device_cgroup_rules", d.device_cgroup_rules);
    put_string(t, "gpus", d.gpus);
    put_string(t, "volume_driver", d.volume_driver);
    put_if(t, "volume_keep", d.volume_keep, defaults.volume_keep);
    put_string(t, "cache_dir", d.cache_dir);
    put_strings(t, "extra_hosts", d.extra_hosts);
    put_strings(t, "volumes_from", d.volumes_from);
    put_string(t, "network_mode", d.network_mode);
    put_if(t, "services_limit", d.services_limit, defaults.services_limit);
    put_if(
        t,
        "wait_for_services_timeout",
        d.wait_for_services_timeout,
        defaults.wait_for_services_timeout
    );
    put_strings(t, "allowed_images", d.allowed_images);
    put_strings(t, "allowed_privileged_images", d.allowed_privileged_images);
    put_strings(t, "allowed_privileged_services", d.allowed_privileged_services);
    put_strings(t, "allowed_pull_policies", d.allowed_pull_policies);
    put_strings(t, "allowed_services", d.allowed_services);
    put_strings(t, "pull_policy", d.pull_policy);
    put_string(t, "helper_image", d.helper_image);
    put_string(t, "helper_image_flavor", d.helper_image_flavor);
    put_if(t, "enable_ipv6", d.enable_ipv6, defaults.enable_ipv6);
    if (d.gomemlimit_ratio) {
        t.insert_or_assign("gomemlimit_ratio", *d.gomemlimit_ratio);
    }
    if (d.go_cache) {
        t.insert_or_assign("go_cache", *d.go_cache);
    }
    if (!d.services.empty()) {
        toml::array services;
        for (const auto& s : d.services) {
            toml::table st;
            st.insert_or_assign("name", s.name);
            put_string(st, "alias", s.alias);
            put_strings(st, "entrypoint", s.entrypoint);
            put_strings(st, "command", s.command);
            put_strings(st, "environment", s.environment);
            services.push_back(std::move(st));
        }
        t.insert_or_assign("services", std::move(services));
    }
    put_map(t, "tmpfs", d.tmpfs);
    put_map(t, "services_tmpfs", d.services_tmpfs);
    put_map(t, "sysctls", d.sysctls);
    put_map(t, "ulimit", d.ulimit);
    put_map(t, "container_labels", d.container_labels);
    return t;
}

toml::table cache_table(const cache_settings& c) {
    toml::table t;
    put_string(t, "Type", c.type);
    put_string(t, "Path", c.path);
    put_if(t, "Shared", c.shared, false);
    t.insert_or_assign("MaxUploadedArchiveSize", c.max_uploaded_archive_size);
    if (c.s3) {
        const auto& s3 = *c.s3;
        toml::table st;
        put_string(st, "ServerAddress", s3.server_address);
        put_string(st, "AccessKey", s3.access_key);
        put_string(st, "SecretKey", s3.secret_key);
        put_string(st, "SessionToken", s3.session_token);
        put_string(st, "BucketName", s3.bucket_name);
        put_string(st, "BucketLocation", s3.bucket_location);
        put_if(st, "Insecure", s3.insecure, false);
        put_string(st, "AuthenticationType", s3.authentication_type);
        if (s3.path_style) {
            st.insert_or_assign("PathStyle", *s3.path_style);
        }
        t.insert_or_assign("s3", std::move(st));
    }
    return t;
}

toml::table runner_table(const runner_entry& r) {
    const runner_entry defaults;
    toml::table t;
    t.insert_or_assign("name", r.name);
    t.insert_or_assign("url", r.url);
    t.insert_or_assign("id", r.id);
    t.insert_or_assign("token", r.token);
    t.insert_or_assign(
        "token_obtained_at", timestamp("token_obtained_at", r.token_obtained_at.value_or(zero_time))
    );
    t.insert_or_assign(
        "token_expires_at", timestamp("token_expires_at", r.token_expires_at.value_or(zero_time))
    );
    t.insert_or_assign("executor", r.executor);
    put_string(t, "shell", r.shell);
    put_string(t, "builds_dir", r.builds_dir);
    put_string(t, "cache_dir", r.cache_dir);
    put_if(t, "limit", r.limit, defaults.limit);
    put_if(t, "request_concurrency", r.request_concurrency, defaults.request_concurrency);
    put_if(t, "output_limit", r.output_limit, defaults.output_limit);
    put_strings(t, "environment", r.environment);
    put_strings(t, "tags", r.tags);
    put_string(t, "tls-ca-file", r.tls_ca_file);
    put_string(t, "tls-cert-file", r.tls_cert_file);
    put_string(t, "tls-key-file", r.tls_key_file);
    put_string(t, "clone_url", r.clone_url);
    put_string(t, "pre_get_sources_script", r.pre_get_sources_script);
    put_string(t, "post_get_sources_script", r.post_get_sources_script);
    put_string(t, "pre_build_script", r.pre_build_script);
    put_string(t, "post_build_script", r.post_build_script);
    put_if(t, "debug_trace_disabled", r.debug_trace_disabled, defaults.debug_trace_disabled);
    if (r.clean_git_config) {
        t.insert_or_assign("clean_git_config", *r.clean_git_config);
    }
    put_if(t, "strict_check_interval", r.strict_check_interval, defaults.strict_check_interval);
    put_if(
        t, "unhealthy_requests_limit", r.unhealthy_requests_limit, defaults.unhealthy_requests_limit
    );
    if (r.unhealthy_interval != defaults.unhealthy_interval) {
        const auto seconds = std::to_string(r.unhealthy_interval.count()) + "s";
        t.insert_or_assign("unhealthy_interval", seconds);
    }
    put_if(
        t,
        "job_status_final_update_retry_limit",
        r.job_status_final_update_retry_limit,
        defaults.job_status_final_update_retry_limit
    );
    if (!r.feature_flags.empty()) {
        toml::table flags;
        for (const auto& [name, on] : r.feature_flags) {
            flags.insert_or_assign(name, on);
        }
        t.insert_or_assign("feature_flags", std::move(flags));
    }
    if (r.docker) {
        t.insert_or_assign("docker", docker_table(*r.docker));
    }
    toml::table custom_build_dir;
    if (r.custom_build_dir.enabled) {
        custom_build_dir.insert_or_assign("enabled", *r.custom_build_dir.enabled);
    }
    t.insert_or_assign("custom_build_dir", std::move(custom_build_dir));
    if (r.cache) {
        t.insert_or_assign("cache", cache_table(*r.cache));
    }
    return t;
}

toml::table new_document() {
    toml::table t;
    t.insert_or_assign("concurrent", 1);
    t.insert_or_assign("check_interval", 0);
    return t;
}

// ---------------------------------------------------------------------------------------------
// save()

[[noreturn]] void fail(int err, const std::filesystem::path& path) {
    throw std::system_error(err, std::generic_category(), "cannot write " + path.string());
}

/// mkdir -p with mode 0700 for the directories it creates (gitlab-runner does the same).
void make_directories(const std::filesystem::path& dir, const std::filesystem::path& target) {
    if (dir.empty()) {
        return;
    }
    struct stat st {};
    if (::stat(dir.c_str(), &st) == 0) {
        if (!S_ISDIR(st.st_mode)) {
            fail(ENOTDIR, target);
        }
        return;
    }
    if (errno != ENOENT) {
        fail(errno, target);
    }
    if (dir.has_parent_path() && dir.parent_path() != dir) {
        make_directories(dir.parent_path(), target);
    }
    if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
        fail(errno, target);
    }
}

class fd_guard {
public:
    explicit fd_guard(int fd) : fd_(fd) {}
    fd_guard(const fd_guard&) = delete;
    fd_guard& operator=(const fd_guard&) = delete;
    ~fd_guard() {
        if (fd_ >= 0) {
            ::close(fd_);
        }
    }
    int get() const { return fd_; }
    int release() { return std::exchange(fd_, -1); }

private:
    int fd_;
};

}  // namespace

struct config_document::impl {
    toml::table doc;
    std::string source;

    toml::array* runners() {
        if (auto arr = doc["runners"].as_array()) {
            return arr;
        }
        return nullptr;
    }
};

config_document::config_document() : impl_(std::make_unique<impl>()) {
    impl_->doc = new_document();
}

config_document::~config_document() = default;
config_document::config_document(config_document&&) noexcept = default;
config_document& config_document::operator=(config_document&&) noexcept = default;

config_document config_document::open(const std::filesystem::path& path) {
    const std::string name = path.string();
    int fd = ::open(name.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT) {
            return config_document();
        }
        throw std::system_error(errno, std::generic_category(), "cannot read " + name);
    }
    fd_guard guard(fd);
    std::string text;
    char buf[16384];
    for (;;) {
        ssize_t n = ::read(fd, buf, sizeof buf);
        if (n > 0) {
            text.append(buf, static_cast<std::size_t>(n));
        } else if (n == 0) {
            break;
        } else if (errno != EINTR) {
            throw std::system_error(errno, std::generic_category(), "cannot read " + name);
        }
    }
    return parse(text, name);
}

config_document config_document::parse(std::string_view text, std::string_view source) {
    config_document d;
    try {
        d.impl_->doc = toml::parse(text, source);
    } catch (const toml::parse_error& e) {
        throw std::runtime_error(internal::syntax_error(e, source).to_string());
    }
    d.impl_->source = std::string(source);
    return d;
}

void config_document::add_runner(const runner_entry& runner) {
    toml::table entry = runner_table(runner);
    auto* runners = impl_->runners();
    if (runners == nullptr) {
        if (impl_->doc.contains("runners")) {
            throw std::runtime_error(
                impl_->source + ": runners: expected [[runners]] entries, cannot add a runner"
            );
        }
        impl_->doc.insert_or_assign("runners", toml::array{});
        runners = impl_->runners();
    }
    runners->push_back(std::move(entry));
}

std::size_t config_document::remove_runners(const std::function<bool(const runner_entry&)>& match) {
    auto* runners = impl_->runners();
    if (runners == nullptr) {
        return 0;
    }
    std::size_t removed = 0;
    for (auto it = runners->begin(); it != runners->end();) {
        auto tbl = it->as_table();
        if (tbl != nullptr && match(internal::runner_from_toml(*tbl))) {
            it = runners->erase(it);
            ++removed;
        } else {
            ++it;
        }
    }
    return removed;
}

std::size_t config_document::replace_token(
    const std::string& old_token,
    const std::string& new_token,
    const std::string& obtained_at,
    const std::optional<std::string>& expires_at
) {
    const auto obtained = timestamp("token_obtained_at", obtained_at);
    const auto expires = timestamp("token_expires_at", expires_at.value_or(zero_time));
    auto* runners = impl_->runners();
    if (runners == nullptr) {
        return 0;
    }
    std::size_t changed = 0;
    for (auto& item : *runners) {
        auto tbl = item.as_table();
        if (tbl == nullptr || (*tbl)["token"].value<std::string>() != old_token) {
            continue;
        }
        tbl->insert_or_assign("token", new_token);
        tbl->insert_or_assign("token_obtained_at", obtained);
        tbl->insert_or_assign("token_expires_at", expires);
        ++changed;
    }
    return changed;
}

std::string config_document::to_toml() const {
    toml_writer w;
    w.table_body(impl_->doc, schema::root);
    return std::move(w).text();
}

void config_document::save(const std::filesystem::path& path) const {
    // Writing through a symlink replaces its target, as os.WriteFile in gitlab-runner does.
    std::filesystem::path target = path;
    std::error_code ec;
    if (std::filesystem::is_symlink(path, ec)) {
        auto resolved = std::filesystem::canonical(path, ec);
        if (!ec) {
            target = resolved;
        }
    }
    const std::filesystem::path dir = target.parent_path();
    make_directories(dir, path);

    const std::string text = to_toml();
    std::string temp = target.string() + ".tmp.XXXXXX";
    // mkostemp creates the file O_EXCL with mode 0600: the secrets in it are never readable by
    // others, not even for a moment.
    fd_guard fd(::mkostemp(temp.data(), O_CLOEXEC));
    if (fd.get() < 0) {
        fail(errno, path);
    }
    auto fail_and_clean = [&](int err) {
        ::unlink(temp.c_str());
        fail(err, path);
    };

    struct stat old {};
    if (::stat(target.c_str(), &old) == 0) {
        // Keep the owner when root rewrites a file that belongs to the service user.
        if (::fchown(fd.get(), old.st_uid, old.st_gid) != 0 && errno != EPERM) {
            fail_and_clean(errno);
        }
    }
    for (std::size_t done = 0; done < text.size();) {
        ssize_t n = ::write(fd.get(), text.data() + done, text.size() - done);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            fail_and_clean(errno);
        }
        done += static_cast<std::size_t>(n);
    }
    if (::fsync(fd.get()) != 0) {
        fail_and_clean(errno);
    }
    if (::close(fd.release()) != 0) {
        fail_and_clean(errno);
    }
    if (::rename(temp.c_str(), target.c_str()) != 0) {
        fail_and_clean(errno);
    }
    // The rename is durable only once the directory entry is on disk. Some file systems
    // cannot fsync a directory (EINVAL); the file is in place then, so that is no failure.
    const std::string dir_name = dir.empty() ? "." : dir.string();
    fd_guard dir_fd(::open(dir_name.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (dir_fd.get() < 0 || (::fsync(dir_fd.get()) != 0 && errno != EINVAL)) {
        fail(errno, path);
    }
}

}  // namespace kiln::config
