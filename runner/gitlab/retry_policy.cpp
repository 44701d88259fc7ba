#include "runner/gitlab/retry_policy.hpp"

#include <algorithm>
#include <array>
#include <charconv>
#include <cmath>
#include <cstdint>

namespace kiln::gitlab {

namespace {

double clamp01(double x) {
    if (!(x >= 0.0)) {  // also catches NaN
        return 0.0;
    }
    return std::min(x, 1.0);
}

bool parse_fixed(std::string_view s, int& out) {
    if (s.empty()) {
        return false;
    }
    for (char c : s) {
        if (c < '0' || c > '9') {
            return false;
        }
    }
    auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
    return ec == std::errc{} && end == s.data() + s.size();
}

/// min(cap, base * 2^attempt) in milliseconds, without overflow.
double capped_exponential(int attempt, double base_ms, double cap_ms) {
    if (attempt < 0) {
        attempt = 0;
    }
    double v = base_ms * std::pow(2.0, std::min(attempt, 1000));
    return std::min(v, cap_ms);
}

}  // namespace

bool is_retriable_status(int status) {
    switch (status) {
        case 408:
        case 429:
        case 500:
        case 502:
        case 503:
        case 504:
            return true;
        default:
            return status >= 512;
    }
}

bool should_retry(int status, int attempts_made) {
    return attempts_made < max_request_attempts && is_retriable_status(status);
}

std::optional<std::chrono::system_clock::time_point> parse_rfc1123_date(std::string_view t) {
    // Go's time.RFC1123 layout "Mon, 02 Jan 2006 15:04:05 MST": fixed widths, a zone name.
    static constexpr std::array<std::string_view, 7> days{
        "Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"};
    static constexpr std::array<std::string_view, 12> months{
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    if (t.size() < 29 || t.substr(3, 2) != ", " || t[7] != ' ' || t[11] != ' ' || t[16] != ' ' ||
        t[19] != ':' || t[22] != ':' || t[25] != ' ') {
        return std::nullopt;
    }
    if (std::find(days.begin(), days.end(), t.substr(0, 3)) == days.end()) {
        return std::nullopt;
    }
    auto month_it = std::find(months.begin(), months.end(), t.substr(8, 3));
    if (month_it == months.end()) {
        return std::nullopt;
    }
    int day = 0, year = 0, hour = 0, minute = 0, second = 0;
    if (!parse_fixed(t.substr(5, 2), day) || !parse_fixed(t.substr(12, 4), year) ||
        !parse_fixed(t.substr(17, 2), hour) || !parse_fixed(t.substr(20, 2), minute) ||
        !parse_fixed(t.substr(23, 2), second)) {
        return std::nullopt;
    }
    // The zone is a name; GitLab sends GMT. Like Go, an unknown name is read as UTC.
    auto zone = t.substr(26);
    if (zone.empty() || !std::all_of(zone.begin(), zone.end(), [](char c) {
            return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
        })) {
        return std::nullopt;
    }
    if (hour > 23 || minute > 59 || second > 59) {
        return std::nullopt;
    }
    const auto month = static_cast<unsigned>(month_it - months.begin() + 1);
    const std::chrono::year_month_day ymd{
        std::chrono::year{year},
        std::chrono::month{month},
        std::chrono::day{static_cast<unsigned>(day)}};
    if (!ymd.ok()) {
        return std::nullopt;
    }
    return std::chrono::sys_days{ymd} + std::chrono::hours{hour} + std::chrono::minutes{minute} +
           std::chrono::seconds{second};
}

retry_wait wait_before_retry(
    const net::http_headers& headers,
    int backoff_attempt,
    std::chrono::system_clock::time_point now,
    double jitter01
) {
    using std::chrono::duration_cast;
    using std::chrono::milliseconds;
    if (auto reset = headers.get("RateLimit-ResetTime")) {
        if (auto when = parse_rfc1123_date(*reset); when && *when > now) {
            return {duration_cast<milliseconds>(*when - now), wait_source::rate_limit_reset};
        }
    }
    if (auto after = headers.get("Retry-After")) {
        // Integer seconds only, as gitlab-runner (an HTTP date here is ignored).
        std::string_view v = *after;
        if (!v.empty() && v.front() == '+') {
            v.remove_prefix(1);
        }
        std::int64_t seconds = 0;
        auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), seconds);
        if (ec == std::errc{} && end == v.data() + v.size() && !v.empty() && seconds > 0 &&
            seconds < 1'000'000'000) {
            return {std::chrono::seconds{seconds}, wait_source::retry_after};
        }
    }
    return {exponential_backoff(backoff_attempt, jitter01), wait_source::backoff};
}

std::chrono::milliseconds exponential_backoff(int attempt, double jitter01) {
    const double min_ms = static_cast<double>(backoff_min.count());
    const double max_ms = static_cast<double>(backoff_max.count());
    const double top = capped_exponential(attempt, min_ms, max_ms);
    const double d = min_ms + clamp01(jitter01) * (top - min_ms);
    return std::chrono::milliseconds{static_cast<std::int64_t>(std::clamp(d, min_ms, max_ms))};
}

std::chrono::milliseconds full_jitter_backoff(
    int attempt, std::chrono::milliseconds base, std::chrono::milliseconds cap, double jitter01
) {
    const double top = capped_exponential(
        attempt, static_cast<double>(base.count()), static_cast<double>(cap.count())
    );
    return std::chrono::milliseconds{static_cast<std::int64_t>(clamp01(jitter01) * top)};
}

}  // namespace kiln::gitlab
