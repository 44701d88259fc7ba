#pragma once
// doublestar globs as gitlab-runner uses them (artifact and cache paths, allowed_images,
// allowed_services): `*` and `?` within one path element, `**` as a whole element across any
// number of them, `[a-z]`/`[!x]` classes, `{a,b}` alternatives and `\` escapes, on
// '/'-separated paths. Pure code.

#include <string>
#include <string_view>
#include <vector>

namespace kiln::util {

/// True when `text` contains one of doublestar's meta characters `*?[{`.
bool has_glob_meta(std::string_view text);

/// {a,b} alternatives expanded (nested braces too), in order; a pattern with unbalanced braces
/// comes back unchanged.
std::vector<std::string> expand_braces(std::string_view pattern);

/// doublestar.Match: `**` as a whole path element matches zero or more elements ("a/**"
/// matches "a"). A malformed pattern matches nothing.
bool glob_match(std::string_view pattern, std::string_view path);

/// The elements of a '/'-separated path, empty ones kept ("a//b" → {"a", "", "b"}).
std::vector<std::string> split_path(std::string_view path);

enum class element_match { yes, no, bad };

/// One path element against one pattern element (no '/', braces already expanded), for
/// walking a directory tree level by level. `bad`: the pattern is malformed.
element_match match_glob_element(std::string_view pattern, std::string_view name);

}  // namespace kiln::util
