#pragma once
// Pure rules of the artifact stages (names, sizes, limits, variable expansion), unit-tested.

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "runner/gitlab/job_payload.hpp"

namespace kiln::artifacts {

/// $VAR and ${VAR} from `env` (later entries win); unknown variables become empty, "$$" is "$".
std::string expand_variables(std::string_view text,
                             const std::vector<std::pair<std::string, std::string>>& env);

/// The multipart file name gitlab-runner sends: base name of the (expanded) artifact name,
/// "artifacts" when empty, "default" when that base name is empty, plus ".zip"/".gz" for the
/// zip/gzip formats (raw keeps the name).
std::string artifact_file_name(std::string_view expanded_name, std::string_view format);

/// The format to produce: the payload's artifact_format, or zip when it is empty.
std::string effective_format(const gitlab::artifact_spec& a);

/// "512 B", "12.0 KiB", "3.4 MiB", "1.2 GiB".
std::string format_size(std::uint64_t bytes);

/// Zip-bomb guard for a dependency archive of `archive_size` bytes: what it may expand to.
/// `override_text` (KILN_ARTIFACT_EXTRACT_MAX_SIZE, e.g. "2GiB", "500MB", "1048576") wins
/// when it parses.
std::uint64_t extract_limit(std::uint64_t archive_size, std::string_view override_text);

}  // namespace kiln::artifacts
