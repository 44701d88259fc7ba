#pragma once

#include <filesystem>
#include <string>

namespace kiln::config {

/// --config if given, else $CONFIG_FILE, else /etc/kiln/config.toml for root and
/// ~/.kiln/config.toml otherwise.
std::filesystem::path resolve_config_path(const std::string& flag_value);

}  // namespace kiln::config
