#pragma once
// Retry decisions of gitlab-runner's retrying requester (protocol.md §1.5), as pure functions:
// the caller supplies the clock and the randomness.

#include <chrono>
#include <optional>
#include <string_view>

#include "runner/net/http_message.hpp"

namespace kiln::gitlab {

/// Attempts per request, the first one included.
inline constexpr int max_request_attempts = 5;

inline constexpr std::chrono::milliseconds backoff_min{100};
inline constexpr std::chrono::milliseconds backoff_max{60'000};

/// 408, 429, 500, 502, 503, 504 and anything >= 512 (501 and 505-511 are final).
bool is_retriable_status(int status);

/// Whether to send attempt `attempts_made + 1` after a response with `status`.
bool should_retry(int status, int attempts_made);

/// An RFC 1123 date ("Wed, 21 Oct 2015 07:28:00 GMT"); nullopt when malformed.
std::optional<std::chrono::system_clock::time_point> parse_rfc1123_date(std::string_view text);

enum class wait_source { rate_limit_reset, retry_after, backoff };

struct retry_wait {
    std::chrono::milliseconds delay{0};
    wait_source source = wait_source::backoff;
};

/// The wait before the next attempt: RateLimit-ResetTime (a date, measured from `now`) if it
/// lies in the future, else a positive integer Retry-After in seconds, else
/// exponential_backoff(backoff_attempt, jitter01). As in gitlab-runner, only waits taken from the
/// backoff advance it: increment `backoff_attempt` (starting at 0) when `source == backoff`.
retry_wait wait_before_retry(
    const net::http_headers& headers,
    int backoff_attempt,
    std::chrono::system_clock::time_point now,
    double jitter01
);

/// gitlab-runner's backoff (jpillora/backoff): 100 ms * 2^attempt, jittered uniformly between
/// 100 ms and that value, capped at 60 s. `jitter01` is a random number in [0, 1).
std::chrono::milliseconds exponential_backoff(int attempt, double jitter01);

/// Capped exponential backoff with full jitter, for polling and other retry loops of our own:
/// jitter01 * min(cap, base * 2^attempt).
std::chrono::milliseconds full_jitter_backoff(
    int attempt, std::chrono::milliseconds base, std::chrono::milliseconds cap, double jitter01
);

}  // namespace kiln::gitlab
