#include "config/paths.hpp"

#include <unistd.h>

#include <cstdlib>

namespace kiln::config {

std::filesystem::path resolve_config_path(const std::string& flag_value) {
    if (!flag_value.empty()) {
        return flag_value;
    }
    if (const char* env = std::getenv("CONFIG_FILE"); env != nullptr && *env != '\0') {
        return env;
    }
    if (::geteuid() == 0) {
        return "/etc/kiln/config.toml";
    }
    const char* home = std::getenv("HOME");
    return std::filesystem::path(home != nullptr ? home : ".") / ".kiln" / "config.toml";
}

}  // namespace kiln::config
