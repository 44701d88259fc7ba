#pragma once
// gitlab-runner's log line timestamps (FF_USE_TIMESTAMPS, protocol.md §6.4 item 4): every line
// of one output stream is prefixed with "YYYY-MM-DDTHH:MM:SS.ffffffZ ", the stream id in two hex
// digits, the stream type (O or E) and ' ' for a new line or '+' for the continuation of a line
// that was flushed early. Pure: the clock is injected; one timestamper per stream.

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>

namespace kiln::trace {

class timestamper {
public:
    using clock_fn = std::function<std::chrono::system_clock::time_point()>;

    /// Stream ids as gitlab-runner numbers them.
    static constexpr std::uint8_t executor_stream = 0x00;
    static constexpr std::uint8_t work_stream = 0x01;
    static constexpr std::uint8_t first_service_stream = 0x0f;

    explicit timestamper(std::uint8_t stream_id = work_stream, char stream_type = 'O',
                         clock_fn clock = &std::chrono::system_clock::now);

    /// Appends the entries `in` completes. A line without its newline yet is kept (with the
    /// time it started) until it ends, up to 8 KiB; a write with a carriage return but no
    /// newline, or a line past 8 KiB, is written out at once with a newline added, and the
    /// line's next entry is marked '+'.
    void write(std::string_view in, std::string& out);
    /// End of the stream: writes a kept partial line, with a newline.
    void flush(std::string& out);

private:
    void header(std::string& to);

    clock_fn clock_;
    std::string partial_;  // a kept line, its header included
    char prefix_[32];      // "YYYY-MM-DDTHH:MM:SS.ffffffZ 01O "
    std::int64_t cached_second_ = -1;
};

}  // namespace kiln::trace
