#include "executors/docker/docker_rules.hpp"

#include "runner/util/glob.hpp"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <nlohmann/json.hpp>
#include <stdexcept>

namespace kiln::executors::docker {

namespace {

bool parse_decimal(std::string_view s, double& out) {
    if (s.empty() || s.size() > 32) {
        return false;
    }
    bool digit = false;
    bool dot = false;
    for (char c : s) {
        if (std::isdigit(static_cast<unsigned char>(c)) != 0) {
            digit = true;
        } else if (c == '.' && !dot) {
            dot = true;
        } else {
            return false;
        }
    }
    if (!digit || s.front() == '.' || s.back() == '.') {
        return false;
    }
    out = std::stod(std::string(s));
    return true;
}

std::string lower(std::string_view s) {
    std::string r(s);
    std::transform(r.begin(), r.end(), r.begin(), [](unsigned char c) {
        return static_cast<char>(std::tolower(c));
    });
    return r;
}

std::vector<std::string> split_aliases(std::string_view s) {
    std::vector<std::string> out;
    std::string cur;
    for (char c : s) {
        if (c == ',' || std::isspace(static_cast<unsigned char>(c)) != 0) {
            if (!cur.empty()) {
                out.push_back(cur);
            }
            cur.clear();
        } else {
            cur += c;
        }
    }
    if (!cur.empty()) {
        out.push_back(cur);
    }
    return out;
}

}  // namespace

std::optional<std::int64_t> parse_size(std::string_view s) {
    std::size_t i = 0;
    while (i < s.size() && (std::isdigit(static_cast<unsigned char>(s[i])) != 0 || s[i] == '.')) {
        ++i;
    }
    double number = 0;
    if (!parse_decimal(s.substr(0, i), number)) {
        return std::nullopt;
    }
    auto unit = lower(s.substr(i));
    if (!unit.empty() && unit[0] == ' ') {
        unit.erase(0, 1);
    }
    // go-units: an optional multiplier letter, then optional "i", then optional "b".
    double mult = 1;
    std::size_t u = 0;
    if (u < unit.size()) {
        switch (unit[u]) {
            case 'k':
                mult = 1024.0;
                ++u;
                break;
            case 'm':
                mult = 1024.0 * 1024;
                ++u;
                break;
            case 'g':
                mult = 1024.0 * 1024 * 1024;
                ++u;
                break;
            case 't':
                mult = 1024.0 * 1024 * 1024 * 1024;
                ++u;
                break;
            case 'p':
                mult = 1024.0 * 1024 * 1024 * 1024 * 1024;
                ++u;
                break;
            default:
                break;
        }
    }
    if (u > 0 && u < unit.size() && unit[u] == 'i') {
        ++u;
    }
    if (u < unit.size() && unit[u] == 'b') {
        ++u;
    }
    if (u != unit.size()) {
        return std::nullopt;
    }
    double bytes = number * mult;
    if (bytes >= 9.2e18) {
        return std::nullopt;
    }
    return static_cast<std::int64_t>(bytes);
}

std::optional<std::int64_t> parse_cpus(std::string_view s) {
    double v = 0;
    if (!parse_decimal(s, v) || v <= 0) {
        return std::nullopt;
    }
    return static_cast<std::int64_t>(std::llround(v * 1e9));
}

int cpuset_count(std::string_view s) {
    int count = 0;
    std::size_t start = 0;
    if (s.empty()) {
        return 0;
    }
    while (start <= s.size()) {
        auto comma = s.find(',', start);
        auto part =
            s.substr(start, comma == std::string_view::npos ? s.size() - start : comma - start);
        auto dash = part.find('-');
        try {
            if (dash == std::string_view::npos) {
                std::stoi(std::string(part));
                ++count;
            } else {
                int a = std::stoi(std::string(part.substr(0, dash)));
                int b = std::stoi(std::string(part.substr(dash + 1)));
                if (b < a) {
                    return 0;
                }
                count += b - a + 1;
            }
        } catch (const std::exception&) {
            return 0;
        }
        if (comma == std::string_view::npos) {
            break;
        }
        start = comma + 1;
    }
    return count;
}

std::string gomemlimit_value(std::int64_t limit_bytes, double ratio) {
    if (limit_bytes <= 0 || ratio <= 0) {
        return {};
    }
    // The epsilon keeps ratios that binary floating point cannot hold exactly (0.95 is
    // 0.94999…) from rounding a whole MiB down: 0.95 × 1000 MiB is 950MiB, not 949MiB.
    auto mib = static_cast<std::int64_t>(std::floor(
        static_cast<long double>(limit_bytes) * static_cast<long double>(ratio) /
            (1024.0L * 1024.0L) +
        1e-9L
    ));
    if (mib < 1) {
        return {};
    }
    return std::to_string(mib) + "MiB";
}

int gomaxprocs_value(std::int64_t nano_cpus, int available_cpus) {
    if (nano_cpus <= 0) {
        return 0;
    }
    auto quota = static_cast<int>((nano_cpus + 999'999'999) / 1'000'000'000);
    return std::max(1, std::min(available_cpus, std::max(2, quota)));
}

std::vector<std::string> go_runtime_env(const go_env_inputs& in) {
    std::vector<std::string> env;
    if (in.memory_bytes > 0 && in.already_set.count("GOMEMLIMIT") == 0 &&
        in.already_set.count("AUTOMEMLIMIT") == 0) {
        if (auto v = gomemlimit_value(in.memory_bytes, in.ratio); !v.empty()) {
            env.push_back("GOMEMLIMIT=" + v);
        }
    }
    if (in.nano_cpus > 0 && in.already_set.count("GOMAXPROCS") == 0) {
        env.push_back(
            "GOMAXPROCS=" + std::to_string(gomaxprocs_value(in.nano_cpus, in.available_cpus))
        );
    }
    return env;
}

std::string human_size(std::int64_t bytes) {
    constexpr std::int64_t mib = 1024 * 1024;
    constexpr std::int64_t gib = 1024 * mib;
    auto fmt = [](std::int64_t v, std::int64_t unit, const char* name) {
        if (v % unit == 0) {
            return std::to_string(v / unit) + " " + name;
        }
        char buf[64];
        std::snprintf(
            buf, sizeof buf, "%.1f %s", static_cast<double>(v) / static_cast<double>(unit), name
        );
        return std::string(buf);
    };
    if (bytes >= gib) {
        return fmt(bytes, gib, "GiB");
    }
    if (bytes >= mib) {
        return fmt(bytes, mib, "MiB");
    }
    return std::to_string(bytes) + " bytes";
}

bool is_allowed(const std::vector<std::string>& patterns, std::string_view name) {
    if (patterns.empty()) {
        return true;
    }
    bool positive_seen = false;
    bool included = false;
    for (const auto& p : patterns) {
        if (!p.empty() && p[0] == '!') {
            if (util::glob_match(std::string_view(p).substr(1), name)) {
                return false;
            }
            continue;
        }
        positive_seen = true;
        if (util::glob_match(p, name)) {
            included = true;
        }
    }
    return included || !positive_seen;
}

pull_policies effective_pull_policies(
    const std::vector<std::string>& job,
    const std::vector<std::string>& runner,
    const std::vector<std::string>& allowed
) {
    pull_policies out;
    std::string source = "GitLab pipeline config";
    std::vector<std::string> wanted = job;
    if (wanted.empty()) {
        wanted = runner;
        source = "Runner config";
    }
    if (wanted.empty()) {
        wanted = {"always"};
        source = "Runner config (default)";
    }
    for (const auto& p : wanted) {
        if (p != "always" && p != "if-not-present" && p != "never") {
            out.error = "unknown pull_policy \"" + p + "\" in " + source;
            return out;
        }
    }
    if (allowed.empty()) {
        out.policies = wanted;
        return out;
    }
    for (const auto& p : wanted) {
        if (std::find(allowed.begin(), allowed.end(), p) != allowed.end()) {
            out.policies.push_back(p);
        }
    }
    if (out.policies.empty()) {
        auto list = [](const std::vector<std::string>& v) {
            std::string s = "[";
            for (std::size_t i = 0; i < v.size(); ++i) {
                s += (i ? " " : "") + v[i];
            }
            return s + "]";
        };
        out.error = "pull_policy (" + list(wanted) + ") defined in " + source +
                    " is not one of the allowed_pull_policies (" + list(allowed) + ")";
    }
    return out;
}

std::string normalize_image(std::string_view image) {
    std::string s(image);
    auto slash = s.rfind('/');
    auto last = slash == std::string::npos ? s : s.substr(slash + 1);
    if (last.find(':') == std::string::npos && s.find('@') == std::string::npos) {
        s += ":latest";
    }
    return s;
}

std::vector<std::string> service_aliases(std::string_view image, std::string_view alias) {
    std::vector<std::string> out = split_aliases(alias);
    std::string name(image);
    if (auto at = name.find('@'); at != std::string::npos) {
        name.erase(at);
    }
    auto slash = name.rfind('/');
    if (auto colon = name.rfind(':');
        colon != std::string::npos && (slash == std::string::npos || colon > slash)) {
        name.erase(colon);
    }
    std::string a = name;
    std::string b = name;
    for (auto& c : a) {
        if (c == '/') {
            c = '\x01';
        }
    }
    std::string underscores;
    for (char c : a) {
        underscores += c == '\x01' ? std::string("__") : std::string(1, c);
    }
    std::replace(b.begin(), b.end(), '/', '-');
    for (const auto& n : {underscores, b}) {
        if (!n.empty() && std::find(out.begin(), out.end(), n) == out.end()) {
            out.push_back(n);
        }
    }
    return out;
}

std::string sanitize_name(std::string_view s) {
    std::string out;
    for (char c : s) {
        bool ok =
            std::isalnum(static_cast<unsigned char>(c)) != 0 || c == '_' || c == '.' || c == '-';
        out += ok ? c : '-';
    }
    if (out.empty() || std::isalnum(static_cast<unsigned char>(out[0])) == 0) {
        out.insert(out.begin(), 'x');
    }
    return out;
}

std::map<std::string, std::string> labels_for(const job_labels& who, std::string_view type) {
    const std::string p(label_prefix);
    return {
        {p + "managed", "true"},
        {p + "runner.id", who.runner},
        {p + "job.id", std::to_string(who.job_id)},
        {p + "project.id", std::to_string(who.project_id)},
        {p + "pipeline.id", std::to_string(who.pipeline_id)},
        {p + "type", std::string(type)},
    };
}

std::string container_create_body(const config::docker_settings& s, const container_request& req) {
    using nlohmann::json;
    json body;
    body["Image"] = req.image;
    body["Cmd"] = req.cmd;
    if (req.entrypoint) {
        body["Entrypoint"] = *req.entrypoint;
    }
    body["Env"] = req.env;
    body["Labels"] = req.labels;
    if (!req.user.empty()) {
        body["User"] = req.user;
    }
    if (!req.working_dir.empty()) {
        body["WorkingDir"] = req.working_dir;
    }
    if (!s.hostname.empty()) {
        body["Hostname"] = s.hostname;
    }
    body["Tty"] = false;
    // All three must be true for the stdin approach: without OpenStdin the shell sees EOF at
    // once and exits 0 having run nothing; without StdinOnce the output is lost when our end of
    // stdin closes (docker-engine.md §4.2).
    body["OpenStdin"] = req.stdin_script;
    body["StdinOnce"] = req.stdin_script;
    body["AttachStdin"] = req.stdin_script;
    body["AttachStdout"] = true;
    body["AttachStderr"] = true;

    json host;
    auto size = [&](const std::string& key,
                    const std::string& value) -> std::optional<std::int64_t> {
        if (value.empty()) {
            return std::nullopt;
        }
        auto v = parse_size(value);
        if (!v) {
            throw std::invalid_argument(
                "[runners.docker] " + key + " = \"" + value +
                "\" is not a size such as \"512m\" or \"2g\""
            );
        }
        return v;
    };
    if (!req.service) {
        if (auto v = size("memory", s.memory)) {
            host["Memory"] = *v;
        }
        if (s.memory_swap == "-1") {
            host["MemorySwap"] = -1;
        } else if (auto v = size("memory_swap", s.memory_swap)) {
            host["MemorySwap"] = *v;
        }
        if (auto v = size("memory_reservation", s.memory_reservation)) {
            host["MemoryReservation"] = *v;
        }
        if (!s.cpus.empty()) {
            auto v = parse_cpus(s.cpus);
            if (!v) {
                throw std::invalid_argument(
                    "[runners.docker] cpus = \"" + s.cpus + "\" is not a number of CPUs"
                );
            }
            host["NanoCpus"] = *v;
        }
        if (!s.cpuset_cpus.empty()) {
            host["CpusetCpus"] = s.cpuset_cpus;
        }
        if (!s.cpuset_mems.empty()) {
            host["CpusetMems"] = s.cpuset_mems;
        }
        if (s.cpu_shares > 0) {
            host["CpuShares"] = s.cpu_shares;
        }
        if (s.oom_kill_disable) {
            host["OomKillDisable"] = true;
        }
        if (s.oom_score_adjust != 0) {
            host["OomScoreAdj"] = s.oom_score_adjust;
        }
        if (s.pids_limit) {
            host["PidsLimit"] = *s.pids_limit;
        }
        if (!s.cgroup_parent.empty()) {
            host["CgroupParent"] = s.cgroup_parent;
        }
        if (!s.devices.empty()) {
            json devices = json::array();
            for (const auto& d : s.devices) {
                // host[:container[:permissions]]
                auto a = d.find(':');
                std::string on_host = d.substr(0, a);
                std::string in_container = on_host;
                std::string perms = "rwm";
                if (a != std::string::npos) {
                    auto rest = d.substr(a + 1);
                    auto b = rest.find(':');
                    in_container = rest.substr(0, b);
                    if (b != std::string::npos) {
                        perms = rest.substr(b + 1);
                    }
                }
                devices.push_back(
                    {{"PathOnHost", on_host},
                     {"PathInContainer", in_container},
                     {"CgroupPermissions", perms}}
                );
            }
            host["Devices"] = devices;
        }
        if (!s.device_cgroup_rules.empty()) {
            host["DeviceCgroupRules"] = s.device_cgroup_rules;
        }
        if (!s.tmpfs.empty()) {
            host["Tmpfs"] = s.tmpfs;
        }
        if (!s.group_add.empty()) {
            host["GroupAdd"] = s.group_add;
        }
    } else if (!s.services_tmpfs.empty()) {
        host["Tmpfs"] = s.services_tmpfs;
    }
    if (s.shm_size > 0) {
        host["ShmSize"] = s.shm_size;
    }
    bool privileged = req.service ? s.services_privileged.value_or(s.privileged) : s.privileged;
    const auto& allowed_priv =
        req.service ? s.allowed_privileged_services : s.allowed_privileged_images;
    host["Privileged"] = privileged && is_allowed(allowed_priv, req.image);
    if (!s.cap_add.empty()) {
        host["CapAdd"] = s.cap_add;
    }
    if (!s.cap_drop.empty()) {
        host["CapDrop"] = s.cap_drop;
    }
    if (!s.security_opt.empty()) {
        host["SecurityOpt"] = s.security_opt;
    }
    json binds = json::array();
    for (const auto& v : s.volumes) {
        if (v.find(':') != std::string::npos) {
            binds.push_back(v);
        }
    }
    if (!binds.empty()) {
        host["Binds"] = binds;
    }
    if (!req.mounts.empty()) {
        json mounts = json::array();
        for (const auto& m : req.mounts) {
            mounts.push_back(
                {{"Type", m.type},
                 {"Source", m.source},
                 {"Target", m.target},
                 {"ReadOnly", m.read_only}}
            );
        }
        host["Mounts"] = mounts;
    }
    if (!s.dns.empty()) {
        host["Dns"] = s.dns;
    }
    if (!s.dns_search.empty()) {
        host["DnsSearch"] = s.dns_search;
    }
    if (!s.extra_hosts.empty()) {
        host["ExtraHosts"] = s.extra_hosts;
    }
    if (!s.sysctls.empty()) {
        host["Sysctls"] = s.sysctls;
    }
    if (!s.ulimit.empty()) {
        json ulimits = json::array();
        for (const auto& [name, value] : s.ulimit) {
            auto colon = value.find(':');
            try {
                std::int64_t soft = std::stoll(value.substr(0, colon));
                std::int64_t hard =
                    colon == std::string::npos ? soft : std::stoll(value.substr(colon + 1));
                ulimits.push_back({{"Name", name}, {"Soft", soft}, {"Hard", hard}});
            } catch (const std::exception&) {
                throw std::invalid_argument(
                    "[runners.docker.ulimit] " + name + " = \"" + value + "\" is not \"soft:hard\""
                );
            }
        }
        host["Ulimits"] = ulimits;
    }
    if (!s.userns_mode.empty()) {
        host["UsernsMode"] = s.userns_mode;
    }
    if (!s.runtime.empty()) {
        host["Runtime"] = s.runtime;
    }
    if (!req.network.empty()) {
        host["NetworkMode"] = req.network;
    } else if (!s.network_mode.empty()) {
        host["NetworkMode"] = s.network_mode;
    }
    if (req.init) {
        host["Init"] = true;
    }
    host["RestartPolicy"] = {{"Name", "no"}};
    body["HostConfig"] = host;
    if (!req.network.empty()) {
        json endpoint = json::object();
        if (!req.aliases.empty()) {
            endpoint["Aliases"] = req.aliases;
        }
        body["NetworkingConfig"]["EndpointsConfig"][req.network] = endpoint;
    }
    return body.dump();
}

}  // namespace kiln::executors::docker
