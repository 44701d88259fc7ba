#pragma once
// Drives a test body written as a coroutine on a fresh io_context, with a hard time limit.

#include <boost/asio/awaitable.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <chrono>
#include <exception>
#include <stdexcept>
#include <string>
#include <type_traits>

namespace kiln::test {

/// Spawns `body` (an awaitable<void>, or a callable returning one, typically a lambda: co_spawn
/// keeps the callable and its captures alive until the coroutine ends) on a fresh io_context and
/// runs it for at most `timeout`. Throws when it did not finish in time; rethrows what it threw,
/// so REQUIRE inside the coroutine works. Whatever is still pending is destroyed with the
/// io_context before this returns.
template <class Body>
    requires std::is_same_v<Body, boost::asio::awaitable<void>> ||
             std::is_invocable_r_v<boost::asio::awaitable<void>, Body>
void run_coroutine_test(Body body, std::chrono::milliseconds timeout) {
    boost::asio::io_context ioc(1);
    bool done = false;
    std::exception_ptr failure;
    boost::asio::co_spawn(ioc, std::move(body), [&](std::exception_ptr e) {
        done = true;
        failure = e;
    });
    ioc.run_for(timeout);
    if (failure) {
        std::rethrow_exception(failure);
    }
    if (!done) {
        throw std::runtime_error("coroutine test did not finish within " +
                                 std::to_string(timeout.count()) + " ms");
    }
}

}  // namespace kiln::test
