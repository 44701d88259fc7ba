#include "runner/service/unit_file.hpp"

#include <filesystem>
#include <sstream>

#include "runner/service/unit_text.hpp"

namespace kiln::service {

std::string_view packaged_unit() { return generated::unit_text; }

std::string systemd_quote(std::string_view arg) {
    if (!arg.empty() && arg.find_first_of(" \t\"'\\") == std::string_view::npos) {
        return std::string(arg);
    }
    std::string out = "\"";
    for (char c : arg) {
        if (c == '"' || c == '\\') {
            out += '\\';
        }
        out += c;
    }
    return out + "\"";
}

namespace {
bool under(std::string_view path, std::string_view dir) {
    return path == dir || (path.size() > dir.size() && path.substr(0, dir.size()) == dir &&
                           path[dir.size()] == '/');
}
}  // namespace

std::string render_unit(std::string_view base, const unit_options& o) {
    const std::string config_dir = std::filesystem::path(o.config).parent_path().string();
    const bool state_dir = o.working_directory == "/var/lib/kiln";
    const bool in_home = under(o.working_directory, "/home") || under(o.working_directory, "/root") ||
                         under(config_dir, "/home") || under(config_dir, "/root");
    std::string rw = systemd_quote(config_dir);
    if (!state_dir && o.working_directory != config_dir) {
        rw += " " + systemd_quote(o.working_directory);
    }
    std::istringstream in{std::string(base)};
    std::string out;
    std::string line;
    auto starts = [&](std::string_view key) { return line.rfind(key, 0) == 0; };
    while (std::getline(in, line)) {
        if (starts("ExecStart=")) {
            line = "ExecStart=" + systemd_quote(o.executable) + " run --config " +
                   systemd_quote(o.config) + " --working-directory " +
                   systemd_quote(o.working_directory);
            if (!o.run_as.empty()) {
                line += " --user " + systemd_quote(o.run_as);
            }
        } else if (starts("User=")) {
            if (o.user.empty()) {
                continue;  // root, as gitlab-runner's unit without --user
            }
            line = "User=" + o.user;
        } else if (starts("StateDirectory=")) {
            if (!state_dir) {
                continue;
            }
        } else if (starts("WorkingDirectory=")) {
            line = "WorkingDirectory=" + o.working_directory;  // taken verbatim, no quoting
        } else if (starts("ReadWritePaths=")) {
            line = "ReadWritePaths=" + rw;
        } else if (starts("ProtectHome=") && in_home) {
            continue;
        }
        out += line;
        out += '\n';
    }
    return out;
}

}  // namespace kiln::service
