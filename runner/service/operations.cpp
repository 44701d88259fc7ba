#include "runner/service/operations.hpp"

#include <unistd.h>

#include <boost/asio/post.hpp>
#include <cstdio>

#include "executors/docker/docker_executor.hpp"
#include "runner/artifacts/archive.hpp"
#include "runner/gitlab/runner_info.hpp"
#include "runner/trace/trace_buffer.hpp"
#include "runner/util/logging.hpp"
#include "runner/version.hpp"

namespace kiln::service {

namespace asio = boost::asio;

namespace {

// gitlab-runner's job duration buckets (commands/builds_helper.go): 30 s … 10 h.
const std::vector<double> job_duration_buckets = {30,   60,   300,   600,   1800,
                                                  3600, 7200, 10800, 18000, 36000};

}  // namespace

std::string go_duration(std::chrono::nanoseconds d) {
    using namespace std::chrono;
    if (d.count() == 0) {
        return "0s";
    }
    std::string out;
    if (d.count() < 0) {
        out += '-';
        d = -d;
    }
    auto ns = d.count();
    if (ns < 1000000000) {
        // Below a second Go switches units; milliseconds with a fraction cover what jobs need.
        char buf[32];
        std::snprintf(buf, sizeof buf, "%g", static_cast<double>(ns) / 1e6);
        return out + buf + "ms";
    }
    const auto h = ns / 3600000000000LL;
    ns %= 3600000000000LL;
    const auto m = ns / 60000000000LL;
    ns %= 60000000000LL;
    const auto s = ns / 1000000000LL;
    const auto frac = ns % 1000000000LL;
    if (h > 0) {
        out += std::to_string(h) + "h";
    }
    if (h > 0 || m > 0) {
        out += std::to_string(m) + "m";
    }
    out += std::to_string(s);
    if (frac > 0) {
        char buf[16];
        std::snprintf(buf, sizeof buf, "%09lld", static_cast<long long>(frac));
        std::string f(buf);
        f.erase(f.find_last_not_of('0') + 1);
        out += "." + f;
    }
    return out + "s";
}

std::string job_page_url(const std::string& repo_url, std::int64_t job_id) {
    std::string url = repo_url;
    auto scheme = url.find("://");
    if (scheme != std::string::npos) {
        auto at = url.find('@', scheme + 3);
        auto slash = url.find('/', scheme + 3);
        if (at != std::string::npos && (slash == std::string::npos || at < slash)) {
            url.erase(scheme + 3, at + 1 - (scheme + 3));  // never show the job token
        }
    }
    if (url.size() >= 4 && url.compare(url.size() - 4, 4, ".git") == 0) {
        url.resize(url.size() - 4);
    }
    return url + "/-/jobs/" + std::to_string(job_id);
}

std::pair<std::string, std::string> api_endpoint_labels(const std::string& endpoint) {
    if (endpoint == "jobs/request") {
        return {"request_job", "POST"};
    }
    if (endpoint == "jobs/:id") {
        return {"update_job", "PUT"};
    }
    if (endpoint == "jobs/:id/trace") {
        return {"patch_trace", "PATCH"};
    }
    return {endpoint, ""};
}

std::string executor_stage(const std::string& executor, const std::string& stage) {
    // gitlab-runner: "prepare" while the executor is set up, "<executor>_run" while stages run.
    if (stage.empty() || stage == "prepare_executor") {
        return "prepare";
    }
    if (stage == "upload_artifacts" || stage == "cleanup_file_variables") {
        return "finish";
    }
    return executor + "_run";
}

std::string render_jobs_list(const std::vector<job_view>& jobs, int version) {
    std::string out;
    for (const auto& j : jobs) {
        const std::string stage = j.stage.empty() ? "prepare_executor" : j.stage;
        if (version == 1) {
            out += "id=" + std::to_string(j.id) + " url=" + j.url + " state=running stage=" +
                   stage + " executor_stage=" + executor_stage(j.executor, j.stage);
        } else {
            out += "url=" + j.url + " state=running stage=" + stage +
                   " executor_stage=" + executor_stage(j.executor, j.stage) +
                   " duration=" + go_duration(j.duration);
        }
        out += " runner=" + j.runner + "\n";
    }
    return out;
}

operations::operations(asio::any_io_executor ex, std::string system_id)
    : ex_(ex), system_id_(std::move(system_id)), notify_(notifier::from_environment()),
      watchdog_timer_(ex),
      jobs_gauge_(registry_.gauge("gitlab_runner_jobs", "The current number of running builds.",
                                  {"runner", "runner_name", "system_id", "state", "stage",
                                   "executor_stage"})),
      jobs_total_(registry_.counter("gitlab_runner_jobs_total", "Total number of handled jobs",
                                    {"runner", "runner_name", "system_id"})),
      job_duration_(registry_.histogram("gitlab_runner_job_duration_seconds",
                                        "Histogram of job durations",
                                        {"runner", "runner_name", "system_id"},
                                        job_duration_buckets)),
      failed_jobs_(registry_.counter("gitlab_runner_failed_jobs_total",
                                     "Total number of failed jobs",
                                     {"runner", "runner_name", "failure_reason"})),
      concurrent_(registry_.gauge("gitlab_runner_concurrent",
                                  "The current value of concurrent setting")),
      limit_(registry_.gauge("gitlab_runner_limit", "The current value of limit setting",
                             {"runner", "runner_name", "system_id"})),
      errors_(registry_.counter("gitlab_runner_errors_total",
                                "The number of caught errors.", {"level"})),
      api_statuses_(registry_.counter("gitlab_runner_api_request_statuses_total",
                                      "The total number of api requests, partitioned by runner, "
                                      "system_id, endpoint, status and method.",
                                      {"runner", "system_id", "endpoint", "status", "method"})),
      version_info_(registry_.gauge("gitlab_runner_version_info",
                                    "A metric with a constant '1' value labeled by different "
                                    "build stats fields.",
                                    {"name", "version", "revision", "os", "architecture"})),
      process_state_(registry_.gauge("gitlab_runner_process_state_info",
                                     "Current process state (running, graceful_shutdown, "
                                     "forceful_shutdown)",
                                     {"state"})),
      oom_kills_(registry_.counter("kiln_oom_kills_total",
                                   "Job containers killed by the kernel for memory since start")),
      trace_bytes_(registry_.counter("kiln_trace_bytes_total",
                                     "Bytes of job logs produced (after masking) by finished jobs",
                                     {"runner", "runner_name"})),
      jobs_finished_(registry_.counter("kiln_jobs_finished_total",
                                       "Jobs finished, by final state sent to GitLab",
                                       {"runner", "runner_name", "state"})),
      masking_bytes_(registry_.counter("kiln_trace_masking_bytes_total",
                                       "Job output taken through masking (and UTF-8 repair, "
                                       "CRC32, the spool); divide its rate by "
                                       "kiln_trace_masking_seconds_total's for the throughput")),
      masking_seconds_(registry_.counter("kiln_trace_masking_seconds_total",
                                         "Time spent masking job output")),
      archive_bytes_(registry_.counter("kiln_archive_bytes_total",
                                       "File bytes put into artifact and cache archives "
                                       "(create) or taken out of them (extract)",
                                       {"operation"})),
      archive_seconds_(registry_.counter("kiln_archive_seconds_total",
                                         "Time spent creating and extracting archives",
                                         {"operation"})) {
    version_info_.set({"kiln", version_string(), revision_string(),
                       std::string(gitlab::build_platform()),
                       std::string(gitlab::build_architecture())}, 1);
    process_state_.set({"running"}, 1);
    errors_.touch({"warning"});
    errors_.touch({"error"});
}

operations::~operations() { close(); }

void operations::set_runner_source(std::function<std::vector<runner_view>()> source) {
    runner_source_ = std::move(source);
}

void operations::set_concurrent(std::int64_t concurrent) {
    concurrent_.set({}, static_cast<double>(concurrent));
    if (ready_) {
        update_status();  // a reload may have added or removed runners
    }
}

std::vector<runner_view> operations::runners() const {
    return runner_source_ ? runner_source_() : std::vector<runner_view>{};
}

void operations::start_http(const std::string& listen_address) {
    if (listen_address.empty()) {
        return;
    }
    http_ = std::make_unique<http_server>(ex_, listen_address,
                                          [this](std::string_view t) { return handle(t); });
    http_->start();
    log::info("serving metrics and health checks", {{"listen_address", http_->local_address()}});
}

void operations::polling_started() {
    ready_ = true;
    notify_.send("READY=1");
    update_status();
    if (auto interval = notify_.watchdog()) {
        log::debug("systemd watchdog on", {{"interval_us", static_cast<long long>(interval->count())}});
        arm_watchdog();
    }
}

void operations::arm_watchdog() {
    auto interval = notify_.watchdog();
    if (!interval || closed_) {
        return;
    }
    // The ping comes from the I/O thread: a wedged event loop stops it and systemd restarts kiln.
    notify_.send("WATCHDOG=1");
    watchdog_timer_.expires_after(*interval);
    watchdog_timer_.async_wait([this](boost::system::error_code ec) {
        if (!ec) {
            arm_watchdog();
        }
    });
}

void operations::job_started(std::int64_t id, const runner_view& runner,
                             const std::string& executor, const std::string& repo_url,
                             std::shared_ptr<job_control> control) {
    running_job j;
    j.view.id = id;
    j.view.url = job_page_url(repo_url, id);
    j.view.runner = runner.short_token;
    j.view.runner_name = runner.name;
    j.view.executor = executor;
    j.system_id = system_id_;
    j.started = std::chrono::steady_clock::now();
    j.control = std::move(control);
    jobs_.insert_or_assign(id, std::move(j));
    jobs_total_.inc({runner.short_token, runner.name, system_id_});
    update_status();
}

void operations::job_finished(std::int64_t id, const job_outcome& outcome) {
    auto it = jobs_.find(id);
    if (it == jobs_.end()) {
        return;
    }
    const auto& v = it->second.view;
    const auto seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() -
                                                       it->second.started)
                             .count();
    job_duration_.observe({v.runner, v.runner_name, system_id_}, seconds);
    const bool success = outcome.accepted && outcome.state == gitlab::job_state::success;
    if (outcome.accepted && !success) {
        failed_jobs_.inc({v.runner, v.runner_name,
                          outcome.failure_reason.empty() ? "unknown_failure"
                                                         : outcome.failure_reason});
    }
    jobs_finished_.inc({v.runner, v.runner_name,
                        !outcome.accepted ? "not_accepted" : success ? "success" : "failed"});
    trace_bytes_.inc({v.runner, v.runner_name}, static_cast<double>(outcome.trace_bytes));
    jobs_.erase(it);
    update_status();
}

void operations::stopping(bool forceful) {
    if (stopping_ && (forceful_ || !forceful)) {
        return;
    }
    stopping_ = true;
    forceful_ = forceful_ || forceful;
    ready_ = false;
    process_state_.clear();
    process_state_.set({forceful_ ? "forceful_shutdown" : "graceful_shutdown"}, 1);
    notify_.send("STOPPING=1");
    update_status();
}

void operations::close() {
    if (closed_) {
        return;
    }
    closed_ = true;
    watchdog_timer_.cancel();
    if (http_) {
        http_->close();
    }
}

void operations::update_status() {
    if (!notify_.enabled()) {
        return;
    }
    const auto n = runners().size();
    std::string status = std::to_string(jobs_.size()) + (jobs_.size() == 1 ? " job" : " jobs") +
                         " running, " + std::to_string(n) + (n == 1 ? " runner" : " runners");
    if (stopping_) {
        status = (forceful_ ? "stopping (canceling jobs): " : "draining: ") + status;
    }
    if (status != last_status_) {
        last_status_ = status;
        notify_.send("STATUS=" + status);
    }
}

std::string operations::render_metrics() {
    // Values owned elsewhere are mirrored now, so the page is consistent at scrape time.
    jobs_gauge_.clear();
    for (const auto& [id, j] : jobs_) {
        const auto stage = j.control && !j.control->stage.empty() ? j.control->stage
                                                                  : std::string("prepare_executor");
        const auto exec_stage = executor_stage(j.view.executor, j.control ? j.control->stage : "");
        jobs_gauge_.inc({j.view.runner, j.view.runner_name, system_id_, "running", stage, exec_stage});
    }
    limit_.clear();
    for (const auto& r : runners()) {
        limit_.set({r.short_token, r.name, system_id_}, static_cast<double>(r.limit));
        if (r.statuses == nullptr) {
            continue;
        }
        for (const auto& [endpoint, by_status] : *r.statuses) {
            auto [name, method] = api_endpoint_labels(endpoint);
            for (const auto& [status, count] : by_status) {
                api_statuses_.set({r.short_token, system_id_, name, std::to_string(status), method},
                                  static_cast<double>(count));
            }
        }
    }
    errors_.set({"warning"}, static_cast<double>(log::written(log::level::warn)));
    errors_.set({"error"}, static_cast<double>(log::written(log::level::error)));
    oom_kills_.set({}, static_cast<double>(executors::docker::oom_kills_total()));
    const auto masking = trace::masking_work();
    masking_bytes_.set({}, static_cast<double>(masking.bytes));
    masking_seconds_.set({}, static_cast<double>(masking.nanoseconds) / 1e9);
    for (auto [op, name] : {std::pair{artifacts::archive_operation::create, "create"},
                            std::pair{artifacts::archive_operation::extract, "extract"}}) {
        const auto work = artifacts::archive_work(op);
        archive_bytes_.set({name}, static_cast<double>(work.bytes));
        archive_seconds_.set({name}, work.seconds);
    }
    return registry_.render();
}

http_reply operations::handle(std::string_view target) {
    std::string_view path = target.substr(0, target.find('?'));
    std::string_view query =
        target.find('?') == std::string_view::npos ? "" : target.substr(target.find('?') + 1);
    http_reply r;
    if (path == "/metrics") {
        r.content_type = std::string(metrics::content_type);
        r.body = render_metrics();
    } else if (path == "/healthz") {
        r.body = "ok\n";
    } else if (path == "/readyz" || path == "/health/ready") {
        if (ready_ && !stopping_) {
            r.body = "ready\n";
        } else {
            r.status = 503;
            r.body = stopping_ ? "stopping\n" : "starting\n";
        }
    } else if (path == "/debug/jobs/list") {
        int version = 1;
        if (query == "v=2") {
            version = 2;
        } else if (!query.empty() && query != "v=1") {
            r.status = 404;
            r.body = "unknown list version; use ?v=1 or ?v=2\n";
            return r;
        }
        std::vector<job_view> jobs;
        const auto now = std::chrono::steady_clock::now();
        for (const auto& [id, j] : jobs_) {
            auto v = j.view;
            v.stage = j.control ? j.control->stage : "";
            v.duration = now - j.started;
            jobs.push_back(std::move(v));
        }
        r.headers.emplace_back("X-List-Version", std::to_string(version));
        r.body = render_jobs_list(jobs, version);
    } else {
        r.status = 404;
        r.body = "not found; try /metrics, /healthz, /readyz or /debug/jobs/list\n";
    }
    return r;
}

}  // namespace kiln::service
