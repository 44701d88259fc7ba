#pragma once
// Stages in Docker containers through the Engine API: a build container from the job's image
// (started once per stage with the stage script on stdin, the GitLab way), services on a
// per-job network, cgroup limits from [runners.docker], Go runtime settings derived from them,
// and removal of everything the job created.

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "config/settings.hpp"
#include "executors/executor.hpp"

namespace kiln::executors::docker {

class engine_client;

/// `image:` or one `services:` entry of the job (protocol.md §4.5), as the executor needs it.
struct image_request {
    std::string name;
    std::string alias;  // services: names separated by ',' or spaces
    std::vector<std::string> entrypoint;
    std::vector<std::string> command;                            // services only
    std::vector<std::pair<std::string, std::string>> variables;  // services only
    std::vector<std::string> pull_policy;
    std::vector<int> ports;  // services: TCP ports to wait for
    std::string user;        // image:docker:user
};

struct registry_login {
    std::string url;  // registry host[:port]
    std::string username;
    std::string password;
};

struct job_description {
    std::int64_t job_id = 0;
    std::int64_t project_id = 0;
    std::int64_t pipeline_id = 0;
    std::string runner_short_token;
    int concurrent_id = 0;
    std::optional<image_request> image;
    std::vector<image_request> services;
    std::vector<registry_login> credentials;  // from the job payload
    /// The job's environment (runner environment + CI variables + job variables): decides
    /// which Go settings kiln may inject, and is exported in every stage script.
    std::vector<std::pair<std::string, std::string>> env;
    std::filesystem::path builds_dir;  // bind-mounted at the same path
};

struct prepare_result {
    std::string failure_reason;  // empty: ready; else a GitLab failure reason
    std::string message;
};

class docker_executor final : public executor {
public:
    docker_executor(boost::asio::any_io_executor ex, config::docker_settings settings);
    ~docker_executor() override;

    /// Connects to the engine, checks the images against the allow-lists, pulls per policy,
    /// creates the network, volumes, services (waited for) and the build container. Progress
    /// goes to `sink`. Completes when the build container is ready or something failed.
    boost::asio::awaitable<prepare_result> prepare(job_description job, output_sink sink);

    boost::asio::awaitable<stage_result> run_stage(stage_request request, output_sink sink)
        override;
    void signal_stage(int sig) override;
    /// Removes the job's containers, network and non-cache volumes, also those found only by
    /// label. Never throws; bounded by its own timeouts.
    boost::asio::awaitable<void> cleanup() override;

    /// Memory limit of the build container in bytes (0: none), for the OOM message.
    std::int64_t memory_limit() const;

    /// Time the engine spent on this job's requests (engine_client::engine_time).
    std::chrono::nanoseconds engine_time() const;

private:
    struct impl;
    std::unique_ptr<impl> impl_;
};

/// Removes what an earlier kiln process left for this runner (containers, networks, non-cache
/// volumes labelled with its short token). Returns how many objects were removed, or throws
/// std::runtime_error when the engine cannot be reached.
boost::asio::awaitable<int> remove_leftovers(
    boost::asio::any_io_executor ex,
    config::docker_settings settings,
    std::string runner_short_token
);

/// Jobs whose container was killed for memory since start-up.
std::uint64_t oom_kills_total();

}  // namespace kiln::executors::docker
