#include "runner/service/notify.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <charconv>
#include <cstdlib>
#include <cstring>
#include <utility>

namespace kiln::service {

std::optional<notify_address> parse_notify_socket(std::string_view value) {
    if (value.size() < 2 || (value[0] != '/' && value[0] != '@')) {
        return std::nullopt;
    }
    notify_address a;
    a.addr.sun_family = AF_UNIX;
    if (value.size() >= sizeof(a.addr.sun_path)) {
        return std::nullopt;
    }
    std::memcpy(a.addr.sun_path, value.data(), value.size());
    if (value[0] == '@') {
        a.addr.sun_path[0] = '\0';  // abstract: the length, not a NUL, ends the name
        a.length = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + value.size());
    } else {
        a.length = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + value.size() + 1);
    }
    return a;
}

std::optional<std::chrono::microseconds> watchdog_interval(const char* watchdog_usec,
                                                           const char* watchdog_pid, long self) {
    if (watchdog_usec == nullptr || *watchdog_usec == '\0') {
        return std::nullopt;
    }
    if (watchdog_pid != nullptr && *watchdog_pid != '\0') {
        long pid = 0;
        std::string_view p(watchdog_pid);
        auto r = std::from_chars(p.data(), p.data() + p.size(), pid);
        if (r.ec != std::errc() || r.ptr != p.data() + p.size() || pid != self) {
            return std::nullopt;
        }
    }
    unsigned long long usec = 0;
    std::string_view u(watchdog_usec);
    auto r = std::from_chars(u.data(), u.data() + u.size(), usec);
    if (r.ec != std::errc() || r.ptr != u.data() + u.size() || usec == 0) {
        return std::nullopt;
    }
    return std::chrono::microseconds(static_cast<long long>(usec / 2));
}

notifier notifier::from_environment() {
    const char* socket = std::getenv("NOTIFY_SOCKET");
    auto address = socket != nullptr ? parse_notify_socket(socket) : std::nullopt;
    auto watchdog =
        watchdog_interval(std::getenv("WATCHDOG_USEC"), std::getenv("WATCHDOG_PID"), ::getpid());
    ::unsetenv("NOTIFY_SOCKET");
    ::unsetenv("WATCHDOG_USEC");
    ::unsetenv("WATCHDOG_PID");
    return notifier(address, address ? watchdog : std::nullopt);
}

notifier::notifier(std::optional<notify_address> address,
                   std::optional<std::chrono::microseconds> watchdog)
    : address_(address), watchdog_(watchdog) {
    if (address_) {
        fd_ = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        if (fd_ < 0) {
            address_.reset();
        }
    }
}

notifier::notifier(notifier&& o) noexcept
    : address_(std::exchange(o.address_, std::nullopt)), watchdog_(o.watchdog_),
      fd_(std::exchange(o.fd_, -1)) {}

notifier& notifier::operator=(notifier&& o) noexcept {
    if (this != &o) {
        if (fd_ >= 0) {
            ::close(fd_);
        }
        address_ = std::exchange(o.address_, std::nullopt);
        watchdog_ = o.watchdog_;
        fd_ = std::exchange(o.fd_, -1);
    }
    return *this;
}

notifier::~notifier() {
    if (fd_ >= 0) {
        ::close(fd_);
    }
}

bool notifier::send(std::string_view state) {
    if (!address_ || fd_ < 0) {
        return false;
    }
    // Non-blocking: a stuck service manager must never stall the I/O thread.
    auto n = ::sendto(fd_, state.data(), state.size(), MSG_NOSIGNAL | MSG_DONTWAIT,
                      reinterpret_cast<const sockaddr*>(&address_->addr), address_->length);
    return n == static_cast<ssize_t>(state.size());
}

}  // namespace kiln::service
