#include "executors/docker/docker_executor.hpp"

#include <signal.h>
#include <unistd.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <atomic>
#include <cctype>
#include <chrono>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <set>

#include "executors/docker/docker_rules.hpp"
#include "executors/docker/engine_client.hpp"
#include "executors/docker/stream_demux.hpp"
#include "executors/shell/script_builder.hpp"

namespace kiln::executors::docker {

namespace {

namespace asio = boost::asio;
using json = nlohmann::json;
using namespace std::chrono_literals;
constexpr auto use_tuple = asio::as_tuple(asio::use_awaitable);

std::atomic<std::uint64_t> oom_kills{0};

// Where the persistent Go caches live inside the build container.
constexpr std::string_view go_cache_mount = "/kiln/go-cache";

// gitlab-runner's shell detection for the build container: the first shell found is exec'd and
// reads the stage script from stdin.
constexpr std::string_view detect_shell =
    "if [ -x /usr/local/bin/bash ]; then exec /usr/local/bin/bash\n"
    "elif [ -x /usr/bin/bash ]; then exec /usr/bin/bash\n"
    "elif [ -x /bin/bash ]; then exec /bin/bash\n"
    "elif [ -x /usr/local/bin/sh ]; then exec /usr/local/bin/sh\n"
    "elif [ -x /usr/bin/sh ]; then exec /usr/bin/sh\n"
    "elif [ -x /bin/sh ]; then exec /bin/sh\n"
    "elif [ -x /busybox/sh ]; then exec /busybox/sh\n"
    "else echo shell not found; exit 1\nfi\n";

std::string random_hex(std::size_t bytes) {
    static std::mt19937_64 rng{std::random_device{}()};
    static const char* hex = "0123456789abcdef";
    std::string out;
    for (std::size_t i = 0; i < bytes; ++i) {
        auto b = static_cast<unsigned>(rng() & 0xff);
        out += hex[b >> 4];
        out += hex[b & 15];
    }
    return out;
}

std::string base64_url(std::string_view in) {
    // X-Registry-Auth must be base64 with the URL alphabet *and* padding; other encodings are
    // silently ignored by the daemon (docker-engine.md §2.3).
    static const char* tbl = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    std::string out;
    std::size_t i = 0;
    while (i + 2 < in.size()) {
        auto n = (std::uint32_t(std::uint8_t(in[i])) << 16) |
                 (std::uint32_t(std::uint8_t(in[i + 1])) << 8) | std::uint8_t(in[i + 2]);
        out += tbl[(n >> 18) & 63];
        out += tbl[(n >> 12) & 63];
        out += tbl[(n >> 6) & 63];
        out += tbl[n & 63];
        i += 3;
    }
    if (i + 1 == in.size()) {
        auto n = std::uint32_t(std::uint8_t(in[i])) << 16;
        out += tbl[(n >> 18) & 63];
        out += tbl[(n >> 12) & 63];
        out += "==";
    } else if (i + 2 == in.size()) {
        auto n = (std::uint32_t(std::uint8_t(in[i])) << 16) |
                 (std::uint32_t(std::uint8_t(in[i + 1])) << 8);
        out += tbl[(n >> 18) & 63];
        out += tbl[(n >> 12) & 63];
        out += tbl[(n >> 6) & 63];
        out += '=';
    }
    return out;
}

std::string base64_decode(std::string_view in) {
    std::string out;
    int val = 0;
    int bits = -8;
    for (char c : in) {
        int d;
        if (c >= 'A' && c <= 'Z') {
            d = c - 'A';
        } else if (c >= 'a' && c <= 'z') {
            d = c - 'a' + 26;
        } else if (c >= '0' && c <= '9') {
            d = c - '0' + 52;
        } else if (c == '+' || c == '-') {
            d = 62;
        } else if (c == '/' || c == '_') {
            d = 63;
        } else {
            continue;
        }
        val = (val << 6) | d;
        bits += 6;
        if (bits >= 0) {
            out += static_cast<char>((val >> bits) & 0xff);
            bits -= 8;
        }
    }
    return out;
}

std::string registry_of(const std::string& image) {
    auto slash = image.find('/');
    if (slash == std::string::npos) {
        return "docker.io";
    }
    auto first = image.substr(0, slash);
    if (first.find('.') != std::string::npos || first.find(':') != std::string::npos ||
        first == "localhost") {
        return first;
    }
    return "docker.io";
}

std::string strip_scheme(std::string s) {
    for (const char* p : {"https://", "http://"}) {
        if (s.rfind(p, 0) == 0) {
            s.erase(0, std::string_view(p).size());
        }
    }
    if (auto slash = s.find('/'); slash != std::string::npos) {
        s.erase(slash);
    }
    if (s == "index.docker.io" || s == "registry-1.docker.io") {
        s = "docker.io";
    }
    return s;
}

// Helpers outside the coroutines: GCC 12 rejects braced initialisers from string literals
// ("array used as initializer") inside coroutine bodies.
std::string volume_body(const std::string& name, const std::map<std::string, std::string>& labels) {
    return json{{"Name", name}, {"Labels", labels}}.dump();
}

std::map<std::string, std::string> cache_volume_labels(
    const job_labels& who, std::string_view dest
) {
    const std::string p(label_prefix);
    return {
        {p + "managed", "true"},
        {p + "runner.id", who.runner},
        {p + "project.id", std::to_string(who.project_id)},
        {p + "type", "cache"},
        {p + "destination", std::string(dest)}};
}

std::string network_body(
    const std::string& name, const job_labels& who, const config::docker_settings& cfg
) {
    json body{
        {"Name", name},
        {"Driver", "bridge"},
        {"CheckDuplicate", true},
        {"Labels", labels_for(who, "network")}};
    if (cfg.network_mtu > 0) {
        body["Options"] = {{"com.docker.network.driver.mtu", std::to_string(cfg.network_mtu)}};
    }
    if (cfg.enable_ipv6) {
        body["EnableIPv6"] = true;
    }
    return body.dump();
}

std::vector<std::string> shell_command() { return {"sh", "-c", std::string(detect_shell)}; }

// Outside the coroutines: GCC 12 cannot keep a C array in a coroutine frame.
std::string format_ratio(double r) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%g", r);
    return buf;
}

bool is_identifier(std::string_view k) {
    if (k.empty() || std::isdigit(static_cast<unsigned char>(k[0])) != 0) {
        return false;
    }
    for (char c : k) {
        if (std::isalnum(static_cast<unsigned char>(c)) == 0 && c != '_') {
            return false;
        }
    }
    return true;
}

std::string env_value(
    const std::vector<std::pair<std::string, std::string>>& env, std::string_view key
) {
    std::string v;
    for (const auto& [k, val] : env) {
        if (k == key) {
            v = val;
        }
    }
    return v;
}

std::string label_filter(const std::vector<std::string>& labels) {
    return url_encode(json{{"label", labels}}.dump());
}

asio::awaitable<std::string> read_stage_output(attach_stream* stream, stream_demux* demux) {
    co_return co_await stream->read_all([demux](std::string_view bytes) { demux->feed(bytes); });
}

asio::awaitable<std::string> write_stage_script(attach_stream* stream, std::string script) {
    co_return co_await stream->write_and_close(std::move(script));
}

asio::awaitable<void> kill_container(
    std::shared_ptr<engine_client> client, std::string id, int sig
) {
    co_await client->call(
        "POST", "/containers/" + id + "/kill?signal=" + std::to_string(sig), {}, 30s
    );
}

}  // namespace

std::uint64_t oom_kills_total() { return oom_kills.load(); }

struct docker_executor::impl {
    asio::any_io_executor ex;
    config::docker_settings settings;
    std::shared_ptr<engine_client> client;
    job_description job;
    job_labels who;
    std::string prefix;  // kiln-<token>-job-<id>-<random>
    std::string network;
    bool network_created = false;
    std::vector<std::string> containers;  // ids, services first
    std::string build_id;
    std::string current;  // container running a stage
    // Where the stages ran: handed back to kiln's user at cleanup when that is not root.
    std::vector<std::filesystem::path> job_dirs;
    std::int64_t memory = 0;
    std::vector<std::string> image_ids_seen;
    bool cleaned = false;

    api_result fail(std::string m) { return api_result{0, std::move(m)}; }

    // Rootless or userns-remapped engines: container root is not host root, so a chown inside
    // would not make files kiln's (rootless: they already are). /info is one of the engine's
    // slower calls and the mode changes only with a restart of the engine, so each engine is
    // asked once (the I/O thread is the only caller).
    asio::awaitable<bool> remaps_users() {
        static std::map<std::string, bool> known;  // by socket path
        const auto socket = docker_socket_path(settings.host);
        if (auto it = known.find(socket); it != known.end()) {
            co_return it->second;
        }
        auto info = co_await client->call("GET", "/info");
        if (!info.ok()) {
            co_return true;  // unknown: leave the files as they are, ask again next time
        }
        bool remaps = false;
        auto j = json::parse(info.body, nullptr, false);
        if (j.is_object() && j.contains("SecurityOptions") && j["SecurityOptions"].is_array()) {
            for (const auto& o : j["SecurityOptions"]) {
                const auto v = o.is_string() ? o.get<std::string>() : std::string();
                remaps = remaps || v.find("name=rootless") != std::string::npos ||
                         v.find("name=userns") != std::string::npos;
            }
        }
        known[socket] = remaps;
        co_return remaps;
    }

    std::string registry_auth(const std::string& image) const {
        const auto registry = registry_of(image);
        std::string user;
        std::string pass;
        // DOCKER_AUTH_CONFIG (docker's config.json format) first, then the job's credentials.
        auto auth_config = env_value(job.env, "DOCKER_AUTH_CONFIG");
        if (!auth_config.empty()) {
            try {
                auto j = json::parse(auth_config);
                if (j.contains("auths") && j["auths"].is_object()) {
                    for (const auto& [host, entry] : j["auths"].items()) {
                        if (strip_scheme(host) != registry || !entry.is_object()) {
                            continue;
                        }
                        if (entry.contains("auth") && entry["auth"].is_string()) {
                            auto decoded = base64_decode(entry["auth"].get<std::string>());
                            auto colon = decoded.find(':');
                            if (colon != std::string::npos) {
                                user = decoded.substr(0, colon);
                                pass = decoded.substr(colon + 1);
                            }
                        } else {
                            user = entry.value("username", "");
                            pass = entry.value("password", "");
                        }
                        break;
                    }
                }
            } catch (const std::exception&) {
            }
        }
        if (user.empty()) {
            for (const auto& c : job.credentials) {
                if (strip_scheme(c.url) == registry) {
                    user = c.username;
                    pass = c.password;
                    break;
                }
            }
        }
        if (user.empty()) {
            return {};
        }
        return base64_url(
            json{{"username", user}, {"password", pass}, {"serveraddress", registry}}.dump()
        );
    }

    // Finds or pulls `name` per the pull policies; returns the image's inspect JSON, or sets
    // `error`.
    asio::awaitable<json> resolve_image(
        const std::string& name,
        const std::vector<std::string>& policies,
        const output_sink& sink,
        std::string& error
    ) {
        const auto ref = normalize_image(name);
        std::string last_error;
        for (const auto& policy : policies) {
            auto inspect = co_await client->call("GET", "/images/" + ref + "/json");
            if (inspect.status == 0) {
                error = inspect.message();
                co_return json{};
            }
            if (policy == "never") {
                if (inspect.ok()) {
                    co_return json::parse(inspect.body, nullptr, false);
                }
                last_error = "image " + name +
                             " is not present locally and the pull policy is \"never\": " +
                             inspect.message();
                continue;
            }
            if (policy == "if-not-present" && inspect.ok()) {
                sink("Using locally found image version due to \"if-not-present\" pull policy\n");
                co_return json::parse(inspect.body, nullptr, false);
            }
            sink("Pulling docker image " + name + " ...\n");
            auto pulled = co_await client->pull(ref, registry_auth(name), [](std::string_view) {});
            if (!pulled.ok()) {
                last_error = "failed to pull image \"" + name + "\": " + pulled.message();
                continue;
            }
            auto again = co_await client->call("GET", "/images/" + ref + "/json");
            if (again.ok()) {
                co_return json::parse(again.body, nullptr, false);
            }
            last_error = "image " + name + " is missing after its pull: " + again.message();
        }
        std::string list;
        for (const auto& p : policies) {
            list += (list.empty() ? "" : " ") + p;
        }
        error = last_error + " (pull policies [" + list + "])";
        co_return json{};
    }

    asio::awaitable<api_result> create_container(const container_request& req) {
        std::string body;
        try {
            body = container_create_body(settings, req);
        } catch (const std::invalid_argument& e) {
            co_return fail(e.what());
        }
        auto r =
            co_await client->call("POST", "/containers/create?name=" + url_encode(req.name), body);
        if (r.ok()) {
            auto j = json::parse(r.body, nullptr, false);
            if (j.is_object() && j.contains("Id")) {
                containers.push_back(j["Id"].get<std::string>());
            }
        }
        co_return r;
    }

    asio::awaitable<bool> wait_for_service(
        const std::string& id, const std::vector<int>& ports, std::chrono::seconds timeout
    ) {
        const auto give_up = std::chrono::steady_clock::now() + timeout;
        asio::steady_timer pause(ex);
        while (std::chrono::steady_clock::now() < give_up) {
            auto r = co_await client->call("GET", "/containers/" + id + "/json");
            if (!r.ok()) {
                co_return false;
            }
            auto j = json::parse(r.body, nullptr, false);
            const auto& state = j["State"];
            if (!state.value("Running", false)) {
                if (state.value("Status", "") == "exited") {
                    co_return false;
                }
            } else {
                std::string ip;
                try {
                    ip = j["NetworkSettings"]["Networks"][network]["IPAddress"].get<std::string>();
                } catch (const std::exception&) {
                }
                bool all = true;
                for (int port : ports) {
                    if (ip.empty()) {
                        break;
                    }
                    asio::ip::tcp::socket s(ex);
                    boost::system::error_code aec;
                    auto addr = asio::ip::make_address(ip, aec);
                    if (aec) {
                        break;
                    }
                    auto [ec] = co_await s.async_connect(
                        {addr, static_cast<unsigned short>(port)}, use_tuple
                    );
                    if (ec) {
                        all = false;
                        break;
                    }
                }
                if (all) {
                    co_return true;
                }
            }
            pause.expires_after(200ms);
            co_await pause.async_wait(use_tuple);
        }
        co_return false;
    }

    asio::awaitable<void> remove_container(const std::string& id) {
        auto r = co_await client->call("DELETE", "/containers/" + id + "?force=1&v=1", {}, 60s);
        (void)r;  // 404: already gone
    }
};

docker_executor::docker_executor(asio::any_io_executor ex, config::docker_settings settings)
    : impl_(std::make_unique<impl>()) {
    impl_->ex = std::move(ex);
    impl_->settings = std::move(settings);
}

docker_executor::~docker_executor() = default;

std::int64_t docker_executor::memory_limit() const { return impl_->memory; }

std::chrono::nanoseconds docker_executor::engine_time() const {
    return impl_->client ? impl_->client->engine_time() : std::chrono::nanoseconds{0};
}

asio::awaitable<prepare_result> docker_executor::prepare(job_description job, output_sink sink) {
    auto& s = *impl_;
    const auto& cfg = s.settings;
    s.job = std::move(job);
    s.who = job_labels{s.job.runner_short_token, s.job.job_id, s.job.project_id, s.job.pipeline_id};
    s.prefix = sanitize_name(
        "kiln-" + s.job.runner_short_token + "-job-" + std::to_string(s.job.job_id) + "-" +
        random_hex(4)
    );
    auto config_error = [](std::string m) {
        return prepare_result{std::string("runner_configuration_error"), std::move(m)};
    };
    auto system_error = [](std::string m) {
        return prepare_result{std::string("runner_system_failure"), std::move(m)};
    };

    try {
        s.client = std::make_shared<engine_client>(s.ex, docker_socket_path(cfg.host));
    } catch (const std::exception& e) {
        co_return config_error(e.what());
    }
    if (auto err = co_await s.client->negotiate(); !err.empty()) {
        co_return system_error(err);
    }

    image_request image;
    if (s.job.image && !s.job.image->name.empty()) {
        image = *s.job.image;
    } else {
        image.name = cfg.image;
    }
    if (image.name.empty()) {
        co_return config_error("the job has no image and [runners.docker] image is not set");
    }
    sink("Using Docker executor with image " + image.name + " ...\n");
    auto list = [](const std::vector<std::string>& v) {
        std::string out = "[";
        for (std::size_t i = 0; i < v.size(); ++i) {
            out += (i ? " " : "") + v[i];
        }
        return out + "]";
    };
    if (!is_allowed(cfg.allowed_images, image.name)) {
        co_return config_error(
            "the image \"" + image.name + "\" is not allowed by [runners.docker] allowed_images " +
            list(cfg.allowed_images) +
            "; use one of the allowed images or ask the runner's "
            "administrator to allow it"
        );
    }
    if (cfg.services_limit >= 0 &&
        static_cast<std::int64_t>(s.job.services.size()) > cfg.services_limit) {
        co_return config_error(
            "the job asks for " + std::to_string(s.job.services.size()) +
            " services; [runners.docker] services_limit allows " +
            std::to_string(cfg.services_limit)
        );
    }
    std::vector<image_request> services = s.job.services;
    for (const auto& svc : cfg.services) {
        image_request r;
        r.name = svc.name;
        r.alias = svc.alias;
        r.entrypoint = svc.entrypoint;
        r.command = svc.command;
        for (const auto& e : svc.environment) {
            auto eq = e.find('=');
            if (eq != std::string::npos) {
                r.variables.emplace_back(e.substr(0, eq), e.substr(eq + 1));
            }
        }
        services.push_back(std::move(r));
    }
    for (const auto& svc : services) {
        if (!is_allowed(cfg.allowed_services, svc.name)) {
            co_return config_error(
                "the service image \"" + svc.name +
                "\" is not allowed by [runners.docker] allowed_services " +
                list(cfg.allowed_services)
            );
        }
    }

    if (!image.user.empty() && !cfg.allowed_users.empty() &&
        !is_allowed(cfg.allowed_users, image.user)) {
        co_return config_error(
            "the user \"" + image.user + "\" is not allowed by [runners.docker] allowed_users " +
            list(cfg.allowed_users)
        );
    }

    auto policies =
        effective_pull_policies(image.pull_policy, cfg.pull_policy, cfg.allowed_pull_policies);
    if (!policies.error.empty()) {
        co_return config_error(policies.error);
    }
    std::string err;
    auto image_json = co_await s.resolve_image(image.name, policies.policies, sink, err);
    if (!err.empty()) {
        co_return prepare_result{std::string("image_pull_failure"), err};
    }
    std::string image_ref = image_json.value("Id", normalize_image(image.name));

    // What the image already sets decides what kiln may inject (create Env silently overrides
    // the image's ENV; docker-engine.md §6.4).
    std::set<std::string> already_set;
    if (image_json.contains("Config") && image_json["Config"].is_object() &&
        image_json["Config"].contains("Env") && image_json["Config"]["Env"].is_array()) {
        for (const auto& e : image_json["Config"]["Env"]) {
            if (e.is_string()) {
                auto v = e.get<std::string>();
                already_set.insert(v.substr(0, v.find('=')));
            }
        }
    }
    for (const auto& [k, v] : s.job.env) {
        already_set.insert(k);
    }

    if (!cfg.memory.empty()) {
        auto m = parse_size(cfg.memory);
        if (!m) {
            co_return config_error(
                "[runners.docker] memory = \"" + cfg.memory + "\" is not a size"
            );
        }
        s.memory = *m;
    }
    go_env_inputs go;
    go.memory_bytes = s.memory;
    go.ratio = cfg.gomemlimit_ratio.value_or(0.9);
    go.nano_cpus = cfg.cpus.empty() ? 0 : parse_cpus(cfg.cpus).value_or(0);
    go.available_cpus = cfg.cpuset_cpus.empty() ? static_cast<int>(::sysconf(_SC_NPROCESSORS_ONLN))
                                                : cpuset_count(cfg.cpuset_cpus);
    go.already_set = already_set;
    std::vector<std::string> env = go_runtime_env(go);
    for (const auto& e : env) {
        if (e.rfind("GOMEMLIMIT=", 0) == 0) {
            sink(
                e + " injected (" + format_ratio(go.ratio) + " \xc3\x97 memory limit " +
                human_size(s.memory) + ")\n"
            );
        }
    }

    std::vector<mount_spec> mounts;
    std::error_code fec;
    std::filesystem::create_directories(s.job.builds_dir, fec);
    mounts.push_back(
        {std::string("bind"), s.job.builds_dir.string(), s.job.builds_dir.string(), false}
    );

    auto cache_labels = [&](std::string_view dest) { return cache_volume_labels(s.who, dest); };
    const std::string project_key =
        sanitize_name("kiln-" + s.who.runner + "-project-" + std::to_string(s.who.project_id));
    if (cfg.go_cache.value_or(true) && !cfg.disable_cache) {
        const std::string volume = project_key + "-go-cache";
        auto r = co_await s.client->call(
            "POST", "/volumes/create", volume_body(volume, cache_labels(go_cache_mount))
        );
        if (!r.ok()) {
            co_return system_error("creating the Go cache volume failed: " + r.message());
        }
        mounts.push_back({std::string("volume"), volume, std::string(go_cache_mount), false});
        if (already_set.count("GOCACHE") == 0) {
            env.push_back("GOCACHE=" + std::string(go_cache_mount) + "/build");
        }
        if (already_set.count("GOMODCACHE") == 0) {
            env.push_back("GOMODCACHE=" + std::string(go_cache_mount) + "/mod");
        }
    }
    for (const auto& v : cfg.volumes) {
        if (v.find(':') != std::string::npos || cfg.disable_cache) {
            continue;  // host binds go through Binds
        }
        const std::string volume =
            project_key + "-cache-" + std::to_string(std::hash<std::string>{}(v) % 100000000);
        auto r = co_await s.client->call(
            "POST", "/volumes/create", volume_body(volume, cache_labels(v))
        );
        if (!r.ok()) {
            co_return system_error(
                "creating the cache volume for " + v + " failed: " + r.message()
            );
        }
        mounts.push_back({std::string("volume"), volume, v, false});
    }

    if (!services.empty() && cfg.network_mode.empty()) {
        s.network = s.prefix + "-network";
        auto r = co_await s.client->call(
            "POST", "/networks/create", network_body(s.network, s.who, cfg)
        );
        if (!r.ok()) {
            co_return system_error("creating the job's network failed: " + r.message());
        }
        s.network_created = true;
    }

    int index = 0;
    for (const auto& svc : services) {
        sink("Starting service " + svc.name + " ...\n");
        auto svc_policies =
            effective_pull_policies(svc.pull_policy, cfg.pull_policy, cfg.allowed_pull_policies);
        if (!svc_policies.error.empty()) {
            co_return config_error(svc_policies.error);
        }
        auto svc_json = co_await s.resolve_image(svc.name, svc_policies.policies, sink, err);
        if (!err.empty()) {
            co_return prepare_result{std::string("image_pull_failure"), err};
        }
        container_request req;
        req.name = s.prefix + "-svc-" + sanitize_name(svc.name) + "-" + std::to_string(index++);
        req.image = svc_json.value("Id", normalize_image(svc.name));
        req.cmd = svc.command;
        if (!svc.entrypoint.empty()) {
            req.entrypoint = svc.entrypoint;
        }
        for (const auto& [k, v] : svc.variables) {
            req.env.push_back(k + "=" + v);
        }
        req.labels = labels_for(s.who, "service");
        req.labels[std::string(label_prefix) + "service"] = svc.name;
        for (const auto& [k, v] : cfg.container_labels) {
            req.labels.emplace(k, v);
        }
        req.mounts.push_back(mounts.front());
        req.network = s.network;
        req.aliases = service_aliases(svc.name, svc.alias);
        req.service = true;
        auto created = co_await s.create_container(req);
        if (!created.ok()) {
            co_return system_error(
                "creating service " + svc.name + " failed: " + created.message()
            );
        }
        const auto id = s.containers.back();
        auto started = co_await s.client->call("POST", "/containers/" + id + "/start");
        if (!started.ok() && started.status != 304) {
            co_return system_error(
                "starting service " + svc.name + " failed: " + started.message()
            );
        }
        std::vector<int> ports = svc.ports;
        if (svc_json.contains("Config") && svc_json["Config"].is_object() &&
            svc_json["Config"].contains("ExposedPorts") &&
            svc_json["Config"]["ExposedPorts"].is_object()) {
            for (const auto& [p, _] : svc_json["Config"]["ExposedPorts"].items()) {
                if (p.find("/tcp") != std::string::npos) {
                    try {
                        ports.push_back(std::stoi(p));
                    } catch (const std::exception&) {
                    }
                }
            }
        }
        if (cfg.wait_for_services_timeout >= 0 && !s.network.empty()) {
            bool ready = co_await s.wait_for_service(
                id, ports, std::chrono::seconds(cfg.wait_for_services_timeout)
            );
            if (!ready) {
                // As gitlab-runner: a service that is not up is a warning, not a failure.
                sink(
                    "\x1b[0;33m*** WARNING: Service " + svc.name +
                    " probably didn't start properly.\x1b[0;m\n"
                );
            }
        }
    }

    container_request build;
    build.name = s.prefix + "-build";
    build.image = image_ref;
    build.cmd = shell_command();
    if (!image.entrypoint.empty()) {
        if (cfg.disable_entrypoint_overwrite) {
            sink(
                "\x1b[0;33mWARNING: the job's image entrypoint is ignored: "
                "[runners.docker] disable_entrypoint_overwrite is set\x1b[0;m\n"
            );
        } else {
            build.entrypoint = image.entrypoint;
        }
    }
    build.env = env;
    build.labels = labels_for(s.who, "build");
    for (const auto& [k, v] : cfg.container_labels) {
        build.labels.emplace(k, v);
    }
    build.mounts = mounts;
    build.network = s.network;
    if (!s.network.empty()) {
        build.aliases.push_back(std::string("build"));
    }
    // The job's image:docker:user wins over [runners.docker] user, within allowed_users.
    build.user = !image.user.empty() ? image.user : cfg.user;
    build.stdin_script = true;
    // docker-init as PID 1: a SIGTERM to the container then ends the stage's shell; a shell as
    // PID 1 ignores it (docker-engine.md §4.7).
    build.init = true;
    auto created = co_await s.create_container(build);
    if (!created.ok()) {
        co_return system_error("creating the build container failed: " + created.message());
    }
    s.build_id = s.containers.back();
    co_return prepare_result{};
}

asio::awaitable<stage_result> docker_executor::run_stage(stage_request request, output_sink sink) {
    using namespace asio::experimental::awaitable_operators;
    auto& s = *impl_;
    stage_result result;
    if (s.build_id.empty()) {
        result.system_error = "the Docker executor has no build container";
        co_return result;
    }
    // The job's variables are exported by the script (stdin), not put in the container's Env,
    // so secrets do not show in `docker inspect`. The whole script is one function called on
    // its last line: if kiln dies mid-write the shell sees a syntax error and runs nothing
    // (docker-engine.md §4.1).
    if (s.job_dirs.empty()) {
        s.job_dirs = {request.working_directory, request.scratch_directory};
    }
    std::string script = "kiln_stage() {\n";
    for (const auto& [k, v] : request.env) {
        if (is_identifier(k)) {
            script += "export " + k + "=" + shell_quote(v) + "\n";
        }
    }
    script += request.script;
    if (!script.empty() && script.back() != '\n') {
        script += '\n';
    }
    script += ":\n}\nkiln_stage\n";

    std::string error;
    auto attached = co_await s.client->attach(s.build_id, error);
    if (!attached) {
        result.system_error = error;
        co_return result;
    }
    s.current = s.build_id;
    auto started = co_await s.client->call("POST", "/containers/" + s.build_id + "/start");
    if (!started.ok() && started.status != 304) {
        attached->close();
        s.current.clear();
        result.system_error = "starting the build container failed: " + started.message();
        co_return result;
    }
    stream_demux demux([&sink](int stream, std::string_view payload) {
        sink(stream == 2 ? output_stream::stderr_stream : output_stream::stdout_stream, payload);
    });
    // Reading and writing at once: a script that prints more than the socket buffers while
    // its stdin is still being written would otherwise deadlock.
    auto [read_error, write_error] = co_await (
        read_stage_output(attached.get(), &demux) &&
        write_stage_script(attached.get(), std::move(script))
    );
    attached->close();
    auto waited = co_await s.client->call(
        "POST",
        "/containers/" + s.build_id + "/wait?condition=not-running",
        {},
        std::chrono::hours(24 * 7)
    );
    s.current.clear();
    if (!waited.ok()) {
        result.system_error = "waiting for the build container failed: " + waited.message();
        co_return result;
    }
    auto w = json::parse(waited.body, nullptr, false);
    result.exit_code = w.is_object() ? w.value("StatusCode", -1) : -1;
    if (result.exit_code > 128 && result.exit_code < 160) {
        result.signal = result.exit_code - 128;
    }
    auto inspected = co_await s.client->call("GET", "/containers/" + s.build_id + "/json");
    if (inspected.ok()) {
        auto j = json::parse(inspected.body, nullptr, false);
        if (j.is_object() && j.contains("State") && j["State"].is_object()) {
            // OOMKilled is true when any process in the container's cgroup was killed for
            // memory, also when the shell survived and exited 0 (docker-engine.md §5.1).
            result.out_of_memory = j["State"].value("OOMKilled", false);
        }
    }
    if (result.out_of_memory) {
        ++oom_kills;
    }
    if (!read_error.empty() && result.exit_code == 0) {
        result.system_error = read_error;
    }
    co_return result;
}

void docker_executor::signal_stage(int sig) {
    auto& s = *impl_;
    if (s.current.empty() || !s.client) {
        return;
    }
    // The kill outlives neither the client (shared) nor its own arguments (by value).
    asio::co_spawn(s.ex, kill_container(s.client, s.current, sig), [](std::exception_ptr) {});
}

asio::awaitable<void> docker_executor::cleanup() {
    auto& s = *impl_;
    if (s.cleaned || !s.client) {
        co_return;
    }
    s.cleaned = true;
    if (!s.build_id.empty() && !s.job_dirs.empty() && s.current.empty() && ::geteuid() != 0 &&
        !co_await s.remaps_users()) {
        // The job's containers (root, as most images run) wrote into the bind-mounted
        // checkout; kiln's next get_sources runs on the host as kiln's user and must be able
        // to replace all of it. One more run of the build container gives it back, within a
        // limit: the job may have left that container's shell broken or hanging.
        std::string script = "chown -R " + std::to_string(::geteuid()) + ":" +
                             std::to_string(::getegid()) + " --";
        for (const auto& d : s.job_dirs) {
            script += " " + shell_quote(d.string());
        }
        script += " 2>/dev/null || true\n";
        stage_request give_back;
        give_back.name = "give_back";
        give_back.script = std::move(script);
        auto limit = std::make_shared<asio::steady_timer>(s.ex, std::chrono::minutes(2));
        asio::co_spawn(
            s.ex,
            [limit, client = s.client, id = s.build_id]() -> asio::awaitable<void> {
                auto [ec] = co_await limit->async_wait(asio::as_tuple(asio::use_awaitable));
                if (!ec) {
                    co_await kill_container(client, id, SIGKILL);
                }
            },
            [](std::exception_ptr) {});
        co_await run_stage(std::move(give_back), [](std::string_view) {});
        limit->cancel();
    }
    // Build container last: services may still hold the network.
    for (auto it = s.containers.rbegin(); it != s.containers.rend(); ++it) {
        co_await s.remove_container(*it);
    }
    // Anything else labelled for this job (a create whose answer was lost, say).
    const std::string p(label_prefix);
    const std::vector<std::string> labels{
        p + "managed=true",
        p + "runner.id=" + s.who.runner,
        p + "job.id=" + std::to_string(s.who.job_id)};
    auto listed = co_await s.client->call(
        "GET", "/containers/json?all=1&filters=" + label_filter(labels), {}, 30s
    );
    if (listed.ok()) {
        auto j = json::parse(listed.body, nullptr, false);
        if (j.is_array()) {
            for (const auto& c : j) {
                co_await s.remove_container(c.value("Id", ""));
            }
        }
    }
    if (s.network_created) {
        co_await s.client->call("DELETE", "/networks/" + s.network, {}, 30s);
    }
    auto nets =
        co_await s.client->call("GET", "/networks?filters=" + label_filter(labels), {}, 30s);
    if (nets.ok()) {
        auto j = json::parse(nets.body, nullptr, false);
        if (j.is_array()) {
            for (const auto& n : j) {
                co_await s.client->call("DELETE", "/networks/" + n.value("Id", ""), {}, 30s);
            }
        }
    }
}

asio::awaitable<int> remove_leftovers(
    asio::any_io_executor ex, config::docker_settings settings, std::string runner_short_token
) {
    engine_client client(ex, docker_socket_path(settings.host));
    if (auto err = co_await client.negotiate(); !err.empty()) {
        throw std::runtime_error(err);
    }
    const std::string p(label_prefix);
    const std::vector<std::string> labels{
        p + "managed=true", p + "runner.id=" + runner_short_token};
    int removed = 0;
    auto containers =
        co_await client.call("GET", "/containers/json?all=1&filters=" + label_filter(labels));
    if (containers.ok()) {
        auto j = json::parse(containers.body, nullptr, false);
        for (const auto& c : j.is_array() ? j : json::array()) {
            auto r =
                co_await client.call("DELETE", "/containers/" + c.value("Id", "") + "?force=1&v=1");
            removed += r.ok() ? 1 : 0;
        }
    }
    auto networks = co_await client.call("GET", "/networks?filters=" + label_filter(labels));
    if (networks.ok()) {
        auto j = json::parse(networks.body, nullptr, false);
        for (const auto& n : j.is_array() ? j : json::array()) {
            auto r = co_await client.call("DELETE", "/networks/" + n.value("Id", ""));
            removed += r.ok() ? 1 : 0;
        }
    }
    auto volumes = co_await client.call("GET", "/volumes?filters=" + label_filter(labels));
    if (volumes.ok()) {
        auto j = json::parse(volumes.body, nullptr, false);
        if (j.is_object() && j.contains("Volumes") && j["Volumes"].is_array()) {
            for (const auto& v : j["Volumes"]) {
                // Cache volumes outlive jobs and kiln processes on purpose.
                if (v.contains("Labels") && v["Labels"].is_object() &&
                    v["Labels"].value(p + "type", "") == "cache") {
                    continue;
                }
                auto r = co_await client.call("DELETE", "/volumes/" + v.value("Name", ""));
                removed += r.ok() ? 1 : 0;
            }
        }
    }
    co_return removed;
}

}  // namespace kiln::executors::docker
