#pragma once
// Per-Go-module runners: the `module` directive of a go.mod file (read here, no go tool), the
// short name a module's runner and tag get, and the go.mod files below a directory.

#include <cstddef>
#include <filesystem>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

namespace kiln::go_module {

struct parse_result {
    std::optional<std::string> module_path;  // set on success
    std::string error;                       // else: what is wrong
    std::size_t line = 0;                    // 1-based line of the problem (0: whole file)
};

/// The module path of a go.mod file's text, following the go.mod grammar
/// (https://go.dev/ref/mod#go-mod-file-grammar): `//` comments, identifier, "interpreted" or
/// `raw` strings, and the block form `module ( path )`. Exactly one module directive.
parse_result parse_module_path(std::string_view text);

/// The element a module is known by: the last path element, without a major-version suffix
/// (`example.com/billing/v2` → `billing`, `gopkg.in/yaml.v3` → `yaml`).
std::string short_name(std::string_view module_path);

/// Path elements before the short name, nearest first (`a/b/c/v2` → {b, a}); used to tell
/// apart modules with the same short name.
std::vector<std::string> qualifiers(std::string_view module_path);

struct named_module {
    std::string module_path;
    std::string name;  // unique among the batch and the names already taken
    std::string element;  // the (possibly qualified) element used in the name and tag
};

/// Runner names `runner-<project>-<element>` for modules (in order), where <element> is the
/// short name, qualified with preceding path elements (`tools` → `cmd-tools`) when another
/// module of the batch or an existing name already uses it, and numbered as a last resort.
std::vector<named_module> assign_names(std::string_view project,
                                       const std::vector<std::string>& module_paths,
                                       const std::set<std::string>& taken);

/// go.mod files below `dir` (and in it), sorted; vendor/, testdata/ and directories starting
/// with `.` or `_` are skipped, as the go tool ignores them; symbolic links are not followed.
std::vector<std::filesystem::path> find_go_mod_files(const std::filesystem::path& dir);

}  // namespace kiln::go_module
