#include "runner/spool.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <system_error>

namespace kiln::spool {
namespace {

using json = nlohmann::json;

std::optional<gitlab::job_state> state_from(std::string_view s) {
    for (auto st : {gitlab::job_state::pending, gitlab::job_state::running,
                    gitlab::job_state::success, gitlab::job_state::failed}) {
        if (gitlab::to_string(st) == s) {
            return st;
        }
    }
    return std::nullopt;
}

[[noreturn]] void fail(const std::string& what, const std::filesystem::path& p) {
    throw std::system_error(errno, std::generic_category(), what + " " + p.string());
}

// Writes `data` to `path` (a new file), fsynced, mode 0600.
void write_new_file(const std::filesystem::path& path, std::string_view data) {
    const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        fail("cannot create", path);
    }
    std::size_t done = 0;
    while (done < data.size()) {
        const auto n = ::write(fd, data.data() + done, data.size() - done);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            const int saved = errno;
            ::close(fd);
            errno = saved;
            fail("cannot write", path);
        }
        done += static_cast<std::size_t>(n);
    }
    if (::fsync(fd) != 0 || ::close(fd) != 0) {
        fail("cannot write", path);
    }
}

// Has `save` write `path` through a temporary file, then renames it into place. The caller
// fsyncs the directory so the rename itself is durable.
void write_file(const std::filesystem::path& path,
                const std::function<void(const std::filesystem::path&)>& save) {
    const std::filesystem::path tmp = path.string() + ".tmp";
    ::unlink(tmp.c_str());  // a leftover of an interrupted write
    try {
        save(tmp);
    } catch (...) {
        ::unlink(tmp.c_str());
        throw;
    }
    if (::rename(tmp.c_str(), path.c_str()) != 0) {
        const int saved = errno;
        ::unlink(tmp.c_str());
        errno = saved;
        fail("cannot rename into", path);
    }
}

}  // namespace

std::string to_json(const entry& e) {
    json j;
    j["version"] = 1;
    j["job_id"] = e.job_id;
    j["job_token"] = e.job_token;
    j["url"] = e.url;
    j["tls_ca_file"] = e.tls_ca_file;
    j["tls_cert_file"] = e.tls_cert_file;
    j["tls_key_file"] = e.tls_key_file;
    j["executor"] = e.executor;
    j["shell"] = e.shell;
    j["runner"] = e.runner;
    j["state"] = std::string(gitlab::to_string(e.update.state));
    j["failure_reason"] = e.update.failure_reason;
    j["exit_code"] = e.update.exit_code;
    j["checksum"] = e.update.checksum;
    j["bytesize"] = e.update.bytesize;
    j["trace_offset"] = e.trace_offset;
    j["spooled_at"] = e.spooled_at;
    return j.dump();
}

std::optional<entry> from_json(std::string_view text, std::string& error) {
    auto j = json::parse(text, nullptr, false);
    if (j.is_discarded() || !j.is_object()) {
        error = "not JSON";
        return std::nullopt;
    }
    try {
        if (j.at("version").get<int>() != 1) {
            error = "unknown version";
            return std::nullopt;
        }
        entry e;
        e.job_id = j.at("job_id").get<std::int64_t>();
        e.job_token = j.at("job_token").get<std::string>();
        e.url = j.at("url").get<std::string>();
        e.tls_ca_file = j.value("tls_ca_file", "");
        e.tls_cert_file = j.value("tls_cert_file", "");
        e.tls_key_file = j.value("tls_key_file", "");
        e.executor = j.value("executor", "shell");
        e.shell = j.value("shell", "");
        e.runner = j.value("runner", "");
        auto st = state_from(j.at("state").get<std::string>());
        if (!st || (*st != gitlab::job_state::success && *st != gitlab::job_state::failed)) {
            error = "not a final state";
            return std::nullopt;
        }
        e.update.state = *st;
        e.update.token = e.job_token;
        e.update.failure_reason = j.value("failure_reason", "");
        e.update.exit_code = j.value("exit_code", 0);
        e.update.checksum = j.value("checksum", "");
        e.update.bytesize = j.value("bytesize", std::int64_t{0});
        e.trace_offset = j.value("trace_offset", std::int64_t{0});
        e.spooled_at = j.value("spooled_at", std::int64_t{0});
        if (e.job_id <= 0 || e.job_token.empty() || e.url.empty()) {
            error = "missing job id, token or URL";
            return std::nullopt;
        }
        return e;
    } catch (const json::exception& ex) {
        error = ex.what();
        return std::nullopt;
    }
}

std::filesystem::path directory(const std::filesystem::path& config_path,
                                const std::string& configured) {
    if (!configured.empty()) {
        return configured;
    }
    return config_path.parent_path() / "spool";
}

void create_directory(const std::filesystem::path& dir) {
    if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
        fail("cannot create the spool directory", dir);
    }
}

stored write(const std::filesystem::path& dir, const entry& e, std::string_view trace) {
    return write(dir, e, [trace](const std::filesystem::path& p) { write_new_file(p, trace); });
}

stored write(const std::filesystem::path& dir, const entry& e, const trace_saver& save_trace) {
    spool::create_directory(dir);
    stored s;
    s.e = e;
    const auto base = "job-" + std::to_string(e.job_id);
    s.trace_path = dir / (base + ".trace");
    s.json_path = dir / (base + ".json");
    write_file(s.trace_path, save_trace);
    const auto json = to_json(e);
    write_file(s.json_path, [&json](const std::filesystem::path& p) { write_new_file(p, json); });
    // The renames reach the disk with the directory: without this a power loss right after
    // could leave the files' data but not their names.
    const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0 || ::fsync(dfd) != 0) {
        const int saved = errno;
        if (dfd >= 0) {
            ::close(dfd);
        }
        errno = saved;
        fail("cannot sync the spool directory", dir);
    }
    ::close(dfd);
    return s;
}

std::vector<stored> load_all(const std::filesystem::path& dir, std::vector<std::string>& problems) {
    namespace fs = std::filesystem;
    std::vector<stored> out;
    std::error_code ec;
    if (!fs::is_directory(dir, ec)) {
        return out;
    }
    for (const auto& de : fs::directory_iterator(dir, ec)) {
        const auto& p = de.path();
        if (p.extension() != ".json" || !p.filename().string().starts_with("job-")) {
            continue;
        }
        std::ifstream in(p, std::ios::binary);
        std::string text((std::istreambuf_iterator<char>(in)), {});
        std::string error;
        auto e = from_json(text, error);
        if (!e) {
            problems.push_back(p.string() + ": " + error);
            continue;
        }
        stored s;
        s.e = std::move(*e);
        s.json_path = p;
        s.trace_path = p;
        s.trace_path.replace_extension(".trace");
        out.push_back(std::move(s));
    }
    if (ec) {
        problems.push_back(dir.string() + ": " + ec.message());
    }
    return out;
}

std::size_t trace_size(const stored& s) {
    struct stat st {};
    if (::stat(s.trace_path.c_str(), &st) != 0) {
        fail("cannot read", s.trace_path);
    }
    return static_cast<std::size_t>(st.st_size);
}

std::string read_trace(const stored& s, std::size_t offset, std::size_t max) {
    const int fd = ::open(s.trace_path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        fail("cannot read", s.trace_path);
    }
    std::string out(max, '\0');
    std::size_t done = 0;
    while (done < max) {
        const auto n = ::pread(fd, out.data() + done, max - done, static_cast<off_t>(offset + done));
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0) {
            const int saved = errno;
            ::close(fd);
            errno = saved;
            fail("cannot read", s.trace_path);
        }
        if (n == 0) {
            break;
        }
        done += static_cast<std::size_t>(n);
    }
    ::close(fd);
    out.resize(done);
    return out;
}

void remove(const stored& s) {
    std::error_code ec;
    std::filesystem::remove(s.json_path, ec);  // first: without it the trace is just a leftover
    std::filesystem::remove(s.trace_path, ec);
}

}  // namespace kiln::spool
