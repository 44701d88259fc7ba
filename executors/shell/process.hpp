#pragma once
// A child process in its own process group, with stdout and stderr merged into one pipe (or in
// two, when they must stay apart) read asynchronously, and its exit observed through a pidfd —
// all on the caller's io_context.

#include <sys/types.h>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <chrono>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "executors/executor.hpp"

namespace kiln::executors {

struct exit_status {
    int exit_code = -1;  // valid when signal == 0
    int signal = 0;      // the signal that ended the process, if any
};

struct process_spec {
    std::vector<std::string> argv;
    std::vector<std::string> env;  // "KEY=value"; the whole environment of the child
    std::filesystem::path cwd;
    /// stderr through its own pipe, delivered as output_stream::stderr_stream. Otherwise both
    /// share one pipe, so the order of their writes is kept exactly.
    bool separate_stderr = false;
};

class child_process {
public:
    /// Starts the process. Throws std::system_error naming the program on failure.
    child_process(boost::asio::any_io_executor ex, const process_spec& spec);
    ~child_process();
    child_process(const child_process&) = delete;
    child_process& operator=(const child_process&) = delete;

    /// Delivers output chunks to `sink` as they are written, until the process has exited and
    /// its output is drained; then returns how it ended. When the process exits, whatever it
    /// left running in its process group is killed so the pipe closes. Cancelling the awaiting
    /// coroutine does not stop the process: use terminate().
    boost::asio::awaitable<exit_status> run(output_sink sink);

    /// Sends `sig` to the whole process group (no-op once it is gone).
    void signal_group(int sig);

    pid_t pid() const;

private:
    struct impl;
    std::unique_ptr<impl> impl_;
};

}  // namespace kiln::executors
