// The shell executor's child processes: output delivered as written, stdout and stderr kept apart
// when asked, merged in write order otherwise. Real processes (sh).
#include <boost/asio/this_coro.hpp>
#include <catch2/catch.hpp>
#include <chrono>
#include <string>
#include <vector>

#include "executors/shell/process.hpp"
#include "tests/support/run_coroutine_test.hpp"

namespace {

namespace asio = boost::asio;
using namespace std::chrono_literals;
using kiln::executors::child_process;
using kiln::executors::output_stream;
using kiln::executors::process_spec;

struct captured {
    std::string out;
    std::string err;
    std::string both;  // everything in the order it arrived
    kiln::executors::exit_status status;
};

captured run_sh(const std::string& script, bool separate_stderr) {
    captured c;
    kiln::test::run_coroutine_test(
        [&]() -> asio::awaitable<void> {
            process_spec spec;
            spec.argv = {"sh", "-c", script};
            spec.env = {"PATH=/usr/bin:/bin"};
            spec.separate_stderr = separate_stderr;
            child_process child(co_await asio::this_coro::executor, spec);
            c.status = co_await child.run([&](output_stream stream, std::string_view bytes) {
                (stream == output_stream::stderr_stream ? c.err : c.out).append(bytes);
                c.both.append(bytes);
            });
        },
        10s);
    return c;
}

}  // namespace

TEST_CASE("child_process: stderr on its own pipe arrives as the stderr stream", "[process]") {
    auto c = run_sh("echo out-1; echo err-1 >&2; sleep 0.1; echo out-2; printf err-2 >&2; exit 3",
                    true);
    CHECK(c.out == "out-1\nout-2\n");
    CHECK(c.err == "err-1\nerr-2");
    CHECK(c.status.exit_code == 3);
}

TEST_CASE("child_process: merged, both streams arrive as stdout in the order written", "[process]") {
    auto c = run_sh("echo out-1; echo err-1 >&2; echo out-2; echo err-2 >&2", false);
    CHECK(c.err.empty());
    CHECK(c.out == "out-1\nerr-1\nout-2\nerr-2\n");
    CHECK(c.status.exit_code == 0);
}

TEST_CASE("child_process: a large burst on both pipes is delivered whole", "[process]") {
    // More than the pipes hold, on both at once: neither reader may starve the other.
    auto c = run_sh("head -c 3000000 /dev/zero | tr '\\0' o & head -c 2000000 /dev/zero | tr "
                    "'\\0' e >&2; wait",
                    true);
    CHECK(c.out == std::string(3000000, 'o'));
    CHECK(c.err == std::string(2000000, 'e'));
}
