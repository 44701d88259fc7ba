#pragma once
// Token helpers and the runner's system_id (protocol.md §2.2, §2.3). Pure: reading
// /etc/machine-id and .runner_system_id happens elsewhere.

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>

namespace kiln::gitlab {

/// gitlab-runner's short token (helpers/shorten_token.go) for logs, cache paths and
/// CI_RUNNER_SHORT_TOKEN: strip one of `glrt-` (with an optional `t1_`/`t2_`/`t3_`), `t1_`..`t3_`
/// or `glrtr-`; then `glcbt-`; then `GR` + 7 hex digits; keep the first 9 characters.
std::string short_token(std::string_view token);

/// Tokens of runners created in the UI/API (`glrt-`): they use verify instead of register and
/// DELETE /runners/managers instead of DELETE /runners.
bool is_created_runner_token(std::string_view token);

/// `^[sr]_[0-9a-zA-Z]{12}$`
bool is_valid_system_id(std::string_view system_id);

/// `s_` + the first 12 hex digits of HMAC-SHA256(key = machine-id, message = "gitlab-runner"),
/// the machine-id text trimmed of whitespace first. nullopt when it is empty.
std::optional<std::string> system_id_from_machine_id(std::string_view machine_id_text);

/// `r_` + 12 random characters of [a-zA-Z0-9]. `random_byte` yields uniformly random bytes.
std::string random_system_id(const std::function<std::uint8_t()>& random_byte);

/// Same, with bytes from OpenSSL's CSPRNG.
std::string random_system_id();

}  // namespace kiln::gitlab
