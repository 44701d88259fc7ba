#include <catch2/catch.hpp>

#include <algorithm>
#include <filesystem>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "config/loader.hpp"

using namespace std::chrono_literals;
using kiln::config::diagnostic;
using kiln::config::load_config_file;
using kiln::config::load_result;
using kiln::config::parse_config;

namespace {

const std::string fixtures = std::string(KILN_FIXTURES_DIR) + "/config";

const char* const minimal_runner = R"(
[[runners]]
  name = "r"
  url = "https://gitlab.example.com"
  token = "glrt-abc"
  executor = "docker"
)";

load_result parse(const std::string& text) { return parse_config(text, "config.toml"); }

/// Lines of all diagnostics, for failure messages.
std::string dump(const load_result& r) {
    std::string out;
    for (const auto& d : r.diagnostics) {
        out += d.to_string() + "\n";
    }
    return out;
}

std::vector<std::string> keys_of(const std::vector<diagnostic>& ds) {
    std::vector<std::string> out;
    for (const auto& d : ds) {
        out.push_back(d.key);
    }
    return out;
}

}  // namespace

TEST_CASE("an empty file gives gitlab-runner's global defaults", "[config][loader]") {
    auto r = parse("");
    REQUIRE(r.ok());
    CHECK(r.diagnostics.empty());
    const auto& s = *r.value;
    CHECK(s.concurrent == 1);
    CHECK(s.check_interval == 3s);
    CHECK(s.log_level == "info");
    CHECK(s.log_format == "runner");
    CHECK(s.listen_address.empty());
    CHECK(s.shutdown_timeout == 30s);
    CHECK(s.connection_max_age == 15min);
    CHECK(s.sentry_dsn.empty());
    CHECK(s.user.empty());
    CHECK(s.runners.empty());
}

TEST_CASE("a runner without optional keys gets gitlab-runner's defaults", "[config][loader]") {
    auto r = parse(minimal_runner);
    REQUIRE(r.ok());
    CHECK(r.diagnostics.empty());
    REQUIRE(r.value->runners.size() == 1);
    const auto& runner = r.value->runners[0];
    CHECK(runner.id == 0);
    CHECK_FALSE(runner.token_obtained_at);
    CHECK_FALSE(runner.token_expires_at);
    CHECK(runner.shell.empty());
    CHECK(runner.request_concurrency == 1);
    CHECK(runner.limit == 0);
    CHECK(runner.output_limit == 4096);
    CHECK_FALSE(runner.strict_check_interval);
    CHECK_FALSE(runner.debug_trace_disabled);
    CHECK_FALSE(runner.clean_git_config);
    CHECK(runner.unhealthy_requests_limit == 3);
    CHECK(runner.unhealthy_interval == 3600s);
    CHECK(runner.job_status_final_update_retry_limit == 10);
    CHECK(runner.feature_flags.empty());
    CHECK_FALSE(runner.docker);
    CHECK_FALSE(runner.cache);
    CHECK_FALSE(runner.custom_build_dir.enabled);
}

TEST_CASE("an empty [runners.docker] gets gitlab-runner's defaults", "[config][loader]") {
    auto r = parse(std::string(minimal_runner) + "  [runners.docker]\n");
    REQUIRE(r.ok());
    REQUIRE(r.value->runners[0].docker);
    const auto& d = *r.value->runners[0].docker;
    CHECK(d.host.empty());
    CHECK_FALSE(d.tls_verify);
    CHECK(d.pull_policy.empty());
    CHECK_FALSE(d.privileged);
    CHECK_FALSE(d.services_privileged);
    CHECK(d.wait_for_services_timeout == 30);
    CHECK(d.services_limit == -1);
    CHECK_FALSE(d.pids_limit);
    CHECK(d.shm_size == 0);
    CHECK(d.services.empty());
    CHECK_FALSE(d.gomemlimit_ratio);
    CHECK_FALSE(d.go_cache);
}

TEST_CASE("every global key is read", "[config][loader]") {
    auto r = parse(R"(
concurrent = 12
check_interval = 10
log_level = "debug"
log_format = "json"
listen_address = "127.0.0.1:9252"
shutdown_timeout = 120
connection_max_age = "1h30m"
sentry_dsn = "https://key@sentry.example.com/1"
user = "gitlab-runner"
)");
    REQUIRE(r.ok());
    CHECK(r.diagnostics.empty());
    const auto& s = *r.value;
    CHECK(s.concurrent == 12);
    CHECK(s.check_interval == 10s);
    CHECK(s.log_level == "debug");
    CHECK(s.log_format == "json");
    CHECK(s.listen_address == "127.0.0.1:9252");
    CHECK(s.shutdown_timeout == 120s);
    CHECK(s.connection_max_age == 90min);
    CHECK(s.sentry_dsn == "https://key@sentry.example.com/1");
    CHECK(s.user == "gitlab-runner");
}

TEST_CASE("log_level is read like logrus does", "[config][loader]") {
    for (auto [text, expected] : std::vector<std::pair<std::string, std::string>>{
             {"debug", "debug"},
             {"warn", "warn"},
             {"warning", "warning"},
             {"Error", "error"},
             {"PANIC", "panic"},
             {"fatal", "fatal"},
         }) {
        CAPTURE(text);
        auto r = parse("log_level = \"" + text + "\"");
        REQUIRE(r.ok());
        CHECK(r.value->log_level == expected);
    }
}

TEST_CASE("zero or negative values mean the default, as in gitlab-runner", "[config][loader]") {
    SECTION("global") {
        auto r = parse("check_interval = 0\nshutdown_timeout = 0\n");
        REQUIRE(r.ok());
        CHECK(r.value->check_interval == 3s);
        CHECK(r.value->shutdown_timeout == 30s);
        r = parse("check_interval = -1\nshutdown_timeout = -5\n");
        REQUIRE(r.ok());
        CHECK(r.value->check_interval == 3s);
        CHECK(r.value->shutdown_timeout == 30s);
    }
    SECTION("runner") {
        auto r = parse(std::string(minimal_runner) + R"(
  limit = -1
  request_concurrency = 0
  output_limit = 0
  unhealthy_requests_limit = 0
  job_status_final_update_retry_limit = 0
  [runners.docker]
    wait_for_services_timeout = 0
)");
        REQUIRE(r.ok());
        const auto& runner = r.value->runners[0];
        CHECK(runner.limit == 0);
        CHECK(runner.request_concurrency == 1);
        CHECK(runner.output_limit == 4096);
        CHECK(runner.unhealthy_requests_limit == 3);
        CHECK(runner.job_status_final_update_retry_limit == 10);
        CHECK(runner.docker->wait_for_services_timeout == 30);
    }
    SECTION("a negative wait_for_services_timeout disables the wait") {
        auto r = parse(
            std::string(minimal_runner) + "  [runners.docker]\n    wait_for_services_timeout = -5\n"
        );
        REQUIRE(r.ok());
        CHECK(r.value->runners[0].docker->wait_for_services_timeout == -1);
    }
}

TEST_CASE("connection_max_age takes Go durations", "[config][loader]") {
    const std::vector<std::pair<std::string, std::chrono::seconds>> cases{
        {"15m", 900s},
        {"15m0s", 900s},
        {"1h30m", 5400s},
        {"90s", 90s},
        {"1.5h", 5400s},
        {"2h45m30s", 9930s},
        {"0s", 0s},
        {"0", 0s},
        {"500ms", 1s},
        {"-1h", 0s},
    };
    for (const auto& [text, expected] : cases) {
        CAPTURE(text);
        auto r = parse("connection_max_age = \"" + text + "\"");
        REQUIRE(r.ok());
        CHECK(r.value->connection_max_age == expected);
    }
}

TEST_CASE("unhealthy_interval takes a Go duration", "[config][loader]") {
    auto r = parse(std::string(minimal_runner) + "  unhealthy_interval = \"1h30m\"\n");
    REQUIRE(r.ok());
    CHECK(r.value->runners[0].unhealthy_interval == 5400s);
}

TEST_CASE("every [[runners]] key is read", "[config][loader]") {
    auto r = parse(R"(
[[runners]]
  name = "full"
  url = "https://gitlab.example.com/"
  id = 42
  token = "glrt-full"
  token_obtained_at = 2026-01-02T03:04:05Z
  token_expires_at = 2026-04-02T03:04:05Z
  tls-ca-file = "/etc/ssl/ca.crt"
  tls-cert-file = "/etc/ssl/client.crt"
  tls-key-file = "/etc/ssl/client.key"
  executor = "shell"
  shell = "sh"
  builds_dir = "/srv/builds"
  cache_dir = "/srv/cache"
  environment = ["A=1", "B=two=2"]
  request_concurrency = 3
  limit = 5
  output_limit = 8192
  strict_check_interval = true
  pre_get_sources_script = "echo pre-get"
  post_get_sources_script = "echo post-get"
  pre_build_script = """
echo one
echo two
"""
  post_build_script = "echo post-build"
  clone_url = "https://clone.example.com"
  debug_trace_disabled = true
  clean_git_config = false
  unhealthy_requests_limit = 7
  unhealthy_interval = "10m"
  job_status_final_update_retry_limit = 4
  [runners.feature_flags]
    FF_NETWORK_PER_BUILD = true
    FF_USE_FASTZIP = false
  [runners.custom_build_dir]
    enabled = true
)");
    INFO(dump(r));
    REQUIRE(r.ok());
    CHECK(r.diagnostics.empty());
    const auto& x = r.value->runners.at(0);
    CHECK(x.name == "full");
    CHECK(x.url == "https://gitlab.example.com/");
    CHECK(x.id == 42);
    CHECK(x.token == "glrt-full");
    CHECK(x.token_obtained_at == "2026-01-02T03:04:05Z");
    CHECK(x.token_expires_at == "2026-04-02T03:04:05Z");
    CHECK(x.tls_ca_file == "/etc/ssl/ca.crt");
    CHECK(x.tls_cert_file == "/etc/ssl/client.crt");
    CHECK(x.tls_key_file == "/etc/ssl/client.key");
    CHECK(x.executor == "shell");
    CHECK(x.shell == "sh");
    CHECK(x.builds_dir == "/srv/builds");
    CHECK(x.cache_dir == "/srv/cache");
    CHECK(x.environment == std::vector<std::string>{"A=1", "B=two=2"});
    CHECK(x.request_concurrency == 3);
    CHECK(x.limit == 5);
    CHECK(x.output_limit == 8192);
    CHECK(x.strict_check_interval);
    CHECK(x.pre_get_sources_script == "echo pre-get");
    CHECK(x.post_get_sources_script == "echo post-get");
    CHECK(x.pre_build_script == "echo one\necho two\n");
    CHECK(x.post_build_script == "echo post-build");
    CHECK(x.clone_url == "https://clone.example.com");
    CHECK(x.debug_trace_disabled);
    CHECK(x.clean_git_config == false);
    CHECK(x.unhealthy_requests_limit == 7);
    CHECK(x.unhealthy_interval == 600s);
    CHECK(x.job_status_final_update_retry_limit == 4);
    CHECK(
        x.feature_flags ==
        std::map<std::string, bool>{{"FF_NETWORK_PER_BUILD", true}, {"FF_USE_FASTZIP", false}}
    );
    CHECK(x.custom_build_dir.enabled == true);
}

TEST_CASE("url and token are kept raw, $VAR included", "[config][loader]") {
    auto r = parse(R"(
[[runners]]
  url = "${GITLAB_URL}"
  token = "$RUNNER_TOKEN"
  executor = "shell"
)");
    REQUIRE(r.ok());
    CHECK(r.value->runners[0].url == "${GITLAB_URL}");
    CHECK(r.value->runners[0].token == "$RUNNER_TOKEN");
}

TEST_CASE("every [runners.docker] key is read", "[config][loader]") {
    auto r = parse(std::string(minimal_runner) + R"(
  [runners.docker]
    host = "unix:///run/docker.sock"
    tls_verify = true
    tls_cert_path = "/certs"
    image = "golang:1.23"
    pull_policy = ["if-not-present", "always"]
    allowed_pull_policies = ["if-not-present"]
    allowed_images = ["golang:*"]
    allowed_services = ["postgres:*"]
    allowed_privileged_images = ["docker:*-dind"]
    allowed_privileged_services = ["docker:*-dind"]
    allowed_users = ["1000"]
    user = "1000:1000"
    privileged = true
    services_privileged = false
    volumes = ["/cache", "/srv/mod:/go/pkg/mod:ro"]
    volumes_from = ["data:ro"]
    volume_driver = "local"
    volume_keep = true
    cache_dir = "/srv/docker-cache"
    disable_cache = true
    memory = "2g"
    memory_swap = "3GiB"
    memory_reservation = "512m"
    cpus = "1.5"
    cpuset_cpus = "0-3"
    cpuset_mems = "0"
    cpu_shares = 512
    cgroup_parent = "ci.slice"
    oom_kill_disable = true
    oom_score_adjust = -100
    pids_limit = 4096
    shm_size = 268435456
    cap_add = ["NET_ADMIN"]
    cap_drop = ["ALL"]
    security_opt = ["no-new-privileges"]
    devices = ["/dev/fuse"]
    device_cgroup_rules = ["c 10:229 rwm"]
    gpus = "all"
    userns_mode = "host"
    group_add = ["docker"]
    network_mode = "ci-net"
    network_mtu = 1400
    enable_ipv6 = true
    dns = ["10.0.0.2"]
    dns_search = ["example.com"]
    extra_hosts = ["gitlab.example.com:10.0.0.5"]
    hostname = "builder"
    runtime = "runc"
    wait_for_services_timeout = 120
    services_limit = 3
    helper_image = "registry.example.com/helper:x86_64-latest"
    helper_image_flavor = "ubuntu"
    disable_entrypoint_overwrite = true
    gomemlimit_ratio = 0.8
    go_cache = false
    [runners.docker.tmpfs]
      "/tmp" = "rw,size=1g"
    [runners.docker.services_tmpfs]
      "/var/lib/mysql" = "rw,noexec"
    [runners.docker.ulimit]
      nofile = "65536:65536"
    [runners.docker.sysctls]
      "net.ipv4.ip_forward" = "1"
    [runners.docker.container_labels]
      "com.example.team" = "ci"
    [[runners.docker.services]]
      name = "postgres:16"
      alias = "db pg"
      entrypoint = ["docker-entrypoint.sh"]
      command = ["postgres", "-c", "fsync=off"]
      environment = ["POSTGRES_PASSWORD=ci"]
    [[runners.docker.services]]
      name = "redis:7"
)");
    INFO(dump(r));
    REQUIRE(r.ok());
    CHECK(r.diagnostics.empty());
    const auto& d = *r.value->runners.at(0).docker;
    using v = std::vector<std::string>;
    using m = std::map<std::string, std::string>;
    CHECK(d.host == "unix:///run/docker.sock");
    CHECK(d.tls_verify);
    CHECK(d.tls_cert_path == "/certs");
    CHECK(d.image == "golang:1.23");
    CHECK(d.pull_policy == v{"if-not-present", "always"});
    CHECK(d.allowed_pull_policies == v{"if-not-present"});
    CHECK(d.allowed_images == v{"golang:*"});
    CHECK(d.allowed_services == v{"postgres:*"});
    CHECK(d.allowed_privileged_images == v{"docker:*-dind"});
    CHECK(d.allowed_privileged_services == v{"docker:*-dind"});
    CHECK(d.allowed_users == v{"1000"});
    CHECK(d.user == "1000:1000");
    CHECK(d.privileged);
    CHECK(d.services_privileged == false);
    CHECK(d.volumes == v{"/cache", "/srv/mod:/go/pkg/mod:ro"});
    CHECK(d.volumes_from == v{"data:ro"});
    CHECK(d.volume_driver == "local");
    CHECK(d.volume_keep);
    CHECK(d.cache_dir == "/srv/docker-cache");
    CHECK(d.disable_cache);
    CHECK(d.memory == "2g");
    CHECK(d.memory_swap == "3GiB");
    CHECK(d.memory_reservation == "512m");
    CHECK(d.cpus == "1.5");
    CHECK(d.cpuset_cpus == "0-3");
    CHECK(d.cpuset_mems == "0");
    CHECK(d.cpu_shares == 512);
    CHECK(d.cgroup_parent == "ci.slice");
    CHECK(d.oom_kill_disable);
    CHECK(d.oom_score_adjust == -100);
    CHECK(d.pids_limit == 4096);
    CHECK(d.shm_size == 268435456);
    CHECK(d.tmpfs == m{{"/tmp", "rw,size=1g"}});
    CHECK(d.services_tmpfs == m{{"/var/lib/mysql", "rw,noexec"}});
    CHECK(d.ulimit == m{{"nofile", "65536:65536"}});
    CHECK(d.sysctls == m{{"net.ipv4.ip_forward", "1"}});
    CHECK(d.cap_add == v{"NET_ADMIN"});
    CHECK(d.cap_drop == v{"ALL"});
    CHECK(d.security_opt == v{"no-new-privileges"});
    CHECK(d.devices == v{"/dev/fuse"});
    CHECK(d.device_cgroup_rules == v{"c 10:229 rwm"});
    CHECK(d.gpus == "all");
    CHECK(d.userns_mode == "host");
    CHECK(d.group_add == v{"docker"});
    CHECK(d.network_mode == "ci-net");
    CHECK(d.network_mtu == 1400);
    CHECK(d.enable_ipv6);
    CHECK(d.dns == v{"10.0.0.2"});
    CHECK(d.dns_search == v{"example.com"});
    CHECK(d.extra_hosts == v{"gitlab.example.com:10.0.0.5"});
    CHECK(d.hostname == "builder");
    CHECK(d.runtime == "runc");
    CHECK(d.wait_for_services_timeout == 120);
    CHECK(d.services_limit == 3);
    CHECK(d.helper_image == "registry.example.com/helper:x86_64-latest");
    CHECK(d.helper_image_flavor == "ubuntu");
    CHECK(d.disable_entrypoint_overwrite);
    CHECK(d.container_labels == m{{"com.example.team", "ci"}});
    CHECK(d.gomemlimit_ratio == Approx(0.8));
    CHECK(d.go_cache == false);
    REQUIRE(d.services.size() == 2);
    CHECK(d.services[0].name == "postgres:16");
    CHECK(d.services[0].alias == "db pg");
    CHECK(d.services[0].entrypoint == v{"docker-entrypoint.sh"});
    CHECK(d.services[0].command == v{"postgres", "-c", "fsync=off"});
    CHECK(d.services[0].environment == v{"POSTGRES_PASSWORD=ci"});
    CHECK(d.services[1].name == "redis:7");
    CHECK(d.services[1].alias.empty());
}

TEST_CASE("pull_policy may be a single string", "[config][loader]") {
    auto r =
        parse(std::string(minimal_runner) + "  [runners.docker]\n    pull_policy = \"never\"\n");
    REQUIRE(r.ok());
    CHECK(r.value->runners[0].docker->pull_policy == std::vector<std::string>{"never"});
}

TEST_CASE("gomemlimit_ratio accepts an integer 1", "[config][loader]") {
    auto r = parse(std::string(minimal_runner) + "  [runners.docker]\n    gomemlimit_ratio = 1\n");
    REQUIRE(r.ok());
    CHECK(r.value->runners[0].docker->gomemlimit_ratio == Approx(1.0));
}

TEST_CASE("[runners.cache] and [runners.cache.s3] are read", "[config][loader]") {
    auto r = parse(std::string(minimal_runner) + R"(
  [runners.cache]
    Type = "s3"
    Path = "prefix"
    Shared = true
    MaxUploadedArchiveSize = 1073741824
    [runners.cache.s3]
      ServerAddress = "minio:9000"
      AccessKey = "ak"
      SecretKey = "sk"
      SessionToken = "st"
      BucketName = "cache"
      BucketLocation = "us-east-1"
      Insecure = true
      AuthenticationType = "Access-Key"
      PathStyle = true
)");
    INFO(dump(r));
    REQUIRE(r.ok());
    CHECK(r.diagnostics.empty());
    const auto& c = *r.value->runners[0].cache;
    CHECK(c.type == "s3");
    CHECK(c.path == "prefix");
    CHECK(c.shared);
    CHECK(c.max_uploaded_archive_size == 1073741824);
    REQUIRE(c.s3);
    CHECK(c.s3->server_address == "minio:9000");
    CHECK(c.s3->access_key == "ak");
    CHECK(c.s3->secret_key == "sk");
    CHECK(c.s3->session_token == "st");
    CHECK(c.s3->bucket_name == "cache");
    CHECK(c.s3->bucket_location == "us-east-1");
    CHECK(c.s3->insecure);
    CHECK(c.s3->authentication_type == "access-key");
    CHECK(c.s3->path_style == true);
}

TEST_CASE("token times are RFC 3339 strings in the model", "[config][loader]") {
    const std::vector<std::pair<std::string, std::string>> cases{
        {"2026-01-02T03:04:05Z", "2026-01-02T03:04:05Z"},
        {"0001-01-01T00:00:00Z", "0001-01-01T00:00:00Z"},
        {"2026-01-02T03:04:05.123456789Z", "2026-01-02T03:04:05.123456789Z"},
        {"2026-01-02T03:04:05.5Z", "2026-01-02T03:04:05.5Z"},
        {"2026-01-02T03:04:05+02:00", "2026-01-02T03:04:05+02:00"},
        {"2026-01-02T03:04:05-05:30", "2026-01-02T03:04:05-05:30"},
        {"\"2026-01-02T03:04:05Z\"", "2026-01-02T03:04:05Z"},
        {"\"0001-01-01T00:00:00Z\"", "0001-01-01T00:00:00Z"},
    };
    for (const auto& [toml_value, expected] : cases) {
        CAPTURE(toml_value);
        auto r = parse(
            std::string(minimal_runner) + "  token_obtained_at = " + toml_value +
            "\n  token_expires_at = " + toml_value + "\n"
        );
        INFO(dump(r));
        REQUIRE(r.ok());
        CHECK(r.value->runners[0].token_obtained_at == expected);
        CHECK(r.value->runners[0].token_expires_at == expected);
    }
    SECTION("an empty string means not set") {
        auto r = parse(std::string(minimal_runner) + "  token_expires_at = \"\"\n");
        REQUIRE(r.ok());
        CHECK_FALSE(r.value->runners[0].token_expires_at);
    }
}

TEST_CASE("several runners keep their order and each gets its own index", "[config][loader]") {
    auto r = parse(R"(concurrent = 3
[[runners]]
  name = "one"
  url = "https://a.example.com"
  token = "t1"
  executor = "shell"
[[runners]]
  name = "two"
  url = "https://b.example.com"
  token = "t2"
  executor = "docker"
  [runners.docker]
    image = "alpine"
[[runners]]
  name = "three"
  url = "https://c.example.com"
  token = "t3"
  executor = "docker"
  [runners.docker]
    imgae = "alpine"
)");
    REQUIRE(r.ok());
    REQUIRE(r.value->runners.size() == 3);
    CHECK(r.value->runners[0].name == "one");
    CHECK_FALSE(r.value->runners[0].docker);
    CHECK(r.value->runners[1].name == "two");
    CHECK(r.value->runners[1].docker->image == "alpine");
    CHECK(r.value->runners[2].name == "three");
    REQUIRE(r.warnings().size() == 1);
    CHECK(r.warnings()[0].key == "runners[2].docker.imgae");
    CHECK(r.warnings()[0].line == 20);
}

TEST_CASE("unknown keys are warnings with the line and a suggestion", "[config][loader]") {
    struct test_case {
        std::string text;
        int line;
        std::string key;
        std::string message;
    };
    const std::vector<test_case> cases{
        {"concurent = 2\n", 1, "concurent", "unknown key (did you mean \"concurrent\"?)"},
        {"\n\nlog_levle = \"info\"\n", 3, "log_levle", "unknown key (did you mean \"log_level\"?)"},
        {"totally_new = 1\n", 1, "totally_new", "unknown key"},
        {std::string(minimal_runner) + "  tls_ca_file = \"/ca.crt\"\n",
         7,
         "runners[0].tls_ca_file",
         "unknown key (did you mean \"tls-ca-file\"?)"},
        {std::string(minimal_runner) +
             "  [runners.docker]\n    image = \"a\"\n    memroy = \"1g\"\n",
         9,
         "runners[0].docker.memroy",
         "unknown key (did you mean \"memory\"?)"},
        {std::string(minimal_runner) + "  [runners.cache]\n    type = \"s3\"\n",
         8,
         "runners[0].cache.type",
         "unknown key (did you mean \"Type\"?)"},
        {std::string(minimal_runner) +
             "  [runners.cache]\n    [runners.cache.s3]\n      bucketname = \"x\"\n",
         9,
         "runners[0].cache.s3.bucketname",
         "unknown key (did you mean \"BucketName\"?)"},
        {std::string(minimal_runner) + "  [runners.dokcer]\n    image = \"a\"\n",
         7,
         "runners[0].dokcer",
         "unknown key (did you mean \"docker\"?)"},
        {std::string(minimal_runner) + "  [runners.docker]\n    [[runners.docker.services]]\n      "
                                       "name = \"x\"\n      alais = \"y\"\n",
         10,
         "runners[0].docker.services[0].alais",
         "unknown key (did you mean \"alias\"?)"},
    };
    for (const auto& c : cases) {
        CAPTURE(c.text);
        auto r = parse(c.text);
        INFO(dump(r));
        REQUIRE(r.ok());
        REQUIRE(r.diagnostics.size() == 1);
        const auto& d = r.diagnostics[0];
        CHECK(d.severity == diagnostic::level::warning);
        CHECK(d.line == c.line);
        CHECK(d.key == c.key);
        CHECK(d.message == c.message);
    }
}

TEST_CASE(
    "gitlab-runner keys kiln does not implement are warned about as ignored", "[config][loader]"
) {
    struct test_case {
        std::string text;
        std::string key;
    };
    const std::vector<test_case> cases{
        {"[session_server]\n  listen_address = \"[::]:8093\"\n", "session_server"},
        {"[labels]\n  team = \"ci\"\n", "labels"},
        {std::string(minimal_runner) + "  safe_directory_checkout = true\n",
         "runners[0].safe_directory_checkout"},
        {std::string(minimal_runner) + "  [runners.docker]\n    links = [\"mysql:db\"]\n",
         "runners[0].docker.links"},
        {std::string(minimal_runner) + "  [runners.docker]\n    services_security_opt = [\"x\"]\n",
         "runners[0].docker.services_security_opt"},
        {std::string(minimal_runner) +
             "  [runners.cache]\n    [runners.cache.s3]\n      ServerSideEncryption = \"KMS\"\n",
         "runners[0].cache.s3.ServerSideEncryption"},
        {std::string(minimal_runner) +
             "  [runners.cache]\n    [runners.cache.gcs]\n      BucketName = \"x\"\n",
         "runners[0].cache.gcs"},
        {std::string(minimal_runner) +
             "  [runners.cache]\n    [runners.cache.azure]\n      ContainerName = \"x\"\n",
         "runners[0].cache.azure"},
        {std::string(minimal_runner) + "  [runners.cache]\n    Type = \"gcs\"\n",
         "runners[0].cache.Type"},
        {std::string(minimal_runner) + "  [runners.kubernetes]\n    namespace = \"ci\"\n",
         "runners[0].kubernetes"},
    };
    for (const auto& c : cases) {
        CAPTURE(c.text);
        auto r = parse(c.text);
        INFO(dump(r));
        REQUIRE(r.ok());
        REQUIRE(r.diagnostics.size() == 1);
        CHECK(r.diagnostics[0].severity == diagnostic::level::warning);
        CHECK(r.diagnostics[0].key == c.key);
        CHECK(r.diagnostics[0].message.find("unknown") == std::string::npos);
        CHECK(r.diagnostics[0].message.find("ignore") != std::string::npos);
    }
}

TEST_CASE("what register writes by default is not warned about", "[config][loader]") {
    auto r =
        parse(std::string("[session_server]\n  session_timeout = 1800\n") + minimal_runner + R"(
  [runners.custom_build_dir]
  [runners.cache]
    MaxUploadedArchiveSize = 0
    [runners.cache.s3]
    [runners.cache.gcs]
    [runners.cache.azure]
)");
    REQUIRE(r.ok());
    CHECK(r.diagnostics.empty());
}

TEST_CASE("a runner with another executor gets one warning and is kept", "[config][loader]") {
    auto r = parse(R"(
[[runners]]
  name = "k8s"
  url = "https://gitlab.example.com"
  token = "t"
  executor = "kubernetes"
  labels = { team = "ci" }
  [runners.kubernetes]
    namespace = "ci"
    [runners.kubernetes.node_selector]
      "kubernetes.io/os" = "linux"
)");
    INFO(dump(r));
    REQUIRE(r.ok());
    REQUIRE(r.diagnostics.size() == 1);
    const auto& d = r.diagnostics[0];
    CHECK(d.severity == diagnostic::level::warning);
    CHECK(d.key == "runners[0].executor");
    CHECK(d.line == 6);
    CHECK(d.message.find("will not run") != std::string::npos);
    CHECK(r.value->runners[0].executor == "kubernetes");
}

TEST_CASE("a runner without executor is warned about", "[config][loader]") {
    auto r = parse("[[runners]]\n  url = \"https://g.example.com\"\n  token = \"t\"\n");
    REQUIRE(r.ok());
    REQUIRE(r.diagnostics.size() == 1);
    CHECK(r.diagnostics[0].key == "runners[0].executor");
    CHECK(r.diagnostics[0].line == 1);
}

TEST_CASE(
    "environment entries that are not KEY=value are dropped with a warning", "[config][loader]"
) {
    auto r =
        parse(std::string(minimal_runner) + "  environment = [\"A=1\", \"NOVALUE\", \"B=\"]\n");
    REQUIRE(r.ok());
    CHECK(r.value->runners[0].environment == std::vector<std::string>{"A=1", "B="});
    REQUIRE(r.warnings().size() == 1);
    CHECK(r.warnings()[0].key == "runners[0].environment");
    CHECK(r.warnings()[0].message.find("\"NOVALUE\"") != std::string::npos);
}

TEST_CASE(
    "wrong types and invalid values are errors naming line, key and expectation", "[config][loader]"
) {
    struct test_case {
        std::string text;
        int line;
        std::string key;
        std::string message;
    };
    const std::string r = minimal_runner;  // runner keys added below it start on line 7
    const std::string docker = r + "  [runners.docker]\n";  // docker keys start on line 8
    const std::vector<test_case> cases{
        {"concurrent = 0\n", 1, "concurrent", "expected an integer ≥ 1, found 0"},
        {"concurrent = \"4\"\n", 1, "concurrent", "expected an integer ≥ 1, found \"4\""},
        {"concurrent = 2.5\n", 1, "concurrent", "expected an integer ≥ 1, found 2.5"},
        {"check_interval = \"3s\"\n", 1, "check_interval", "expected an integer, found \"3s\""},
        {"concurrent = \"\"\"\nfour\"\"\"\n",
         1,
         "concurrent",
         "expected an integer ≥ 1, found \"four\""},
        {"log_format = \"a\\tb\\nc\"\n",
         1,
         "log_format",
         "expected one of: runner, text, json, found \"a\\u0009b\\nc\""},
        {"log_level = \"verbose\"\n",
         1,
         "log_level",
         "expected one of: debug, info, warn, warning, error, fatal, panic, found \"verbose\""},
        {"log_format = \"xml\"\n",
         1,
         "log_format",
         "expected one of: runner, text, json, found \"xml\""},
        {"listen_address = 9252\n", 1, "listen_address", "expected a string, found 9252"},
        {"shutdown_timeout = true\n",
         1,
         "shutdown_timeout",
         "expected an integer, found a boolean"},
        {"connection_max_age = 900\n",
         1,
         "connection_max_age",
         "expected a string such as \"15m\" (units h, m, s, ms), found 900"},
        {"connection_max_age = \"15 minutes\"\n",
         1,
         "connection_max_age",
         "expected a string such as \"15m\" (units h, m, s, ms), found \"15 minutes\""},
        {"sentry_dsn = false\n", 1, "sentry_dsn", "expected a string, found a boolean"},
        {"[runners]\n  url = \"x\"\n",
         1,
         "runners",
         "expected [[runners]] entries (an array of tables), found a table"},
        {"session_server = 1\n", 1, "session_server", "expected a table, found 1"},
        {r + "  id = \"42\"\n", 7, "runners[0].id", "expected an integer, found \"42\""},
        {r + "  limit = \"2\"\n", 7, "runners[0].limit", "expected an integer, found \"2\""},
        {r + "  request_concurrency = 1.0\n",
         7,
         "runners[0].request_concurrency",
         "expected an integer, found 1"},
        {r + "  output_limit = \"4MB\"\n",
         7,
         "runners[0].output_limit",
         "expected an integer, found \"4MB\""},
        {r + "  environment = \"A=1\"\n",
         7,
         "runners[0].environment",
         "expected an array of strings, found \"A=1\""},
        {r + "  environment = [\"A=1\", 2]\n",
         7,
         "runners[0].environment",
         "expected an array of strings, found an integer at index 1"},
        {r + "  shell = \"fish\"\n",
         7,
         "runners[0].shell",
         "expected one of: bash, sh, pwsh, powershell, cmd, found \"fish\""},
        {r + "  strict_check_interval = \"yes\"\n",
         7,
         "runners[0].strict_check_interval",
         "expected true or false, found \"yes\""},
        {r + "  token_obtained_at = \"yesterday\"\n",
         7,
         "runners[0].token_obtained_at",
         "expected an RFC 3339 date-time such as 2026-01-02T03:04:05Z, found \"yesterday\""},
        {r + "  token_expires_at = 2026-01-02\n",
         7,
         "runners[0].token_expires_at",
         "expected an RFC 3339 date-time such as 2026-01-02T03:04:05Z, found a date"},
        {r + "  unhealthy_interval = 3600\n",
         7,
         "runners[0].unhealthy_interval",
         "expected a string such as \"1h30m\" (units h, m, s, ms), found 3600"},
        {r + "  [runners.feature_flags]\n    FF_USE_FASTZIP = \"true\"\n",
         8,
         "runners[0].feature_flags.FF_USE_FASTZIP",
         "expected true or false, found \"true\""},
        {r + "  feature_flags = [\"FF_USE_FASTZIP\"]\n",
         7,
         "runners[0].feature_flags",
         "expected a table of FF_* = true/false, found an array"},
        {r + "  [runners.custom_build_dir]\n    enabled = 1\n",
         8,
         "runners[0].custom_build_dir.enabled",
         "expected true or false, found 1"},
        {r + "  docker = \"alpine\"\n",
         7,
         "runners[0].docker",
         "expected a table, found \"alpine\""},
        {docker + "    image = 3\n", 8, "runners[0].docker.image", "expected a string, found 3"},
        {docker + "    privileged = \"false\"\n",
         8,
         "runners[0].docker.privileged",
         "expected true or false, found \"false\""},
        {docker + "    volumes = \"/cache\"\n",
         8,
         "runners[0].docker.volumes",
         "expected an array of strings, found \"/cache\""},
        {docker + "    pull_policy = \"sometimes\"\n",
         8,
         "runners[0].docker.pull_policy",
         "expected one of: always, if-not-present, never, found \"sometimes\""},
        {docker + "    pull_policy = 1\n",
         8,
         "runners[0].docker.pull_policy",
         "expected a string or an array of strings, found 1"},
        {docker + "    memory = \"2 gigs\"\n",
         8,
         "runners[0].docker.memory",
         "expected a size string such as \"512m\" or \"2g\", found \"2 gigs\""},
        {docker + "    memory = 2048\n",
         8,
         "runners[0].docker.memory",
         "expected a size string such as \"512m\" or \"2g\", found 2048"},
        {docker + "    cpus = 2\n",
         8,
         "runners[0].docker.cpus",
         "expected a string with a number of CPUs such as \"1.5\", found 2"},
        {docker + "    shm_size = -1\n",
         8,
         "runners[0].docker.shm_size",
         "expected an integer ≥ 0, found -1"},
        {docker + "    tmpfs = [\"/tmp\"]\n",
         8,
         "runners[0].docker.tmpfs",
         "expected a table of strings, e.g. { \"/tmp\" = \"rw\" }, found an array"},
        {docker + "    [runners.docker.sysctls]\n      \"net.core.somaxconn\" = 1024\n",
         9,
         "runners[0].docker.sysctls.\"net.core.somaxconn\"",
         "expected a string, found 1024"},
        {docker + "    gomemlimit_ratio = 1.5\n",
         8,
         "runners[0].docker.gomemlimit_ratio",
         "expected a number greater than 0 and at most 1, such as 0.9, found 1.5"},
        {docker + "    [[runners.docker.services]]\n      alias = \"db\"\n",
         8,
         "runners[0].docker.services[0].name",
         "required key is missing or empty"},
        {r + "  [runners.cache]\n    Type = \"redis\"\n",
         8,
         "runners[0].cache.Type",
         "expected one of: s3, gcs, azure, found \"redis\""},
        {r + "  [runners.cache]\n    Shared = \"yes\"\n",
         8,
         "runners[0].cache.Shared",
         "expected true or false, found \"yes\""},
        {r + "  [runners.cache]\n    MaxUploadedArchiveSize = \"1G\"\n",
         8,
         "runners[0].cache.MaxUploadedArchiveSize",
         "expected an integer ≥ 0, found \"1G\""},
        {r + "  [runners.cache]\n    [runners.cache.s3]\n      Insecure = \"false\"\n",
         9,
         "runners[0].cache.s3.Insecure",
         "expected true or false, found \"false\""},
        {r + "  [runners.cache]\n    [runners.cache.s3]\n      AuthenticationType = \"password\"\n",
         9,
         "runners[0].cache.s3.AuthenticationType",
         "expected one of: iam, access-key, found \"password\""},
    };
    for (const auto& c : cases) {
        CAPTURE(c.text);
        auto result = parse(c.text);
        INFO(dump(result));
        CHECK_FALSE(result.ok());
        const auto errors = result.errors();
        REQUIRE(errors.size() == 1);
        const auto& d = errors[0];
        CHECK(d.line == c.line);
        CHECK(d.key == c.key);
        CHECK(d.message == c.message);
    }
}

TEST_CASE("an unknown executor is an error with a suggestion", "[config][loader]") {
    auto r = parse("[[runners]]\n  url = \"u\"\n  token = \"t\"\n  executor = \"dokcer\"\n");
    CHECK_FALSE(r.ok());
    REQUIRE(r.errors().size() == 1);
    CHECK(r.errors()[0].key == "runners[0].executor");
    CHECK(r.errors()[0].line == 4);
    CHECK(r.errors()[0].message.find("(did you mean \"docker\"?)") != std::string::npos);
}

TEST_CASE("a runner needs url and token", "[config][loader]") {
    auto r = parse("[[runners]]\n  name = \"x\"\n  executor = \"shell\"\n  token = \"\"\n");
    CHECK_FALSE(r.ok());
    CHECK(keys_of(r.errors()) == std::vector<std::string>{"runners[0].url", "runners[0].token"});
    CHECK(r.errors()[0].line == 1);
}

TEST_CASE("all diagnostics are collected, in file order", "[config][loader]") {
    auto r = parse(R"(concurrent = 0
log_format = "xml"
bogus = 1
[[runners]]
  url = "u"
  token = "t"
  executor = "shell"
  limit = "many"
[[runners]]
  url = "u"
  token = "t"
  executor = "docker"
  [runners.docker]
    privileged = "no"
    imagee = "x"
)");
    CHECK_FALSE(r.ok());
    CHECK(
        keys_of(r.diagnostics) ==
        std::vector<std::string>{
            "concurrent",
            "log_format",
            "bogus",
            "runners[0].limit",
            "runners[1].docker.privileged",
            "runners[1].docker.imagee",
        }
    );
    CHECK(r.errors().size() == 4);
    CHECK(r.warnings().size() == 2);
}

TEST_CASE("a TOML syntax error names line and column", "[config][loader]") {
    auto r = parse("concurrent = 1\n\n[[runners]]\n  name = \"unterminated\n");
    CHECK_FALSE(r.ok());
    REQUIRE(r.diagnostics.size() == 1);
    const auto& d = r.diagnostics[0];
    CHECK(d.severity == diagnostic::level::error);
    CHECK(d.line == 4);
    CHECK(d.column > 0);
    CHECK(d.key.empty());
    CHECK_FALSE(d.message.empty());
    CHECK(d.to_string().rfind("config.toml:4:" + std::to_string(d.column) + ": error: ", 0) == 0);

    SECTION("a key defined twice") {
        auto twice = parse("concurrent = 1\nconcurrent = 2\n");
        REQUIRE(twice.errors().size() == 1);
        CHECK(twice.errors()[0].line == 2);
    }
}

TEST_CASE("diagnostic::to_string is one line in compiler style", "[config][loader]") {
    diagnostic d;
    d.severity = diagnostic::level::warning;
    d.source = "config.toml";
    d.line = 12;
    d.key = "runners[0].docker.memroy";
    d.message = "unknown key (did you mean \"memory\"?)";
    CHECK(
        d.to_string() ==
        "config.toml:12: warning: runners[0].docker.memroy: unknown key (did you mean \"memory\"?)"
    );
    d.severity = diagnostic::level::error;
    d.line = 0;
    d.key.clear();
    d.message = "cannot read the file: No such file or directory";
    CHECK(d.to_string() == "config.toml: error: cannot read the file: No such file or directory");
}

TEST_CASE("load_config_file reports a missing file as an error", "[config][loader]") {
    auto r = load_config_file("/nonexistent/kiln/config.toml");
    CHECK_FALSE(r.ok());
    REQUIRE(r.diagnostics.size() == 1);
    CHECK(
        r.diagnostics[0].to_string() ==
        "/nonexistent/kiln/config.toml: error: cannot read the file: No such file or directory"
    );
}

TEST_CASE(
    "the fixture configs load with no errors and only the expected warnings",
    "[config][loader][fixtures]"
) {
    // Warnings are allowed only for settings kiln deliberately ignores.
    const std::map<std::string, std::vector<std::string>> expected_warnings{
        {"register_shell.toml", {}},
        {"register_docker.toml", {}},
        {"multi_runner.toml", {"session_server"}},
        {"docs_advanced.toml",
         {
             "session_server",
             "runners[1].docker.links",
             "runners[3].cache.s3.ServerSideEncryption",
             "runners[3].cache.s3.ServerSideEncryptionKeyID",
             "runners[4].cache.Type",
             "runners[4].cache.gcs",
             "runners[6].executor",
             "runners[7].executor",
         }},
    };
    std::set<std::string> seen;
    for (const auto& file : std::filesystem::directory_iterator(fixtures)) {
        if (file.path().extension() != ".toml") {
            continue;
        }
        const std::string name = file.path().filename().string();
        CAPTURE(name);
        auto expected = expected_warnings.find(name);
        REQUIRE(expected != expected_warnings.end());  // every fixture needs its expectations
        seen.insert(name);

        auto r = load_config_file(file.path());
        INFO(dump(r));
        CHECK(r.ok());
        CHECK(r.errors().empty());
        CHECK(keys_of(r.warnings()) == expected->second);
    }
    CHECK(seen.size() == expected_warnings.size());
}

TEST_CASE("the fixture configs load into the expected model", "[config][loader][fixtures]") {
    SECTION("register_docker.toml") {
        auto r = load_config_file(fixtures + "/register_docker.toml");
        REQUIRE(r.ok());
        const auto& s = *r.value;
        CHECK(s.concurrent == 4);
        CHECK(s.check_interval == 3s);
        CHECK(s.shutdown_timeout == 30s);
        CHECK(s.connection_max_age == 15min);
        REQUIRE(s.runners.size() == 1);
        const auto& runner = s.runners[0];
        CHECK(runner.id == 1234);
        CHECK(runner.token_obtained_at == "2025-06-02T14:05:11Z");
        CHECK(runner.token_expires_at == "0001-01-01T00:00:00Z");
        REQUIRE(runner.docker);
        CHECK(runner.docker->image == "alpine:latest");
        CHECK(runner.docker->volumes == std::vector<std::string>{"/cache"});
        REQUIRE(runner.cache);
        CHECK(runner.cache->type == "s3");
        CHECK(runner.cache->shared);
        REQUIRE(runner.cache->s3);
        CHECK(runner.cache->s3->bucket_name == "runner-cache");
        CHECK(runner.cache->s3->insecure);
    }
    SECTION("multi_runner.toml") {
        auto r = load_config_file(fixtures + "/multi_runner.toml");
        REQUIRE(r.ok());
        const auto& s = *r.value;
        CHECK(s.concurrent == 12);
        CHECK(s.log_format == "json");
        CHECK(s.listen_address == ":9252");
        CHECK(s.connection_max_age == 1h);
        REQUIRE(s.runners.size() == 4);
        CHECK(s.runners[0].request_concurrency == 4);
        CHECK(s.runners[0].feature_flags.at("FF_NETWORK_PER_BUILD"));
        CHECK(s.runners[0].docker->services.at(0).alias == "db");
        CHECK(s.runners[1].docker->pull_policy == std::vector<std::string>{"if-not-present"});
        CHECK(s.runners[1].docker->gomemlimit_ratio == Approx(0.85));
        CHECK(s.runners[3].executor == "shell");
        CHECK(s.runners[3].unhealthy_interval == 30min);
        CHECK(
            s.runners[3].tls_ca_file == "/etc/gitlab-runner/certs/gitlab.internal.example.com.crt"
        );
    }
}
