// kiln run: load the config, become the jobs' user if one is set, and hand over to the daemon.

#include <sys/prctl.h>
#include <unistd.h>

#include <set>

#include "config/paths.hpp"
#include "runner/commands/common.hpp"
#include "runner/daemon.hpp"
#include "runner/prune.hpp"
#include "runner/service/run_as.hpp"
#include "runner/spool.hpp"
#include "runner/system_id_state.hpp"
#include "runner/util/logging.hpp"

namespace kiln::commands {

namespace {

std::string with_lines(std::string head, const std::vector<std::string>& lines) {
    for (const auto& l : lines) {
        head += "\n  " + l;
    }
    return head;
}

// `user` (or --user): see runner/service/run_as.hpp.
void switch_user(const std::string& name, const std::filesystem::path& config_path,
                 const config::settings& s) {
    std::string error;
    auto a = service::find_account(name, error);
    if (!a) {
        throw command_error("user = \"" + name + "\": " + error);
    }
    switch (service::plan_user_switch(::geteuid(), a->uid)) {
        case service::user_switch::none:
            return;
        case service::user_switch::refuse:
            throw command_error("jobs are to run as user " + name + ", but kiln runs as uid " +
                                std::to_string(::geteuid()) +
                                " and cannot switch: start kiln as root (it then becomes " + name +
                                ") or as " + name + " itself");
        case service::user_switch::become:
            break;
    }
    if (auto problem = service::config_trust_problem(config_path); !problem.empty()) {
        throw command_error(problem);
    }
    // The manager's id is written now, while the config directory can be (it is root's): as
    // the user kiln could not, and GitLab would see a new manager at every start.
    auto id = load_system_id(config_path);
    try {
        persist_system_id(config_path, id);
    } catch (const std::exception& e) {
        log::warn(e.what());
    }
    // Runners usually share their builds and cache directories.
    std::set<std::filesystem::path> dir_set{spool::directory(config_path, s.spool_dir),
                                            prune::volume_marks_dir(config_path)};
    for (const auto& r : s.runners) {
        for (auto& d : prune::job_dirs_of(r)) {
            dir_set.insert(std::move(d));
        }
    }
    const std::vector<std::filesystem::path> dirs(dir_set.begin(), dir_set.end());
    const auto problems = service::hand_over(*a, dirs, {system_id_path(config_path)});
    if (!problems.empty()) {
        throw command_error(with_lines(
            "jobs run as user " + name + ", who must own where kiln and they work:", problems));
    }
    try {
        service::become(*a);
    } catch (const std::exception& e) {
        throw command_error(e.what());
    }
    if (const auto out_of_reach = service::unreachable(dirs); !out_of_reach.empty()) {
        throw command_error(
            with_lines("jobs run as user " + name + ", who cannot write where they work:",
                       out_of_reach) +
            "\nlet " + name + " reach these directories, or point builds_dir/cache_dir elsewhere");
    }
    log::info("running as user " + name, {{"uid", static_cast<long long>(a->uid)}});
    // The config stays root's (checked above): from now on kiln can at most read it.
    const std::string rest = "a runner token GitLab renews cannot be saved to it, so where GitLab "
                             "rotates runner tokens, start kiln as " + name +
                             " itself (kiln install --user " + name + ") with the config its own";
    if (::access(config_path.c_str(), R_OK) == 0) {
        log::warn(config_path.string() + " stays root's: reloads work, but " + rest);
    } else {
        log::warn("user " + name + " cannot read " + config_path.string() +
                  ": reloads need a restart, and " + rest);
    }
}

}  // namespace

int run_daemon(const global_options& g, const run_options& o) {
    try {
        if (!o.working_directory.empty() && ::chdir(o.working_directory.c_str()) != 0) {
            throw command_error("cannot change to --working-directory " + o.working_directory);
        }
        const auto path = config::resolve_config_path(g.config);
        setup_logging(g);
        auto settings = load_settings(path);
        setup_logging(g, settings.log_level, settings.log_format);
        if (!o.user.empty()) {
            settings.user = o.user;
        }
        const auto config_path = std::filesystem::absolute(path);
        if (!settings.user.empty()) {
            switch_user(settings.user, config_path, settings);
        }
        // Shell jobs run as kiln's own user: without this they could attach to kiln (ptrace,
        // /proc/PID/mem) and read every runner's token from its memory. Jobs themselves are
        // dumpable again after their exec.
        ::prctl(PR_SET_DUMPABLE, 0);
        daemon_options d;
        d.config_path = config_path;
        d.settings = std::move(settings);
        d.max_jobs = o.max_jobs;
        return kiln::run_daemon(std::move(d));
    } catch (const command_error& e) {
        print_error(e.what());
        return 1;
    }
}

}  // namespace kiln::commands
