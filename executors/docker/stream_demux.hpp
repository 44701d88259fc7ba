#pragma once
// Docker's multiplexed attach/logs stream (Tty=false): frames of an 8-byte header
// [stream, 0, 0, 0, size as big-endian uint32] followed by `size` bytes. Pure.

#include <array>
#include <cstdint>
#include <functional>
#include <string_view>

namespace kiln::executors::docker {

class stream_demux {
public:
    /// stream: 0 stdin (echoed), 1 stdout, 2 stderr. Payload pieces arrive as soon as their
    /// bytes do; a frame split across feeds is delivered in several pieces.
    using sink = std::function<void(int stream, std::string_view payload)>;

    explicit stream_demux(sink s) : sink_(std::move(s)) {}

    /// Consumes `data`. Returns false (and ignores the rest) once a header is malformed; the
    /// stream then is not a multiplexed one.
    bool feed(std::string_view data);

    /// True when no frame is partly read: the stream may end here without losing bytes.
    bool at_boundary() const { return header_fill_ == 0 && remaining_ == 0; }
    bool failed() const { return failed_; }

private:
    sink sink_;
    std::array<unsigned char, 8> header_{};
    std::size_t header_fill_ = 0;
    std::uint32_t remaining_ = 0;
    int stream_ = 0;
    bool failed_ = false;
};

}  // namespace kiln::executors::docker
