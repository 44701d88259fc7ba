#include <catch2/catch.hpp>

#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <system_error>
#include <vector>

#include "config/loader.hpp"
#include "config/writer.hpp"

using namespace std::chrono_literals;
using kiln::config::config_document;
using kiln::config::load_result;
using kiln::config::parse_config;
using kiln::config::runner_entry;
namespace fs = std::filesystem;

namespace {

const std::string fixtures = std::string(KILN_FIXTURES_DIR) + "/config";

std::string read_file(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    std::ostringstream s;
    s << in.rdbuf();
    return s.str();
}

void write_file(const fs::path& p, const std::string& text) {
    std::ofstream(p, std::ios::binary) << text;
}

unsigned mode_of(const fs::path& p) {
    struct stat st {};
    REQUIRE(::stat(p.c_str(), &st) == 0);
    return st.st_mode & 07777;
}

std::vector<std::string> entries_of(const fs::path& dir) {
    std::vector<std::string> out;
    for (const auto& e : fs::directory_iterator(dir)) {
        out.push_back(e.path().filename().string());
    }
    std::sort(out.begin(), out.end());
    return out;
}

struct temp_dir {
    temp_dir() {
        std::string templ = (fs::temp_directory_path() / "kiln-config-XXXXXX").string();
        REQUIRE(::mkdtemp(templ.data()) != nullptr);
        path = templ;
    }
    ~temp_dir() {
        std::error_code ec;
        fs::remove_all(path, ec);
    }
    temp_dir(const temp_dir&) = delete;
    temp_dir& operator=(const temp_dir&) = delete;
    fs::path path;
};

load_result reload(const config_document& doc) {
    return parse_config(doc.to_toml(), "written.toml");
}

std::string dump(const load_result& r) {
    std::string out;
    for (const auto& d : r.diagnostics) {
        out += d.to_string() + "\n";
    }
    return out;
}

runner_entry shell_runner() {
    runner_entry r;
    r.name = "build-host-01";
    r.url = "https://gitlab.example.com";
    r.id = 4711;
    r.token = "glrt-t1_Zq8xYk2LmNp4RsTv6WxA";
    r.token_obtained_at = "2026-01-02T03:04:05Z";
    r.token_expires_at = "0001-01-01T00:00:00Z";
    r.executor = "shell";
    return r;
}

runner_entry docker_runner() {
    runner_entry r;
    r.name = "docker-runner";
    r.url = "https://gitlab.example.com/";
    r.id = 1234;
    r.token = "glrt-t3_Qm7Vb2Kc9Xr4Lp8Nd5Wz";
    r.token_obtained_at = "2025-06-02T14:05:11Z";
    r.token_expires_at = "0001-01-01T00:00:00Z";
    r.executor = "docker";
    r.docker.emplace();
    r.docker->image = "alpine:latest";
    r.docker->volumes = {"/cache"};
    r.cache.emplace();
    return r;
}

}  // namespace

TEST_CASE("a new document has register's globals", "[config][writer]") {
    config_document doc;
    CHECK(doc.to_toml() == "concurrent = 1\ncheck_interval = 0\n");
    auto r = reload(doc);
    REQUIRE(r.ok());
    CHECK(r.diagnostics.empty());
    CHECK(r.value->concurrent == 1);
    CHECK(r.value->check_interval == 3s);
}

TEST_CASE("add_runner writes a shell runner as gitlab-runner's register does", "[config][writer]") {
    config_document doc;
    doc.add_runner(shell_runner());
    CHECK(doc.to_toml() == R"(concurrent = 1
check_interval = 0

[[runners]]
  name = "build-host-01"
  url = "https://gitlab.example.com"
  id = 4711
  token = "glrt-t1_Zq8xYk2LmNp4RsTv6WxA"
  token_obtained_at = 2026-01-02T03:04:05Z
  token_expires_at = 0001-01-01T00:00:00Z
  executor = "shell"
  [runners.custom_build_dir]
)");
    auto r = reload(doc);
    REQUIRE(r.ok());
    CHECK(r.diagnostics.empty());
    CHECK(r.value->runners.at(0) == shell_runner());
}

TEST_CASE(
    "add_runner writes a docker runner with register's [runners.docker] keys", "[config][writer]"
) {
    config_document doc;
    doc.add_runner(docker_runner());
    CHECK(doc.to_toml() == R"(concurrent = 1
check_interval = 0

[[runners]]
  name = "docker-runner"
  url = "https://gitlab.example.com/"
  id = 1234
  token = "glrt-t3_Qm7Vb2Kc9Xr4Lp8Nd5Wz"
  token_obtained_at = 2025-06-02T14:05:11Z
  token_expires_at = 0001-01-01T00:00:00Z
  executor = "docker"
  [runners.docker]
    tls_verify = false
    image = "alpine:latest"
    privileged = false
    disable_entrypoint_overwrite = false
    oom_kill_disable = false
    disable_cache = false
    volumes = ["/cache"]
    shm_size = 0
    network_mtu = 0
  [runners.custom_build_dir]
  [runners.cache]
    MaxUploadedArchiveSize = 0
)");
    auto r = reload(doc);
    REQUIRE(r.ok());
    CHECK(r.diagnostics.empty());
    CHECK(r.value->runners.at(0) == docker_runner());
}

TEST_CASE("add_runner writes non-default settings only", "[config][writer]") {
    auto runner = shell_runner();
    runner.limit = 2;
    runner.request_concurrency = 1;
    runner.output_limit = 8192;
    runner.environment = {"GOFLAGS=-mod=readonly"};
    runner.tls_ca_file = "/etc/ssl/ca.crt";
    config_document doc;
    doc.add_runner(runner);
    const auto text = doc.to_toml();
    CHECK(text.find("  limit = 2\n") != std::string::npos);
    CHECK(text.find("request_concurrency") == std::string::npos);
    CHECK(text.find("  output_limit = 8192\n") != std::string::npos);
    CHECK(text.find("  environment = [\"GOFLAGS=-mod=readonly\"]\n") != std::string::npos);
    CHECK(text.find("  tls-ca-file = \"/etc/ssl/ca.crt\"\n") != std::string::npos);
    CHECK(text.find("shell =") == std::string::npos);
    CHECK(text.find("builds_dir") == std::string::npos);
    // gitlab-runner's order: executor, limits, environment, TLS files.
    CHECK(text.find("executor") < text.find("limit"));
    CHECK(text.find("limit") < text.find("output_limit"));
    CHECK(text.find("output_limit") < text.find("environment"));
    CHECK(text.find("environment") < text.find("tls-ca-file"));
}

TEST_CASE("every modelled runner setting survives add_runner and a reload", "[config][writer]") {
    runner_entry r = docker_runner();
    r.name = "quotes \" backslash \\ tab \t unicode é ✓";
    r.token_expires_at = "2026-04-02T03:04:05.25+02:00";
    r.tls_ca_file = "/ca.crt";
    r.tls_cert_file = "/client.crt";
    r.tls_key_file = "/client.key";
    r.shell = "bash";
    r.builds_dir = "/builds";
    r.cache_dir = "/cache";
    r.environment = {"A=1", "B=x=y", "C="};
    r.request_concurrency = 4;
    r.limit = 3;
    r.output_limit = 16384;
    r.strict_check_interval = true;
    r.pre_get_sources_script = "echo 1";
    r.post_get_sources_script = "echo 2";
    r.pre_build_script = "set -e\necho \"pre\"\n";
    r.post_build_script = "echo 4";
    r.clone_url = "https://clone.example.com";
    r.debug_trace_disabled = true;
    r.clean_git_config = false;
    r.unhealthy_requests_limit = 9;
    r.unhealthy_interval = 90s;
    r.job_status_final_update_retry_limit = 2;
    r.feature_flags = {{"FF_NETWORK_PER_BUILD", true}, {"FF_USE_FASTZIP", false}};
    r.custom_build_dir.enabled = true;
    auto& d = *r.docker;
    d.host = "tcp://docker:2376";
    d.tls_verify = true;
    d.tls_cert_path = "/certs";
    d.pull_policy = {"if-not-present", "always"};
    d.allowed_pull_policies = {"if-not-present"};
    d.allowed_images = {"golang:*"};
    d.allowed_services = {"postgres:*"};
    d.allowed_privileged_images = {"docker:*"};
    d.allowed_privileged_services = {"docker:*"};
    d.allowed_users = {"1000"};
    d.user = "1000";
    d.privileged = true;
    d.services_privileged = false;
    d.volumes_from = {"data:ro"};
    d.volume_driver = "local";
    d.volume_keep = true;
    d.cache_dir = "/dcache";
    d.disable_cache = true;
    d.memory = "2g";
    d.memory_swap = "3g";
    d.memory_reservation = "1g";
    d.cpus = "1.5";
    d.cpuset_cpus = "0-1";
    d.cpuset_mems = "0";
    d.cpu_shares = 512;
    d.cgroup_parent = "ci.slice";
    d.oom_kill_disable = true;
    d.oom_score_adjust = -10;
    d.pids_limit = 1000;
    d.shm_size = 1 << 20;
    d.tmpfs = {{"/tmp", "rw"}};
    d.services_tmpfs = {{"/var/lib/pg", "rw,noexec"}};
    d.ulimit = {{"nofile", "1024:2048"}};
    d.sysctls = {{"net.ipv4.ip_forward", "1"}};
    d.cap_add = {"NET_ADMIN"};
    d.cap_drop = {"ALL"};
    d.security_opt = {"no-new-privileges"};
    d.devices = {"/dev/fuse"};
    d.device_cgroup_rules = {"c 10:229 rwm"};
    d.gpus = "all";
    d.userns_mode = "host";
    d.group_add = {"docker"};
    d.network_mode = "ci";
    d.network_mtu = 1400;
    d.enable_ipv6 = true;
    d.dns = {"10.0.0.2"};
    d.dns_search = {"example.com"};
    d.extra_hosts = {"h:10.0.0.1"};
    d.hostname = "builder";
    d.runtime = "runc";
    d.wait_for_services_timeout = -1;
    d.services = {
        {"postgres:16", "db", {"entry.sh"}, {"postgres", "-c", "x=y"}, {"A=1"}},
        {"redis:7", "", {}, {}, {}}};
    d.services_limit = 2;
    d.helper_image = "helper:latest";
    d.helper_image_flavor = "ubuntu";
    d.disable_entrypoint_overwrite = true;
    d.container_labels = {{"com.example/team", "ci"}};
    d.gomemlimit_ratio = 0.85;
    d.go_cache = false;
    r.cache->type = "s3";
    r.cache->path = "prefix";
    r.cache->shared = true;
    r.cache->max_uploaded_archive_size = 1 << 30;
    r.cache->s3.emplace();
    r.cache->s3->server_address = "minio:9000";
    r.cache->s3->access_key = "ak";
    r.cache->s3->secret_key = "sk";
    r.cache->s3->session_token = "st";
    r.cache->s3->bucket_name = "b";
    r.cache->s3->bucket_location = "us-east-1";
    r.cache->s3->insecure = true;
    r.cache->s3->authentication_type = "access-key";
    r.cache->s3->path_style = true;

    config_document doc;
    doc.add_runner(r);
    auto loaded = reload(doc);
    INFO(doc.to_toml());
    INFO(dump(loaded));
    REQUIRE(loaded.ok());
    CHECK(loaded.diagnostics.empty());
    CHECK(loaded.value->runners.at(0) == r);
}

TEST_CASE("a file in gitlab-runner's layout is written back byte for byte", "[config][writer]") {
    for (const char* name : {"register_shell.toml", "register_docker.toml"}) {
        CAPTURE(name);
        const std::string text = read_file(fixtures + "/" + name);
        auto doc = config_document::parse(text, name);
        CHECK(doc.to_toml() == text);
    }
}

TEST_CASE("editing keeps globals, other runners and keys kiln does not model", "[config][writer]") {
    const std::string text = read_file(fixtures + "/multi_runner.toml");
    const auto before = parse_config(text, "multi_runner.toml");
    REQUIRE(before.ok());

    auto doc = config_document::parse(text, "multi_runner.toml");
    CHECK(
        doc.replace_token(
            "glrt-t2_WorkerModuleToken0002",
            "glrt-t2_RotatedWorkerToken999",
            "2026-01-02T03:04:05Z",
            std::optional<std::string>("2026-04-02T03:04:05Z")
        ) == 1
    );
    const std::string written = doc.to_toml();
    const auto after = parse_config(written, "written.toml");
    INFO(written);
    INFO(dump(after));
    REQUIRE(after.ok());
    CHECK(after.errors().empty());
    CHECK(after.warnings().size() == before.warnings().size());

    auto expected = *before.value;
    auto& worker = expected.runners.at(1);
    worker.token = "glrt-t2_RotatedWorkerToken999";
    worker.token_obtained_at = "2026-01-02T03:04:05Z";
    worker.token_expires_at = "2026-04-02T03:04:05Z";
    CHECK(*after.value == expected);

    // Not in the model, but still in the file.
    CHECK(
        written.find("[session_server]\n  listen_address = \"[::]:8093\"\n") != std::string::npos
    );
    CHECK(
        written.find("advertise_address = \"ci-build-07.example.com:8093\"") != std::string::npos
    );
    // Token times stay TOML date-times, in place.
    CHECK(
        written.find("  token = \"glrt-t2_RotatedWorkerToken999\"\n"
                     "  token_obtained_at = 2026-01-02T03:04:05Z\n"
                     "  token_expires_at = 2026-04-02T03:04:05Z\n") != std::string::npos
    );
}

TEST_CASE("keys kiln does not know are kept through an edit", "[config][writer]") {
    auto doc = config_document::parse(
        R"(concurrent = 2
[labels]
  site = "fra1"

[[runners]]
  name = "a"
  url = "https://g.example.com"
  token = "t-a"
  executor = "docker"
  safe_directory_checkout = true
  future_key = { nested = [1, 2.5, "x"], when = 2026-01-02 }
  [runners.docker]
    image = "alpine"
    links = ["db:db"]
    [runners.docker.log_options]
      "max-size" = "10m"
  [runners.kubernetes]
    namespace = "ci"
)",
        "in.toml"
    );
    doc.replace_token("t-a", "t-b", "2026-01-02T03:04:05Z", std::nullopt);
    const std::string out = doc.to_toml();
    INFO(out);
    for (const char* kept : {
             "[labels]\n  site = \"fra1\"\n",
             "  safe_directory_checkout = true\n",
             "  future_key = { nested = [1, 2.5, \"x\"], when = 2026-01-02 }\n",
             "    links = [\"db:db\"]\n",
             "    [runners.docker.log_options]\n      max-size = \"10m\"\n",
             "  [runners.kubernetes]\n    namespace = \"ci\"\n",
             "  token = \"t-b\"\n  token_obtained_at = 2026-01-02T03:04:05Z\n"
             "  token_expires_at = 0001-01-01T00:00:00Z\n",
         }) {
        CHECK(out.find(kept) != std::string::npos);
    }
    CHECK(parse_config(out, "out.toml").ok());
}

TEST_CASE("add_runner appends to the existing runners", "[config][writer]") {
    auto doc = config_document::parse(read_file(fixtures + "/register_shell.toml"), "c.toml");
    doc.add_runner(docker_runner());
    auto r = reload(doc);
    REQUIRE(r.ok());
    REQUIRE(r.value->runners.size() == 2);
    CHECK(r.value->runners[0].name == "build-host-01");
    CHECK(r.value->runners[1] == docker_runner());
    CHECK(r.diagnostics.empty());
}

TEST_CASE("remove_runners removes the matching entries", "[config][writer]") {
    auto doc = config_document::parse(read_file(fixtures + "/multi_runner.toml"), "c.toml");
    CHECK(doc.remove_runners([](const runner_entry& r) { return r.executor == "docker"; }) == 3);
    CHECK(doc.remove_runners([](const runner_entry& r) { return r.name == "nope"; }) == 0);
    auto r = reload(doc);
    REQUIRE(r.ok());
    REQUIRE(r.value->runners.size() == 1);
    CHECK(r.value->runners[0].name == "ci-build-07 release");
    CHECK(r.value->concurrent == 12);

    SECTION("removing every runner leaves a loadable file") {
        doc.remove_runners([](const runner_entry&) { return true; });
        auto empty = reload(doc);
        REQUIRE(empty.ok());
        CHECK(empty.value->runners.empty());
    }
}

TEST_CASE("replace_token changes only entries with that token", "[config][writer]") {
    config_document doc;
    auto a = shell_runner();
    auto b = shell_runner();
    b.name = "other";
    b.token = "glrt-other";
    doc.add_runner(a);
    doc.add_runner(b);
    CHECK(doc.replace_token("glrt-missing", "x", "2026-01-02T03:04:05Z", std::nullopt) == 0);
    CHECK(
        doc.replace_token(a.token, "glrt-new", "2026-02-03T04:05:06Z", "2026-05-03T04:05:06Z") == 1
    );
    auto r = reload(doc);
    REQUIRE(r.ok());
    CHECK(r.value->runners[0].token == "glrt-new");
    CHECK(r.value->runners[0].token_obtained_at == "2026-02-03T04:05:06Z");
    CHECK(r.value->runners[0].token_expires_at == "2026-05-03T04:05:06Z");
    CHECK(r.value->runners[1] == b);
}

TEST_CASE(
    "open gives a new document for a missing file and throws on bad TOML", "[config][writer]"
) {
    temp_dir dir;
    CHECK(
        config_document::open(dir.path / "missing.toml").to_toml() ==
        "concurrent = 1\ncheck_interval = 0\n"
    );

    write_file(dir.path / "bad.toml", "concurrent = 1\nconcurrent = = 2\n");
    const std::string prefix = (dir.path / "bad.toml").string() + ":2:";
    try {
        config_document::open(dir.path / "bad.toml");
        FAIL("no exception");
    } catch (const std::runtime_error& e) {
        CHECK(std::string(e.what()).rfind(prefix, 0) == 0);
    }
}

TEST_CASE("open and save keep a file's content", "[config][writer]") {
    temp_dir dir;
    const auto path = dir.path / "config.toml";
    const std::string text = read_file(fixtures + "/register_docker.toml");
    write_file(path, text);
    config_document::open(path).save(path);
    CHECK(read_file(path) == text);
}

TEST_CASE("save creates the directory 0700 and the file 0600", "[config][writer]") {
    temp_dir dir;
    const auto path = dir.path / "etc" / "kiln" / "config.toml";
    config_document doc;
    doc.add_runner(shell_runner());
    doc.save(path);
    CHECK(read_file(path) == doc.to_toml());
    CHECK(mode_of(path) == 0600);
    CHECK(mode_of(dir.path / "etc") == 0700);
    CHECK(mode_of(dir.path / "etc" / "kiln") == 0700);
    CHECK(entries_of(dir.path / "etc" / "kiln") == std::vector<std::string>{"config.toml"});
}

TEST_CASE("save replaces an existing file atomically and makes it 0600", "[config][writer]") {
    temp_dir dir;
    const auto path = dir.path / "config.toml";
    write_file(path, "concurrent = 7\n");
    REQUIRE(::chmod(path.c_str(), 0644) == 0);
    struct stat old_st {};
    REQUIRE(::stat(path.c_str(), &old_st) == 0);

    auto doc = config_document::open(path);
    doc.add_runner(shell_runner());
    doc.save(path);

    CHECK(mode_of(path) == 0600);
    struct stat new_st {};
    REQUIRE(::stat(path.c_str(), &new_st) == 0);
    CHECK(new_st.st_ino != old_st.st_ino);  // a new file renamed over the old one
    auto r = kiln::config::load_config_file(path);
    REQUIRE(r.ok());
    CHECK(r.value->concurrent == 7);
    CHECK(r.value->runners.size() == 1);
    CHECK(entries_of(dir.path) == std::vector<std::string>{"config.toml"});
}

TEST_CASE(
    "a failed save throws naming the path and leaves the old file alone", "[config][writer]"
) {
    temp_dir dir;
    config_document doc;

    SECTION("the parent is a regular file") {
        const auto parent = dir.path / "not-a-dir";
        write_file(parent, "keep me");
        const auto path = parent / "config.toml";
        try {
            doc.save(path);
            FAIL("no exception");
        } catch (const std::system_error& e) {
            CHECK(std::string(e.what()) == "cannot write " + path.string() + ": Not a directory");
            CHECK(e.code() == std::errc::not_a_directory);
        }
        CHECK(read_file(parent) == "keep me");
        CHECK(entries_of(dir.path) == std::vector<std::string>{"not-a-dir"});
    }
    SECTION("the rename fails: the target is a directory") {
        const auto path = dir.path / "config.toml";
        fs::create_directory(path);
        write_file(path / "inside", "old");
        try {
            doc.save(path);
            FAIL("no exception");
        } catch (const std::system_error& e) {
            CHECK(std::string(e.what()).rfind("cannot write " + path.string() + ": ", 0) == 0);
        }
        CHECK(read_file(path / "inside") == "old");
        CHECK(
            entries_of(dir.path) == std::vector<std::string>{"config.toml"}
        );  // no temp file left
    }
}

TEST_CASE("save through a symlink replaces the file it points to", "[config][writer]") {
    temp_dir dir;
    const auto real = dir.path / "real.toml";
    const auto link = dir.path / "config.toml";
    write_file(real, "concurrent = 3\n");
    fs::create_symlink(real, link);
    auto doc = config_document::open(link);
    doc.add_runner(shell_runner());
    doc.save(link);
    CHECK(fs::is_symlink(link));
    CHECK(read_file(real) == doc.to_toml());
    CHECK(mode_of(real) == 0600);
}

TEST_CASE("token times from GitLab's API are written as TOML date-times", "[config][writer]") {
    config_document doc;
    doc.add_runner(shell_runner());
    CHECK(
        doc.replace_token(
            shell_runner().token, "glrt-new", "2026-02-03T04:05:06Z", "2026-05-03T04:05:06.000Z"
        ) == 1
    );
    CHECK(doc.to_toml().find("  token_expires_at = 2026-05-03T04:05:06Z\n") != std::string::npos);
}

TEST_CASE("a token time that is not RFC 3339 is refused and nothing changes", "[config][writer]") {
    config_document doc;
    doc.add_runner(shell_runner());
    const std::string before = doc.to_toml();

    auto bad = shell_runner();
    bad.token_expires_at = "next tuesday";
    CHECK_THROWS_AS(doc.add_runner(bad), std::invalid_argument);
    CHECK_THROWS_WITH(
        doc.replace_token(shell_runner().token, "glrt-new", "2026/01/02", std::nullopt),
        "token_obtained_at: \"2026/01/02\" is not an RFC 3339 date-time such as "
        "2026-01-02T03:04:05Z"
    );
    CHECK(doc.to_toml() == before);
}
