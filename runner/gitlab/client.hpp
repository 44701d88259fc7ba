#pragma once
// GitLab's runner API (protocol.md) as awaitable calls: one client per GitLab URL and TLS
// setting. Transport, retries (§1.5) and per-endpoint status counting live here; the meaning of
// each answer comes from the pure mappers in responses.hpp.

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>

#include "runner/gitlab/responses.hpp"
#include "runner/gitlab/runner_info.hpp"
#include "runner/net/http_client.hpp"

namespace kiln::gitlab {

struct client_config {
    std::string url;  // the instance URL as configured, e.g. https://gitlab.example.com/
    net::tls_settings tls;
    std::chrono::seconds connection_max_age{15 * 60};
    std::chrono::milliseconds request_timeout{std::chrono::seconds(60)};
    /// jobs/request is held by GitLab for up to ~50 s when long polling.
    std::chrono::milliseconds job_request_timeout{std::chrono::seconds(90)};
    int max_attempts = 5;  // §1.5: up to 5 attempts for retriable statuses
};

/// A call's mapped result, or the transport failure that kept it from reaching GitLab.
template <class T>
struct api_result {
    T value{};
    net::transport_error transport;  // kind::none when GitLab answered
    bool reached() const { return transport.what == net::transport_error::kind::none; }
};

/// Response statuses seen per endpoint ("jobs/request", "jobs/:id/trace", …); status 0 counts
/// transport failures. For metrics (issue 6) and tests.
using status_counters = std::map<std::string, std::map<int, std::uint64_t>>;

struct artifact_upload_params {
    std::string file_name;        // name of the multipart file part, e.g. "artifacts.zip"
    std::string artifact_type;    // query string; omitted when empty
    std::string artifact_format;
    std::string expire_in;
};

class client {
public:
    /// Throws std::invalid_argument for an unusable URL and std::runtime_error for TLS files
    /// that cannot be loaded; both messages say what to fix.
    client(boost::asio::any_io_executor executor, client_config config);
    ~client();
    client(const client&) = delete;
    client& operator=(const client&) = delete;

    /// The "info" object sent with verify, jobs/request and job updates (registration sends
    /// the default one, without executor, as gitlab-runner does).
    void set_info(runner_info info);

    boost::asio::awaitable<api_result<register_result>> register_runner(
        std::string registration_token, register_params p);
    boost::asio::awaitable<api_result<verify_result>> verify_runner(
        std::string token, std::string system_id);
    boost::asio::awaitable<api_result<unregister_result>> unregister_runner(std::string token);
    boost::asio::awaitable<api_result<unregister_result>> unregister_manager(
        std::string token, std::string system_id);
    boost::asio::awaitable<api_result<reset_token_result>> reset_token(std::string token);
    boost::asio::awaitable<api_result<reset_token_result>> reset_token_with_pat(
        std::int64_t runner_id, std::string pat);

    /// POST /jobs/request. Completes when GitLab answers (it may hold the request ~50 s).
    boost::asio::awaitable<api_result<request_job_result>> request_job(
        std::string token, std::string system_id, std::string last_update);

    /// PUT /jobs/:id.
    boost::asio::awaitable<api_result<update_result>> update_job(
        std::int64_t job_id, job_update update);

    /// PATCH /jobs/:id/trace with `content` placed at `offset`; empty content is not sent.
    /// `content` is sent without a copy: it must stay unchanged until the call completes.
    boost::asio::awaitable<api_result<patch_result>> patch_trace(
        std::int64_t job_id, std::string job_token, std::string_view content, std::int64_t offset,
        bool debug_trace);

    /// POST /jobs/:id/artifacts, streaming `archive` from disk in a multipart body.
    /// A 307 re-targets this and later uploads to the new host.
    boost::asio::awaitable<api_result<upload_result>> upload_artifacts(
        std::int64_t job_id, std::string job_token, std::filesystem::path archive,
        artifact_upload_params params);

    /// GET /jobs/:id/artifacts into `destination`, following redirects (object storage).
    boost::asio::awaitable<api_result<download_result>> download_artifacts(
        std::int64_t job_id, std::string job_token, std::filesystem::path destination);

    /// Closes idle kept-alive connections (shutdown, or before a long idle period).
    void close_idle();

    const status_counters& statuses() const;
    std::size_t connections_opened() const;

private:
    struct impl;
    std::unique_ptr<impl> impl_;
};

}  // namespace kiln::gitlab
