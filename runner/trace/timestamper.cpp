#include "runner/trace/timestamper.hpp"

#include <cstring>

namespace kiln::trace {
namespace {

constexpr std::size_t time_len = 28;  // "YYYY-MM-DDTHH:MM:SS.ffffffZ "
constexpr std::size_t prefix_len = time_len + 4;
constexpr std::size_t flag_at = time_len + 3;
constexpr std::size_t max_partial = 8 * 1024;  // gitlab-runner's bufSize

void digits(char* at, std::int64_t value, int count) {
    for (int i = count - 1; i >= 0; --i) {
        at[i] = static_cast<char>('0' + value % 10);
        value /= 10;
    }
}

}  // namespace

timestamper::timestamper(std::uint8_t stream_id, char stream_type, clock_fn clock)
    : clock_(std::move(clock)) {
    static constexpr char hex[] = "0123456789abcdef";
    std::memcpy(prefix_, "0000-00-00T00:00:00.000000Z ", time_len);
    prefix_[time_len] = hex[stream_id >> 4];
    prefix_[time_len + 1] = hex[stream_id & 0x0f];
    prefix_[time_len + 2] = stream_type;
    prefix_[flag_at] = ' ';
}

void timestamper::header(std::string& to) {
    using namespace std::chrono;
    const auto us = duration_cast<microseconds>(clock_().time_since_epoch()).count();
    std::int64_t second = us / 1'000'000;
    std::int64_t micro = us % 1'000'000;
    if (micro < 0) {
        micro += 1'000'000;
        --second;
    }
    // Date and time change once a second; only the microseconds need formatting per line.
    if (second != cached_second_) {
        const sys_seconds s{seconds{second}};
        const auto day = floor<days>(s);
        const year_month_day ymd{day};
        const hh_mm_ss hms{s - day};
        digits(prefix_, static_cast<int>(ymd.year()), 4);
        digits(prefix_ + 5, static_cast<unsigned>(ymd.month()), 2);
        digits(prefix_ + 8, static_cast<unsigned>(ymd.day()), 2);
        digits(prefix_ + 11, hms.hours().count(), 2);
        digits(prefix_ + 14, hms.minutes().count(), 2);
        digits(prefix_ + 17, hms.seconds().count(), 2);
        cached_second_ = second;
    }
    digits(prefix_ + 20, micro, 6);
    to.append(prefix_, prefix_len);
    prefix_[flag_at] = ' ';
}

void timestamper::write(std::string_view in, std::string& out) {
    std::size_t done = 0;
    std::size_t nl = in.find('\n');
    if (nl != std::string_view::npos && !partial_.empty()) {
        out += partial_;
        partial_.clear();
        out.append(in.substr(0, nl + 1));
        done = nl + 1;
    }
    while ((nl = in.find('\n', done)) != std::string_view::npos) {
        header(out);
        out.append(in.substr(done, nl + 1 - done));
        done = nl + 1;
    }
    const auto rest = in.substr(done);
    if (rest.empty()) {
        return;
    }
    // Progress output (\r without \n) and over-long lines are shown now rather than kept; the
    // line's next entry then continues it.
    const bool carriage_return = rest.find('\r') != std::string_view::npos;
    if (carriage_return || partial_.size() + rest.size() > max_partial) {
        if (partial_.empty()) {
            header(out);
        }
        out += partial_;
        partial_.clear();
        out.append(rest);
        out += '\n';
        prefix_[flag_at] = '+';
        return;
    }
    if (partial_.empty()) {
        header(partial_);
    }
    partial_.append(rest);
}

void timestamper::flush(std::string& out) {
    if (!partial_.empty()) {
        out += partial_;
        out += '\n';
        partial_.clear();
    }
}

}  // namespace kiln::trace
