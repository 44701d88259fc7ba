#pragma once
// Sends a job's trace_buffer to GitLab: PATCH increments while the job runs, keep-alive PUTs when
// it is quiet, and the final flush. Reports remote cancellation (Job-Status, 403) to the job.

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "runner/gitlab/client.hpp"
#include "runner/trace/trace_buffer.hpp"

namespace kiln::trace {

enum class remote_cancel { none, graceful, abort };

/// Largest PATCH body (gitlab-runner's DefaultTracePatchLimit).
inline constexpr std::size_t max_patch_bytes = 1024 * 1024;

class trace_streamer {
public:
    trace_streamer(boost::asio::any_io_executor ex, gitlab::client& api, std::int64_t job_id,
                   std::string job_token, trace_buffer& buffer);

    /// Called once per change of the remote cancel state (graceful, then possibly abort).
    void on_cancel(std::function<void(remote_cancel)> handler) { on_cancel_ = std::move(handler); }

    /// Sends new output every update interval (3 s until GitLab says otherwise) and a keep-alive
    /// PUT after 30 s without contact. Returns after stop() was called, once the PATCH in
    /// flight (if any) is answered.
    boost::asio::awaitable<void> pump();
    void stop();

    /// Sends everything not yet acknowledged, following 416 corrections. Returns false when
    /// GitLab refuses more trace (403, job gone) or keeps failing.
    boost::asio::awaitable<bool> flush();

    /// After a 412 on the final PUT: GitLab wants the whole trace again.
    void restart_from_zero() { sent_ = 0; }

    remote_cancel cancel_state() const { return cancel_; }
    std::chrono::seconds update_interval() const { return interval_; }
    void set_update_interval(std::chrono::seconds s) { interval_ = s; }

private:
    /// One PATCH of up to max_patch_bytes from the sent offset. Returns false on failure.
    boost::asio::awaitable<bool> send_once();
    void release_chunk();
    void note_cancel(bool graceful_requested, bool abort_requested);

    boost::asio::any_io_executor ex_;
    gitlab::client& api_;
    std::int64_t job_id_;
    std::string job_token_;
    trace_buffer& buffer_;
    std::size_t sent_ = 0;
    std::chrono::seconds interval_{3};
    std::chrono::steady_clock::time_point last_contact_ = std::chrono::steady_clock::now();
    boost::asio::steady_timer wake_;
    bool stopping_ = false;
    bool refused_ = false;
    remote_cancel cancel_ = remote_cancel::none;
    std::function<void(remote_cancel)> on_cancel_;
};

}  // namespace kiln::trace
