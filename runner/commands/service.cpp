// kiln install | uninstall | start | stop | restart | status: the systemd service, with
// gitlab-runner's command and flag names. The unit is packaging/kiln.service (compiled in).

#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <vector>

#include "config/paths.hpp"
#include "runner/commands/common.hpp"
#include "runner/service/unit_file.hpp"

extern char** environ;

namespace kiln::commands {

namespace {

namespace fs = std::filesystem;

void check_service_name(const std::string& name) {
    if (name.empty() || name.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                               "0123456789-_.@:") != std::string::npos) {
        throw command_error("--service \"" + name +
                            "\" is not a valid unit name (letters, digits, - _ . @ :)");
    }
}

fs::path unit_path(const service_options& o) {
    return fs::path(o.unit_dir) / (o.service + ".service");
}

// sd_booted(3): systemd is the running service manager when /run/systemd/system exists.
void require_systemd(const std::string& what) {
    struct stat st {};
    if (::lstat("/run/systemd/system", &st) != 0 || !S_ISDIR(st.st_mode)) {
        throw command_error("cannot " + what +
                            ": systemd is not running on this host (no /run/systemd/system); "
                            "run `kiln run` under your service manager instead");
    }
}

// Runs systemctl with `args`; returns its exit status.
int systemctl(const std::vector<std::string>& args) {
    std::vector<char*> argv;
    std::string prog = "systemctl";
    argv.push_back(prog.data());
    std::vector<std::string> copy = args;
    for (auto& a : copy) {
        argv.push_back(a.data());
    }
    argv.push_back(nullptr);
    pid_t pid = 0;
    int rc = ::posix_spawnp(&pid, "systemctl", nullptr, nullptr, argv.data(), environ);
    if (rc != 0) {
        throw command_error(std::string("cannot run systemctl: ") + std::strerror(rc) +
                            " (is systemd installed?)");
    }
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

void systemctl_or_throw(const std::vector<std::string>& args) {
    if (int rc = systemctl(args); rc != 0) {
        std::string cmd = "systemctl";
        for (const auto& a : args) {
            cmd += " " + a;
        }
        throw command_error("`" + cmd + "` failed (exit " + std::to_string(rc) +
                            "); see `journalctl -xe`");
    }
}

std::string self_executable() {
    std::error_code ec;
    auto p = fs::read_symlink("/proc/self/exe", ec);
    if (ec) {
        throw command_error("cannot find the kiln binary's path: " + ec.message());
    }
    return p.string();
}

}  // namespace

int run_install(const global_options& g, const service_options& o) {
    try {
        check_service_name(o.service);
        const auto config = fs::absolute(config::resolve_config_path(g.config)).lexically_normal();
        service::unit_options u;
        u.executable = self_executable();
        u.config = config.string();
        if (o.init_user.empty()) {
            u.user = o.user;
        } else {
            u.user = o.init_user == "root" ? std::string() : o.init_user;
            u.run_as = o.user;
        }
        u.working_directory =
            o.working_directory.empty()
                ? std::string("/var/lib/kiln")
                : fs::absolute(o.working_directory).lexically_normal().string();
        const auto path = unit_path(o);
        std::error_code ec;
        if (fs::exists(path, ec)) {
            throw command_error(path.string() + " already exists: run `kiln uninstall --service " +
                                o.service + "` first");
        }
        if (!fs::exists(config, ec)) {
            std::fprintf(stderr,
                         "WARNING: %s does not exist yet; register a runner with `kiln register "
                         "--config %s` before starting the service\n",
                         config.c_str(), config.c_str());
        }
        const auto text = service::render_unit(service::packaged_unit(), u);
        const auto tmp = path.string() + ".tmp";
        {
            std::ofstream out(tmp, std::ios::trunc);
            out << text;
            out.close();
            if (!out) {
                throw command_error("cannot write " + tmp + ": " + std::strerror(errno) +
                                    " (run as root, or pass --unit-dir)");
            }
        }
        ::chmod(tmp.c_str(), 0644);
        fs::rename(tmp, path, ec);
        if (ec) {
            throw command_error("cannot write " + path.string() + ": " + ec.message());
        }
        std::printf("installed %s\n", path.c_str());
        struct stat st {};
        if (::lstat("/run/systemd/system", &st) != 0) {
            std::printf("systemd is not running here: the unit is written but not enabled\n");
            return 0;
        }
        systemctl_or_throw({"daemon-reload"});
        systemctl_or_throw({"enable", o.service + ".service"});
        std::printf("enabled; start it with `kiln start --service %s`\n", o.service.c_str());
        return 0;
    } catch (const command_error& e) {
        print_error(e.what());
        return 1;
    } catch (const fs::filesystem_error& e) {
        print_error(e.what());
        return 1;
    }
}

int run_uninstall(const global_options&, const service_options& o) {
    try {
        check_service_name(o.service);
        const auto path = unit_path(o);
        std::error_code ec;
        if (!fs::exists(path, ec)) {
            throw command_error(path.string() + " does not exist: nothing to uninstall");
        }
        struct stat st {};
        const bool systemd_running = ::lstat("/run/systemd/system", &st) == 0;
        if (systemd_running) {
            // Stopping drains running jobs (KillSignal=SIGQUIT): this may take a while.
            systemctl({"disable", "--now", o.service + ".service"});
        }
        fs::remove(path, ec);
        if (ec) {
            throw command_error("cannot remove " + path.string() + ": " + ec.message());
        }
        if (systemd_running) {
            systemctl({"daemon-reload"});
        }
        std::printf("removed %s\n", path.c_str());
        return 0;
    } catch (const command_error& e) {
        print_error(e.what());
        return 1;
    }
}

int run_service_control(const std::string& verb, const global_options&, const service_options& o) {
    try {
        check_service_name(o.service);
        require_systemd(verb + " the " + o.service + " service");
        const auto unit = o.service + ".service";
        if (verb == "status") {
            const bool running = systemctl({"is-active", "--quiet", unit}) == 0;
            std::printf("%s: Service %s\n", o.service.c_str(),
                        running ? "is running" : "has stopped");
            return running ? 0 : 1;
        }
        systemctl_or_throw({verb, unit});
        return 0;
    } catch (const command_error& e) {
        print_error(e.what());
        return 1;
    }
}

}  // namespace kiln::commands
