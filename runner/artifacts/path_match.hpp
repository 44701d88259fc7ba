#pragma once
// Which files an artifacts[] entry selects (gitlab-runner's file_archiver, protocol.md §7.3), as
// pure code: doublestar glob matching, path cleaning, resolution inside the project directory,
// exclusion and the symlink-escape checks. The file system is reached only through `fs_view`,
// so the selection rules are tested against in-memory trees.

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "runner/util/glob.hpp"

namespace kiln::artifacts {

/// Go's path.Clean on '/'-separated paths: "./a//b/" → "a/b", "a/../.." → "..", "" → ".".
std::string clean_path(std::string_view path);

/// doublestar.SplitPattern: the leading directory without meta characters and the rest;
/// "a/b/*.c" → {"a/b", "*.c"}, "*.c" → {".", "*.c"}, "/x/*" → {"/x", "*"}.
std::pair<std::string, std::string> split_pattern(std::string_view pattern);

// The glob language itself (doublestar, shared with the Docker allow-lists).
using util::expand_braces;
using util::glob_match;
using util::has_glob_meta;

/// One artifacts path or exclude pattern made relative to the project directory as
/// gitlab-runner's findRelativePathInProject does: absolute paths must lie inside
/// `project_dir`; "." is the project directory itself. `ok` is false (with `error`) for
/// anything that leads outside.
struct relative_path {
    bool ok = false;
    std::string path;  // cleaned, relative, '/'-separated, may contain glob meta characters
    std::string error;
};
relative_path relative_in_project(std::string_view project_dir, std::string_view path);

enum class node_kind { missing, file, directory, symlink, other };

/// The project directory as the selection sees it. Paths are relative to the project
/// directory, '/'-separated, "." for the directory itself. Implementations follow symbolic
/// links only in the directory part of a path (as the kernel does); the selection checks that
/// every link it passes through stays inside before it asks.
class fs_view {
public:
    virtual ~fs_view() = default;
    virtual node_kind lstat(const std::string& path) const = 0;
    /// Names of the entries of a directory (any order).
    virtual std::vector<std::string> list(const std::string& dir) const = 0;
    virtual std::string read_link(const std::string& path) const = 0;
};

/// Resolves the symbolic links in `path` (relative to the project directory) lexically, as
/// realpath would: `inside` with the link-free relative path, or not `inside` when a link
/// leads outside the project directory (an absolute target counts as inside only when it lies
/// under `project_dir`) or there are more than 40 links. With `follow_last` false the last
/// element is not resolved.
struct resolved_path {
    bool inside = false;
    std::string path;
};
resolved_path resolve_inside(const fs_view& fs, std::string_view project_dir,
                             std::string_view path, bool follow_last);

struct selection_spec {
    std::vector<std::string> paths;
    std::vector<std::string> exclude;
    bool untracked = false;
    std::vector<std::string> untracked_files;  // `git ls-files -o -z` output, in its order
};

struct selected_entry {
    std::string path;  // relative, '/'-separated, never "." or with ".." elements
    node_kind kind = node_kind::file;
};

struct selection_message {
    bool warning = false;
    std::string text;
};

struct selection {
    std::vector<selected_entry> entries;  // sorted by path, unique
    std::vector<selection_message> messages;  // what gitlab-runner logs, in order
};

/// Selects the files and directories of one artifacts entry: every `paths` entry (glob or
/// plain path; a directory brings its whole subtree, symlinks are never followed while
/// walking), then the untracked files, each tested against every `exclude` pattern. Paths
/// outside the project directory, paths through symlinks that lead outside, and symlinks whose
/// target lies outside are left out with a warning. `project_dir` is absolute.
selection select_files(std::string_view project_dir, const selection_spec& spec,
                       const fs_view& fs);

}  // namespace kiln::artifacts
