#include "runner/service/run_as.hpp"

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

std::string config_trust_problem(const std::filesystem::path& config) {
    for (const auto& p : {config, config.parent_path()}) {
        struct stat st {};
        if (::lstat(p.c_str(), &st) != 0) {
            return errno_text("cannot inspect", p);
        }
        if (st.st_uid != 0 || (st.st_mode & (S_IWGRP | S_IWOTH)) != 0) {
            return p.string() + " can be changed by users other than root, and kiln, started as " +
                   "root, would trust it: make it root's (chown root, chmod go-w), or start kiln " +
                   "as the jobs' user instead";
        }
    }
    return {};
}

std::vector<std::string> hand_over(const account& a, const std::vector<std::filesystem::path>& dirs,
                                   const std::vector<std::filesystem::path>& files) {
    std::vector<std::string> problems;
    for (const auto& dir : dirs) {
        std::error_code ec;
        if (dir.has_parent_path()) {
            std::filesystem::create_directories(dir.parent_path(), ec);
        }
        const bool made = ::mkdir(dir.c_str(), 0700) == 0;
        if (!made && errno != EEXIST) {
            problems.push_back(errno_text("cannot create", dir));
            continue;
        }
        const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        struct stat st {};
        if (dfd < 0 || ::fstat(dfd, &st) != 0) {
            problems.push_back(errno_text("cannot open the directory", dir));
        } else if (made) {
            if (::fchown(dfd, a.uid, a.gid) != 0) {
                problems.push_back(errno_text("cannot give to " + a.name + ":", dir));
            }
        } else if (st.st_uid != a.uid) {
            problems.push_back(dir.string() + " exists and belongs to uid " +
                               std::to_string(st.st_uid) + ": give it to " + a.name +
                               " (chown -R " + a.name + " " + dir.string() + ") or remove it");
        }
        if (dfd >= 0) {
            ::close(dfd);
        }
    }
    for (const auto& f : files) {
        const int fd = ::open(f.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
        if (fd < 0) {
            if (errno != ENOENT) {
                problems.push_back(errno_text("cannot open", f));
            }
            continue;
        }
        struct stat st {};
        if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_nlink != 1) {
            problems.push_back(f.string() + " is not a plain file with one link: remove it");
        } else if (::fchown(fd, a.uid, a.gid) != 0) {
            problems.push_back(errno_text("cannot give to " + a.name + ":", f));
        }
        ::close(fd);
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

std::vector<std::string> unreachable(const std::vector<std::filesystem::path>& dirs) {
    std::vector<std::string> out;
    for (const auto& d : dirs) {
        std::error_code made;
        std::filesystem::create_directories(d, made);
        if (::access(d.c_str(), W_OK | X_OK) != 0) {
            // Why it could not be made says more than that it is not there.
            out.push_back(d.string() + ": " + (made ? made.message() : std::strerror(errno)));
        }
    }
    return out;
}

}  // namespace kiln::service
