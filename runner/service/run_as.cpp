#include "runner/service/run_as.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <stdexcept>

namespace kiln::service {

user_switch plan_user_switch(uid_t euid, uid_t target) {
    if (euid == target) {
        return user_switch::none;
    }
    return euid == 0 ? user_switch::become : user_switch::refuse;
}

std::optional<account> find_account(const std::string& name, std::string& error) {
    long size = ::sysconf(_SC_GETPW_R_SIZE_MAX);
    std::vector<char> buf(size > 0 ? static_cast<std::size_t>(size) : 16384);
    passwd pw{};
    passwd* found = nullptr;
    int rc = 0;
    while ((rc = ::getpwnam_r(name.c_str(), &pw, buf.data(), buf.size(), &found)) == ERANGE) {
        buf.resize(buf.size() * 2);
    }
    if (rc != 0) {
        error = "cannot look up user \"" + name + "\": " + std::strerror(rc);
        return std::nullopt;
    }
    if (found == nullptr) {
        error = "there is no user \"" + name + "\" on this host (create it, e.g. `useradd --system " +
                "--create-home " + name + "`, or change `user`)";
        return std::nullopt;
    }
    account a;
    a.name = pw.pw_name;
    a.uid = pw.pw_uid;
    a.gid = pw.pw_gid;
    a.home = pw.pw_dir != nullptr ? pw.pw_dir : "/";
    a.shell = pw.pw_shell != nullptr && *pw.pw_shell != '\0' ? pw.pw_shell : "/bin/sh";
    return a;
}

namespace {

std::string errno_text(const std::string& what, const std::filesystem::path& p) {
    return what + " " + p.string() + ": " + std::strerror(errno);
}

}  // namespace

std::vector<std::string> hand_over(const account& a, const std::vector<std::filesystem::path>& dirs,
                                   const std::vector<std::filesystem::path>& files) {
    std::vector<std::string> problems;
    for (const auto& f : files) {
        if (::lchown(f.c_str(), a.uid, a.gid) != 0 && errno != ENOENT) {
            problems.push_back(errno_text("cannot give to " + a.name + ":", f));
        }
    }
    for (const auto& dir : dirs) {
        if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
            problems.push_back(errno_text("cannot create", dir));
            continue;
        }
        const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (dfd < 0) {
            problems.push_back(errno_text("cannot open", dir));
            continue;
        }
        if (::fchown(dfd, a.uid, a.gid) != 0) {
            problems.push_back(errno_text("cannot give to " + a.name + ":", dir));
        }
        // Entries a root kiln left (spooled states, marks): regular files only, by name in
        // this directory, never through a link.
        if (DIR* d = ::fdopendir(::dup(dfd))) {
            while (dirent* e = ::readdir(d)) {
                struct stat st {};
                if (::fstatat(dfd, e->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(st.st_mode) &&
                    ::fchownat(dfd, e->d_name, a.uid, a.gid, AT_SYMLINK_NOFOLLOW) != 0) {
                    problems.push_back(errno_text("cannot give to " + a.name + ":", dir / e->d_name));
                }
            }
            ::closedir(d);
        }
        ::close(dfd);
    }
    return problems;
}

void become(const account& a) {
    if (::initgroups(a.name.c_str(), a.gid) != 0) {
        throw std::runtime_error("cannot take the groups of user " + a.name + ": " +
                                 std::strerror(errno));
    }
    // setresgid/setresuid set real, effective and saved ids alike (glibc applies them to every
    // thread), so nothing can switch back to root.
    if (::setresgid(a.gid, a.gid, a.gid) != 0) {
        throw std::runtime_error("cannot switch to the group of user " + a.name + ": " +
                                 std::strerror(errno));
    }
    if (::setresuid(a.uid, a.uid, a.uid) != 0) {
        throw std::runtime_error("cannot switch to user " + a.name + ": " + std::strerror(errno));
    }
    if (a.uid != 0 && ::setuid(0) == 0) {
        throw std::runtime_error("switched to user " + a.name + " but could still regain root");
    }
    ::setenv("HOME", a.home.c_str(), 1);
    ::setenv("USER", a.name.c_str(), 1);
    ::setenv("LOGNAME", a.name.c_str(), 1);
    ::setenv("SHELL", a.shell.c_str(), 1);
}

std::vector<std::string> unwritable(const std::vector<std::filesystem::path>& paths) {
    std::vector<std::string> out;
    for (const auto& p : paths) {
        // The directory, or the nearest one above it that exists (it gets created there).
        auto probe = std::filesystem::absolute(p);
        std::error_code ec;
        while (!std::filesystem::exists(probe, ec) && probe.has_parent_path() &&
               probe != probe.parent_path()) {
            probe = probe.parent_path();
        }
        if (::access(probe.c_str(), W_OK | X_OK) != 0) {
            out.push_back(p.string() + (probe == std::filesystem::absolute(p)
                                            ? std::string(" is not writable")
                                            : " cannot be created in " + probe.string()) +
                          ": " + std::strerror(errno));
        }
    }
    return out;
}

}  // namespace kiln::service
