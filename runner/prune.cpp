#include "runner/prune.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <boost/asio/this_coro.hpp>
#include <cerrno>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <map>
#include <set>

#include "executors/docker/engine_client.hpp"
#include "runner/gitlab/tokens.hpp"
#include "runner/util/blocking.hpp"

namespace kiln::prune {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

std::time_t mtime_of(const fs::path& p, bool with_atime = false) {
    struct stat st {};
    if (::lstat(p.c_str(), &st) != 0) {
        return 0;
    }
    std::time_t t = st.st_mtim.tv_sec;
    if (with_atime && st.st_atim.tv_sec > t) {
        t = st.st_atim.tv_sec;
    }
    return t;
}

// The last time a job used a checkout: every job fetches (FETCH_HEAD) and checks out (index,
// HEAD) at its start.
std::time_t checkout_last_use(const fs::path& dir) {
    std::time_t t = mtime_of(dir);
    for (const char* f : {".git", ".git/index", ".git/FETCH_HEAD", ".git/HEAD", ".git/logs/HEAD"}) {
        t = std::max(t, mtime_of(dir / f));
    }
    return t;
}

void remove_tree(const fs::path& p, const std::string& what, std::time_t last_use,
                 std::time_t now, bool dry_run, report& out) {
    const auto line = what + " " + p.string() + " (unused for " +
                      describe_age(std::chrono::seconds(now - last_use)) + ")";
    if (dry_run) {
        out.removed.push_back(line);
        return;
    }
    std::error_code ec;
    fs::remove_all(p, ec);
    if (ec) {
        out.errors.push_back("cannot remove " + p.string() + ": " + ec.message());
    } else {
        out.removed.push_back(line);
    }
}

// Directories left empty below (not including) `root`, deepest first.
void remove_empty_dirs(const fs::path& root, bool dry_run) {
    if (dry_run) {
        return;
    }
    std::vector<fs::path> dirs;
    std::error_code ec;
    for (fs::recursive_directory_iterator it(root, ec), end; !ec && it != end; it.increment(ec)) {
        if (it->is_directory(ec) && !it->is_symlink(ec)) {
            dirs.push_back(it->path());
        }
    }
    std::sort(dirs.begin(), dirs.end(), [](const fs::path& a, const fs::path& b) {
        return a.native().size() > b.native().size();
    });
    for (const auto& d : dirs) {
        ::rmdir(d.c_str());  // fails (and stays) unless empty
    }
}

void find_checkouts(const fs::path& dir, std::vector<fs::path>& out, int depth) {
    std::error_code ec;
    if (depth > 16) {
        return;
    }
    for (const auto& e : fs::directory_iterator(dir, ec)) {
        if (!e.is_directory(ec) || e.is_symlink(ec)) {
            continue;
        }
        const auto& p = e.path();
        if (p.filename().string().ends_with(".tmp") || fs::exists(p / ".git", ec)) {
            out.push_back(p);
        } else {
            find_checkouts(p, out, depth + 1);
        }
    }
}

std::string percent_encode(std::string_view s) {
    std::string out;
    for (unsigned char c : s) {
        if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
            out += static_cast<char>(c);
        } else {
            char buf[4];
            std::snprintf(buf, sizeof buf, "%%%02X", c);
            out += buf;
        }
    }
    return out;
}

// "2026-11-25T03:00:00Z", "2026-11-25T04:00:00.123+01:00" → unix seconds; 0 when unreadable.
std::time_t parse_rfc3339(const std::string& s) {
    int y = 0, mo = 0, d = 0, h = 0, mi = 0, sec = 0;
    if (std::sscanf(s.c_str(), "%d-%d-%dT%d:%d:%d", &y, &mo, &d, &h, &mi, &sec) != 6) {
        return 0;
    }
    std::tm tm{};
    tm.tm_year = y - 1900;
    tm.tm_mon = mo - 1;
    tm.tm_mday = d;
    tm.tm_hour = h;
    tm.tm_min = mi;
    tm.tm_sec = sec;
    std::time_t t = ::timegm(&tm);
    const auto zone = s.find_first_of("Z+-", 19);
    if (zone != std::string::npos && s[zone] != 'Z') {
        int oh = 0, om = 0;
        if (std::sscanf(s.c_str() + zone + 1, "%d:%d", &oh, &om) == 2) {
            const int offset = (oh * 3600 + om * 60) * (s[zone] == '-' ? -1 : 1);
            t -= offset;
        }
    }
    return t;
}

}  // namespace

std::optional<std::chrono::seconds> parse_age(std::string_view text) {
    if (text.empty()) {
        return std::nullopt;
    }
    if (text == "0") {
        return std::chrono::seconds{0};
    }
    double total = 0;
    std::size_t i = 0;
    while (i < text.size()) {
        std::size_t start = i;
        while (i < text.size() && (std::isdigit(static_cast<unsigned char>(text[i])) || text[i] == '.')) {
            ++i;
        }
        if (start == i) {
            return std::nullopt;
        }
        const double n = std::strtod(std::string(text.substr(start, i - start)).c_str(), nullptr);
        std::size_t u = i;
        while (i < text.size() && std::isalpha(static_cast<unsigned char>(text[i]))) {
            ++i;
        }
        const auto unit = text.substr(u, i - u);
        double scale = 0;
        if (unit == "d") scale = 86400;
        else if (unit == "h") scale = 3600;
        else if (unit == "m") scale = 60;
        else if (unit == "s") scale = 1;
        else return std::nullopt;
        total += n * scale;
    }
    return std::chrono::seconds(static_cast<std::int64_t>(total));
}

std::string describe_age(std::chrono::seconds age) {
    const auto s = age.count();
    if (s >= 2 * 86400) return std::to_string(s / 86400) + "d";
    if (s >= 2 * 3600) return std::to_string(s / 3600) + "h";
    if (s >= 2 * 60) return std::to_string(s / 60) + "m";
    return std::to_string(s) + "s";
}

std::optional<slot_lock> slot_lock::try_acquire(const fs::path& path) {
    const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) {
        return std::nullopt;
    }
    if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
        const int saved = errno;
        ::close(fd);
        errno = saved;
        return std::nullopt;
    }
    return slot_lock(fd);
}

slot_lock::~slot_lock() {
    if (fd_ >= 0) {
        ::close(fd_);  // releases the flock
    }
}

fs::path slot_lock_path(const fs::path& builds_dir, const std::string& short_token,
                        int concurrent_id) {
    return builds_dir / short_token / (std::to_string(concurrent_id) + ".lock");
}

fs::path builds_dir_of(const config::runner_entry& r) {
    return r.builds_dir.empty() ? fs::current_path() / "builds" : fs::path(r.builds_dir);
}

fs::path cache_dir_of(const config::runner_entry& r) {
    return r.cache_dir.empty() ? fs::current_path() / "cache" : fs::path(r.cache_dir);
}

std::vector<fs::path> job_dirs_of(const config::runner_entry& r) {
    std::vector<fs::path> dirs{builds_dir_of(r)};
    if (r.executor != "docker") {
        dirs.push_back(cache_dir_of(r));
    }
    return dirs;
}

fs::path volume_marks_dir(const fs::path& config_path) {
    return config_path.parent_path() / "volume-use";
}

void mark_volume_use(const fs::path& marks_dir, const std::string& short_token,
                     std::int64_t project_id) {
    ::mkdir(marks_dir.c_str(), 0700);
    const auto p = marks_dir / (short_token + "-" + std::to_string(project_id));
    const int fd = ::open(p.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
    if (fd >= 0) {
        ::futimens(fd, nullptr);
        ::close(fd);
    }
}

void prune_builds(const fs::path& builds_dir, const std::string& short_token,
                  std::chrono::seconds age, bool dry_run, report& out) {
    const auto runner_dir = builds_dir / short_token;
    std::error_code ec;
    if (!fs::is_directory(runner_dir, ec)) {
        return;
    }
    const std::time_t now = std::time(nullptr);
    for (const auto& e : fs::directory_iterator(runner_dir, ec)) {
        const auto name = e.path().filename().string();
        if (!e.is_directory(ec) || name.empty() ||
            !std::all_of(name.begin(), name.end(), [](unsigned char c) { return std::isdigit(c); })) {
            continue;
        }
        // Held by a running job: nothing of this slot is touched. Taking it keeps a new job
        // out of the slot while its old checkouts go.
        auto lock = slot_lock::try_acquire(runner_dir / (name + ".lock"));
        if (!lock) {
            out.in_use.push_back(e.path().string());
            continue;
        }
        std::vector<fs::path> checkouts;
        find_checkouts(e.path(), checkouts, 0);
        for (const auto& c : checkouts) {
            const auto last = checkout_last_use(c);
            if (is_stale(last, now, age)) {
                remove_tree(c, "builds", last, now, dry_run, out);
            }
        }
        remove_empty_dirs(e.path(), dry_run);
    }
}

void prune_cache_dir(const fs::path& cache_dir, std::chrono::seconds age, bool dry_run,
                     report& out) {
    std::error_code ec;
    if (!fs::is_directory(cache_dir, ec)) {
        return;
    }
    const std::time_t now = std::time(nullptr);
    std::vector<fs::path> stale;
    for (fs::recursive_directory_iterator it(cache_dir, ec), end; !ec && it != end;
         it.increment(ec)) {
        if (it->is_regular_file(ec) && !it->is_symlink(ec)) {
            if (is_stale(mtime_of(it->path(), true), now, age)) {
                stale.push_back(it->path());
            }
        }
    }
    for (const auto& f : stale) {
        remove_tree(f, "cache", mtime_of(f, true), now, dry_run, out);
    }
    remove_empty_dirs(cache_dir, dry_run);
}

boost::asio::awaitable<void> prune_volumes(boost::asio::any_io_executor ex,
                                           std::string docker_host,
                                           std::vector<std::string> short_tokens,
                                           fs::path marks_dir, std::chrono::seconds age,
                                           bool dry_run, report& out) {
    std::string socket;
    try {
        socket = executors::docker::docker_socket_path(docker_host);
    } catch (const std::exception& e) {
        out.errors.push_back(std::string("Docker: ") + e.what());
        co_return;
    }
    executors::docker::engine_client client(ex, socket);
    const auto err = co_await client.negotiate();
    if (!err.empty()) {
        out.errors.push_back("Docker at " + socket + ": " + err);
        co_return;
    }
    const std::time_t now = std::time(nullptr);
    const std::set<std::string> mine(short_tokens.begin(), short_tokens.end());
    const std::string filter =
        percent_encode(R"({"label":["kiln.managed=true","kiln.type=cache"]})");
    auto list = co_await client.call("GET", "/volumes?filters=" + filter);
    if (!list.ok()) {
        out.errors.push_back("listing Docker volumes: " + list.message());
        co_return;
    }
    auto j = json::parse(list.body, nullptr, false);
    if (!j.is_object() || !j.contains("Volumes") || !j["Volumes"].is_array()) {
        co_return;
    }
    for (const auto& v : j["Volumes"]) {
        const auto name = v.value("Name", "");
        const auto labels = v.contains("Labels") && v["Labels"].is_object() ? v["Labels"] : json::object();
        const auto runner = labels.value("kiln.runner.id", "");
        if (name.empty() || mine.count(runner) == 0) {
            continue;
        }
        std::time_t last = mtime_of(marks_dir / (runner + "-" + labels.value("kiln.project.id", "")));
        if (last == 0) {
            last = parse_rfc3339(v.value("CreatedAt", ""));
        }
        if (last == 0 || !is_stale(last, now, age)) {
            continue;
        }
        const std::string users_filter = percent_encode(json{{"volume", {name}}}.dump());
        auto users = co_await client.call("GET", "/containers/json?all=1&filters=" + users_filter);
        auto uj = json::parse(users.body, nullptr, false);
        if (!users.ok() || !uj.is_array() || !uj.empty()) {
            out.in_use.push_back("volume " + name);
            continue;
        }
        const auto line = "volume " + name + " (unused for " +
                          describe_age(std::chrono::seconds(now - last)) + ")";
        if (dry_run) {
            out.removed.push_back(line);
            continue;
        }
        auto del = co_await client.call("DELETE", "/volumes/" + percent_encode(name));
        if (del.status == 409) {
            out.in_use.push_back("volume " + name);
        } else if (!del.ok() && del.status != 404) {
            out.errors.push_back("cannot remove volume " + name + ": " + del.message());
        } else {
            out.removed.push_back(line);
        }
    }
}

boost::asio::awaitable<void> prune_all(boost::asio::any_io_executor ex, config::settings s,
                                       fs::path config_path, std::chrono::seconds age,
                                       bool dry_run, report& out) {
    std::set<fs::path> caches;
    std::map<std::string, std::vector<std::string>> docker_hosts;  // host -> short tokens
    for (const auto& r : s.runners) {
        const auto short_token = gitlab::short_token(r.token);
        const auto builds = builds_dir_of(r);
        co_await util::run_blocking([&] {
            prune_builds(builds, short_token, age, dry_run, out);
            return 0;
        });
        caches.insert(cache_dir_of(r));
        if (r.executor == "docker") {
            docker_hosts[r.docker ? r.docker->host : std::string()].push_back(short_token);
        }
    }
    for (const auto& c : caches) {
        co_await util::run_blocking([&] {
            prune_cache_dir(c, age, dry_run, out);
            return 0;
        });
    }
    const auto marks = volume_marks_dir(config_path);
    for (auto& [host, tokens] : docker_hosts) {
        co_await prune_volumes(ex, host, tokens, marks, age, dry_run, out);
    }
}

}  // namespace kiln::prune
