#pragma once
// The shell script for one stage of a job, as text. Pure.

#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace kiln::executors {

struct stage_script {
    std::vector<std::pair<std::string, std::string>> exports;  // exported before the commands
    std::string working_directory;
    std::vector<std::string> commands;  // each echoed in green, then run
    bool stop_on_error = true;          // set -e: the first failing command ends the stage
};

/// POSIX single-quoting: the result is one word the shell takes literally.
std::string shell_quote(std::string_view s);

/// A script for bash or POSIX sh: `set -e` (and pipefail where the shell has it), exports,
/// `cd` to the working directory, then for every command an echo of `$ command` in GitLab's
/// green followed by the command itself.
std::string build_stage_script(const stage_script& stage);

}  // namespace kiln::executors
