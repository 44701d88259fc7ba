#include "runner/util/blocking.hpp"

#include <algorithm>
#include <thread>

namespace kiln::util {

boost::asio::thread_pool& blocking_pool() {
    static boost::asio::thread_pool pool(std::max(2U, std::thread::hardware_concurrency()));
    return pool;
}

}  // namespace kiln::util
