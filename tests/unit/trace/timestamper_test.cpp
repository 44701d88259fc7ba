#include <catch2/catch.hpp>

#include <chrono>
#include <string>
#include <vector>

#include "runner/trace/timestamper.hpp"

using kiln::trace::timestamper;
using namespace std::chrono;

namespace {

// A clock that starts at 2026-03-02T10:15:09.123456Z and advances 1 ms per reading.
struct fake_clock {
    system_clock::time_point t = sys_days{year{2026} / 3 / 2} + hours{10} + minutes{15} + seconds{9} +
                                 microseconds{123456};
    int readings = 0;
    timestamper::clock_fn fn() {
        return [this] {
            ++readings;
            auto now = t;
            t += milliseconds{1};
            return now;
        };
    }
};

std::string run(timestamper& ts, const std::vector<std::string>& writes, bool flush = true) {
    std::string out;
    for (const auto& w : writes) {
        ts.write(w, out);
    }
    if (flush) {
        ts.flush(out);
    }
    return out;
}

}  // namespace

TEST_CASE("timestamper: each line gets the time, stream id, type and flag", "[trace]") {
    fake_clock c;
    timestamper ts(timestamper::work_stream, 'O', c.fn());
    CHECK(run(ts, {"$ make test\nok\n"}) ==
          "2026-03-02T10:15:09.123456Z 01O $ make test\n"
          "2026-03-02T10:15:09.124456Z 01O ok\n");
}

TEST_CASE("timestamper: a line split across writes keeps the time it started", "[trace]") {
    fake_clock c;
    timestamper ts(timestamper::executor_stream, 'E', c.fn());
    std::string out;
    ts.write("hel", out);
    CHECK(out.empty());
    ts.write("lo", out);
    CHECK(out.empty());
    ts.write(" world\nnext", out);
    CHECK(out == "2026-03-02T10:15:09.123456Z 00E hello world\n");
    ts.flush(out);
    CHECK(out == "2026-03-02T10:15:09.123456Z 00E hello world\n"
                 "2026-03-02T10:15:09.124456Z 00E next\n");
    CHECK(c.readings == 2);
}

TEST_CASE("timestamper: carriage-return progress is flushed, the rest continues with +", "[trace]") {
    fake_clock c;
    timestamper ts(timestamper::work_stream, 'O', c.fn());
    CHECK(run(ts, {"50%\r", "100%\r", "done\n", "after\n"}) ==
          "2026-03-02T10:15:09.123456Z 01O 50%\r\n"
          "2026-03-02T10:15:09.124456Z 01O+100%\r\n"
          "2026-03-02T10:15:09.125456Z 01O+done\n"
          "2026-03-02T10:15:09.126456Z 01O after\n");
}

TEST_CASE("timestamper: a kept line and a carriage return go out as one entry", "[trace]") {
    fake_clock c;
    timestamper ts(timestamper::work_stream, 'O', c.fn());
    CHECK(run(ts, {"section_start:1:x", "\r\x1b[0K", "text\n"}) ==
          "2026-03-02T10:15:09.123456Z 01O section_start:1:x\r\x1b[0K\n"
          "2026-03-02T10:15:09.124456Z 01O+text\n");
}

TEST_CASE("timestamper: lines longer than 8 KiB are split, the rest marked +", "[trace]") {
    fake_clock c;
    timestamper ts(timestamper::work_stream, 'O', c.fn());
    const std::string a(5000, 'a');
    const std::string b(5000, 'b');
    CHECK(run(ts, {a, b, "c\n"}) ==
          "2026-03-02T10:15:09.123456Z 01O " + a + b + "\n" +
          "2026-03-02T10:15:09.124456Z 01O+c\n");
}

TEST_CASE("timestamper: dates, stream ids and microseconds are formatted exactly", "[trace]") {
    struct row {
        system_clock::time_point t;
        std::uint8_t id;
        char type;
        std::string prefix;
    };
    const std::vector<row> rows = {
        {sys_days{year{2024} / 2 / 29} + hours{23} + minutes{59} + seconds{59} + microseconds{999999}, 0x0f,
         'O', "2024-02-29T23:59:59.999999Z 0fO "},
        {sys_days{year{1999} / 12 / 31} + nanoseconds{999}, 0xab, 'E', "1999-12-31T00:00:00.000000Z abE "},
        {sys_days{year{2026} / 1 / 1} + milliseconds{7}, 0x01, 'O', "2026-01-01T00:00:00.007000Z 01O "},
    };
    for (const auto& r : rows) {
        timestamper ts(r.id, r.type, [&] { return r.t; });
        CHECK(run(ts, {"x\n"}) == r.prefix + "x\n");
    }
}
