#include "runner/cache/cache_stages.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <algorithm>
#include <chrono>
#include <ctime>
#include <optional>
#include <random>
#include <system_error>

#include "runner/artifacts/archive.hpp"
#include "runner/cache/cache_rules.hpp"
#include "runner/cache/file_select.hpp"
#include "runner/cache/sigv4.hpp"
#include "runner/gitlab/runner_info.hpp"
#include "runner/gitlab/tokens.hpp"
#include "runner/net/http_client.hpp"
#include "runner/util/blocking.hpp"
#include "runner/util/logging.hpp"
#include "runner/version.hpp"

namespace kiln::cache {
namespace {

namespace asio = boost::asio;
namespace fs = std::filesystem;
using namespace std::chrono_literals;

// The colours gitlab-runner's shell writer and helper use.
constexpr std::string_view ansi_reset = "\x1b[0;m";
constexpr std::string_view ansi_bold_green = "\x1b[32;1m";
constexpr std::string_view ansi_yellow = "\x1b[0;33m";
constexpr std::string_view erase_line = "\x1b[0K";

class printer {
public:
    explicit printer(const std::function<void(std::string_view)>& out) : out_(out) {}
    void notice(std::string_view text) { line(ansi_bold_green, text); }
    void warning(std::string_view text) { line(ansi_yellow, text); }
    void helper_warning(std::string_view text) { line(ansi_yellow, "WARNING: " + std::string(text)); }
    void info(std::string_view text) { line({}, text); }
    void print(const message& m) {
        switch (m.kind) {
            case message::level::notice: notice(m.text); break;
            case message::level::warning: warning(m.text); break;
            case message::level::info: info(m.text); break;
        }
    }
    // Messages of the file selection come from gitlab-runner's helper (logrus): warnings
    // there carry a "WARNING: " prefix.
    void print_helper(const message& m) {
        if (m.kind == message::level::warning) {
            helper_warning(m.text);
        } else {
            info(m.text);
        }
    }

private:
    void line(std::string_view color, std::string_view text) {
        std::string s(erase_line);
        s += color;
        s += text;
        if (!color.empty()) {
            s += ansi_reset;
        }
        s += "\n";
        out_(s);
    }
    const std::function<void(std::string_view)>& out_;
};

std::optional<std::string> env_value(const stage_context& ctx, std::string_view key) {
    std::optional<std::string> found;
    for (const auto& [k, v] : *ctx.env) {
        if (k == key) {
            found = v;
        }
    }
    return found;
}

variable_lookup lookup_for(const stage_context& ctx) {
    return [&ctx](std::string_view key) { return env_value(ctx, key); };
}

bool flag_on(const stage_context& ctx, std::string_view name) {
    if (auto v = env_value(ctx, name)) {
        return *v == "true" || *v == "1";
    }
    auto it = ctx.runner->feature_flags.find(std::string(name));
    return it != ctx.runner->feature_flags.end() && it->second;
}

job_facts facts_for(const stage_context& ctx) {
    job_facts f;
    f.job_name = ctx.job->info.name;
    f.git_ref = ctx.job->git.ref;
    f.repo_url = ctx.job->git.repo_url;
    f.project_id = ctx.job->info.project_id;
    f.git_strategy_empty = env_value(ctx, "GIT_STRATEGY").value_or("") == "empty";
    f.hash_keys = flag_on(ctx, "FF_HASH_CACHE_KEYS");
    return f;
}

// The distributed cache, when [runners.cache] configures a usable S3 one.
struct remote {
    sigv4::s3_target target;
    sigv4::credentials credentials;
    std::string path;
    bool shared = false;
    std::int64_t max_upload = 0;
};

std::optional<remote> remote_for(const stage_context& ctx, printer& p) {
    const auto& c = ctx.runner->cache;
    if (!c || c->type != "s3" || !c->s3) {
        return std::nullopt;
    }
    const auto& s3 = *c->s3;
    if (s3.bucket_name.empty()) {
        p.helper_warning("[runners.cache.s3] has no BucketName; the cache is kept only locally");
        return std::nullopt;
    }
    if (s3.authentication_type == "iam") {
        p.helper_warning("[runners.cache.s3] AuthenticationType = \"iam\" is not supported by "
                         "kiln (use access-key); the cache is kept only locally");
        return std::nullopt;
    }
    remote r;
    r.target.server_address = s3.server_address;
    r.target.bucket = s3.bucket_name;
    r.target.region = s3.bucket_location;
    r.target.insecure = s3.insecure;
    r.target.path_style = s3.path_style;
    r.credentials = {s3.access_key, s3.secret_key, s3.session_token};
    r.path = c->path;
    r.shared = c->shared;
    r.max_upload = c->max_uploaded_archive_size;
    return r;
}

std::chrono::milliseconds request_timeout(const stage_context& ctx) {
    // CACHE_REQUEST_TIMEOUT, in minutes (gitlab-runner's default: 10).
    auto v = env_value(ctx, "CACHE_REQUEST_TIMEOUT");
    long minutes = 10;
    if (v && !v->empty()) {
        char* end = nullptr;
        long m = std::strtol(v->c_str(), &end, 10);
        if (end != nullptr && *end == '\0' && m > 0) {
            minutes = m;
        }
    }
    return std::chrono::minutes(minutes);
}

std::int64_t presign_expiry(const stage_context& ctx) {
    // gitlab-runner signs for the job's timeout.
    auto t = ctx.job->runner.timeout > 0 ? ctx.job->runner.timeout
                                         : gitlab::default_job_timeout_seconds;
    return t;
}

std::string user_agent() {
    return std::string("kiln ") + version_string() + " (" + revision_string() + "; " +
           std::string(gitlab::build_platform()) + "/" +
           std::string(gitlab::build_architecture()) + ")";
}

std::string http_date(fs::file_time_type t) {
    auto sys = std::chrono::file_clock::to_sys(t);
    std::time_t tt = std::chrono::system_clock::to_time_t(
        std::chrono::time_point_cast<std::chrono::system_clock::duration>(sys));
    std::tm tm{};
    gmtime_r(&tt, &tm);
    char buf[64];
    std::strftime(buf, sizeof buf, "%a, %d %b %Y %H:%M:%S GMT", &tm);
    return buf;
}

// gitlab-runner's isFileChanged, made independent of directory and link times (extraction
// sets only the files' mtimes): the archive exists, holds exactly the selected files and links,
// and no selected file was modified after it.
bool archive_up_to_date(const fs::path& archive, const std::vector<artifacts::archive_entry>& entries) {
    struct stat a {};
    if (::stat(archive.c_str(), &a) != 0) {
        return false;
    }
    std::vector<std::string> selected;
    for (const auto& e : entries) {
        struct stat s {};
        if (::lstat(e.source.c_str(), &s) != 0) {
            return false;
        }
        if (S_ISDIR(s.st_mode)) {
            continue;
        }
        if (S_ISREG(s.st_mode) &&
            (s.st_mtim.tv_sec > a.st_mtim.tv_sec ||
             (s.st_mtim.tv_sec == a.st_mtim.tv_sec && s.st_mtim.tv_nsec > a.st_mtim.tv_nsec))) {
            return false;
        }
        selected.push_back(e.name);
    }
    std::vector<std::string> archived;
    try {
        artifacts::read_archive(archive, [&](const artifacts::entry_info& info, const auto&) {
            if (info.type != artifacts::entry_type::directory) {
                archived.push_back(info.name);
            }
        });
    } catch (const std::exception&) {
        return false;  // unreadable: make a new one
    }
    std::sort(selected.begin(), selected.end());
    std::sort(archived.begin(), archived.end());
    return selected == archived;
}

fs::path temp_next_to(const fs::path& file) {
    static thread_local std::mt19937_64 rng{std::random_device{}()};
    return file.parent_path() /
           (".cache-" + std::to_string(::getpid()) + "-" + std::to_string(rng()) + ".tmp");
}

struct transfer_result {
    bool ok = false;
    bool not_found = false;
    std::string error;  // one line for the trace
};

// An S3 error body is XML: <Error><Code>NoSuchBucket</Code><Message>…</Message></Error>.
std::string s3_error_text(const net::http_response& r) {
    auto field = [&](std::string_view tag) {
        auto open = "<" + std::string(tag) + ">";
        auto b = r.body.find(open);
        if (b == std::string::npos) {
            return std::string();
        }
        b += open.size();
        auto e = r.body.find("</", b);
        return r.body.substr(b, e == std::string::npos ? std::string::npos : e - b);
    };
    std::string text = "Received: " + std::to_string(r.status);
    auto code = field("Code");
    auto msg = field("Message");
    if (!code.empty()) {
        text += " " + code;
    }
    if (!msg.empty()) {
        text += ": " + msg;
    }
    return text;
}

// One presigned request, with gitlab-runner's retry (2 more attempts, 1 s apart) on transport
// errors and 5xx answers.
asio::awaitable<transfer_result> send_presigned(const sigv4::presigned_url& url,
                                                net::http_request req) {
    auto ex = co_await asio::this_coro::executor;
    net::origin origin;
    origin.tls = url.tls;
    origin.host = url.host;
    origin.port = url.port;
    net::client_options opts;
    opts.user_agent = user_agent();
    transfer_result result;
    std::unique_ptr<net::http_client> client;
    try {
        client = std::make_unique<net::http_client>(ex, origin, net::tls_settings{}, opts);
    } catch (const std::exception& e) {
        result.error = e.what();
        co_return result;
    }
    req.target = url.target;
    for (int attempt = 0; attempt < 3; ++attempt) {
        if (attempt > 0) {
            asio::steady_timer t(ex, 1s);
            co_await t.async_wait(asio::as_tuple(asio::use_awaitable));
        }
        auto o = co_await client->send(req);
        if (!o.response) {
            result.error = o.error.message;
            continue;
        }
        const auto status = o.response->status;
        if (status >= 200 && status < 300) {
            result.ok = true;
            result.error.clear();
            break;
        }
        if (status == 404) {
            result.not_found = true;
            result.error = "file does not exist";
            break;
        }
        result.error = s3_error_text(*o.response);
        if (status < 500) {
            break;
        }
    }
    client->close_idle();
    co_return result;
}

}  // namespace

fs::path cache_root(const config::runner_entry& runner) {
    if (!runner.cache_dir.empty()) {
        return runner.cache_dir;
    }
    std::error_code ec;
    auto cwd = fs::current_path(ec);
    return (ec ? fs::path("/tmp") : cwd) / "cache";
}

bool restore_needed(const gitlab::job_spec& job) {
    for (const auto& c : job.cache) {
        if (has_files(c)) {
            return true;
        }
    }
    return false;
}

bool archive_needed(const gitlab::job_spec& job, bool job_succeeded) {
    for (const auto& c : job.cache) {
        if (has_files(c) && should_archive(c.when, job_succeeded)) {
            return true;
        }
    }
    return false;
}

asio::awaitable<std::string> restore(stage_context ctx) {
    printer p(ctx.out);
    const auto facts = facts_for(ctx);
    const auto lookup = lookup_for(ctx);
    const auto root = cache_root(*ctx.runner);
    const auto short_token = gitlab::short_token(ctx.runner->token);
    const auto timeout = request_timeout(ctx);

    for (const auto& entry : ctx.job->cache) {
        auto plan = plan_restore(entry, facts, lookup);
        for (const auto& m : plan.messages) {
            p.print(m);
        }
        if (!plan.error.empty()) {
            co_return plan.error;
        }
        if (plan.keys.empty()) {
            continue;
        }
        auto rem = remote_for(ctx, p);
        for (const auto& key : plan.keys) {
            p.notice("Checking cache for " + key.human + "...");
            const fs::path archive = root / local_archive_path(facts, key);
            std::error_code ec;
            fs::create_directories(archive.parent_path(), ec);
            if (ec) {
                p.helper_warning("cannot create " + archive.parent_path().string() + ": " +
                                 ec.message());
                p.warning("Failed to extract cache");
                continue;
            }
            if (rem) {
                auto object = object_name(rem->path, rem->shared, short_token,
                                          facts.project_id, key, facts.hash_keys);
                if (!object.error.empty()) {
                    p.helper_warning(object.error);
                    p.warning("Failed to extract cache");
                    continue;
                }
                const auto url = sigv4::presign(rem->target, rem->credentials, "GET",
                                                object.path, presign_expiry(ctx),
                                                std::time(nullptr));
                const auto tmp = temp_next_to(archive);
                net::http_request req;
                req.method = "GET";
                req.response_file = tmp;
                req.timeout = timeout;
                auto r = co_await send_presigned(url, std::move(req));
                if (r.ok) {
                    p.info("Downloading cache from " + url.clean_url);
                    fs::rename(tmp, archive, ec);
                    if (ec) {
                        r.ok = false;
                        r.error = "cannot write " + archive.string() + ": " + ec.message();
                    }
                }
                fs::remove(tmp, ec);
                if (!r.ok) {
                    // gitlab-runner's extractor gives up on this key when the download fails.
                    p.helper_warning(r.error);
                    p.warning("Failed to extract cache");
                    log::info("cache download failed: " + r.error,
                              {{"job", ctx.job->id}, {"url", url.clean_url}});
                    continue;
                }
            } else {
                p.info("No URL provided, cache will not be downloaded from shared cache server. "
                       "Instead a local version of cache will be extracted.");
            }
            if (!fs::exists(archive, ec)) {
                p.helper_warning("Cache file does not exist");
                p.warning("Failed to extract cache");
                continue;
            }
            const auto project = ctx.project_dir;
            // A named callable: GCC 12 mishandles temporaries passed by value into a
            // coroutine call inside co_await.
            auto extract = [archive, project] {
                try {
                    return artifacts::extract_archive(archive, project, artifacts::extract_limits{});
                } catch (const std::exception& e) {
                    artifacts::extract_result r;
                    r.error = e.what();
                    return r;
                }
            };
            auto extracted = co_await util::run_blocking(std::move(extract));
            if (!extracted.ok) {
                p.helper_warning(extracted.error);
                p.warning("Failed to extract cache");
                continue;
            }
            p.notice("Successfully extracted cache");
            break;
        }
    }
    co_return std::string();
}

asio::awaitable<std::string> archive(stage_context ctx, bool job_succeeded) {
    printer p(ctx.out);
    const auto facts = facts_for(ctx);
    const auto lookup = lookup_for(ctx);
    const auto root = cache_root(*ctx.runner);
    const auto short_token = gitlab::short_token(ctx.runner->token);
    const auto timeout = request_timeout(ctx);
    const auto format = parse_compression_format(env_value(ctx, "CACHE_COMPRESSION_FORMAT").value_or(""));
    const auto level =
        artifacts::parse_compression_level(env_value(ctx, "CACHE_COMPRESSION_LEVEL").value_or(""));

    for (const auto& entry : ctx.job->cache) {
        auto plan = plan_archive(entry, facts, lookup, job_succeeded);
        for (const auto& m : plan.messages) {
            p.print(m);
        }
        if (!plan.error.empty()) {
            co_return plan.error;
        }
        if (!plan.key) {
            continue;
        }
        const auto key = *plan.key;
        auto rem = remote_for(ctx, p);
        p.notice("Creating cache " + key.human + "...");
        if (!format.warning.empty()) {
            p.helper_warning(format.warning);
        }
        const fs::path archive = root / local_archive_path(facts, key);
        const auto project = ctx.project_dir;
        const auto paths = entry.paths;
        const bool untracked = entry.untracked;
        struct made {
            std::vector<message> messages;
            std::size_t entries = 0;
            bool up_to_date = false;
            std::string error;
        };
        // Selection and compression run on the blocking pool; the archive is written next to
        // its final name and renamed, so a reader never sees half an archive.
        auto make = [=]() {
            made r;
            try {
                auto sel = select_files(project, paths, untracked);
                r.messages = std::move(sel.messages);
                r.entries = sel.entries.size();
                if (sel.entries.empty()) {
                    return r;
                }
                if (archive_up_to_date(archive, sel.entries)) {
                    r.up_to_date = true;
                    return r;
                }
                std::error_code ec;
                fs::create_directories(archive.parent_path(), ec);
                if (ec) {
                    r.error = "cannot create " + archive.parent_path().string() + ": " + ec.message();
                    return r;
                }
                const auto tmp = temp_next_to(archive);
                try {
                    if (format.format == archive_format::tar_zstd) {
                        artifacts::write_tar_zstd(sel.entries, tmp, level);
                    } else {
                        artifacts::zip_options o;
                        o.level = level;
                        artifacts::write_zip(sel.entries, tmp, o);
                    }
                    fs::rename(tmp, archive);
                } catch (...) {
                    fs::remove(tmp, ec);
                    throw;
                }
            } catch (const std::exception& e) {
                r.error = e.what();
            }
            return r;
        };
        auto m = co_await util::run_blocking(std::move(make));
        for (const auto& msg : m.messages) {
            p.print_helper(msg);
        }
        if (!m.error.empty()) {
            p.helper_warning(m.error);
            p.warning("Failed to create cache");
            continue;
        }
        if (m.up_to_date) {
            // gitlab-runner's cache-archiver: nothing newer than the archive, so neither a new
            // archive nor an upload (the archive came from this cache or was made from these
            // very files).
            p.info("Archive is up to date!");
            p.notice("Created cache");
            continue;
        }
        if (m.entries == 0) {
            p.helper_warning("no files to archive; the cache is not created");
            p.warning("Failed to create cache");
            continue;
        }
        if (rem) {
            auto object = object_name(rem->path, rem->shared, short_token, facts.project_id, key,
                                      facts.hash_keys);
            if (!object.error.empty()) {
                p.helper_warning(object.error);
                p.warning("Failed to create cache");
                continue;
            }
            std::error_code ec;
            const auto size = fs::file_size(archive, ec);
            if (rem->max_upload > 0 && !ec &&
                size > static_cast<std::uintmax_t>(rem->max_upload)) {
                p.helper_warning("cache archive size (" + std::to_string(size) +
                                 " bytes) exceeds MaxUploadedArchiveSize (" +
                                 std::to_string(rem->max_upload) + " bytes); not uploaded");
                p.warning("Failed to create cache");
                continue;
            }
            const auto url = sigv4::presign(rem->target, rem->credentials, "PUT", object.path,
                                            presign_expiry(ctx), std::time(nullptr));
            p.info("Uploading " + archive.filename().string() + " to " + url.clean_url);
            net::http_request req;
            req.method = "PUT";
            req.timeout = timeout;
            req.headers.set("Content-Type", "application/octet-stream");
            req.headers.set("Last-Modified", http_date(fs::last_write_time(archive, ec)));
            req.body.push_back({{}, archive});
            auto r = co_await send_presigned(url, std::move(req));
            if (!r.ok) {
                p.helper_warning(r.error);
                p.warning("Failed to create cache");
                log::info("cache upload failed: " + r.error,
                          {{"job", ctx.job->id}, {"url", url.clean_url}});
                continue;
            }
        } else {
            p.info("No URL provided, cache will be not uploaded to shared cache server. Cache "
                   "will be stored only locally.");
        }
        p.notice("Created cache");
    }
    co_return std::string();
}

}  // namespace kiln::cache
