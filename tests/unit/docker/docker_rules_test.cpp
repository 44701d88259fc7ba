#include <catch2/catch.hpp>

#include <cmath>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "executors/docker/docker_rules.hpp"
#include "runner/util/glob.hpp"
#include "executors/docker/engine_client.hpp"

using namespace kiln::executors::docker;
using nlohmann::json;

TEST_CASE("docker sizes as go-units reads them", "[docker]") {
    CHECK(parse_size("64m") == 64 * 1024 * 1024);
    CHECK(parse_size("64M") == 64 * 1024 * 1024);
    CHECK(parse_size("2g") == 2LL * 1024 * 1024 * 1024);
    CHECK(parse_size("1.5GiB") == 1536LL * 1024 * 1024);
    CHECK(parse_size("512mb") == 512LL * 1024 * 1024);
    CHECK(parse_size("1024") == 1024);
    CHECK(parse_size("10k") == 10240);
    CHECK_FALSE(parse_size(""));
    CHECK_FALSE(parse_size("m"));
    CHECK_FALSE(parse_size("64x"));
    CHECK_FALSE(parse_size("-1"));
    CHECK_FALSE(parse_size("1..5g"));
}

TEST_CASE("GOMEMLIMIT is floor(ratio x limit) in whole MiB, in Go's syntax", "[docker]") {
    CHECK(gomemlimit_value(64LL << 20, 0.9) == "57MiB");
    CHECK(gomemlimit_value(2LL << 30, 0.9) == "1843MiB");
    CHECK(gomemlimit_value(100LL << 20, 0.5) == "50MiB");
    CHECK(gomemlimit_value(1000LL << 20, 0.95) == "950MiB");
    CHECK(gomemlimit_value(1LL << 20, 0.9) == "");  // below 1 MiB: nothing
    CHECK(gomemlimit_value(0, 0.9) == "");
    CHECK(gomemlimit_value(64LL << 20, 0) == "");  // ratio 0 disables injection
    // Every value must match ^[0-9]+(([KMGT]i)?B)?$ or Go refuses to start.
    for (std::int64_t mib : {6, 7, 63, 64, 65, 1000, 1023, 1024, 4096, 12345}) {
        for (double ratio : {0.1, 0.5, 0.75, 0.9, 0.95, 1.0}) {
            auto v = gomemlimit_value(mib << 20, ratio);
            INFO(mib << " MiB at " << ratio << ": " << v);
            const auto want =
                static_cast<std::int64_t>(std::floor(static_cast<double>(mib) * ratio + 1e-9));
            if (want < 1) {
                CHECK(v.empty());
                continue;
            }
            REQUIRE(v.size() > 3);
            CHECK(v.substr(v.size() - 3) == "MiB");
            for (char c : v.substr(0, v.size() - 3)) {
                CHECK(std::isdigit(static_cast<unsigned char>(c)));
            }
            CHECK(std::stoll(v) == want);
        }
    }
}

TEST_CASE("GOMAXPROCS follows Go 1.25's cgroup rule", "[docker]") {
    CHECK(gomaxprocs_value(1'500'000'000, 8) == 2);
    CHECK(gomaxprocs_value(500'000'000, 8) == 2);
    CHECK(gomaxprocs_value(3'200'000'000, 8) == 4);
    CHECK(gomaxprocs_value(3'200'000'000, 2) == 2);
    CHECK(gomaxprocs_value(0, 8) == 0);
    CHECK(cpuset_count("0-3,6") == 5);
    CHECK(cpuset_count("0") == 1);
    CHECK(cpuset_count("x") == 0);
}

TEST_CASE("injected Go settings never override the job, the runner or the image", "[docker]") {
    go_env_inputs in;
    in.memory_bytes = 64LL << 20;
    in.nano_cpus = 1'500'000'000;
    in.available_cpus = 2;
    CHECK(go_runtime_env(in) == std::vector<std::string>{"GOMEMLIMIT=57MiB", "GOMAXPROCS=2"});
    for (const char* key : {"GOMEMLIMIT", "AUTOMEMLIMIT"}) {
        auto with = in;
        with.already_set = {key};
        CHECK(go_runtime_env(with) == std::vector<std::string>{"GOMAXPROCS=2"});
    }
    auto procs = in;
    procs.already_set = {"GOMAXPROCS"};
    CHECK(go_runtime_env(procs) == std::vector<std::string>{"GOMEMLIMIT=57MiB"});
    go_env_inputs none;
    CHECK(go_runtime_env(none).empty());
}

TEST_CASE("allow-lists are doublestar globs with exclusions", "[docker]") {
    CHECK(kiln::util::glob_match("local/*", "local/busybox"));
    CHECK_FALSE(kiln::util::glob_match("local/*", "local/a/b"));
    CHECK(kiln::util::glob_match("local/**", "local/a/b"));
    CHECK(kiln::util::glob_match("**/busybox*", "registry.example.com:5000/x/busybox:1"));
    CHECK(kiln::util::glob_match("ruby:*", "ruby:3.3"));
    CHECK_FALSE(kiln::util::glob_match("ruby:*", "python:3"));
    CHECK(kiln::util::glob_match("{ruby,python}:*", "python:3"));
    CHECK(kiln::util::glob_match("golang:1.2[0-9]", "golang:1.23"));
    CHECK_FALSE(kiln::util::glob_match("golang:1.2[0-9]", "golang:1.3"));
    CHECK(kiln::util::glob_match("a?c", "abc"));
    CHECK_FALSE(kiln::util::glob_match("a?c", "a/c"));

    CHECK(is_allowed({}, "anything"));
    CHECK(is_allowed({"local/*"}, "local/busybox"));
    CHECK_FALSE(is_allowed({"local/*"}, "docker.io/library/alpine"));
    CHECK_FALSE(is_allowed({"local/*", "!local/gomem"}, "local/gomem"));
    CHECK(is_allowed({"!*:latest"}, "alpine:3"));
    CHECK_FALSE(is_allowed({"!*:latest"}, "alpine:latest"));
}

TEST_CASE("pull policies: the job's list, limited by allowed_pull_policies", "[docker]") {
    CHECK(effective_pull_policies({}, {}, {}).policies == std::vector<std::string>{"always"});
    CHECK(
        effective_pull_policies({}, {"if-not-present"}, {}).policies ==
        std::vector<std::string>{"if-not-present"}
    );
    CHECK(
        effective_pull_policies({"never"}, {"always"}, {}).policies ==
        std::vector<std::string>{"never"}
    );
    auto r = effective_pull_policies({"always", "if-not-present"}, {}, {"if-not-present"});
    CHECK(r.policies == std::vector<std::string>{"if-not-present"});
    auto refused = effective_pull_policies({"always"}, {}, {"never", "if-not-present"});
    CHECK(refused.policies.empty());
    CHECK(refused.error.find("not one of the allowed_pull_policies") != std::string::npos);
    CHECK_FALSE(effective_pull_policies({"sometimes"}, {}, {}).error.empty());
}

TEST_CASE("image names, aliases and labels", "[docker]") {
    CHECK(normalize_image("local/busybox") == "local/busybox:latest");
    CHECK(normalize_image("host:5000/repo") == "host:5000/repo:latest");
    CHECK(normalize_image("host:5000/repo:1") == "host:5000/repo:1");
    CHECK(normalize_image("repo@sha256:abc") == "repo@sha256:abc");
    CHECK(
        service_aliases("registry.example.com/group/postgres:15", "db, pg") ==
        std::vector<std::string>{
            "db",
            "pg",
            "registry.example.com__group__postgres",
            "registry.example.com-group-postgres"}
    );
    CHECK(service_aliases("redis", "") == std::vector<std::string>{"redis"});
    CHECK(sanitize_name("kiln-abc/x:1") == "kiln-abc-x-1");
    auto l = labels_for({"tok", 42, 7, 9}, "build");
    CHECK(l.at("kiln.managed") == "true");
    CHECK(l.at("kiln.runner.id") == "tok");
    CHECK(l.at("kiln.job.id") == "42");
    CHECK(l.at("kiln.project.id") == "7");
    CHECK(l.at("kiln.type") == "build");
}

TEST_CASE("container create body from [runners.docker]", "[docker]") {
    kiln::config::docker_settings s;
    s.memory = "64m";
    s.memory_swap = "128m";
    s.memory_reservation = "32m";
    s.cpus = "1.5";
    s.cpuset_cpus = "0";
    s.cpu_shares = 512;
    s.oom_score_adjust = 500;
    s.pids_limit = 256;
    s.shm_size = 67108864;
    s.cap_add = {"NET_ADMIN"};
    s.cap_drop = {"NET_RAW"};
    s.security_opt = {"no-new-privileges"};
    s.devices = {"/dev/fuse", "/dev/kvm:/dev/kvm2:rw"};
    s.volumes = {"/cache", "/srv/data:/data:ro"};
    s.tmpfs = {{"/scratch", "rw,size=16m"}};
    s.dns = {"10.0.0.2"};
    s.extra_hosts = {"gitlab.local:10.1.2.3"};
    s.network_mode = "none";
    s.ulimit = {{"nofile", "1024:2048"}};

    container_request req;
    req.name = "kiln-x-build";
    req.image = "sha256:abc";
    req.cmd = {"sh", "-c", "exec sh"};
    req.env = {"GOMEMLIMIT=57MiB"};
    req.labels = {{"kiln.managed", "true"}};
    req.mounts = {{"bind", "/b", "/b", false}};
    req.stdin_script = true;
    req.init = true;
    req.user = "1000";

    auto j = json::parse(container_create_body(s, req));
    CHECK(j["Image"] == "sha256:abc");
    CHECK_FALSE(j.contains("Entrypoint"));
    CHECK(j["OpenStdin"] == true);
    CHECK(j["StdinOnce"] == true);
    CHECK(j["AttachStdin"] == true);
    CHECK(j["Tty"] == false);
    CHECK(j["User"] == "1000");
    CHECK(j["Env"] == json::array({"GOMEMLIMIT=57MiB"}));
    const auto& h = j["HostConfig"];
    CHECK(h["Memory"] == 67108864);
    CHECK(h["MemorySwap"] == 134217728);
    CHECK(h["MemoryReservation"] == 33554432);
    CHECK(h["NanoCpus"] == 1500000000);
    CHECK(h["CpusetCpus"] == "0");
    CHECK(h["CpuShares"] == 512);
    CHECK(h["OomScoreAdj"] == 500);
    CHECK_FALSE(h.contains("OomKillDisable"));
    CHECK(h["PidsLimit"] == 256);
    CHECK(h["ShmSize"] == 67108864);
    CHECK(h["Privileged"] == false);
    CHECK(h["CapAdd"] == json::array({"NET_ADMIN"}));
    CHECK(h["CapDrop"] == json::array({"NET_RAW"}));
    CHECK(h["SecurityOpt"] == json::array({"no-new-privileges"}));
    CHECK(h["Devices"][0]["PathOnHost"] == "/dev/fuse");
    CHECK(h["Devices"][0]["PathInContainer"] == "/dev/fuse");
    CHECK(h["Devices"][1]["PathInContainer"] == "/dev/kvm2");
    CHECK(h["Devices"][1]["CgroupPermissions"] == "rw");
    CHECK(h["Binds"] == json::array({"/srv/data:/data:ro"}));
    CHECK(h["Mounts"][0]["Type"] == "bind");
    CHECK(h["Tmpfs"]["/scratch"] == "rw,size=16m");
    CHECK(h["Dns"] == json::array({"10.0.0.2"}));
    CHECK(h["ExtraHosts"] == json::array({"gitlab.local:10.1.2.3"}));
    CHECK(h["NetworkMode"] == "none");
    CHECK(h["Ulimits"][0]["Soft"] == 1024);
    CHECK(h["Ulimits"][0]["Hard"] == 2048);
    CHECK(h["Init"] == true);
    CHECK(h["RestartPolicy"]["Name"] == "no");

    SECTION("services get no build limits and join the job's network with their aliases") {
        container_request svc;
        svc.image = "redis";
        svc.service = true;
        svc.network = "kiln-net";
        svc.aliases = {"cache", "redis"};
        auto sj = json::parse(container_create_body(s, svc));
        CHECK_FALSE(sj["HostConfig"].contains("Memory"));
        CHECK(sj["OpenStdin"] == false);
        CHECK(sj["HostConfig"]["NetworkMode"] == "kiln-net");
        CHECK(
            sj["NetworkingConfig"]["EndpointsConfig"]["kiln-net"]["Aliases"] ==
            json::array({"cache", "redis"})
        );
    }
    SECTION("privileged only for allowed images") {
        s.privileged = true;
        CHECK(json::parse(container_create_body(s, req))["HostConfig"]["Privileged"] == true);
        s.allowed_privileged_images = {"docker:*"};
        CHECK(json::parse(container_create_body(s, req))["HostConfig"]["Privileged"] == false);
    }
    SECTION("a bad size names the key") {
        s.memory = "lots";
        CHECK_THROWS_WITH(container_create_body(s, req), Catch::Contains("memory"));
    }
    SECTION("an entrypoint is only sent when asked for") {
        req.entrypoint = std::vector<std::string>{"/bin/sh", "-c"};
        CHECK(
            json::parse(container_create_body(s, req))["Entrypoint"] ==
            json::array({"/bin/sh", "-c"})
        );
    }
}

TEST_CASE("API version negotiation", "[docker]") {
    CHECK(choose_api_version("1.41", "1.12") == "1.41");
    CHECK(choose_api_version("1.52", "1.44") == "1.52");
    CHECK(choose_api_version("1.60", "1.44") == "1.52");
    CHECK(choose_api_version("1.60", "1.55") == "");
    CHECK(choose_api_version("1.40", "1.12") == "");
    CHECK(compare_api_versions("1.9", "1.10") < 0);
    CHECK(is_api_version_error(
        400, "client version 1.41 is too old. Minimum supported API version is 1.44"
    ));
    CHECK(is_api_version_error(
        400,
        R"({"message":"client version 1.50 is too new. Maximum supported API version is 1.41"})"
    ));
    CHECK_FALSE(is_api_version_error(400, R"({"message":"Minimum memory limit allowed is 6MB"})"));
    CHECK_FALSE(is_api_version_error(404, "client version 1.41 is too old"));
    CHECK(docker_socket_path("unix:///tmp/d.sock") == "/tmp/d.sock");
    CHECK_THROWS(docker_socket_path("ssh://host"));
    CHECK(url_encode("{\"label\":[\"a=b\"]}") == "%7B%22label%22%3A%5B%22a%3Db%22%5D%7D");
}
