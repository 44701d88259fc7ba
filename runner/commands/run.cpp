#include "runner/commands/common.hpp"

namespace kiln::commands {

int run_daemon(const global_options& g, const run_options&) {
    setup_logging(g);
    print_error("kiln run is not built yet");
    return 1;
}

}  // namespace kiln::commands
