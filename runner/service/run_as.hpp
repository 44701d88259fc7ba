#pragma once
// `user` in config.toml, or `kiln run --user NAME`: the account jobs run as.
//
// gitlab-runner keeps its daemon as root and wraps each shell job in `su`, while its helper does
// the git, cache and artifact work inside that job. kiln does that work itself, so it becomes
// the user once, at start, before any job: its git checkouts, extracted caches and artifacts
// and the job's processes then all belong to the user, and no root process touches the build
// tree a job may have tampered with. Started as the user already, there is nothing to do;
// started as anyone else, kiln cannot switch and says so.

#include <sys/types.h>

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace kiln::service {

struct account {
    std::string name;
    uid_t uid = 0;
    gid_t gid = 0;
    std::string home;
    std::string shell;
};

enum class user_switch { none, become, refuse };

/// What kiln does about `user` when it runs with effective uid `euid` (pure).
user_switch plan_user_switch(uid_t euid, uid_t target);

/// The account from the user database (NSS); nullopt and `error` set when there is none.
std::optional<account> find_account(const std::string& name, std::string& error);

/// Started as root, kiln trusts the config it reads; as the jobs' user is about to be able to
/// write what kiln hands it, a config that anyone but root can change would let that user
/// steer the next root start. "" or why `config` is not safe (the file or its directory).
std::string config_trust_problem(const std::filesystem::path& config);

/// Before becoming `a`: each directory kiln (as `a`) writes to is made if missing and given to
/// `a`; one that exists must already be `a`'s, since giving away a directory that is there
/// (and what is in it) could hand over root's files. `files` that exist are given to `a`
/// when they are plain files with one link (never through a symbolic or hard link). Returns
/// one message per path that is not right, saying what to do.
std::vector<std::string> hand_over(const account& a, const std::vector<std::filesystem::path>& dirs,
                                   const std::vector<std::filesystem::path>& files);

/// Becomes `a` for good (supplementary groups from the group database, then gid, then uid;
/// root cannot be regained), and sets HOME, USER, LOGNAME and SHELL for the jobs as `su` would.
/// Throws std::runtime_error naming what failed.
void become(const account& a);

/// The directories the user cannot write into (one below a directory it cannot pass, or one
/// it cannot make where missing ones are made), with the reason, a line each. Call after
/// become(): at start for what hand_over gave, on a reload for a new entry's directories.
std::vector<std::string> unreachable(const std::vector<std::filesystem::path>& dirs);

}  // namespace kiln::service
