#pragma once
// systemd's readiness protocol (sd_notify(3)) without libsystemd: one datagram per message to
// the Unix socket named by $NOTIFY_SOCKET ("@name" = abstract namespace). Without the variable
// every call is a no-op, so `kiln run` behaves the same outside systemd.

#include <sys/socket.h>
#include <sys/un.h>

#include <chrono>
#include <optional>
#include <string>
#include <string_view>

namespace kiln::service {

/// $NOTIFY_SOCKET's value as a socket address; nullopt for an empty, relative or too long one.
struct notify_address {
    sockaddr_un addr{};
    socklen_t length = 0;
};
std::optional<notify_address> parse_notify_socket(std::string_view value);

/// Half of $WATCHDOG_USEC (systemd's advice), when the watchdog is on for this process
/// ($WATCHDOG_PID unset or equal to `self`).
std::optional<std::chrono::microseconds> watchdog_interval(const char* watchdog_usec,
                                                           const char* watchdog_pid, long self);

class notifier {
public:
    /// Reads NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID and removes them from the environment
    /// so job processes cannot speak for kiln (and do not inherit them).
    static notifier from_environment();
    notifier() = default;
    explicit notifier(std::optional<notify_address> address,
                      std::optional<std::chrono::microseconds> watchdog = std::nullopt);
    notifier(notifier&& o) noexcept;
    notifier& operator=(notifier&& o) noexcept;
    ~notifier();

    bool enabled() const { return address_.has_value(); }
    std::optional<std::chrono::microseconds> watchdog() const { return watchdog_; }
    /// Sends "READY=1", "STATUS=...", "STOPPING=1", "WATCHDOG=1" (newline-separated lines may
    /// be combined). Returns false when disabled or the datagram could not be sent.
    bool send(std::string_view state);

private:
    std::optional<notify_address> address_;
    std::optional<std::chrono::microseconds> watchdog_;
    int fd_ = -1;
};

}  // namespace kiln::service
