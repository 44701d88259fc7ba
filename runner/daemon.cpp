#include "runner/daemon.hpp"

#include <signal.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <map>
#include <random>
#include <set>

#include "executors/docker/docker_executor.hpp"
#include "runner/gitlab/retry_policy.hpp"
#include "runner/gitlab/runner_info.hpp"
#include "runner/gitlab/tokens.hpp"
#include "runner/job.hpp"
#include "runner/system_id_state.hpp"
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

struct runner_slot {
    config::runner_entry entry;
    std::unique_ptr<gitlab::client> api;
    std::string last_update;
    std::int64_t running = 0;
    std::int64_t requesting = 0;  // job requests in flight
    std::set<int> concurrent_ids;
    std::string short_token;
};

class daemon {
public:
    explicit daemon(daemon_options o)
        : options_(std::move(o)), changed_(io_), stop_signal_(io_), shutdown_timer_(io_),
          trim_timer_(io_), signals_(io_, SIGINT, SIGTERM, SIGQUIT) {
        changed_.expires_at(asio::steady_timer::time_point::max());
        stop_signal_.expires_at(asio::steady_timer::time_point::max());
    }

    int run() {
        const auto& s = options_.settings;
        system_id_ = load_system_id(options_.config_path);
        try {
            persist_system_id(options_.config_path, system_id_);
        } catch (const std::exception& e) {
            log::warn(std::string("cannot save the system ID: ") + e.what());
        }
        for (const auto& r : s.runners) {
            if (r.executor != "shell" && r.executor != "docker") {
                log::warn("skipping runner: kiln runs only the shell and docker executors",
                          {{"runner", gitlab::short_token(r.token)}, {"executor", r.executor}});
                continue;
            }
            auto slot = std::make_unique<runner_slot>();
            slot->entry = r;
            slot->short_token = gitlab::short_token(r.token);
            gitlab::client_config cfg;
            cfg.url = r.url;
            cfg.tls = {r.tls_ca_file, r.tls_cert_file, r.tls_key_file};
            cfg.connection_max_age = s.connection_max_age;
            try {
                slot->api = std::make_unique<gitlab::client>(io_.get_executor(), cfg);
            } catch (const std::exception& e) {
                log::error(std::string("skipping runner: ") + e.what(),
                           {{"runner", slot->short_token}});
                continue;
            }
            gitlab::runner_info info;
            info.executor = r.executor;
            info.shell = r.shell.empty() ? "bash" : r.shell;
            info.features = r.executor == "docker" ? docker_features() : shell_features();
            if (r.executor == "docker") {
                remove_docker_leftovers(r);
            }
            slot->api->set_info(info);
            runners_.push_back(std::move(slot));
        }
        if (runners_.empty()) {
            log::error("no runner to run: register one with `kiln register`",
                       {{"config", options_.config_path.string()}});
            return 1;
        }
        log::info("Starting kiln", {{"runners", static_cast<long>(runners_.size())},
                                     {"concurrent", static_cast<long long>(s.concurrent)},
                                     {"config", options_.config_path.string()}});
        asio::co_spawn(io_, handle_signals(), asio::detached);
        for (auto& r : runners_) {
          // request_concurrency: how many job requests of this runner may be in flight at once.
          for (std::int64_t i = 0; i < std::max<std::int64_t>(1, r->entry.request_concurrency); ++i) {
            ++pollers_;
            asio::co_spawn(io_, poll(*r), [this, &r](std::exception_ptr e) {
                if (e) {
                    try {
                        std::rethrow_exception(e);
                    } catch (const std::exception& ex) {
                        log::error(std::string("polling stopped: ") + ex.what(),
                                   {{"runner", r->short_token}});
                    }
                }
                --pollers_;
                notify();
            });
          }
        }
        asio::co_spawn(io_, wait_until_done(), asio::detached);
        schedule_trim();
        io_.run();
        log::info("kiln stopped", {{"jobs", static_cast<long long>(finished_jobs_)}});
        return 0;
    }

private:
    void notify() { changed_.cancel(); }

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
        if (stopping_) {
            return;
        }
        log::info(why);
        stopping_ = true;
        stop_signal_.cancel();
        notify();
    }

    asio::awaitable<void> wait_until_done() {
        while (!(stopping_ && pollers_ == 0 && running_total_ == 0)) {
            co_await wait_changed();
        }
        signals_.cancel();
        shutdown_timer_.cancel();
        trim_timer_.cancel();
        for (auto& r : runners_) {
            r->api->close_idle();
        }
    }

    asio::awaitable<void> handle_signals() {
        for (;;) {
            auto [ec, sig] = co_await signals_.async_wait(use_tuple);
            if (ec) {
                co_return;
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

    // A request in flight may bring a job, so it holds a slot as gitlab-runner's workers do:
    // kiln never receives more jobs than `concurrent` and `limit` allow.
    bool has_capacity(const runner_slot& r) const {
        if (running_total_ + requesting_total_ >= options_.settings.concurrent) {
            return false;
        }
        return r.entry.limit <= 0 || r.running + r.requesting < r.entry.limit;
    }

    asio::awaitable<void> poll(runner_slot& r) {
        using namespace asio::experimental::awaitable_operators;
        std::mt19937_64 rng{std::random_device{}()};
        int errors = 0;
        int quick_204s = 0;
        while (!stopping_) {
            if (!has_capacity(r)) {
                co_await wait_changed();
                continue;
            }
            const auto started = std::chrono::steady_clock::now();
            const std::string sent_last_update = r.last_update;
            ++r.requesting;
            ++requesting_total_;
            auto raced = co_await (r.api->request_job(r.entry.token, system_id_.id, sent_last_update) ||
                                   stop_signal_.async_wait(use_tuple));
            --r.requesting;
            --requesting_total_;
            notify();
            if (raced.index() == 1 || stopping_) {
                break;
            }
            auto res = std::get<0>(std::move(raced));
            std::chrono::milliseconds wait{0};
            if (!res.reached()) {
                wait = gitlab::full_jitter_backoff(errors++, 1s, 60s,
                                                   std::uniform_real_distribution<>(0, 1)(rng));
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
                        start_job(r, std::move(*v.job));
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
                        wait = gitlab::full_jitter_backoff(errors++, 5s, 5min,
                                                           std::uniform_real_distribution<>(0, 1)(rng));
                        log::error("GitLab rejected the runner token (403): check the runner in "
                                   "GitLab or run `kiln verify`",
                                   {{"runner", r.short_token}});
                        break;
                    case gitlab::request_job_status::failed:
                        wait = gitlab::full_jitter_backoff(errors++, 1s, 60s,
                                                           std::uniform_real_distribution<>(0, 1)(rng));
                        log::warn("checking for jobs failed: HTTP " + std::to_string(v.http_status) +
                                      " " + v.message,
                                  {{"runner", r.short_token}});
                        break;
                }
            }
            if (wait.count() > 0) {
                asio::steady_timer t(io_, wait);
                co_await (t.async_wait(use_tuple) || stop_signal_.async_wait(use_tuple));
            }
        }
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

    void start_job(runner_slot& r, gitlab::job_spec job) {
        int cid = 0;
        while (r.concurrent_ids.count(cid) != 0) {
            ++cid;
        }
        r.concurrent_ids.insert(cid);
        ++r.running;
        ++running_total_;
        const auto id = job.id;
        log::info("Checking for jobs... received",
                  {{"job", id}, {"runner", r.short_token}, {"repo_url", job.git.repo_url.substr(job.git.repo_url.find('@') + 1)}});
        auto control = std::make_shared<job_control>();
        jobs_[id] = control;
        job_context ctx{r.entry, *r.api, system_id_.id, cid};
        asio::co_spawn(io_, run_job(ctx, std::move(job), control),
                       [this, &r, id, cid](std::exception_ptr e, job_outcome) {
                           if (e) {
                               try {
                                   std::rethrow_exception(e);
                               } catch (const std::exception& ex) {
                                   log::error(std::string("job failed inside kiln: ") + ex.what(),
                                              {{"job", id}, {"runner", r.short_token}});
                               }
                           }
                           jobs_.erase(id);
                           r.concurrent_ids.erase(cid);
                           --r.running;
                           --running_total_;
                           ++finished_jobs_;
                           if (options_.max_jobs > 0 && finished_jobs_ >= options_.max_jobs) {
                               begin_stop("finished the requested number of jobs");
                           }
                           if (running_total_ == 0) {
                               schedule_trim();
                           }
                           notify();
                       });
        if (options_.max_jobs > 0 && finished_jobs_ + running_total_ >= options_.max_jobs) {
            // Take no more jobs than asked for.
            stopping_ = true;
            stop_signal_.cancel();
            notify();
        }
    }

    daemon_options options_;
    asio::io_context io_;
    asio::steady_timer changed_;
    asio::steady_timer stop_signal_;
    asio::steady_timer shutdown_timer_;
    asio::steady_timer trim_timer_;
    asio::signal_set signals_;
    system_id_state system_id_;
    std::vector<std::unique_ptr<runner_slot>> runners_;
    std::map<std::int64_t, std::shared_ptr<job_control>> jobs_;
    std::int64_t running_total_ = 0;
    std::int64_t requesting_total_ = 0;
    std::int64_t finished_jobs_ = 0;
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
