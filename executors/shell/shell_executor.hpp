#pragma once
// Stages as bash (or sh) processes on this host, each in its own process group.

#include <boost/asio/any_io_executor.hpp>
#include <string>

#include "executors/executor.hpp"

namespace kiln::executors {

class child_process;

class shell_executor final : public executor {
public:
    /// `shell` is "bash" or "sh"; the job environment is added to kiln's own.
    shell_executor(boost::asio::any_io_executor ex, std::string shell);

    boost::asio::awaitable<stage_result> run_stage(stage_request request, output_sink sink) override;
    void signal_stage(int sig) override;
    boost::asio::awaitable<void> cleanup() override;

private:
    boost::asio::any_io_executor ex_;
    std::string shell_;
    child_process* current_ = nullptr;
};

}  // namespace kiln::executors
