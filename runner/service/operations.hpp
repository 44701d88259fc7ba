#pragma once
// What an operator sees of a running kiln: the metrics registry with gitlab-runner's metric
// names, the `listen_address` HTTP endpoint (/metrics, /healthz, /readyz, /debug/jobs/list)
// and systemd notifications (READY, STATUS, STOPPING, WATCHDOG). The daemon tells it what
// happens (polling started, job started/finished, stopping); nothing here drives the daemon.

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "runner/gitlab/client.hpp"
#include "runner/job.hpp"
#include "runner/metrics/registry.hpp"
#include "runner/service/http_server.hpp"
#include "runner/service/notify.hpp"

namespace kiln::service {

/// One [[runners]] entry as the metrics show it.
struct runner_view {
    std::string short_token;
    std::string name;
    std::int64_t limit = 0;
    const gitlab::status_counters* statuses = nullptr;  // the runner's API client's counters
};

/// A running job as /debug/jobs/list shows it.
struct job_view {
    std::int64_t id = 0;
    std::string url;  // the job's page: project URL + "/-/jobs/" + id
    std::string runner;  // short token
    std::string runner_name;
    std::string executor;
    std::string stage;
    std::chrono::steady_clock::duration duration{};
};

/// Go's time.Duration text ("1.5s", "2m3.25s", "1h0m0s"), as gitlab-runner prints durations.
std::string go_duration(std::chrono::nanoseconds d);
/// The job's web page from the (credential-bearing) repository URL: credentials and ".git"
/// dropped, "/-/jobs/<id>" appended.
std::string job_page_url(const std::string& repo_url, std::int64_t job_id);
/// gitlab-runner's endpoint and method labels for kiln's client endpoint names
/// ("jobs/request" → request_job, POST); other endpoints keep kiln's name.
std::pair<std::string, std::string> api_endpoint_labels(const std::string& endpoint);
/// gitlab-runner's executor_stage for a job's stage.
std::string executor_stage(const std::string& executor, const std::string& stage);
/// /debug/jobs/list body, version 1 or 2 of gitlab-runner's format, one line per job, plus
/// kiln's runner= field at the end of each line.
std::string render_jobs_list(const std::vector<job_view>& jobs, int version);

class operations {
public:
    operations(boost::asio::any_io_executor ex, std::string system_id);
    ~operations();

    /// Where the live runners come from (called at scrape time, so reloads show at once).
    void set_runner_source(std::function<std::vector<runner_view>()> source);
    /// At start and after every reload (which also refreshes STATUS= with the runner count).
    void set_concurrent(std::int64_t concurrent);

    /// Binds listen_address (when not empty) and serves; throws std::runtime_error with a
    /// message for the operator when it cannot.
    void start_http(const std::string& listen_address);
    /// Config loaded and every runner polling: READY=1, /readyz turns 200, watchdog pings.
    void polling_started();
    void job_started(std::int64_t id, const runner_view& runner, const std::string& executor,
                     const std::string& repo_url, std::shared_ptr<job_control> control);
    void job_finished(std::int64_t id, const job_outcome& outcome);
    /// A stop signal: STOPPING=1, /readyz turns 503. `forceful`: jobs are being canceled.
    void stopping(bool forceful);
    /// The daemon's last step: closes the HTTP endpoint and the timers so io_context::run ends.
    void close();

    /// The /metrics body (also for tests).
    std::string render_metrics();
    /// Routes a GET: /metrics, /healthz, /readyz, /health/ready, /debug/jobs/list[?v=1|2].
    http_reply handle(std::string_view target);

private:
    struct running_job {
        job_view view;
        std::string system_id;
        std::chrono::steady_clock::time_point started;
        std::shared_ptr<job_control> control;
    };
    void update_status();
    void arm_watchdog();
    std::vector<runner_view> runners() const;

    boost::asio::any_io_executor ex_;
    std::string system_id_;
    notifier notify_;
    boost::asio::steady_timer watchdog_timer_;
    std::unique_ptr<http_server> http_;
    std::function<std::vector<runner_view>()> runner_source_;
    std::map<std::int64_t, running_job> jobs_;
    std::string last_status_;
    bool ready_ = false;
    bool stopping_ = false;
    bool forceful_ = false;
    bool closed_ = false;

    metrics::registry registry_;
    metrics::family& jobs_gauge_;
    metrics::family& jobs_total_;
    metrics::family& job_duration_;
    metrics::family& failed_jobs_;
    metrics::family& concurrent_;
    metrics::family& limit_;
    metrics::family& errors_;
    metrics::family& api_statuses_;
    metrics::family& version_info_;
    metrics::family& process_state_;
    metrics::family& oom_kills_;
    metrics::family& trace_bytes_;
    metrics::family& jobs_finished_;
    metrics::family& masking_bytes_;
    metrics::family& masking_seconds_;
    metrics::family& archive_bytes_;
    metrics::family& archive_seconds_;
};

}  // namespace kiln::service
