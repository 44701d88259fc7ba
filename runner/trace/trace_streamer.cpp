#include "runner/trace/trace_streamer.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "runner/util/logging.hpp"

namespace kiln::trace {
namespace {
namespace asio = boost::asio;
constexpr auto keep_alive_after = std::chrono::seconds(30);
constexpr std::size_t large_patch = 64 * 1024;
}  // namespace

trace_streamer::trace_streamer(asio::any_io_executor ex, gitlab::client& api, std::int64_t job_id,
                               std::string job_token, trace_buffer& buffer)
    : ex_(ex), api_(api), job_id_(job_id), job_token_(std::move(job_token)), buffer_(buffer),
      wake_(ex) {}

void trace_streamer::stop() {
    stopping_ = true;
    wake_.cancel();
}

void trace_streamer::note_cancel(bool graceful_requested, bool abort_requested) {
    auto next = abort_requested      ? remote_cancel::abort
                : graceful_requested ? remote_cancel::graceful
                                     : remote_cancel::none;
    if (next > cancel_) {
        cancel_ = next;
        if (on_cancel_) {
            on_cancel_(next);
        }
    }
}

void trace_streamer::release_chunk() {
    // The read buffer is kept only while a backlog of large PATCHes is being sent; a job that
    // writes little holds none between PATCHes.
    if (buffer_.size() - std::min(sent_, buffer_.size()) < large_patch) {
        buffer_.release_read_buffer();
    }
}

asio::awaitable<bool> trace_streamer::send_once() {
    // Lent to the request as it is: a view of the bytes still in memory or of the spool's read
    // buffer, held until GitLab answered.
    const auto chunk = co_await buffer_.chunk(sent_, max_patch_bytes);
    if (chunk.bytes.empty()) {
        co_return true;
    }
    const auto start = static_cast<std::int64_t>(sent_);
    auto r = co_await api_.patch_trace(job_id_, job_token_, chunk.bytes, start, false);
    release_chunk();
    if (!r.reached()) {
        log::warn("sending the job log failed: " + r.transport.message, {{"job", job_id_}});
        co_return false;
    }
    const auto& p = r.value;
    if (p.update_interval) {
        interval_ = *p.update_interval;
    }
    switch (p.status) {
        case gitlab::patch_status::succeeded:
            sent_ = static_cast<std::size_t>(p.new_offset);
            last_contact_ = std::chrono::steady_clock::now();
            note_cancel(p.cancel_requested, false);
            co_return true;
        case gitlab::patch_status::range_mismatch:
            // GitLab's Range is authoritative: resend from the length it holds.
            log::debug("trace range mismatch", {{"job", job_id_}, {"offset", static_cast<long long>(p.new_offset)}});
            sent_ = static_cast<std::size_t>(std::min<std::int64_t>(
                p.new_offset, static_cast<std::int64_t>(buffer_.size())));
            note_cancel(p.cancel_requested, false);
            co_return false;
        case gitlab::patch_status::abort:
            refused_ = true;
            note_cancel(false, true);
            co_return false;
        case gitlab::patch_status::not_found:
        case gitlab::patch_status::failed:
            co_return false;
    }
    co_return false;
}

asio::awaitable<void> trace_streamer::pump() {
    while (!stopping_) {
        wake_.expires_after(interval_);
        co_await wake_.async_wait(asio::as_tuple(asio::use_awaitable));
        if (stopping_) {
            break;
        }
        if (!refused_ && buffer_.size() > sent_) {
            co_await send_once();
        }
        if (!refused_ && std::chrono::steady_clock::now() - last_contact_ >= keep_alive_after) {
            gitlab::job_update touch;
            touch.token = job_token_;
            touch.state = gitlab::job_state::running;
            touch.checksum = buffer_.checksum();
            touch.bytesize = static_cast<std::int64_t>(buffer_.size());
            auto r = co_await api_.update_job(job_id_, touch);
            if (r.reached()) {
                last_contact_ = std::chrono::steady_clock::now();
                note_cancel(r.value.cancel_requested,
                            r.value.status == gitlab::update_status::abort);
                if (r.value.status == gitlab::update_status::abort) {
                    refused_ = true;
                }
            }
        }
    }
}

asio::awaitable<bool> trace_streamer::flush() {
    int failures = 0;
    while (!refused_ && sent_ < buffer_.size()) {
        if (co_await send_once()) {
            failures = 0;
            continue;
        }
        if (refused_ || ++failures >= 5) {
            break;
        }
        // After a 416 the next PATCH goes out at once; other failures wait a little.
        asio::steady_timer t(ex_, std::chrono::milliseconds(200) * failures);
        co_await t.async_wait(asio::as_tuple(asio::use_awaitable));
    }
    co_return !refused_ && sent_ >= buffer_.size();
}

}  // namespace kiln::trace
