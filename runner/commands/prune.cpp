// kiln prune: disk hygiene by hand (the daemon does the same hourly with prune_older_than).

#include <unistd.h>

#include <boost/asio/this_coro.hpp>
#include <cstdio>

#include "config/paths.hpp"
#include "runner/commands/common.hpp"
#include "runner/prune.hpp"
#include "runner/util/logging.hpp"

namespace kiln::commands {

int run_prune(const global_options& g, const prune_options& o) {
    setup_logging(g);
    try {
        if (!o.working_directory.empty() && ::chdir(o.working_directory.c_str()) != 0) {
            throw command_error("cannot change to --working-directory " + o.working_directory);
        }
        const auto path = std::filesystem::absolute(config::resolve_config_path(g.config));
        auto settings = load_settings(path);
        std::chrono::seconds age{7 * 24 * 3600};
        if (!o.older_than.empty()) {
            auto a = prune::parse_age(o.older_than);
            if (!a) {
                throw command_error("--older-than " + o.older_than +
                                    " is not an age: use e.g. 7d, 168h, 90m or 1h30m");
            }
            age = *a;
        } else if (settings.prune_older_than.count() > 0) {
            age = settings.prune_older_than;
        }
        prune::report rep;
        run_coroutine([&]() -> boost::asio::awaitable<void> {
            auto ex = co_await boost::asio::this_coro::executor;
            co_await prune::prune_all(ex, settings, path, age, o.dry_run, rep);
        });
        const char* verb = o.dry_run ? "would remove" : "removed";
        for (const auto& r : rep.removed) {
            std::printf("%s %s\n", verb, r.c_str());
        }
        for (const auto& r : rep.in_use) {
            std::printf("kept (in use by a running job) %s\n", r.c_str());
        }
        for (const auto& e : rep.errors) {
            print_error(e);
        }
        std::printf("%s %zu item(s) unused for more than %s\n", verb, rep.removed.size(),
                    prune::describe_age(age).c_str());
        return rep.errors.empty() ? 0 : 1;
    } catch (const command_error& e) {
        print_error(e.what());
        return 1;
    }
}

}  // namespace kiln::commands
