#include "executors/shell/script_builder.hpp"

namespace kiln::executors {

std::string shell_quote(std::string_view s) {
    std::string out = "'";
    for (char c : s) {
        if (c == '\'') {
            out += "'\\''";
        } else {
            out += c;
        }
    }
    out += "'";
    return out;
}

std::string build_stage_script(const stage_script& stage) {
    std::string s;
    s += stage.stop_on_error ? "set -e\n" : "";
    // pipefail is bash (and newer dash); only set it where the shell knows it.
    s += "case \"$(set -o 2>/dev/null)\" in *pipefail*) set -o pipefail;; esac\n";
    s += "set +o noclobber\n";
    for (const auto& [k, v] : stage.exports) {
        s += "export " + k + "=" + shell_quote(v) + "\n";
    }
    if (!stage.working_directory.empty()) {
        s += "cd " + shell_quote(stage.working_directory) + "\n";
    }
    for (const auto& cmd : stage.commands) {
        // Only the first line of a multi-line command is shown, as GitLab's log does.
        auto nl = cmd.find('\n');
        std::string shown = nl == std::string::npos ? cmd : cmd.substr(0, nl) + " # collapsed multi-line command";
        s += "printf '\\033[32;1m$ %s\\033[0;m\\n' " + shell_quote(shown) + "\n";
        s += cmd + "\n";
    }
    return s;
}

}  // namespace kiln::executors
