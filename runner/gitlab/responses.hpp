#pragma once
// Pure mapping of GitLab's runner API responses (protocol.md §2, §3, §5, §6, §7) to typed results.
// The retry layer of §1.5 (retry_policy.hpp) has already run; these see the final response.

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "runner/gitlab/job_payload.hpp"
#include "runner/net/http_message.hpp"

namespace kiln::gitlab {

/// One readable line from a GitLab error body: `{"message": "text"}`, Grape's
/// `{"message": {"field": ["msg", ...]}}` ("field msg, msg; other msg"), `{"error": "text"}`, or
/// any other text (whitespace collapsed, cut at 200 characters). Empty for an empty body.
std::string error_summary(std::string_view body);

/// True when Content-Type is application/json (parameters such as charset allowed).
bool is_json_content_type(const net::http_headers& headers);

/// Job-Status header values that end the job at once (gitlab-runner "abort").
bool is_abort_job_status(std::string_view job_status);

/// X-GitLab-Trace-Update-Interval: a positive integer of seconds, capped at 15 minutes.
/// nullopt when absent or not a positive integer (GitLab can send "1/2"; gitlab-runner ignores it).
std::optional<std::chrono::seconds> parse_update_interval(const net::http_headers& headers);

inline constexpr std::chrono::seconds max_update_interval{15 * 60};

/// Runner id and token as returned by register / verify / reset token.
struct runner_token {
    std::int64_t id = 0;
    std::string token;
    std::string token_expires_at;  // ISO-8601; empty = never expires (null or absent)
};

// ---- POST /runners (legacy registration) -------------------------------------------------------

enum class register_status {
    registered,   // 201
    bad_request,  // 400: validation error, e.g. runner limit reached
    forbidden,    // 403: invalid registration token
    disallowed,   // 410: registration tokens disabled on this instance
    failed,       // anything else, or a 201 that could not be decoded
};

struct register_result {
    register_status status = register_status::failed;
    runner_token runner;  // set when registered
    int http_status = 0;
    std::string message;  // error_summary of the body, or what was wrong with a 201
};

register_result map_register_response(const net::http_response& r);

// ---- POST /runners/verify ----------------------------------------------------------------------

enum class verify_status {
    valid,          // 200 with a non-zero id, or an old GitLab's plain-text "200"
    forbidden,      // 403: unknown or expired token
    unprocessable,  // 422: runner orphaned
    failed,         // 200 with id 0, 400, other statuses
};

struct verify_result {
    verify_status status = verify_status::failed;
    runner_token runner;           // id/token/expiry when GitLab sent JSON
    bool legacy_response = false;  // old GitLab: 200 without a JSON body, so no id or expiry
    int http_status = 0;
    std::string message;
};

verify_result map_verify_response(const net::http_response& r);

// ---- DELETE /runners and DELETE /runners/managers ----------------------------------------------

enum class unregister_status {
    unregistered,  // 204
    forbidden,     // 403
    bad_request,   // 400
    not_found,     // 404 (managers only: "Runner manager not found")
    failed,
};

struct unregister_result {
    unregister_status status = unregister_status::failed;
    int http_status = 0;
    std::string message;
};

unregister_result map_unregister_response(const net::http_response& r);
unregister_result map_unregister_manager_response(const net::http_response& r);

// ---- POST /runners/reset_authentication_token --------------------------------------------------

enum class reset_token_status {
    reset,          // 201 with a new token
    forbidden,      // 403: wrong or already expired token
    unprocessable,  // 422
    failed,
};

struct reset_token_result {
    reset_token_status status = reset_token_status::failed;
    std::string token;
    std::string token_expires_at;  // empty: never expires (null or absent)
    int http_status = 0;
    std::string message;
};

reset_token_result map_reset_token_response(const net::http_response& r);

// ---- POST /jobs/request ------------------------------------------------------------------------

enum class request_job_status {
    job_received,  // 201 with a decodable job
    no_job,        // 204
    forbidden,     // 403: the only unhealthy answer (token unknown or expired)
    invalid_job,   // 201 whose body is not a usable job (see `payload_problem`)
    failed,        // 409, 422, 429, 5xx, anything else: healthy, poll again
};

struct request_job_result {
    request_job_status status = request_job_status::failed;
    /// On the heap: this result sits in the frame of every coroutine between a long poll and
    /// the daemon (five of them), for the whole hold, and a job_spec is 1.3 KiB.
    std::unique_ptr<job_spec> job;
    /// Set for a 201 that could not be used. Its job_id/job_token are filled when known, so the
    /// job can be failed on GitLab instead of hanging there until it times out.
    std::optional<payload_error> payload_problem;
    /// New X-GitLab-Last-Update to remember; nullopt (header absent or empty) = keep the old one.
    std::optional<std::string> last_update;
    int http_status = 0;
    std::string message;

    /// Counts towards unhealthy_requests_limit only when false.
    bool healthy() const { return status != request_job_status::forbidden; }
};

request_job_result map_request_job_response(const net::http_response& r);

// ---- PUT /jobs/:id -----------------------------------------------------------------------------

enum class update_status {
    succeeded,                // 200
    accepted,                 // 202: final state accepted, trace not persisted yet; repeat the PUT
    abort,                    // Job-Status canceled|failed, 403, 404: stop the job at once
    trace_validation_failed,  // 412: resend the whole trace from offset 0
    failed,                   // anything else: retry later
};

struct update_result {
    update_status status = update_status::failed;
    bool cancel_requested = false;  // Job-Status: canceling (graceful cancel)
    std::optional<std::chrono::seconds> update_interval;
    std::string job_status;  // the Job-Status header, for logs
    int http_status = 0;
};

update_result map_update_response(const net::http_response& r);

// ---- PATCH /jobs/:id/trace ---------------------------------------------------------------------

enum class patch_status {
    succeeded,       // 202
    range_mismatch,  // 416: GitLab holds a different length; resend from new_offset
    abort,           // 403 or Job-Status canceled|failed
    not_found,       // 404
    failed,          // anything else: retry next tick
};

struct patch_result {
    patch_status status = patch_status::failed;
    std::int64_t new_offset = 0;  // where the next PATCH starts
    bool cancel_requested = false;
    std::optional<std::chrono::seconds> update_interval;
    std::string job_status;
    int http_status = 0;
};

/// `start` and `length` describe the chunk that was sent (Content-Range start-(start+length-1)).
patch_result map_patch_response(
    const net::http_response& r, std::int64_t start, std::int64_t length
);

// ---- POST /jobs/:id/artifacts ------------------------------------------------------------------

enum class upload_status {
    succeeded,    // 201
    redirected,   // 307 + Location: retry against new_base_url (counts as a try)
    forbidden,    // 403: no retry, job fails
    too_large,    // 413: no retry, job fails
    unavailable,  // 503: retry, up to max_upload_tries_unavailable tries
    failed,       // anything else: retry, up to max_upload_tries tries
};

inline constexpr int max_upload_tries = 3;
inline constexpr int max_upload_tries_unavailable = 6;

struct upload_result {
    upload_status status = upload_status::failed;
    std::string new_base_url;  // scheme://host[:port] of Location, for `redirected`
    int http_status = 0;
    std::string message;
};

upload_result map_upload_response(const net::http_response& r);

// ---- GET /jobs/:id/artifacts -------------------------------------------------------------------

enum class download_status {
    succeeded,   // 200: the body is the archive
    redirected,  // 302/307 + Location: GET that URL (object storage)
    forbidden,   // 401/403: no retry
    not_found,   // 404: no retry
    failed,      // anything else: retry
};

struct download_result {
    download_status status = download_status::failed;
    std::string location;  // for `redirected`
    int http_status = 0;
    std::string message;
};

download_result map_download_response(const net::http_response& r);

}  // namespace kiln::gitlab
