#include "runner/trace/trace_buffer.hpp"

#include <libdeflate.h>

#include <algorithm>
#include <cstdio>

namespace kiln::trace {
namespace {

std::string_view trim(std::string_view s) {
    const auto* ws = " \t\r\n\v\f";
    auto b = s.find_first_not_of(ws);
    if (b == std::string_view::npos) {
        return {};
    }
    auto e = s.find_last_not_of(ws);
    return s.substr(b, e - b + 1);
}

// Length of the longest suffix of `text` that is a proper prefix of some secret: those bytes
// may still turn into a secret when more output arrives.
std::size_t partial_secret_suffix(std::string_view text, const std::vector<std::string>& secrets,
                                  std::size_t longest) {
    std::size_t max_check = std::min(text.size(), longest > 0 ? longest - 1 : 0);
    for (std::size_t n = max_check; n > 0; --n) {
        auto tail = text.substr(text.size() - n);
        for (const auto& s : secrets) {
            if (s.size() > n && s.compare(0, n, tail) == 0) {
                return n;
            }
        }
    }
    return 0;
}

}  // namespace

trace_buffer::trace_buffer(std::size_t limit_bytes, std::vector<std::string> secrets)
    : limit_(limit_bytes) {
    for (auto& s : secrets) {
        auto t = trim(s);
        if (!t.empty()) {
            secrets_.emplace_back(t);
        }
    }
    // Longest first, so a secret that contains another is masked whole.
    std::sort(secrets_.begin(), secrets_.end(),
              [](const auto& a, const auto& b) { return a.size() > b.size(); });
    secrets_.erase(std::unique(secrets_.begin(), secrets_.end()), secrets_.end());
    for (const auto& s : secrets_) {
        longest_secret_ = std::max(longest_secret_, s.size());
    }
}

void trace_buffer::write(std::string_view data) {
    if (truncated_) {
        return;
    }
    held_.append(data);
    std::string out;
    std::size_t pos = 0;
    const std::string_view text = held_;
    while (pos < text.size()) {
        // Earliest match wins; at equal positions the longest (secrets_ is sorted so).
        std::size_t best = std::string_view::npos;
        std::size_t best_len = 0;
        for (const auto& s : secrets_) {
            auto at = text.find(s, pos);
            if (at < best) {
                best = at;
                best_len = s.size();
            }
        }
        if (best == std::string_view::npos) {
            break;
        }
        out.append(text.substr(pos, best - pos));
        out.append(masked_text);
        pos = best + best_len;
    }
    auto rest = text.substr(pos);
    auto keep = partial_secret_suffix(rest, secrets_, longest_secret_);
    out.append(rest.substr(0, rest.size() - keep));
    held_ = std::string(rest.substr(rest.size() - keep));
    commit(out);
}

void trace_buffer::close() {
    if (!held_.empty()) {
        auto rest = std::move(held_);
        held_.clear();
        commit(rest);
    }
}

void trace_buffer::commit(std::string_view masked) {
    if (truncated_ || masked.empty()) {
        return;
    }
    std::string_view take = masked;
    bool cut = false;
    if (data_.size() + masked.size() > limit_) {
        std::size_t room = limit_ - data_.size();
        // Do not split a UTF-8 sequence: back off over continuation bytes (at most 3).
        std::size_t n = room;
        for (int i = 0; i < 3 && n > 0 && n < masked.size() &&
                        (static_cast<unsigned char>(masked[n]) & 0xC0) == 0x80;
             ++i) {
            --n;
        }
        take = masked.substr(0, n);
        cut = true;
    }
    auto append = [this](std::string_view s) {
        crc_ = libdeflate_crc32(crc_, s.data(), s.size());
        data_.append(s);
    };
    append(take);
    if (cut) {
        truncated_ = true;
        held_.clear();
        append("\n\x1b[33;1mJob's log exceeded limit of " + std::to_string(limit_) +
               " bytes.\nJob execution will continue but no more output will be collected."
               "\x1b[0;m\n");
    }
}

std::string_view trace_buffer::slice(std::size_t offset, std::size_t max) const {
    if (offset >= data_.size()) {
        return {};
    }
    return std::string_view(data_).substr(offset, max);
}

std::string trace_buffer::checksum() const {
    char buf[32];
    std::snprintf(buf, sizeof buf, "crc32:%08x", crc_);
    return buf;
}

}  // namespace kiln::trace
