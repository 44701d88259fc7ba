#pragma once
// The project directory on the real file system, for the file selection of artifacts and the
// cache (path_match.hpp): an fs_view over the disk and the untracked files git reports.
// Blocking: call through util::run_blocking.

#include <filesystem>
#include <string>
#include <vector>

#include "runner/artifacts/path_match.hpp"

namespace kiln::artifacts {

/// The project directory through the real file system. Paths come from the selection, which
/// checks every symlink on the way before it asks about what lies behind it.
class disk_view final : public fs_view {
public:
    explicit disk_view(std::filesystem::path root) : root_(std::move(root)) {}

    node_kind lstat(const std::string& path) const override;
    std::vector<std::string> list(const std::string& dir) const override;
    std::string read_link(const std::string& path) const override;

private:
    std::filesystem::path at(const std::string& rel) const {
        return rel == "." ? root_ : root_ / rel;
    }
    std::filesystem::path root_;
};

/// `git ls-files -o -z` in `dir`: what `untracked: true` adds (ignored files included, as
/// GitLab documents). On failure `error` says why and the list is empty.
std::vector<std::string> untracked_files(const std::filesystem::path& dir, std::string& error);

}  // namespace kiln::artifacts
