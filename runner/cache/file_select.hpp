#pragma once
// Which files of the project directory a cache entry archives: `paths` and `untracked`,
// selected by the artifacts' rules (runner/artifacts/path_match: doublestar globs, a matched
// directory taken whole, nothing outside the project directory, symlinks stored as links and
// never followed) over the real file system, with `git ls-files -o` for untracked files.
// Blocking (walks the tree, runs git): call through util::run_blocking.

#include <filesystem>
#include <string>
#include <vector>

#include "runner/artifacts/archive.hpp"
#include "runner/cache/cache_rules.hpp"

namespace kiln::cache {

struct selection {
    std::vector<artifacts::archive_entry> entries;  // sorted by name, no duplicates
    std::vector<message> messages;                   // per path: found N / no matching files
};

/// Resolves `paths` (and `untracked`) against the absolute `project_dir`. The checkout's own
/// .git directory is never included.
selection select_files(const std::filesystem::path& project_dir,
                       const std::vector<std::string>& paths, bool untracked);

}  // namespace kiln::cache
