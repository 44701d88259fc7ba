#include "executors/docker/stream_demux.hpp"

#include <algorithm>

namespace kiln::executors::docker {

bool stream_demux::feed(std::string_view data) {
    while (!data.empty() && !failed_) {
        if (remaining_ > 0) {
            auto n = std::min<std::size_t>(remaining_, data.size());
            sink_(stream_, data.substr(0, n));
            remaining_ -= static_cast<std::uint32_t>(n);
            data.remove_prefix(n);
            continue;
        }
        auto n = std::min(header_.size() - header_fill_, data.size());
        std::copy_n(data.begin(), n, header_.begin() + static_cast<std::ptrdiff_t>(header_fill_));
        header_fill_ += n;
        data.remove_prefix(n);
        if (header_fill_ < header_.size()) {
            break;
        }
        header_fill_ = 0;
        if (header_[0] > 2 || header_[1] != 0 || header_[2] != 0 || header_[3] != 0) {
            failed_ = true;
            break;
        }
        stream_ = header_[0];
        remaining_ = (std::uint32_t{header_[4]} << 24) | (std::uint32_t{header_[5]} << 16) |
                     (std::uint32_t{header_[6]} << 8) | std::uint32_t{header_[7]};
    }
    return !failed_;
}

}  // namespace kiln::executors::docker
