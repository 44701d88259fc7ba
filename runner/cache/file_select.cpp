#include "runner/cache/file_select.hpp"

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <system_error>

#include "runner/artifacts/path_match.hpp"

extern char** environ;

namespace kiln::cache {
namespace fs = std::filesystem;
namespace {

// The project directory on disk, as the artifacts' selection asks about it.
class disk_view final : public artifacts::fs_view {
public:
    explicit disk_view(fs::path root) : root_(std::move(root)) {}

    artifacts::node_kind lstat(const std::string& path) const override {
        std::error_code ec;
        auto st = fs::symlink_status(at(path), ec);
        if (ec || !fs::exists(st)) {
            return artifacts::node_kind::missing;
        }
        if (fs::is_symlink(st)) {
            return artifacts::node_kind::symlink;
        }
        if (fs::is_directory(st)) {
            return artifacts::node_kind::directory;
        }
        if (fs::is_regular_file(st)) {
            return artifacts::node_kind::file;
        }
        return artifacts::node_kind::other;
    }
    std::vector<std::string> list(const std::string& dir) const override {
        std::vector<std::string> out;
        std::error_code ec;
        for (fs::directory_iterator it(at(dir), ec), end; !ec && it != end; it.increment(ec)) {
            out.push_back(it->path().filename().string());
        }
        return out;
    }
    std::string read_link(const std::string& path) const override {
        std::error_code ec;
        auto target = fs::read_symlink(at(path), ec);
        return ec ? std::string() : target.string();
    }

private:
    fs::path at(const std::string& path) const { return path == "." ? root_ : root_ / path; }
    fs::path root_;
};

std::vector<std::string> git_untracked(const fs::path& dir, std::string& error) {
    std::vector<std::string> out;
    int pipefd[2];
    if (::pipe2(pipefd, O_CLOEXEC) != 0) {
        error = std::string("cannot run git: ") + std::strerror(errno);
        return out;
    }
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, pipefd[1], 1);
    posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
    const std::string d = dir.string();
    const char* argv[] = {"git", "-C", d.c_str(), "ls-files", "-o", "-z", nullptr};
    pid_t pid = 0;
    int rc = posix_spawnp(&pid, "git", &fa, nullptr, const_cast<char* const*>(argv), environ);
    posix_spawn_file_actions_destroy(&fa);
    ::close(pipefd[1]);
    if (rc != 0) {
        ::close(pipefd[0]);
        error = std::string("cannot run git: ") + std::strerror(rc);
        return out;
    }
    std::string data;
    char buf[65536];
    for (;;) {
        ssize_t r = ::read(pipefd[0], buf, sizeof buf);
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r <= 0) {
            break;
        }
        data.append(buf, static_cast<std::size_t>(r));
    }
    ::close(pipefd[0]);
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        error = "git ls-files -o failed in " + d;
        return out;
    }
    std::size_t i = 0;
    while (i < data.size()) {
        auto j = data.find('\0', i);
        if (j == std::string::npos) {
            j = data.size();
        }
        if (j > i) {
            out.push_back(data.substr(i, j - i));
        }
        i = j + 1;
    }
    return out;
}

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
        spec.untracked_files = git_untracked(root, error);
        if (!error.empty()) {
            out.messages.push_back({message::level::warning, "untracked: " + error});
        }
    }
    disk_view view(root);
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
