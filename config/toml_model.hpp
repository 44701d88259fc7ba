#pragma once
// Shared by loader.cpp and writer.cpp; not part of the config API (it exposes toml++ types).

#include <optional>
#include <string>
#include <string_view>

#include <toml++/toml.h>

#include "config/loader.hpp"
#include "config/settings.hpp"

namespace kiln::config::internal {

/// Validates a parsed document and converts it to settings, collecting diagnostics.
load_result settings_from_toml(const toml::table& root, std::string_view source);

/// Best-effort conversion of one [[runners]] table; problems are ignored.
runner_entry runner_from_toml(const toml::table& runner);

/// A TOML syntax error as a diagnostic.
diagnostic syntax_error(const toml::parse_error& error, std::string_view source);

/// "2026-01-02T03:04:05Z" and friends; nullopt when `text` is not an RFC 3339 date-time with
/// an offset.
std::optional<toml::date_time> parse_rfc3339(std::string_view text);

/// RFC 3339 text of a TOML date-time, fractional seconds without trailing zeros; a local
/// date-time (no offset) has no zone suffix.
std::string format_rfc3339(const toml::date_time& value);

}  // namespace kiln::config::internal
