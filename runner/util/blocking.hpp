#pragma once
// Blocking work (archives, hashing, large file copies) runs on a small thread pool and its
// result comes back to the awaiting coroutine on the I/O thread, so a 300 MB zip never stalls
// trace streaming or long polls of other jobs.

#include <boost/asio/awaitable.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <type_traits>
#include <utility>

namespace kiln::util {

/// The process-wide pool for blocking work: one thread per core, at least two.
boost::asio::thread_pool& blocking_pool();

/// Runs `f()` on the blocking pool; the awaiting coroutine resumes on its own executor with
/// f's result, or with f's exception rethrown.
template <class F>
auto run_blocking(F f) -> boost::asio::awaitable<std::invoke_result_t<F&>> {
    using result_t = std::invoke_result_t<F&>;
    // A named local, not a temporary inside the co_await expression: GCC 12 destroys such
    // temporaries twice (a double free as soon as F captures a std::string).
    auto task = [f = std::move(f)]() mutable -> boost::asio::awaitable<result_t> { co_return f(); };
    co_return co_await boost::asio::co_spawn(blocking_pool(), std::move(task),
                                             boost::asio::use_awaitable);
}

}  // namespace kiln::util
