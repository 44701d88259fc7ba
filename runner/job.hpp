#pragma once
// One job from acceptance to its final state on GitLab:
// accept → prepare → get_sources → step_script → after_script → final update.

#include <boost/asio/awaitable.hpp>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>

#include "config/settings.hpp"
#include "runner/gitlab/client.hpp"
#include "runner/gitlab/job_payload.hpp"

namespace kiln {

struct job_outcome {
    bool accepted = false;         // false: GitLab refused the job before it started
    bool final_state_sent = false;
    gitlab::job_state state = gitlab::job_state::failed;
    std::string failure_reason;
    int exit_code = 0;
    std::uint64_t trace_bytes = 0;  // the job log's final size
};

struct job_context {
    config::runner_entry runner;
    gitlab::client& api;
    std::string system_id;
    int concurrent_id = 0;
    /// The write-ahead spool (see the daemon). `spool_write` puts the final state and trace on
    /// disk before GitLab is first asked to take them (false: it could not, the job keeps
    /// trying itself); `spool_remove` drops the entry once GitLab took the state or no longer
    /// wants it; `spool_hand_over` gives it to the daemon's delivery when GitLab is unreachable
    /// or failing, freeing the job's slot.
    std::function<boost::asio::awaitable<bool>(
        std::int64_t job_id, gitlab::job_update update,
        std::function<void(const std::filesystem::path&)> save_trace)>
        spool_write;
    /// Where the job's log is kept while it runs: the spool directory, so that the final log
    /// becomes the spool entry's without a copy. Empty: $TMPDIR.
    std::string trace_dir;
    std::function<boost::asio::awaitable<void>(std::int64_t job_id)> spool_remove;
    std::function<void(std::int64_t job_id)> spool_hand_over;
};

/// Handle to ask a running job to stop from outside (daemon shutdown).
class job_control {
public:
    /// Graceful: stop the script, run after_script, report failure. Abort: kill at once.
    void cancel(bool graceful) {
        if (handler_) {
            handler_(graceful);
        }
    }
    void set_handler(std::function<void(bool)> h) { handler_ = std::move(h); }
    /// The job's current stage ("prepare_executor", "get_sources", "step_script", ...), for
    /// /debug/jobs/list and the gitlab_runner_jobs metric.
    std::string stage;

private:
    std::function<void(bool)> handler_;
};

/// Runs the job with the shell executor and sends its final state. Never throws for job-level
/// failures (they become the job's state); completes when GitLab has the final state or gave
/// up on it.
boost::asio::awaitable<job_outcome> run_job(job_context ctx, gitlab::job_spec job,
                                            std::shared_ptr<job_control> control);

}  // namespace kiln
