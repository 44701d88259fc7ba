#include "runner/cache/file_select.hpp"

#include <system_error>

#include "runner/artifacts/path_match.hpp"
#include "runner/artifacts/project_files.hpp"

namespace kiln::cache {
namespace fs = std::filesystem;
namespace {

bool in_git_dir(const std::string& path) {
    return path == ".git" || path.rfind(".git/", 0) == 0;
}

}  // namespace

selection select_files(const fs::path& project_dir, const std::vector<std::string>& paths,
                       bool untracked) {
    selection out;
    const auto root = project_dir.lexically_normal();
    artifacts::selection_spec spec;
    spec.paths = paths;
    spec.untracked = untracked;
    if (untracked) {
        std::string error;
        spec.untracked_files = artifacts::untracked_files(root, error);
        if (!error.empty()) {
            out.messages.push_back({message::level::warning, "untracked: " + error});
        }
    }
    artifacts::disk_view view(root);
    auto sel = artifacts::select_files(root.string(), spec, view);
    for (const auto& m : sel.messages) {
        out.messages.push_back(
            {m.warning ? message::level::warning : message::level::info, m.text});
    }
    for (const auto& e : sel.entries) {
        if (in_git_dir(e.path)) {
            continue;  // the checkout's own repository is never cached or restored over
        }
        auto name = e.path;
        if (e.kind == artifacts::node_kind::directory) {
            name += '/';
        }
        out.entries.push_back({std::move(name), root / e.path});
    }
    return out;
}

}  // namespace kiln::cache
