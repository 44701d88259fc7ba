#pragma once
// Reading config.toml into settings. The parser takes text, so it is tested without files.

#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "config/settings.hpp"

namespace kiln::config {

struct diagnostic {
    enum class level { warning, error };
    level severity = level::error;
    std::string source;  // file name as given
    int line = 0;        // 1-based; 0 when the problem has no position
    int column = 0;
    std::string key;     // dotted path, e.g. "runners[1].docker.memory"
    std::string message; // what is wrong and what is expected

    /// "FILE:LINE: error: KEY: MESSAGE" — one line, for logs and stderr.
    std::string to_string() const;
};

struct load_result {
    std::optional<settings> value;  // set when there are no errors
    std::vector<diagnostic> diagnostics;

    bool ok() const { return value.has_value(); }
    std::vector<diagnostic> errors() const;
    std::vector<diagnostic> warnings() const;
};

/// Parses config.toml text. Unknown keys are warnings; wrong types or values are errors naming
/// line, key and what is expected. `source` is used in diagnostics only.
load_result parse_config(std::string_view text, std::string_view source);

/// Reads and parses a file. A missing or unreadable file is an error diagnostic.
load_result load_config_file(const std::filesystem::path& path);

}  // namespace kiln::config
