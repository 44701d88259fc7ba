#include "executors/shell/shell_executor.hpp"

#include <fstream>

#include "executors/shell/process.hpp"

extern char** environ;

namespace kiln::executors {

namespace asio = boost::asio;

shell_executor::shell_executor(asio::any_io_executor ex, std::string shell)
    : ex_(std::move(ex)), shell_(shell == "sh" ? "sh" : "bash") {}

asio::awaitable<stage_result> shell_executor::run_stage(stage_request request, output_sink sink) {
    stage_result result;
    std::error_code ec;
    std::filesystem::create_directories(request.scratch_directory, ec);
    std::filesystem::permissions(request.scratch_directory, std::filesystem::perms::owner_all, ec);
    // The script goes to a file, not argv, so job tokens in it are not visible in ps.
    auto script_path = request.scratch_directory / (request.name + ".sh");
    {
        std::ofstream f(script_path, std::ios::trunc);
        f << request.script;
        if (!f) {
            result.system_error = "cannot write " + script_path.string();
            co_return result;
        }
    }
    std::filesystem::permissions(script_path,
                                 std::filesystem::perms::owner_read |
                                     std::filesystem::perms::owner_write,
                                 ec);

    process_spec spec;
    spec.argv = {shell_, script_path.string()};
    for (char** e = environ; *e != nullptr; ++e) {
        spec.env.emplace_back(*e);
    }
    for (const auto& [k, v] : request.env) {
        spec.env.push_back(k + "=" + v);
    }
    spec.cwd = request.working_directory;
    spec.separate_stderr = request.separate_stderr;
    try {
        child_process child(ex_, spec);
        current_ = &child;
        auto status = co_await child.run(sink);
        current_ = nullptr;
        result.exit_code = status.exit_code;
        result.signal = status.signal;
    } catch (const std::exception& e) {
        current_ = nullptr;
        result.system_error = e.what();
    }
    std::filesystem::remove(script_path, ec);
    co_return result;
}

void shell_executor::signal_stage(int sig) {
    if (current_ != nullptr) {
        current_->signal_group(sig);
    }
}

asio::awaitable<void> shell_executor::cleanup() { co_return; }

}  // namespace kiln::executors
