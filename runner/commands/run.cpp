// kiln run: load the config and hand over to the daemon.

#include <unistd.h>

#include "config/paths.hpp"
#include "runner/commands/common.hpp"
#include "runner/daemon.hpp"

namespace kiln::commands {

int run_daemon(const global_options& g, const run_options& o) {
    try {
        if (!o.working_directory.empty() && ::chdir(o.working_directory.c_str()) != 0) {
            throw command_error("cannot change to --working-directory " + o.working_directory);
        }
        const auto path = config::resolve_config_path(g.config);
        setup_logging(g);
        auto settings = load_settings(path);
        setup_logging(g, settings.log_level, settings.log_format);
        daemon_options d;
        d.config_path = std::filesystem::absolute(path);
        d.settings = std::move(settings);
        d.max_jobs = o.max_jobs;
        return kiln::run_daemon(std::move(d));
    } catch (const command_error& e) {
        print_error(e.what());
        return 1;
    }
}

}  // namespace kiln::commands
