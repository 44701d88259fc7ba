#include "runner/artifacts/project_files.hpp"

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <system_error>

extern char** environ;

namespace kiln::artifacts {

namespace fs = std::filesystem;

node_kind disk_view::lstat(const std::string& path) const {
    std::error_code ec;
    auto st = fs::symlink_status(at(path), ec);
    if (ec) {
        return node_kind::missing;
    }
    switch (st.type()) {
        case fs::file_type::regular:
            return node_kind::file;
        case fs::file_type::directory:
            return node_kind::directory;
        case fs::file_type::symlink:
            return node_kind::symlink;
        case fs::file_type::not_found:
            return node_kind::missing;
        default:
            return node_kind::other;
    }
}

std::vector<std::string> disk_view::list(const std::string& dir) const {
    std::vector<std::string> out;
    std::error_code ec;
    for (fs::directory_iterator it(at(dir), ec), end; !ec && it != end; it.increment(ec)) {
        out.push_back(it->path().filename().string());
    }
    return out;
}

std::string disk_view::read_link(const std::string& path) const {
    std::error_code ec;
    auto t = fs::read_symlink(at(path), ec);
    return ec ? std::string() : t.string();
}

std::vector<std::string> untracked_files(const fs::path& dir, std::string& error) {
    std::vector<std::string> files;
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) {
        error = std::string("pipe: ") + std::strerror(errno);
        return files;
    }
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, fds[1], STDOUT_FILENO);
    posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&actions, STDERR_FILENO, "/dev/null", O_WRONLY, 0);
    const std::string dir_s = dir.string();
    const char* argv[] = {"git", "-C", dir_s.c_str(), "ls-files", "-o", "-z", nullptr};
    pid_t pid = 0;
    int rc = ::posix_spawnp(&pid, "git", &actions, nullptr, const_cast<char**>(argv), environ);
    posix_spawn_file_actions_destroy(&actions);
    ::close(fds[1]);
    if (rc != 0) {
        ::close(fds[0]);
        error = std::string("cannot run git: ") + std::strerror(rc);
        return files;
    }
    std::string data;
    char buf[65536];
    for (;;) {
        auto n = ::read(fds[0], buf, sizeof buf);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            break;
        }
        data.append(buf, static_cast<std::size_t>(n));
    }
    ::close(fds[0]);
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        error = "git ls-files -o failed (is the project directory a git repository?)";
        return files;
    }
    std::size_t start = 0;
    while (start < data.size()) {
        auto end = data.find('\0', start);
        if (end == std::string::npos) {
            end = data.size();
        }
        if (end > start) {
            files.push_back(data.substr(start, end - start));
        }
        start = end + 1;
    }
    return files;
}

}  // namespace kiln::artifacts
