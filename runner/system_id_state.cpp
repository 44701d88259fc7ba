#include "runner/system_id_state.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <fstream>
#include <sstream>
#include <system_error>

#include "runner/gitlab/tokens.hpp"

namespace kiln {

std::filesystem::path system_id_path(const std::filesystem::path& config_path) {
    return config_path.parent_path() / ".runner_system_id";
}

namespace {

std::string read_trimmed(const std::filesystem::path& p) {
    std::ifstream in(p);
    if (!in) {
        return {};
    }
    std::stringstream ss;
    ss << in.rdbuf();
    std::string s = ss.str();
    while (!s.empty() && (s.back() == '\n' || s.back() == '\r' || s.back() == ' ')) {
        s.pop_back();
    }
    return s;
}

}  // namespace

system_id_state load_system_id(const std::filesystem::path& config_path) {
    if (auto stored = read_trimmed(system_id_path(config_path)); gitlab::is_valid_system_id(stored)) {
        return {stored, true};
    }
    for (const char* p : {"/etc/machine-id", "/var/lib/dbus/machine-id"}) {
        if (auto id = gitlab::system_id_from_machine_id(read_trimmed(p))) {
            return {*id, false};
        }
    }
    return {gitlab::random_system_id(), false};
}

void persist_system_id(const std::filesystem::path& config_path, system_id_state& state) {
    if (state.persisted) {
        return;
    }
    auto path = system_id_path(config_path);
    auto tmp = path;
    tmp += ".tmp";
    int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        throw std::system_error(errno, std::generic_category(), "cannot write " + path.string());
    }
    std::string text = state.id + "\n";
    bool ok = ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size()) &&
              ::fsync(fd) == 0;
    int err = errno;
    ::close(fd);
    if (!ok || ::rename(tmp.c_str(), path.c_str()) != 0) {
        err = ok ? errno : err;
        ::unlink(tmp.c_str());
        throw std::system_error(err, std::generic_category(), "cannot write " + path.string());
    }
    state.persisted = true;
}

}  // namespace kiln
