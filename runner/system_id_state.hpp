#pragma once
// The runner manager's system_id, kept in .runner_system_id beside config.toml as gitlab-runner
// does, so GitLab sees the same manager across restarts.

#include <filesystem>
#include <string>

namespace kiln {

struct system_id_state {
    std::string id;           // s_… or r_…
    bool persisted = false;   // false: derived now and not yet written
};

/// .runner_system_id beside the config.
std::filesystem::path system_id_path(const std::filesystem::path& config_path);

/// Reads .runner_system_id next to `config_path`; when missing or invalid, derives one from
/// /etc/machine-id (or a random r_… one) without writing anything.
system_id_state load_system_id(const std::filesystem::path& config_path);

/// Writes the id (mode 0600) when it is not persisted yet. Throws std::system_error naming the
/// file on failure.
void persist_system_id(const std::filesystem::path& config_path, system_id_state& state);

}  // namespace kiln
