#include "runner/daemon.hpp"

#include <signal.h>
#include <sys/stat.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <algorithm>
#include <cerrno>
#include <filesystem>
#include <list>
#include <map>
#include <optional>
#include <random>
#include <ctime>
#include <limits>
#include <set>
#include <variant>

#include "config/loader.hpp"
#include "executors/docker/docker_executor.hpp"
#include "runner/gitlab/retry_policy.hpp"
#include "runner/gitlab/runner_info.hpp"
#include "runner/gitlab/tokens.hpp"
#include "runner/job.hpp"
#include "runner/net/url.hpp"
#include "runner/service/operations.hpp"
#include "runner/service/run_as.hpp"
#include "runner/prune.hpp"
#include "runner/spool.hpp"
#include "runner/util/blocking.hpp"
#include "runner/system_id_state.hpp"
#include "runner/trace/trace_streamer.hpp"
#include "runner/util/logging.hpp"
#include "runner/util/memory_trim.hpp"

namespace kiln {
namespace {

namespace asio = boost::asio;
using namespace std::chrono_literals;
constexpr auto use_tuple = asio::as_tuple(asio::use_awaitable);

// What this build really implements; GitLab refuses jobs needing anything else
// (runner_unsupported) rather than have kiln half-run them.
gitlab::feature_flags shell_features() {
    gitlab::feature_flags f;
    f.variables = true;
    f.shared = true;
    f.refspecs = true;
    f.masking = true;
    f.raw_variables = true;  // variables are exported verbatim, never expanded
    f.multi_build_steps = true;
    f.trace_checksum = true;
    f.trace_size = true;
    f.cancelable = true;
    f.return_exit_code = true;
    f.cancel_gracefully = true;
    f.artifacts = true;
    f.upload_multiple_artifacts = true;
    f.upload_raw_artifacts = true;
    f.artifacts_exclude = true;
    f.cache = true;  // restore_cache / archive_cache (runner/cache)
    f.fallback_cache_keys = true;
    return f;
}

// The Docker executor runs jobs in the job's image with its services; jobs do not share the
// host's environment.
gitlab::feature_flags docker_features() {
    gitlab::feature_flags f = shell_features();
    f.shared = false;
    f.image = true;
    f.services = true;
    f.service_variables = true;
    f.service_multiple_aliases = true;
    return f;
}

// Containers, networks and volumes an earlier kiln process of this runner left behind (it was
// killed, or the host rebooted) are removed before the runner takes jobs. No job of this
// process exists yet, so everything labelled for the runner is a leftover; cache volumes stay.
void remove_docker_leftovers(const config::runner_entry& r) {
    asio::io_context io;
    const auto short_token = gitlab::short_token(r.token);
    asio::co_spawn(io,
                   executors::docker::remove_leftovers(io.get_executor(),
                                                       r.docker.value_or(config::docker_settings{}),
                                                       short_token),
                   [&](std::exception_ptr e, int removed) {
                       if (e) {
                           try {
                               std::rethrow_exception(e);
                           } catch (const std::exception& ex) {
                               log::error(std::string("cannot clean up after an earlier kiln: ") +
                                              ex.what(),
                                          {{"runner", short_token}});
                           }
                       } else if (removed > 0) {
                           log::info("removed Docker objects an earlier kiln process left behind",
                                     {{"runner", short_token},
                                      {"removed", static_cast<long>(removed)}});
                       }
                   });
    io.run();
}

// What identifies one conversation with GitLab: a reload that changes any of these replaces the
// runner (new client); any other change is applied to the running entry in place.
std::string runner_key(const config::runner_entry& r) {
    return r.token + '\n' + r.url + '\n' + r.tls_ca_file + '\n' + r.tls_cert_file + '\n' +
           r.tls_key_file;
}

struct runner_slot {
    explicit runner_slot(asio::io_context& io) : stop(io) {
        stop.expires_at(asio::steady_timer::time_point::max());
    }
    config::runner_entry entry;
    std::string key;
    std::unique_ptr<gitlab::client> api;
    std::string last_update;
    std::int64_t running = 0;
    std::int64_t waiting = 0;  // received while no slot was free; start when one frees
    int pollers = 0;
    bool removed = false;      // gone from the config: no new requests, running jobs go on
    asio::steady_timer stop;   // cancelled to abandon this runner's requests in flight
    std::set<int> concurrent_ids;
    std::string short_token;
};

// A job that arrived while every slot it may use was taken (several long polls answered at
// once). It is already assigned to kiln in GitLab, so it waits here, touched like a quiet
// running job, and starts in arrival order when a slot frees.
struct waiting_job {
    std::shared_ptr<runner_slot> runner;
    gitlab::job_spec job;
    std::unique_ptr<asio::steady_timer> wake;
    bool dispatched = false;
};

// (mtime, inode, size) of the config file: a change means "reload".
struct file_signature {
    std::int64_t mtime_ns = -1;
    std::uint64_t inode = 0;
    std::int64_t size = -1;
    friend bool operator==(const file_signature&, const file_signature&) = default;
};

file_signature signature_of(const std::filesystem::path& p) {
    struct stat st {};
    if (::stat(p.c_str(), &st) != 0) {
        return {};
    }
    return {static_cast<std::int64_t>(st.st_mtim.tv_sec) * 1'000'000'000 + st.st_mtim.tv_nsec,
            static_cast<std::uint64_t>(st.st_ino), static_cast<std::int64_t>(st.st_size)};
}

class daemon {
public:
    explicit daemon(daemon_options o)
        : options_(std::move(o)), changed_(io_), shutdown_timer_(io_), trim_timer_(io_),
          watch_timer_(io_), closing_(io_), answered_(io_),
          signals_(io_, SIGINT, SIGTERM, SIGQUIT) {
        changed_.expires_at(asio::steady_timer::time_point::max());
        answered_.expires_at(asio::steady_timer::time_point::max());
        closing_.expires_at(asio::steady_timer::time_point::max());
        signals_.add(SIGHUP);
    }

    int run() {
        system_id_ = load_system_id(options_.config_path);
        try {
            persist_system_id(options_.config_path, system_id_);
        } catch (const std::exception& e) {
            log::warn(std::string("cannot save the system ID: ") + e.what());
        }
        config_signature_ = signature_of(options_.config_path);
        for (const auto& r : options_.settings.runners) {
            if (auto slot = make_slot(r, true)) {
                runners_.push_back(std::move(slot));
            }
        }
        forget_runner_entries();
        if (runners_.empty()) {
            log::error("no runner to run: register one with `kiln register`",
                       {{"config", options_.config_path.string()}});
            return 1;
        }
        ops_ = std::make_unique<service::operations>(io_.get_executor(), system_id_.id);
        ops_->set_runner_source([this] {
            std::vector<service::runner_view> v;
            for (const auto& r : runners_) {
                v.push_back({r->short_token, r->entry.name, r->entry.limit, &r->api->statuses()});
            }
            return v;
        });
        ops_->set_concurrent(options_.settings.concurrent);
        try {
            ops_->start_http(options_.settings.listen_address);
        } catch (const std::exception& e) {
            log::error(e.what(), {{"config", options_.config_path.string()}});
            return 1;
        }
        log::info("Starting kiln",
                  {{"runners", static_cast<long>(runners_.size())},
                   {"concurrent", static_cast<long long>(options_.settings.concurrent)},
                   {"config", options_.config_path.string()}});
        asio::co_spawn(io_, handle_signals(), asio::detached);
        for (auto& r : runners_) {
            spawn_pollers(r);
        }
        asio::co_spawn(io_, watch_config(), asio::detached);
        asio::co_spawn(io_, wait_until_done(), asio::detached);
        ops_->polling_started();
        spool_dir_ = spool::directory(options_.config_path, options_.settings.spool_dir);
        try {
            // Jobs keep their live logs here too, so the final one becomes a spool entry
            // without a copy.
            spool::create_directory(spool_dir_);
        } catch (const std::exception& ex) {
            log::warn(std::string(ex.what()) + ": job logs go to $TMPDIR and are copied into "
                      "the spool when a job ends");
        }
        deliver_spooled_at_start();
        asio::co_spawn(io_, prune_hourly(), asio::detached);
        schedule_trim();
        io_.run();
        log::info("kiln stopped", {{"jobs", static_cast<long long>(finished_jobs_)}});
        return 0;
    }

private:
    void notify() { changed_.cancel(); }

    std::shared_ptr<runner_slot> make_slot(const config::runner_entry& r, bool at_start) {
        const auto short_token = gitlab::short_token(r.token);
        if (r.executor != "shell" && r.executor != "docker") {
            log::warn("skipping runner: kiln runs only the shell and docker executors",
                      {{"runner", short_token}, {"executor", r.executor}});
            return nullptr;
        }
        auto slot = std::make_shared<runner_slot>(io_);
        slot->entry = r;
        slot->key = runner_key(r);
        slot->short_token = short_token;
        gitlab::client_config cfg;
        cfg.url = r.url;
        cfg.tls = {r.tls_ca_file, r.tls_cert_file, r.tls_key_file};
        cfg.connection_max_age = options_.settings.connection_max_age;
        try {
            slot->api = std::make_unique<gitlab::client>(io_.get_executor(), cfg);
        } catch (const std::exception& e) {
            log::error(std::string("skipping runner: ") + e.what(), {{"runner", short_token}});
            return nullptr;
        }
        // Leftovers are only an earlier process's when no job of this one can own them.
        if (r.executor == "docker" && (at_start || !has_runner_with_token(r.token))) {
            remove_docker_leftovers(r);
        }
        slot->api->set_info(info_for(r));
        return slot;
    }

    static gitlab::runner_info info_for(const config::runner_entry& r) {
        gitlab::runner_info info;
        info.executor = r.executor;
        info.shell = r.shell.empty() ? "bash" : r.shell;
        info.features = r.executor == "docker" ? docker_features() : shell_features();
        return info;
    }

    bool has_runner_with_token(const std::string& token) const {
        for (const auto& s : runners_) {
            if (s->entry.token == token) {
                return true;
            }
        }
        return false;
    }

    // request_concurrency polling coroutines per runner; a reload that raises it adds more,
    // one that lowers it lets the surplus ones end after their current request.
    void spawn_pollers(const std::shared_ptr<runner_slot>& r) {
        const int wanted = static_cast<int>(std::max<std::int64_t>(1, r->entry.request_concurrency));
        while (!stopping_ && !r->removed && r->pollers < wanted) {
            const int index = r->pollers++;
            ++pollers_;
            asio::co_spawn(io_, poll(r, index), [this, r](std::exception_ptr e) {
                if (e) {
                    try {
                        std::rethrow_exception(e);
                    } catch (const std::exception& ex) {
                        log::error(std::string("polling stopped: ") + ex.what(),
                                   {{"runner", r->short_token}});
                    }
                }
                --r->pollers;
                --pollers_;
                notify();
            });
        }
    }

    // Once start-up (or the last job) is over, the daemon only waits on long polls; give back
    // what start-up touched. Re-armed whenever kiln becomes idle again.
    void schedule_trim() {
        trim_timer_.expires_after(2s);
        trim_timer_.async_wait([this](boost::system::error_code ec) {
            if (!ec && running_total_ == 0 && !stopping_) {
                auto released = util::trim_idle_memory();
                log::debug("trimmed idle memory",
                           {{"mapped_bytes_released", static_cast<unsigned long>(released)}});
            }
        });
    }

    // changed_ never expires; notify() cancels the waits pending at that moment, which is a
    // broadcast to every waiter (a condition variable on one thread).
    asio::awaitable<void> wait_changed() { co_await changed_.async_wait(use_tuple); }

    void begin_stop(const char* why) {
        ops_->stopping(terminating_);
        if (stopping_) {
            return;
        }
        log::info(why);
        stopping_ = true;
        for (auto& r : runners_) {
            r->stop.cancel();
        }
        notify();
    }

    asio::awaitable<void> wait_until_done() {
        while (!(stopping_ && pollers_ == 0 && running_total_ == 0 && waiting_total_ == 0 &&
                 stray_updates_ == 0)) {
            co_await wait_changed();
        }
        signals_.cancel();
        shutdown_timer_.cancel();
        trim_timer_.cancel();
        watch_timer_.cancel();
        ops_->close();
        // Spooled final states not delivered yet stay on disk for the next start.
        closed_ = true;
        closing_.cancel();
        for (auto& r : runners_) {
            r->api->close_idle();
        }
        for (auto& r : retired_) {
            r->api->close_idle();
        }
    }

    asio::awaitable<void> handle_signals() {
        for (;;) {
            auto [ec, sig] = co_await signals_.async_wait(use_tuple);
            if (ec) {
                co_return;
            }
            if (sig == SIGHUP) {
                if (!stopping_) {
                    reload("SIGHUP");
                }
                continue;
            }
            if (sig == SIGQUIT) {
                begin_stop("SIGQUIT: not asking for new jobs; waiting for running jobs to finish");
                continue;
            }
            if (!terminating_) {
                terminating_ = true;
                begin_stop("stopping: canceling running jobs");
                for (auto& [id, control] : jobs_) {
                    control->cancel(true);
                }
                fail_waiting_jobs();
                shutdown_timer_.expires_after(options_.settings.shutdown_timeout);
                shutdown_timer_.async_wait([this](boost::system::error_code e) {
                    if (!e) {
                        log::warn("shutdown_timeout passed: aborting running jobs");
                        abort_all();
                    }
                });
            } else {
                log::warn("second signal: aborting running jobs now");
                abort_all();
            }
        }
    }

    void abort_all() {
        for (auto& [id, control] : jobs_) {
            control->cancel(false);
        }
    }

    // ---- configuration reload ----------------------------------------------------------------

    // gitlab-runner checks the file every 3 s; so does kiln (a stat, nothing else). A file
    // that fails to load is not retried until it changes again.
    asio::awaitable<void> watch_config() {
        while (!stopping_) {
            watch_timer_.expires_after(3s);
            auto [ec] = co_await watch_timer_.async_wait(use_tuple);
            if (ec || stopping_) {
                co_return;
            }
            const auto sig = signature_of(options_.config_path);
            if (sig.mtime_ns >= 0 && !(sig == config_signature_)) {
                reload("the config file changed");
            }
        }
    }

    void reload(const char* why) {
        const auto sig = signature_of(options_.config_path);
        config_signature_ = sig;
        auto loaded = config::load_config_file(options_.config_path);
        if (!loaded.ok()) {
            std::string errors;
            for (const auto& d : loaded.errors()) {
                errors += (errors.empty() ? "" : "; ") + d.to_string();
            }
            log::error("config not reloaded, keeping the running one: " +
                           (errors.empty() ? std::string("cannot load the file") : errors),
                       {{"config", options_.config_path.string()}, {"trigger", why}});
            return;
        }
        for (const auto& d : loaded.warnings()) {
            log::warn(d.to_string());
        }
        apply(std::move(*loaded.value), why);
    }

    // With `user` set, kiln runs as that user and handed the directories of the entries it
    // started with over to it (runner/service/run_as.hpp); it cannot do that for an entry a
    // reload brings. Such an entry is taken only if the user can make and write its
    // directories, so no job is picked up to fail on them. Empty: all is well.
    std::string out_of_reach(const config::runner_entry& e) const {
        if (options_.settings.user.empty()) {
            return {};
        }
        const auto problems = service::unreachable(prune::job_dirs_of(e));
        if (problems.empty()) {
            return {};
        }
        std::string out;
        for (const auto& p : problems) {
            out += (out.empty() ? "" : "; ") + p;
        }
        const auto& u = options_.settings.user;
        return "user " + u + " cannot write where runner " + e.name + "'s jobs work (" + out +
               "): give the directories to " + u + " (chown -R " + u +
               ") or restart kiln, which hands over directories it makes, then reload";
    }

    void apply(config::settings next, const char* why) {
        long added = 0;
        long removed = 0;
        long changed = 0;
        std::vector<std::shared_ptr<runner_slot>> kept;
        std::set<std::string> next_keys;
        for (const auto& e : next.runners) {
            next_keys.insert(runner_key(e));
        }
        for (auto& r : runners_) {
            if (next_keys.count(r->key) == 0) {
                // Its requests in flight are abandoned; its running jobs keep the slot alive.
                r->removed = true;
                r->stop.cancel();
                retired_.push_back(r);
                ++removed;
            } else {
                kept.push_back(r);
            }
        }
        runners_ = std::move(kept);
        for (const auto& e : next.runners) {
            const auto key = runner_key(e);
            auto it = std::find_if(runners_.begin(), runners_.end(),
                                   [&](const auto& r) { return r->key == key; });
            if (it != runners_.end()) {
                auto& r = *it;
                if (!(r->entry == e)) {
                    if (const auto problem = out_of_reach(e); !problem.empty()) {
                        log::error(problem + "; the entry keeps its old settings",
                                   {{"runner", r->short_token}});
                        continue;
                    }
                    ++changed;
                    if (r->entry.executor != e.executor || r->entry.shell != e.shell) {
                        r->api->set_info(info_for(e));
                    }
                    r->entry = e;  // running jobs keep the copy they started with
                    spawn_pollers(r);
                }
                continue;
            }
            if (const auto problem = out_of_reach(e); !problem.empty()) {
                log::error(problem + "; the entry is not added", {{"runner", e.name}});
                continue;
            }
            if (auto slot = make_slot(e, false)) {
                runners_.push_back(slot);
                spawn_pollers(slot);
                ++added;
            }
        }
        if (next.concurrent != options_.settings.concurrent) {
            ++changed;
        }
        if (next.user != options_.settings.user) {
            // kiln became that user at start (runner/service/run_as.hpp) and cannot go back.
            if (!next.user.empty()) {
                log::warn("`user` changed to \"" + next.user + "\": that takes a restart; jobs "
                          "still run as " + (options_.settings.user.empty()
                                                 ? std::string("kiln's own user")
                                                 : options_.settings.user));
            }
            next.user = options_.settings.user;
        }
        options_.settings = std::move(next);
        forget_runner_entries();
        ops_->set_concurrent(options_.settings.concurrent);
        std::erase_if(retired_, [](const auto& r) { return r->running == 0 && r->waiting == 0 && r->pollers == 0; });
        log::info("config reloaded",
                  {{"trigger", why},
                   {"runners", static_cast<long>(runners_.size())},
                   {"added", added},
                   {"removed", removed},
                   {"changed", changed},
                   {"concurrent", static_cast<long long>(options_.settings.concurrent)}});
        dispatch_waiting();
        notify();
    }

    // The slots hold the runner entries; a second copy of every entry in the settings (2.6 KiB
    // each) is not kept.
    void forget_runner_entries() {
        options_.settings.runners.clear();
        options_.settings.runners.shrink_to_fit();
    }

    config::settings current_settings() const {
        auto s = options_.settings;
        for (const auto& r : runners_) {
            s.runners.push_back(r->entry);
        }
        return s;
    }

    // ---- slots -------------------------------------------------------------------------------

    // A job request in flight does not hold a slot: every runner keeps its long poll open while
    // the others hold theirs (no starvation). A runner asks only while a slot is free for it,
    // counting jobs that are waiting, so more jobs than slots arrive only when several polls
    // answer with a job at the same moment; those wait for a slot (see waiting_job).
    bool may_request(const runner_slot& r) const {
        if (running_total_ + waiting_total_ >= options_.settings.concurrent) {
            return false;
        }
        return r.entry.limit <= 0 || r.running + r.waiting < r.entry.limit;
    }

    bool slot_free(const runner_slot& r) const {
        if (running_total_ >= options_.settings.concurrent) {
            return false;
        }
        return r.entry.limit <= 0 || r.running < r.entry.limit;
    }

    asio::awaitable<void> poll(std::shared_ptr<runner_slot> rp, int index) {
        using namespace asio::experimental::awaitable_operators;
        auto& r = *rp;
        int errors = 0;
        int quick_204s = 0;
        bool unreachable = false;  // the last request did not reach GitLab
        auto active = [&] {
            return !stopping_ && !r.removed &&
                   index < std::max<std::int64_t>(1, r.entry.request_concurrency);
        };
        while (active()) {
            if (!may_request(r)) {
                co_await wait_changed();
                continue;
            }
            const auto started = std::chrono::steady_clock::now();
            const std::string sent_last_update = r.last_update;
            const std::string token = r.entry.token;
            auto raced = co_await (r.api->request_job(token, system_id_.id, sent_last_update) ||
                                   r.stop.async_wait(use_tuple));
            if (raced.index() == 1 || stopping_ || r.removed) {
                // Abandoned (stop or reload). A job in an answer that came anyway still runs.
                if (raced.index() == 0) {
                    auto res = std::get<0>(std::move(raced));
                    if (res.reached() && res.value.status == gitlab::request_job_status::job_received) {
                        received_job(rp, std::move(*res.value.job));
                    }
                }
                break;
            }
            auto res = std::get<0>(std::move(raced));
            if (res.reached() && errors > 0 &&
                res.value.status != gitlab::request_job_status::failed) {
                if (unreachable) {
                    log::info("GitLab answers again", {{"runner", r.short_token},
                                                       {"failed_attempts", errors}});
                }
                gitlab_answered(r.entry.url);
            }
            unreachable = !res.reached();
            std::chrono::milliseconds wait{0};
            if (!res.reached()) {
                wait = gitlab::full_jitter_backoff(errors++, 1s, 60s,
                                                   std::uniform_real_distribution<>(0, 1)(rng_));
                log::warn("checking for jobs failed: " + res.transport.message,
                          {{"runner", r.short_token},
                           {"retry_in_ms", static_cast<long long>(wait.count())}});
            } else {
                auto& v = res.value;
                if (v.last_update) {
                    r.last_update = *v.last_update;
                }
                switch (v.status) {
                    case gitlab::request_job_status::job_received:
                        errors = 0;
                        received_job(rp, std::move(*v.job));
                        // Let the job's first PUT take the kept-alive connection this answer
                        // came on; the next (long-held) request can afford a new one.
                        co_await asio::post(io_.get_executor(), asio::use_awaitable);
                        continue;  // ask again at once
                    case gitlab::request_job_status::no_job: {
                        errors = 0;
                        wait = no_job_wait(v.last_update, sent_last_update,
                                           std::chrono::steady_clock::now() - started, quick_204s);
                        break;
                    }
                    case gitlab::request_job_status::invalid_job:
                        errors = 0;
                        log::error("GitLab sent a job kiln cannot use: " +
                                       (v.payload_problem ? v.payload_problem->message : v.message),
                                   {{"runner", r.short_token}});
                        if (v.payload_problem && v.payload_problem->job_id > 0) {
                            co_await fail_unusable_job(r, *v.payload_problem);
                        }
                        continue;
                    case gitlab::request_job_status::forbidden:
                        wait = gitlab::full_jitter_backoff(
                            errors++, 5s, 5min, std::uniform_real_distribution<>(0, 1)(rng_));
                        log::error("GitLab rejected the runner token (403): check the runner in "
                                   "GitLab or run `kiln verify`",
                                   {{"runner", r.short_token}});
                        break;
                    case gitlab::request_job_status::failed:
                        wait = gitlab::full_jitter_backoff(
                            errors++, 1s, 60s, std::uniform_real_distribution<>(0, 1)(rng_));
                        log::warn("checking for jobs failed: HTTP " +
                                      std::to_string(v.http_status) + " " + v.message,
                                  {{"runner", r.short_token}});
                        break;
                }
            }
            if (wait.count() > 0 && active()) {
                if (!res.reached()) {
                    // GitLab unreachable: the backoff spares it, but polling resumes as soon
                    // as it listens again rather than up to a minute later.
                    co_await (wait_until_back(r.entry.url, wait, refused(res.transport)) ||
                              r.stop.async_wait(use_tuple));
                } else {
                    asio::steady_timer t(io_, wait);
                    co_await (t.async_wait(use_tuple) || r.stop.async_wait(use_tuple));
                }
            }
        }
    }

    // ---- GitLab back after an outage ---------------------------------------------------------

    // A request reached GitLab at `url` after a failure: whoever waits out a backoff for the
    // same GitLab need not find that out by its own probe.
    void gitlab_answered(const std::string& url) {
        answered_url_ = url;
        answered_.cancel();
    }

    // Whether a request failed before any connection opened: then a probe that connects means
    // GitLab is back.
    static bool refused(const net::transport_error& e) {
        using kind = net::transport_error::kind;
        return e.what == kind::connect || e.what == kind::resolve;
    }

    // Waits `wait` (a backoff after a request could not reach GitLab), ending early once a TCP
    // connection to GitLab's host opens after one had failed: a refused connect costs neither
    // side anything, so probing every 2 s lets polls and spooled final states go out within
    // seconds of GitLab listening again. Only a failed-then-working connect ends the wait, so
    // a server that accepts connections but still breaks requests (TLS, a proxy cutting them)
    // gets the whole backoff. `refused`: the request itself could not connect, which counts
    // as the failed connect (GitLab may come back before the first probe).
    asio::awaitable<void> wait_until_back(std::string url, std::chrono::milliseconds wait,
                                          bool refused) {
        using namespace asio::experimental::awaitable_operators;
        const auto end = std::chrono::steady_clock::now() + wait;
        std::optional<net::origin> origin;
        if (auto u = net::parse_gitlab_url(url); std::holds_alternative<net::base_url>(u)) {
            origin = std::get<net::base_url>(u).origin;
        }
        bool seen_down = refused;
        while (true) {
            const auto now = std::chrono::steady_clock::now();
            if (now >= end) {
                co_return;
            }
            auto step = std::chrono::duration_cast<std::chrono::milliseconds>(end - now);
            if (origin) {
                step = std::min<std::chrono::milliseconds>(step, 2s);
            }
            asio::steady_timer t(io_, step);
            auto woken = co_await (t.async_wait(use_tuple) || answered_.async_wait(use_tuple));
            if (woken.index() == 1 && answered_url_ == url) {
                co_return;
            }
            if (!origin || std::chrono::steady_clock::now() >= end) {
                continue;
            }
            const bool up = co_await tcp_connects(*origin);
            if (!up) {
                seen_down = true;
            } else if (seen_down) {
                co_return;
            } else {
                origin.reset();  // it connects: this is no connection problem, wait it out
            }
        }
    }

    asio::awaitable<bool> tcp_connects(net::origin o) {
        using namespace asio::experimental::awaitable_operators;
        asio::ip::tcp::resolver resolver(io_);
        asio::ip::tcp::socket socket(io_);
        asio::steady_timer deadline(io_, 2s);
        auto attempt = co_await (connect_once(resolver, socket, o) || deadline.async_wait(use_tuple));
        co_return attempt.index() == 0 && std::get<0>(attempt);
    }

    static asio::awaitable<bool> connect_once(asio::ip::tcp::resolver& resolver,
                                              asio::ip::tcp::socket& socket, net::origin o) {
        auto [rec, endpoints] =
            co_await resolver.async_resolve(o.host, std::to_string(o.port), use_tuple);
        if (rec) {
            co_return false;
        }
        auto [cec, ep] = co_await asio::async_connect(socket, endpoints, use_tuple);
        co_return !cec;
    }

    // When to ask again after "no job" (protocol.md §3.3). Workhorse answers a held request
    // with a 204 *without* X-GitLab-Last-Update when the queue changed or its hold timed out,
    // and Rails answers with a value that differs from ours when the queue moved on: both
    // mean "ask again now", and the next request will be held. The same value back means
    // nobody holds requests, so check_interval paces the polling. Quick header-less answers
    // in a row would be a server that neither holds nor sends the header: pace those too.
    std::chrono::milliseconds no_job_wait(const std::optional<std::string>& received,
                                          const std::string& sent,
                                          std::chrono::steady_clock::duration elapsed,
                                          int& quick_204s) const {
        const auto interval =
            std::chrono::duration_cast<std::chrono::milliseconds>(options_.settings.check_interval);
        auto rest = [&] {
            return elapsed < interval
                       ? std::chrono::duration_cast<std::chrono::milliseconds>(interval - elapsed)
                       : 0ms;
        };
        if (received && *received == sent) {
            quick_204s = 0;
            return rest();
        }
        if (!received && elapsed < 100ms) {
            if (++quick_204s > 3) {
                return rest();
            }
        } else {
            quick_204s = 0;
        }
        return 0ms;
    }

    asio::awaitable<void> fail_unusable_job(runner_slot& r, const gitlab::payload_error& p) {
        gitlab::job_update u;
        u.token = p.job_token;
        u.state = gitlab::job_state::failed;
        u.failure_reason = "runner_system_failure";
        u.exit_code = 3;
        co_await r.api->update_job(p.job_id, u);
    }

    void received_job(const std::shared_ptr<runner_slot>& r, gitlab::job_spec job) {
        log::info("Checking for jobs... received",
                  {{"job", job.id},
                   {"runner", r->short_token},
                   {"repo_url", job.git.repo_url.substr(job.git.repo_url.find('@') + 1)}});
        if (slot_free(*r)) {
            start_job(r, std::move(job));
        } else {
            hold_job(r, std::move(job));
        }
        if (options_.max_jobs > 0 &&
            finished_jobs_ + running_total_ + waiting_total_ >= options_.max_jobs) {
            // Take no more jobs than asked for.
            begin_stop("received the requested number of jobs; not asking for more");
        }
    }

    void hold_job(const std::shared_ptr<runner_slot>& r, gitlab::job_spec job) {
        auto w = std::make_shared<waiting_job>();
        w->runner = r;
        w->job = std::move(job);
        w->wake = std::make_unique<asio::steady_timer>(io_);
        ++r->waiting;
        ++waiting_total_;
        waiting_.push_back(w);
        log::warn("no free slot for a job that arrived with another: it waits for one",
                  {{"job", w->job.id},
                   {"runner", r->short_token},
                   {"waiting", static_cast<long long>(waiting_total_)}});
        asio::co_spawn(io_, keep_waiting_job_alive(w), asio::detached);
    }

    // GitLab sees a waiting job as running (it was assigned when it was sent); a touch every
    // 30 s, as for a quiet running job, keeps it from looking stuck and learns of a cancel.
    asio::awaitable<void> keep_waiting_job_alive(std::shared_ptr<waiting_job> w) {
        gitlab::job_update touch;
        touch.token = w->job.token;
        touch.state = gitlab::job_state::running;
        for (bool first = true; !w->dispatched; first = false) {
            if (!first) {
                w->wake->expires_after(30s);
                co_await w->wake->async_wait(use_tuple);
                if (w->dispatched) {
                    co_return;
                }
            }
            auto res = co_await w->runner->api->update_job(w->job.id, touch);
            if (!w->dispatched && res.reached() && res.value.status == gitlab::update_status::abort) {
                log::warn("GitLab withdrew a waiting job", {{"job", w->job.id}});
                remove_waiting(w);
                notify();
                co_return;
            }
        }
    }

    void remove_waiting(const std::shared_ptr<waiting_job>& w) {
        w->dispatched = true;
        w->wake->cancel();
        --w->runner->waiting;
        --waiting_total_;
        std::erase(waiting_, w);
    }

    // Oldest first; a job whose runner is at its limit does not block the others.
    void dispatch_waiting() {
        for (auto it = waiting_.begin(); it != waiting_.end();) {
            auto w = *it;
            ++it;
            if (slot_free(*w->runner)) {
                remove_waiting(w);
                start_job(w->runner, std::move(w->job));
            }
        }
    }

    // SIGTERM before a waiting job started: it gets a final state rather than hanging.
    void fail_waiting_jobs() {
        auto all = waiting_;
        for (auto& w : all) {
            remove_waiting(w);
            ++stray_updates_;
            asio::co_spawn(io_, fail_waiting_job(w), [this](std::exception_ptr) {
                --stray_updates_;
                notify();
            });
        }
    }

    asio::awaitable<void> fail_waiting_job(std::shared_ptr<waiting_job> w) {
        gitlab::job_update u;
        u.token = w->job.token;
        u.state = gitlab::job_state::failed;
        u.failure_reason =
            gitlab::resolve_failure_reason("runner_system_failure", w->job.features.failure_reasons);
        co_await w->runner->api->update_job(w->job.id, u);
        log::info("Job failed: kiln stopped before it could start", {{"job", w->job.id}});
    }

    void start_job(const std::shared_ptr<runner_slot>& rp, gitlab::job_spec job) {
        auto& r = *rp;
        int cid = 0;
        while (r.concurrent_ids.count(cid) != 0) {
            ++cid;
        }
        r.concurrent_ids.insert(cid);
        ++r.running;
        ++running_total_;
        const auto id = job.id;
        auto control = std::make_shared<job_control>();
        jobs_[id] = control;
        ops_->job_started(id, {r.short_token, r.entry.name, r.entry.limit, nullptr}, r.entry.executor,
                          job.git.repo_url, control);
        job_context ctx{r.entry, *r.api, system_id_.id, cid};
        ctx.spool_write = [this, entry = r.entry](std::int64_t job_id, gitlab::job_update u,
                                                  spool::trace_saver save_trace) {
            return spool_write_ahead(entry, job_id, std::move(u), std::move(save_trace));
        };
        ctx.trace_dir = spool_dir_.string();
        ctx.spool_remove = [this](std::int64_t job_id) { return spool_remove(job_id); };
        ctx.spool_hand_over = [this](std::int64_t job_id) { spool_hand_over(job_id); };
        if (r.entry.executor == "docker") {
            prune::mark_volume_use(prune::volume_marks_dir(options_.config_path), r.short_token,
                                   job.info.project_id);
        }
        auto lock_path = prune::slot_lock_path(prune::builds_dir_of(r.entry), r.short_token, cid);
        asio::co_spawn(io_, run_locked_job(std::move(lock_path), ctx, std::move(job), control),
                       [this, rp, id, cid](std::exception_ptr e, job_outcome outcome) {
                           auto& r = *rp;
                           if (e) {
                               try {
                                   std::rethrow_exception(e);
                               } catch (const std::exception& ex) {
                                   log::error(std::string("job failed inside kiln: ") + ex.what(),
                                              {{"job", id}, {"runner", r.short_token}});
                               }
                           }
                           jobs_.erase(id);
                           ops_->job_finished(id, outcome);
                           r.concurrent_ids.erase(cid);
                           --r.running;
                           --running_total_;
                           ++finished_jobs_;
                           if (options_.max_jobs > 0 && finished_jobs_ >= options_.max_jobs) {
                               begin_stop("finished the requested number of jobs");
                           }
                           dispatch_waiting();
                           if (running_total_ == 0) {
                               schedule_trim();
                           }
                           std::erase_if(retired_, [](const auto& s) {
                               return s->running == 0 && s->waiting == 0 && s->pollers == 0;
                           });
                           notify();
                       });
        if (terminating_) {
            control->cancel(true);
        }
    }

    // The job holds its slot's lock while it runs, so `kiln prune` (or the hourly prune) never
    // touches its checkout. A prune holding the lock right now delays the start briefly.
    asio::awaitable<job_outcome> run_locked_job(std::filesystem::path lock_path, job_context ctx,
                                                gitlab::job_spec job,
                                                std::shared_ptr<job_control> control) {
        std::optional<prune::slot_lock> lock;
        std::error_code ec;
        std::filesystem::create_directories(lock_path.parent_path(), ec);
        for (int attempt = 0; !ec && attempt < 600; ++attempt) {
            lock = prune::slot_lock::try_acquire(lock_path);
            if (lock || errno != EWOULDBLOCK) {
                break;
            }
            asio::steady_timer t(io_, 100ms);
            co_await t.async_wait(use_tuple);
        }
        if (!lock) {
            log::debug("running the job without its slot lock", {{"lock", lock_path.string()}});
        }
        auto outcome = co_await run_job(ctx, std::move(job), std::move(control));
        co_return outcome;
    }

    // prune_older_than > 0: builds and cache directories and cache volumes unused for longer
    // are removed an hour after start and every hour after that.
    asio::awaitable<void> prune_hourly() {
        using namespace asio::experimental::awaitable_operators;
        while (!closed_ && !stopping_) {
            asio::steady_timer t(io_, 1h);
            co_await (t.async_wait(use_tuple) || closing_.async_wait(use_tuple));
            const auto age = options_.settings.prune_older_than;
            if (closed_ || stopping_ || age.count() <= 0) {
                continue;
            }
            prune::report rep;
            co_await prune::prune_all(io_.get_executor(), current_settings(),
                                      options_.config_path, age, false, rep);
            for (const auto& r : rep.removed) {
                log::info("pruned " + r);
            }
            for (const auto& e : rep.errors) {
                log::warn("prune: " + e);
            }
        }
    }

    // ---- the spool: final states GitLab did not take ------------------------------------------

    // Write-ahead: every final state is on disk before its first PUT (the job calls this), so
    // a SIGKILL or power loss between the job's end and GitLab's 200 loses nothing: the next
    // start delivers it. GitLab's 200 removes the entry; an unreachable or failing GitLab hands
    // it over to a delivery coroutine.
    asio::awaitable<bool> spool_write_ahead(config::runner_entry runner, std::int64_t job_id,
                                            gitlab::job_update update,
                                            spool::trace_saver save_trace) {
        spool::entry e;
        e.job_id = job_id;
        e.job_token = update.token;
        e.url = runner.url;
        e.tls_ca_file = runner.tls_ca_file;
        e.tls_cert_file = runner.tls_cert_file;
        e.tls_key_file = runner.tls_key_file;
        e.executor = runner.executor;
        e.shell = runner.shell;
        e.runner = gitlab::short_token(runner.token);
        e.update = std::move(update);
        e.spooled_at = static_cast<std::int64_t>(::time(nullptr));
        const auto dir = spool_dir_;
        std::string error;
        std::optional<spool::stored> stored;
        stored = co_await util::run_blocking([&]() -> std::optional<spool::stored> {
            try {
                return spool::write(dir, e, save_trace);
            } catch (const std::exception& ex) {
                error = ex.what();
                return std::nullopt;
            }
        });
        if (!stored) {
            log::error("cannot spool the final job state (kiln keeps trying to send it): " + error,
                       {{"job", job_id}});
            co_return false;
        }
        written_[job_id] = std::move(*stored);
        co_return true;
    }

    asio::awaitable<void> spool_remove(std::int64_t job_id) {
        auto it = written_.find(job_id);
        if (it == written_.end()) {
            co_return;
        }
        auto s = std::move(it->second);
        written_.erase(it);
        co_await util::run_blocking([&s] { spool::remove(s); });
    }

    void spool_hand_over(std::int64_t job_id) {
        auto it = written_.find(job_id);
        if (it == written_.end()) {
            return;
        }
        auto s = std::move(it->second);
        written_.erase(it);
        log::warn("GitLab did not take the final job state: spooled, it is delivered when GitLab "
                  "answers again",
                  {{"job", job_id}, {"runner", s.e.runner}, {"spool", spool_dir_.string()}});
        start_delivery(std::move(s));
    }

    void deliver_spooled_at_start() {
        std::vector<std::string> problems;
        auto all = spool::load_all(spool_dir_, problems);
        for (const auto& p : problems) {
            log::error("unreadable spool entry left alone: " + p);
        }
        const auto now = static_cast<std::int64_t>(::time(nullptr));
        for (auto& s : all) {
            if (s.e.spooled_at > 0 && now - s.e.spooled_at > spool::max_age_seconds) {
                log::error("dropping a spooled final state older than 7 days",
                           {{"job", s.e.job_id}, {"runner", s.e.runner}});
                spool::remove(s);
                continue;
            }
            log::info("delivering a spooled final job state", {{"job", s.e.job_id},
                                                                {"runner", s.e.runner}});
            start_delivery(std::move(s));
        }
    }

    void start_delivery(spool::stored s) {
        if (closed_ || delivering_.count(s.e.job_id) != 0) {
            return;
        }
        delivering_.insert(s.e.job_id);
        asio::co_spawn(io_, deliver(std::move(s)), [this](std::exception_ptr e) {
            if (e) {
                try {
                    std::rethrow_exception(e);
                } catch (const std::exception& ex) {
                    log::error(std::string("delivering a spooled job state stopped: ") + ex.what());
                }
            }
        });
    }

    // Retries with capped, jittered backoff until GitLab takes the state (200) or no longer
    // wants it (403/404, Job-Status canceled|failed), then removes the entry. Before each PUT
    // the trace is PATCHed from where GitLab stands (416 says where), since GitLab answers 202
    // until it has the whole trace.
    asio::awaitable<void> deliver(spool::stored s) {
        using namespace asio::experimental::awaitable_operators;
        std::unique_ptr<gitlab::client> api;
        gitlab::client_config cfg;
        cfg.url = s.e.url;
        cfg.tls = {s.e.tls_ca_file, s.e.tls_cert_file, s.e.tls_key_file};
        try {
            api = std::make_unique<gitlab::client>(io_.get_executor(), cfg);
        } catch (const std::exception& ex) {
            log::error(std::string("cannot deliver a spooled job state: ") + ex.what(),
                       {{"job", s.e.job_id}, {"runner", s.e.runner}});
            delivering_.erase(s.e.job_id);
            co_return;
        }
        config::runner_entry as_runner;
        as_runner.executor = s.e.executor;
        as_runner.shell = s.e.shell;
        api->set_info(info_for(as_runner));
        std::int64_t offset = s.e.trace_offset;
        int errors = 0;
        while (!closed_) {
            std::chrono::milliseconds wait{0};
            bool done = false;
            // The trace is read a PATCH at a time: a spooled log can be as large as
            // output_limit, and waiting entries should cost no memory.
            std::int64_t trace_size = 0;
            try {
                trace_size = static_cast<std::int64_t>(
                    co_await util::run_blocking([&s] { return spool::trace_size(s); }));
            } catch (const std::exception& ex) {
                log::error(std::string("spooled trace unreadable, sending the state alone: ") +
                               ex.what(),
                           {{"job", s.e.job_id}});
                offset = std::numeric_limits<std::int64_t>::max();
            }
            bool reached = true;
            bool was_refused = false;
            while (reached && offset < trace_size && !closed_) {
                std::string chunk;
                try {
                    chunk = co_await util::run_blocking([&s, offset] {
                        return spool::read_trace(s, static_cast<std::size_t>(offset),
                                                 trace::max_patch_bytes);
                    });
                } catch (const std::exception& ex) {
                    log::error(std::string("spooled trace unreadable, sending the state alone: ") +
                                   ex.what(),
                               {{"job", s.e.job_id}});
                    offset = std::numeric_limits<std::int64_t>::max();
                    break;
                }
                if (chunk.empty()) {
                    trace_size = offset;  // the file is shorter than it was: send what it has
                    break;
                }
                auto p = co_await (api->patch_trace(s.e.job_id, s.e.job_token, std::move(chunk),
                                                    offset, false) ||
                                   closing_.async_wait(use_tuple));
                if (p.index() == 1) {
                    co_return;
                }
                auto& pr = std::get<0>(p);
                if (!pr.reached() || pr.value.status == gitlab::patch_status::failed) {
                    reached = false;
                    was_refused = refused(pr.transport);
                    break;
                }
                if (pr.value.status == gitlab::patch_status::succeeded ||
                    pr.value.status == gitlab::patch_status::range_mismatch) {
                    offset = std::min<std::int64_t>(pr.value.new_offset, trace_size);
                    if (pr.value.status == gitlab::patch_status::range_mismatch &&
                        pr.value.new_offset > trace_size) {
                        break;  // GitLab holds more than kiln has: nothing left to send
                    }
                    continue;
                }
                break;  // abort / not found: the PUT tells what became of the job
            }
            if (reached && !closed_) {
                auto u = co_await (api->update_job(s.e.job_id, s.e.update) ||
                                   closing_.async_wait(use_tuple));
                if (u.index() == 1) {
                    co_return;
                }
                auto& ur = std::get<0>(u);
                if (ur.reached()) {
                    if (ur.value.status != gitlab::update_status::failed) {
                        gitlab_answered(s.e.url);
                    }
                    switch (ur.value.status) {
                        case gitlab::update_status::succeeded:
                            log::info("delivered a spooled final job state",
                                      {{"job", s.e.job_id}, {"runner", s.e.runner}});
                            done = true;
                            break;
                        case gitlab::update_status::abort:
                            log::warn("GitLab no longer takes this job's state (canceled, "
                                      "failed or gone): spool entry removed",
                                      {{"job", s.e.job_id}, {"runner", s.e.runner}});
                            done = true;
                            break;
                        case gitlab::update_status::accepted:
                            errors = 0;
                            wait = ur.value.update_interval.value_or(1s);
                            break;
                        case gitlab::update_status::trace_validation_failed:
                            offset = 0;
                            break;
                        case gitlab::update_status::failed:
                            reached = false;
                            break;
                    }
                } else {
                    reached = false;
                    was_refused = refused(ur.transport);
                }
            }
            if (done) {
                co_await util::run_blocking([&s] { spool::remove(s); });
                break;
            }
            if (!reached) {
                wait = gitlab::full_jitter_backoff(errors++, 1s, 30s,
                                                   std::uniform_real_distribution<>(0, 1)(rng_));
            }
            if (wait.count() > 0 && !closed_) {
                if (!reached) {
                    co_await (wait_until_back(s.e.url, wait, was_refused) ||
                              closing_.async_wait(use_tuple));
                } else {
                    asio::steady_timer t(io_, wait);
                    co_await (t.async_wait(use_tuple) || closing_.async_wait(use_tuple));
                }
            }
        }
        delivering_.erase(s.e.job_id);
        api->close_idle();
    }

    daemon_options options_;
    asio::io_context io_;
    asio::steady_timer changed_;
    asio::steady_timer shutdown_timer_;
    asio::steady_timer trim_timer_;
    asio::steady_timer watch_timer_;
    asio::steady_timer closing_;  // cancelled when the daemon exits: spool deliveries stop
    // Never expires; cancelled when a request reached a GitLab that a poller or a delivery may
    // be waiting out a backoff for (answered_url_ says which), so they all go again at once.
    asio::steady_timer answered_;
    std::string answered_url_;
    asio::signal_set signals_;
    system_id_state system_id_;
    std::unique_ptr<service::operations> ops_;
    file_signature config_signature_;
    std::vector<std::shared_ptr<runner_slot>> runners_;
    std::vector<std::shared_ptr<runner_slot>> retired_;  // removed by a reload, jobs still running
    std::list<std::shared_ptr<waiting_job>> waiting_;
    std::map<std::int64_t, std::shared_ptr<job_control>> jobs_;
    std::int64_t running_total_ = 0;
    std::int64_t waiting_total_ = 0;
    std::int64_t finished_jobs_ = 0;
    int stray_updates_ = 0;
    std::filesystem::path spool_dir_;
    // Backoff jitter for every poller and delivery: one generator (2.5 KiB of state) rather
    // than one in each coroutine frame, which lives as long as the poller.
    std::mt19937_64 rng_{std::random_device{}()};
    std::set<std::int64_t> delivering_;
    std::map<std::int64_t, spool::stored> written_;  // written ahead, the job still sending
    bool closed_ = false;
    int pollers_ = 0;
    bool stopping_ = false;
    bool terminating_ = false;
};

}  // namespace

int run_daemon(daemon_options options) {
    // A job's output pipe closing must not kill the daemon.
    ::signal(SIGPIPE, SIG_IGN);
    daemon d(std::move(options));
    return d.run();
}

}  // namespace kiln
