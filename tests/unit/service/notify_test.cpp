#include <catch2/catch.hpp>

#include <cstring>

#include "runner/service/notify.hpp"

using namespace kiln::service;

TEST_CASE("NOTIFY_SOCKET: paths and abstract names") {
    auto p = parse_notify_socket("/run/systemd/notify");
    REQUIRE(p);
    CHECK(std::string(p->addr.sun_path) == "/run/systemd/notify");
    CHECK(p->length == offsetof(sockaddr_un, sun_path) + sizeof("/run/systemd/notify"));

    auto a = parse_notify_socket("@kiln/test");
    REQUIRE(a);
    CHECK(a->addr.sun_path[0] == '\0');
    CHECK(std::memcmp(a->addr.sun_path + 1, "kiln/test", 9) == 0);
    CHECK(a->length == offsetof(sockaddr_un, sun_path) + 10);  // no trailing NUL counted

    CHECK_FALSE(parse_notify_socket(""));
    CHECK_FALSE(parse_notify_socket("relative/path"));
    CHECK_FALSE(parse_notify_socket("@"));
    CHECK_FALSE(parse_notify_socket("/" + std::string(200, 'x')));
}

TEST_CASE("watchdog interval is half of WATCHDOG_USEC, for this process only") {
    using std::chrono::microseconds;
    CHECK(watchdog_interval("30000000", nullptr, 42) == microseconds(15000000));
    CHECK(watchdog_interval("30000000", "42", 42) == microseconds(15000000));
    CHECK_FALSE(watchdog_interval("30000000", "41", 42));
    CHECK_FALSE(watchdog_interval(nullptr, nullptr, 42));
    CHECK_FALSE(watchdog_interval("0", nullptr, 42));
    CHECK_FALSE(watchdog_interval("abc", nullptr, 42));
}

TEST_CASE("a notifier without a socket does nothing") {
    notifier n;
    CHECK_FALSE(n.enabled());
    CHECK_FALSE(n.send("READY=1"));
}
