#include "runner/job.hpp"

#include <signal.h>
#include <unistd.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <map>
#include <optional>

#include "executors/docker/docker_executor.hpp"
#include "executors/docker/docker_rules.hpp"
#include "executors/shell/shell_executor.hpp"
#include "executors/shell/script_builder.hpp"
#include "runner/artifacts/artifact_stages.hpp"
#include "runner/artifacts/signing.hpp"
#include "runner/cache/cache_stages.hpp"
#include "runner/gitlab/tokens.hpp"
#include "runner/trace/trace_buffer.hpp"
#include "runner/trace/trace_streamer.hpp"
#include "runner/util/blocking.hpp"
#include "runner/util/logging.hpp"
#include "runner/version.hpp"


namespace kiln {
namespace {

namespace asio = boost::asio;
using namespace std::chrono_literals;
constexpr auto use_tuple = asio::as_tuple(asio::use_awaitable);

// GitLab's log colours.
constexpr std::string_view ansi_reset = "\x1b[0;m";
constexpr std::string_view ansi_bold_green = "\x1b[32;1m";
constexpr std::string_view ansi_bold_red = "\x1b[31;1m";
constexpr std::string_view ansi_bold_cyan = "\x1b[36;1m";
constexpr std::string_view ansi_bold_yellow = "\x1b[33;1m";
constexpr std::string_view erase_line = "\x1b[0K";

std::string go_duration(std::int64_t seconds) {
    // gitlab-runner prints Go durations: 1h0m0s, 5m0s, 30s.
    std::int64_t h = seconds / 3600;
    std::int64_t m = (seconds % 3600) / 60;
    std::int64_t s = seconds % 60;
    if (h > 0) {
        return std::to_string(h) + "h" + std::to_string(m) + "m" + std::to_string(s) + "s";
    }
    if (m > 0) {
        return std::to_string(m) + "m" + std::to_string(s) + "s";
    }
    return std::to_string(s) + "s";
}

std::string milliseconds_text(std::chrono::nanoseconds d) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.1f", static_cast<double>(d.count()) / 1e6);
    return buf;
}

std::string host_name() {
    char buf[256] = {};
    return ::gethostname(buf, sizeof buf - 1) == 0 ? std::string(buf) : std::string("localhost");
}

// Go's strconv.ParseBool, which gitlab-runner uses for feature flags.
std::optional<bool> parse_go_bool(std::string_view v) {
    for (std::string_view t : {"1", "t", "T", "TRUE", "true", "True"}) {
        if (v == t) {
            return true;
        }
    }
    for (std::string_view f : {"0", "f", "F", "FALSE", "false", "False"}) {
        if (v == f) {
            return false;
        }
    }
    return std::nullopt;
}

// gitlab-runner's IsFeatureFlagOn: the job's variable, else [runners.feature_flags], else off.
bool feature_flag(const gitlab::job_spec& job, const config::runner_entry& runner,
                  const std::string& name) {
    if (const auto* v = gitlab::find_variable(job.variables, name)) {
        if (auto on = parse_go_bool(v->value)) {
            return *on;
        }
    }
    const auto it = runner.feature_flags.find(name);
    return it != runner.feature_flags.end() && it->second;
}

enum class stop_reason { none, graceful_cancel, abort, timeout };

class job_run {
public:
    job_run(asio::any_io_executor ex, job_context ctx, gitlab::job_spec job,
            std::shared_ptr<job_control> control)
        : ex_(ex), ctx_(ctx), job_(std::move(job)), control_(std::move(control)),
          buffer_(trace_limit(ctx.runner), secrets(job_), trace_settings(job_, ctx)),
          streamer_(ex, ctx.api, job_.id, job_.token, buffer_), deadline_timer_(ex),
          kill_timer_(ex), host_(ex, ctx.runner.shell), stages_exec_(&host_) {
        if (ctx_.runner.executor == "docker") {
            docker_ = std::make_unique<executors::docker::docker_executor>(
                ex, ctx_.runner.docker.value_or(config::docker_settings{}));
            stages_exec_ = docker_.get();
        }
    }

    asio::awaitable<job_outcome> run();

private:
    static std::size_t trace_limit(const config::runner_entry& r) {
        return r.output_limit > 0 ? static_cast<std::size_t>(r.output_limit) * 1024
                                  : trace::default_limit;
    }
    static trace::trace_options trace_settings(const gitlab::job_spec& job,
                                               const job_context& ctx) {
        const auto& runner = ctx.runner;
        trace::trace_options o;
        o.spool_dir = ctx.trace_dir;
        o.token_prefixes = job.features.token_mask_prefixes;
        const auto* ff = gitlab::find_variable(job.variables, "FF_MASK_ALL_DEFAULT_TOKENS");
        o.mask_all_default_tokens = ff == nullptr || ff->value != "false";
        o.timestamps = feature_flag(job, runner, "FF_TIMESTAMPS");
        return o;
    }
    static std::vector<std::string> secrets(const gitlab::job_spec& job) {
        std::vector<std::string> s{job.token};
        for (const auto& v : job.variables) {
            if (v.masked) {
                s.push_back(v.value);
            }
        }
        return s;
    }

    void out(std::string_view text) { buffer_.write(text); }
    void line(std::string_view color, std::string_view text) {
        std::string s(erase_line);
        s += color;
        s += text;
        s += ansi_reset;
        s += "\n";
        out(s);
    }
    void section_start(const std::string& name, std::string_view description) {
        control_->stage = name;
        if (job_.features.trace_sections) {
            out("section_start:" + std::to_string(std::time(nullptr)) + ":" + name + "\r" +
                std::string(erase_line));
        }
        line(ansi_bold_cyan, description);
    }
    void section_end(const std::string& name) {
        if (job_.features.trace_sections) {
            out("section_end:" + std::to_string(std::time(nullptr)) + ":" + name + "\r" +
                std::string(erase_line));
        }
    }

    std::string variable(std::string_view key) const {
        const auto* v = gitlab::find_variable(job_.variables, key);
        return v != nullptr ? v->value : std::string();
    }

    void prepare_environment();
    asio::awaitable<executors::stage_result> run_stage(executors::executor& exec,
                                                       const std::string& name,
                                                       const std::string& script);
    std::string git_script() const;
    void stop_current(stop_reason why);
    void on_remote_cancel(trace::remote_cancel c);
    asio::awaitable<void> stages();
    asio::awaitable<executors::docker::prepare_result> prepare_docker();
    asio::awaitable<void> watch_deadline();
    asio::awaitable<bool> send_final_state();
    // Runs on the blocking pool while the job waits for it; the buffer is closed by then.
    std::function<void(const std::filesystem::path&)> save_trace() {
        return [this](const std::filesystem::path& p) { buffer_.save_as(p); };
    }
    artifacts::stage_context artifact_context();
    cache::stage_context cache_context() {
        return {&ctx_.runner, &job_, &env_, project_dir_, [this](std::string_view s) { out(s); }};
    }

    asio::any_io_executor ex_;
    job_context ctx_;
    gitlab::job_spec job_;
    std::shared_ptr<job_control> control_;
    trace::trace_buffer buffer_;
    trace::trace_streamer streamer_;
    asio::steady_timer deadline_timer_;
    asio::steady_timer kill_timer_;

    std::filesystem::path builds_dir_;
    std::filesystem::path project_dir_;
    std::filesystem::path tmp_dir_;
    std::vector<std::pair<std::string, std::string>> env_;  // job environment, in order
    std::optional<artifacts::runner_keys> signing_;  // [runners.signing], read when the job starts
    // Sources are fetched on this host; user stages run in the job's executor.
    executors::shell_executor host_;
    std::unique_ptr<executors::docker::docker_executor> docker_;
    executors::executor* stages_exec_;
    executors::executor* running_ = nullptr;
    bool in_user_script_ = false;
    stop_reason stop_ = stop_reason::none;
    job_outcome outcome_;
    bool finished_ = false;
    const std::chrono::steady_clock::time_point started_ = std::chrono::steady_clock::now();
};

void job_run::prepare_environment() {
    const auto& r = ctx_.runner;
    const auto short_token = gitlab::short_token(r.token);
    builds_dir_ = r.builds_dir.empty() ? std::filesystem::current_path() / "builds"
                                       : std::filesystem::path(r.builds_dir);
    std::string project_path = job_.info.project_full_path;
    if (project_path.empty()) {
        project_path = variable("CI_PROJECT_PATH");
    }
    if (project_path.empty()) {
        project_path = "project-" + std::to_string(job_.info.project_id);
    }
    // A path from the payload must stay inside builds_dir.
    std::filesystem::path rel;
    for (const auto& part : std::filesystem::path(project_path)) {
        if (part == ".." || part == "." || part.empty() || part.string() == "/") {
            continue;
        }
        rel /= part;
    }
    project_dir_ = builds_dir_ / short_token / std::to_string(ctx_.concurrent_id) / rel;
    tmp_dir_ = project_dir_;
    tmp_dir_ += ".tmp";

    // The CA that verifies GitLab, for the job's own git and API calls (a file variable, as
    // gitlab-runner provides it).
    if (!r.tls_ca_file.empty() && gitlab::find_variable(job_.variables, "CI_SERVER_TLS_CA_FILE") == nullptr) {
        std::ifstream in(r.tls_ca_file);
        std::string pem((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
        if (!pem.empty()) {
            gitlab::job_variable v;
            v.key = "CI_SERVER_TLS_CA_FILE";
            v.value = std::move(pem);
            v.file = true;
            job_.variables.push_back(std::move(v));
        }
    }

    std::map<std::string, std::size_t> index;
    auto set = [&](const std::string& k, const std::string& v) {
        if (auto it = index.find(k); it != index.end()) {
            env_[it->second].second = v;
        } else {
            index[k] = env_.size();
            env_.emplace_back(k, v);
        }
    };
    for (const auto& e : r.environment) {
        auto eq = e.find('=');
        if (eq != std::string::npos && eq > 0) {
            set(e.substr(0, eq), e.substr(eq + 1));
        }
    }
    set("CI_BUILDS_DIR", builds_dir_.string());
    set("CI_PROJECT_DIR", project_dir_.string());
    set("CI_SERVER", "yes");
    set("CI_SHARED_ENVIRONMENT", "true");
    set("CI_JOB_STATUS", "running");
    set("CI_JOB_TIMEOUT", std::to_string(job_.runner.timeout));
    set("CI_RUNNER_SHORT_TOKEN", short_token);
    set("CI_RUNNER_VERSION", version_string());
    set("CI_RUNNER_REVISION", revision_string());
    set("CI_RUNNER_EXECUTABLE_ARCH", std::string(gitlab::build_platform()) + "/" +
                                         std::string(gitlab::build_architecture()));
    set("CI_CONCURRENT_ID", std::to_string(ctx_.concurrent_id));
    set("CI_CONCURRENT_PROJECT_ID", std::to_string(ctx_.concurrent_id));
    set("RUNNER_TEMP_PROJECT_DIR", tmp_dir_.string());
    for (const auto& v : job_.variables) {
        if (v.key.empty()) {
            continue;
        }
        if (v.file) {
            // File variables: the value goes to a file, the variable holds its path.
            set(v.key, (tmp_dir_ / v.key).string());
        } else {
            set(v.key, v.value);
        }
    }
}

asio::awaitable<executors::stage_result> job_run::run_stage(executors::executor& exec,
                                                             const std::string& name,
                                                             const std::string& script) {
    executors::stage_request req;
    req.name = name;
    req.script = script;
    req.env = env_;
    std::error_code ec;
    req.working_directory = std::filesystem::exists(project_dir_, ec) ? project_dir_ : builds_dir_;
    req.scratch_directory = tmp_dir_;
    running_ = &exec;
    req.separate_stderr = buffer_.timestamps();  // stderr lines are marked E
    const auto from = [](executors::output_stream stream) {
        return stream == executors::output_stream::stderr_stream ? trace::source::job_stderr
                                                                 : trace::source::job_stdout;
    };
    executors::output_sink sink(
        [this, from](executors::output_stream stream, std::string_view s) {
            buffer_.write(from(stream), s);
        });
    // A fast job's output is read straight into the trace's spool (shell executor).
    sink.place_with({[this, from](executors::output_stream stream, std::size_t max) {
                         return buffer_.prepare(from(stream), max);
                     },
                     [this, from](executors::output_stream stream, std::size_t n) {
                         buffer_.placed(from(stream), n);
                     }});
    auto result = co_await exec.run_stage(std::move(req), std::move(sink));
    buffer_.end_job_output();
    running_ = nullptr;
    kill_timer_.cancel();
    co_return result;
}

void job_run::stop_current(stop_reason why) {
    if (stop_ == stop_reason::none || why == stop_reason::abort) {
        stop_ = why;
    }
    if (running_ == nullptr) {
        return;
    }
    if (why == stop_reason::abort) {
        running_->signal_stage(SIGKILL);
        return;
    }
    // A graceful cancel or timeout stops only the user's script, with time to clean up.
    if (why == stop_reason::graceful_cancel && !in_user_script_) {
        return;
    }
    running_->signal_stage(SIGTERM);
    kill_timer_.expires_after(5s);
    kill_timer_.async_wait([this](boost::system::error_code ec) {
        if (!ec && running_ != nullptr) {
            running_->signal_stage(SIGKILL);
        }
    });
}

void job_run::on_remote_cancel(trace::remote_cancel c) {
    if (c == trace::remote_cancel::abort) {
        log::warn("job aborted by GitLab", {{"job", job_.id}});
        stop_current(stop_reason::abort);
    } else if (c == trace::remote_cancel::graceful) {
        log::info("job canceled by GitLab; running after_script", {{"job", job_.id}});
        stop_current(stop_reason::graceful_cancel);
    }
}

std::string job_run::git_script() const {
    using executors::shell_quote;
    std::string strategy = variable("GIT_STRATEGY");
    if (strategy.empty()) {
        strategy = job_.allow_git_fetch ? "fetch" : "clone";
    }
    std::string s = "set -e\n";
    const auto dir = shell_quote(project_dir_.string());
    if (strategy == "none") {
        return s + "mkdir -p " + dir + "\necho 'Skipping Git repository setup'\n";
    }
    if (strategy == "empty") {
        return s + "rm -rf " + dir + "\nmkdir -p " + dir +
               "\necho 'Skipping Git repository setup and creating an empty build directory'\n";
    }
    const auto url = shell_quote(job_.git.repo_url);
    std::string git = "git";
    if (!ctx_.runner.tls_ca_file.empty()) {
        // The CA that verifies GitLab also verifies its git endpoint.
        s += "export GIT_SSL_CAINFO=" + shell_quote(ctx_.runner.tls_ca_file) + "\n";
    }
    if (strategy == "clone") {
        s += "rm -rf " + dir + "\n";
    }
    s += "if [ -d " + dir + "/.git ]; then\n";
    s += "  echo 'Fetching changes...'\n  cd " + dir + "\n  git remote set-url origin " + url +
         "\n";
    s += "else\n";
    s += "  echo 'Initialized empty Git repository'\n  mkdir -p " + dir + "\n  cd " + dir +
         "\n  git init -q\n  git remote add origin " + url + "\n";
    s += "fi\n";
    if (!ctx_.runner.tls_ca_file.empty()) {
        // The job's own git calls in this checkout trust GitLab's CA too.
        s += "git config http.sslCAInfo " + shell_quote(ctx_.runner.tls_ca_file) + "\n";
    }
    std::string depth;
    if (job_.git.depth > 0) {
        depth = " --depth " + std::to_string(job_.git.depth);
        s += "echo 'Fetching changes with git depth set to " + std::to_string(job_.git.depth) +
             "...'\n";
    }
    std::string refspecs;
    for (const auto& r : job_.git.refspecs) {
        refspecs += " " + shell_quote(r);
    }
    if (refspecs.empty()) {
        refspecs = " " + shell_quote(job_.git.sha);
    }
    std::string fetch_flags = variable("GIT_FETCH_EXTRA_FLAGS");
    if (fetch_flags.empty()) {
        fetch_flags = "--prune --quiet";
    }
    s += git + " fetch " + fetch_flags + depth + " origin" + refspecs + "\n";
    const auto sha = job_.git.sha;
    if (variable("GIT_CHECKOUT") != "false") {
        s += "echo " + shell_quote("Checking out " + sha.substr(0, 8) + " as detached HEAD (ref is " +
                                   job_.git.ref + ")...") +
             "\n";
        s += "git -c advice.detachedHead=false checkout -f -q " + shell_quote(sha) + "\n";
        std::string clean = variable("GIT_CLEAN_FLAGS");
        if (clean.empty()) {
            clean = "-ffdx";
        }
        if (clean != "none") {
            s += "git clean " + clean + "\n";
        }
    }
    const auto submodules = variable("GIT_SUBMODULE_STRATEGY");
    if (submodules == "normal" || submodules == "recursive") {
        const std::string recursive = submodules == "recursive" ? " --recursive" : "";
        s += "echo 'Updating Git submodules...'\n";
        s += "git submodule sync" + recursive + "\n";
        s += "git submodule update --init" + recursive + " " +
             variable("GIT_SUBMODULE_UPDATE_FLAGS") + "\n";
    } else {
        s += "echo 'Skipping Git submodules setup'\n";
    }
    return s;
}

asio::awaitable<void> job_run::watch_deadline() {
    auto timeout = job_.runner.timeout > 0 ? job_.runner.timeout : gitlab::default_job_timeout_seconds;
    deadline_timer_.expires_after(std::chrono::seconds(timeout));
    auto [ec] = co_await deadline_timer_.async_wait(use_tuple);
    if (!ec && !finished_) {
        log::warn("job timed out", {{"job", job_.id}});
        stop_current(stop_reason::timeout);
    }
}

asio::awaitable<void> job_run::stages() {
    const auto& r = ctx_.runner;
    const std::string executor_name = docker_ ? "docker" : "shell";
    line("", std::string("Running with kiln ") + version_string() + " (" + revision_string() + ")");
    line("", "  on " + r.name + " " + gitlab::short_token(r.token) + ", system ID: " +
                 ctx_.system_id);

    int exit_code = 0;
    std::string failure;  // failure_reason when the job failed
    std::string failure_message;

    prepare_environment();
    section_start("prepare_executor", "Preparing the \"" + executor_name + "\" executor");
    if (docker_) {
        auto prepared = co_await prepare_docker();
        if (!prepared.failure_reason.empty()) {
            failure = prepared.failure_reason;
            failure_message = prepared.message;
        }
    } else {
        out(std::string("Using Shell (") + (r.shell == "sh" ? "sh" : "bash") + ") executor...\n");
    }
    section_end("prepare_executor");

    section_start("prepare_script", "Preparing environment");
    out("Running on " + host_name() + "...\n");
    section_end("prepare_script");

    if (stop_ == stop_reason::none && failure.empty()) {
        section_start("get_sources", "Getting source from Git repository");
        std::string script;
        if (!r.pre_get_sources_script.empty()) {
            script += r.pre_get_sources_script + "\n";
        }
        script += git_script();
        auto g = co_await run_stage(host_, "get_sources", script);
        section_end("get_sources");
        if (!g.system_error.empty()) {
            failure = "runner_system_failure";
            failure_message = "could not fetch the sources: " + g.system_error;
        } else if (g.exit_code != 0 && stop_ == stop_reason::none) {
            failure = "script_failure";
            exit_code = g.exit_code;
            failure_message = "could not fetch the sources (git exited with " +
                              std::to_string(g.exit_code) + ")";
        }
    }

    if (failure.empty() && stop_ == stop_reason::none && cache::restore_needed(job_)) {
        section_start("restore_cache", "Restoring cache");
        auto cctx = cache_context();
        auto err = co_await cache::restore(std::move(cctx));
        section_end("restore_cache");
        if (!err.empty()) {
            failure = "script_failure";
            failure_message = err;
        }
    }

    if (stop_ == stop_reason::none && failure.empty() && r.signing) {
        // Read per job, so a key rotated on disk needs no restart.
        auto settings = *r.signing;
        auto load = [settings] { return artifacts::load_runner_keys(settings); };
        signing_ = co_await util::run_blocking(std::move(load));
        if (!signing_->error.empty()) {
            failure = "runner_system_failure";
            failure_message = signing_->error + " ([runners.signing] in the config)";
        }
    }

    if (stop_ == stop_reason::none && failure.empty()) {
        auto actx = artifact_context();
        auto downloaded = co_await artifacts::download_artifacts_stage(std::move(actx));
        if (!downloaded.ok) {
            failure = "script_failure";
            failure_message = downloaded.message;
        }
    }

    // File variables exist on disk for the user's stages only.
    std::error_code ec;
    for (const auto& v : job_.variables) {
        if (v.file && !v.key.empty()) {
            std::ofstream f(tmp_dir_ / v.key, std::ios::trunc);
            f << v.value;
            std::filesystem::permissions(tmp_dir_ / v.key, std::filesystem::perms::owner_read |
                                                               std::filesystem::perms::owner_write,
                                         ec);
        }
    }

    const gitlab::job_step* after_script = nullptr;
    for (const auto& step : job_.steps) {
        if (step.name == "after_script") {
            after_script = &step;
            continue;
        }
        if (!failure.empty() || stop_ != stop_reason::none) {
            break;
        }
        if (!gitlab::when_on_success(step.when)) {
            continue;
        }
        const std::string section = step.name == "script" ? "step_script" : "step_" + step.name;
        section_start(section, "Executing \"" + section + "\" stage of the job script");
        executors::stage_script st;
        st.working_directory = project_dir_.string();
        if (step.name == "script" && !r.pre_build_script.empty()) {
            st.commands.push_back(r.pre_build_script);
        }
        for (const auto& c : step.script) {
            st.commands.push_back(c);
        }
        if (step.name == "script" && !r.post_build_script.empty()) {
            st.commands.push_back(r.post_build_script);
        }
        in_user_script_ = true;
        auto res = co_await run_stage(*stages_exec_, section, executors::build_stage_script(st));
        in_user_script_ = false;
        section_end(section);
        if (res.out_of_memory && res.system_error.empty()) {
            // gitlab-runner only shows "exit code 137"; say what happened, with the limit.
            const auto limit = docker_ ? docker_->memory_limit() : 0;
            line(ansi_bold_red, "ERROR: the job's container ran out of memory (" +
                                    (limit > 0 ? "limit " + executors::docker::human_size(limit)
                                               : std::string("no memory limit set")) +
                                    ") and was killed");
            log::warn("job ran out of memory",
                      {{"job", job_.id},
                       {"oom_kills_total",
                        static_cast<unsigned long>(executors::docker::oom_kills_total())}});
            if (stop_ == stop_reason::none) {
                exit_code = 137;
                failure = "script_failure";
                failure_message = "exit code 137";
            }
        } else if (!res.system_error.empty()) {
            failure = "runner_system_failure";
            failure_message = res.system_error;
        } else if (stop_ == stop_reason::none && res.exit_code != 0) {
            exit_code = res.exit_code;
            if (!step.allow_failure) {
                failure = "script_failure";
                failure_message = "exit code " + std::to_string(exit_code);
            }
        }
    }

    const char* job_status = stop_ == stop_reason::graceful_cancel ? "canceled"
                             : stop_ == stop_reason::timeout       ? "timedout"
                             : !failure.empty()                    ? "failed"
                                                                   : "success";
    if (after_script != nullptr && !after_script->script.empty() && stop_ != stop_reason::abort) {
        section_start("after_script", "Running after_script");
        for (auto& [k, v] : env_) {
            if (k == "CI_JOB_STATUS") {
                v = job_status;
            }
        }
        executors::stage_script st;
        st.working_directory = project_dir_.string();
        st.commands = after_script->script;
        auto res =
            co_await run_stage(*stages_exec_, "after_script", executors::build_stage_script(st));
        section_end("after_script");
        if (res.exit_code != 0 && res.system_error.empty()) {
            line(ansi_bold_yellow, "WARNING: after_script failed, but job will continue unaffected: "
                                   "exit code " + std::to_string(res.exit_code));
        }
    }

    if (const bool ok = failure.empty() && stop_ == stop_reason::none;
        stop_ != stop_reason::abort && cache::archive_needed(job_, ok)) {
        const std::string section = ok ? "archive_cache" : "archive_cache_on_failure";
        section_start(section, ok ? "Saving cache for successful job" : "Saving cache for failed job");
        auto cctx = cache_context();
        auto err = co_await cache::archive(std::move(cctx), ok);
        section_end(section);
        if (!err.empty() && failure.empty()) {
            failure = "script_failure";
            failure_message = err;
        }
    }

    if (stop_ != stop_reason::abort) {
        // gitlab-runner: a graceful cancel or a timeout uploads the on_failure artifacts.
        const bool succeeded = failure.empty() && stop_ == stop_reason::none;
        auto actx = artifact_context();
        auto uploaded = co_await artifacts::upload_artifacts_stage(std::move(actx), succeeded);
        if (!uploaded.ok && succeeded) {
            failure = "script_failure";
            failure_message = uploaded.message;
        }
    }

    section_start("cleanup_file_variables", "Cleaning up project directory and file based variables");
    if (docker_) {
        // First: it gives back what the containers wrote (when kiln is not root).
        co_await docker_->cleanup();
    }
    std::filesystem::remove_all(tmp_dir_, ec);
    section_end("cleanup_file_variables");

    if (stop_ == stop_reason::timeout) {
        auto t = job_.runner.timeout > 0 ? job_.runner.timeout : gitlab::default_job_timeout_seconds;
        failure = "job_execution_timeout";
        failure_message = "execution took longer than " + go_duration(t) + " seconds";
    } else if (stop_ == stop_reason::graceful_cancel || stop_ == stop_reason::abort) {
        failure = "job_canceled";
        failure_message = "canceled";
        exit_code = 0;
    }
    if (failure.empty()) {
        outcome_.state = gitlab::job_state::success;
        line(ansi_bold_green, "Job succeeded");
    } else {
        outcome_.state = gitlab::job_state::failed;
        outcome_.failure_reason = failure;
        outcome_.exit_code = exit_code;
        line(ansi_bold_red, (failure == "runner_system_failure" ? "ERROR: Job failed (system failure): "
                                                                : "ERROR: Job failed: ") +
                                failure_message);
    }
    finished_ = true;
    deadline_timer_.cancel();
    streamer_.stop();
}

artifacts::stage_context job_run::artifact_context() {
    artifacts::stage_context c{
        ctx_.api,
        job_,
        project_dir_,
        tmp_dir_,
        env_,
        [this](std::string_view s) { out(s); },
        [this](const std::string& name, std::string_view d) { section_start(name, d); },
        [this](const std::string& name) { section_end(name); },
    };
    if (!signing_ || !signing_->error.empty()) {
        return c;
    }
    if (signing_->signer) {
        auto signer = *signing_->signer;
        auto facts = artifacts::facts_for_job(job_, ctx_.runner.token);
        const bool provenance = signing_->provenance;
        c.sign_zip = [signer, facts, provenance](std::vector<artifacts::archive_entry>& entries) {
            artifacts::drop_signing_entries(entries);
            return artifacts::make_signing_trailer(signer, facts, entries, provenance);
        };
        c.signed_note = "Signed with key " + signer.id() + " (" +
                        std::string(artifacts::algorithm_name(signer.algorithm())) +
                        "): .kiln/manifest.json" + (provenance ? ", .kiln/provenance.json" : "");
    }
    if (!signing_->verifiers.empty()) {
        auto keys = signing_->verifiers;
        c.verify_download = [keys](const std::filesystem::path& archive,
                                   const gitlab::job_dependency& dep) {
            auto r = artifacts::verify_archive(archive, keys);
            artifacts::stage_context::download_check check;
            check.ok = r.ok;
            if (!r.ok) {
                check.message = r.error;
                return check;
            }
            const auto& m = *r.signed_manifest;
            check.message = "Verified the artifacts of " + dep.name + " (" +
                            std::to_string(dep.id) + "): " + std::to_string(r.files) +
                            " files signed by key " + r.key_id + ", job " +
                            std::to_string(m.facts.job_id) + ", commit " + m.facts.commit_sha;
            return check;
        };
    }
    return c;
}

asio::awaitable<executors::docker::prepare_result> job_run::prepare_docker() {
    executors::docker::job_description d;
    d.job_id = job_.id;
    d.project_id = job_.info.project_id;
    d.pipeline_id = std::atoll(variable("CI_PIPELINE_ID").c_str());
    d.runner_short_token = gitlab::short_token(ctx_.runner.token);
    d.concurrent_id = ctx_.concurrent_id;
    auto convert = [](const gitlab::image_spec& i) {
        executors::docker::image_request r;
        r.name = i.name;
        r.alias = i.alias;
        r.entrypoint = i.entrypoint;
        r.command = i.command;
        r.pull_policy = i.pull_policy;
        r.user = i.executor_opts.docker_user;
        for (const auto& v : i.variables) {
            r.variables.emplace_back(v.key, v.value);
        }
        for (const auto& p : i.ports) {
            const bool tcp = p.protocol.empty() || p.protocol == "tcp" || p.protocol == "http" ||
                             p.protocol == "https";
            if (p.number > 0 && tcp) {
                r.ports.push_back(static_cast<int>(p.number));
            }
        }
        return r;
    };
    if (job_.image) {
        d.image = convert(*job_.image);
    }
    for (const auto& svc : job_.services) {
        d.services.push_back(convert(svc));
    }
    for (const auto& c : job_.credentials) {
        if (c.type == "registry") {
            d.credentials.push_back({c.url, c.username, c.password});
        }
    }
    d.env = env_;
    d.builds_dir = builds_dir_;
    co_return co_await docker_->prepare(std::move(d), [this](std::string_view s) { out(s); });
}

asio::awaitable<bool> job_run::send_final_state() {
    gitlab::job_update update;
    update.token = job_.token;
    update.state = outcome_.state;
    if (outcome_.state == gitlab::job_state::failed) {
        update.failure_reason =
            gitlab::resolve_failure_reason(outcome_.failure_reason, job_.features.failure_reasons);
        update.exit_code = outcome_.exit_code;
    }
    update.checksum = buffer_.checksum();
    update.bytesize = static_cast<std::int64_t>(buffer_.size());
    outcome_.trace_bytes = buffer_.size();

    // Write-ahead: state and trace are on disk before GitLab is asked, so a kiln killed (or a
    // host losing power) before GitLab confirmed them delivers them at its next start.
    bool spooled = false;
    if (ctx_.spool_write) {
        spooled = co_await ctx_.spool_write(job_.id, update, save_trace());
    }

    // GitLab itself stops waiting for the trace after 5 minutes.
    const auto give_up = std::chrono::steady_clock::now() + 5min;
    int backoff = 0;
    while (std::chrono::steady_clock::now() < give_up) {
        co_await streamer_.flush();
        auto r = co_await ctx_.api.update_job(job_.id, update);
        std::chrono::milliseconds wait{};
        bool failed = !r.reached();
        if (r.reached()) {
            switch (r.value.status) {
                case gitlab::update_status::succeeded:
                case gitlab::update_status::abort:
                    if (spooled) {
                        co_await ctx_.spool_remove(job_.id);
                    }
                    co_return true;
                case gitlab::update_status::accepted:
                    wait = r.value.update_interval.value_or(1s);
                    break;
                case gitlab::update_status::trace_validation_failed:
                    streamer_.restart_from_zero();
                    break;
                case gitlab::update_status::failed:
                    failed = true;
                    wait = std::min<std::chrono::milliseconds>(1s * (1 << std::min(backoff++, 6)), 60s);
                    break;
            }
        } else {
            log::warn("sending the final job state failed: " + r.transport.message,
                      {{"job", job_.id}});
            wait = std::min<std::chrono::milliseconds>(1s * (1 << std::min(backoff++, 6)), 60s);
        }
        // GitLab is down or failing: the spool delivers the state when it is back, even
        // after a restart, and this job's slot is free meanwhile.
        if (failed && ctx_.spool_write) {
            if (!spooled) {  // the write-ahead failed: one more try
                spooled = co_await ctx_.spool_write(job_.id, update, save_trace());
            }
            if (spooled) {
                ctx_.spool_hand_over(job_.id);
                co_return false;
            }
        }
        asio::steady_timer t(ex_, wait);
        co_await t.async_wait(use_tuple);
    }
    log::error("GitLab did not take the job's final state within 5 minutes", {{"job", job_.id}});
    if (spooled) {  // GitLab applies the state by itself after that time
        co_await ctx_.spool_remove(job_.id);
    }
    co_return false;
}

asio::awaitable<job_outcome> job_run::run() {
    using namespace asio::experimental::awaitable_operators;
    // Accept the job (two-phase commit confirmation, or a harmless touch).
    gitlab::job_update accept;
    accept.token = job_.token;
    accept.state = gitlab::job_state::running;
    auto a = co_await ctx_.api.update_job(job_.id, accept);
    if (a.reached() && a.value.status == gitlab::update_status::abort) {
        log::warn("GitLab withdrew the job before it started", {{"job", job_.id}});
        co_return outcome_;
    }
    outcome_.accepted = true;
    if (a.reached() && a.value.update_interval) {
        streamer_.set_update_interval(*a.value.update_interval);
    }
    streamer_.on_cancel([this](trace::remote_cancel c) { on_remote_cancel(c); });
    control_->set_handler([this](bool graceful) {
        stop_current(graceful ? stop_reason::graceful_cancel : stop_reason::abort);
    });
    if (a.reached() && a.value.cancel_requested) {
        stop_ = stop_reason::graceful_cancel;
    }

    asio::co_spawn(ex_, watch_deadline(), asio::detached);
    std::exception_ptr failed;
    try {
        co_await (stages() && streamer_.pump());
    } catch (...) {
        failed = std::current_exception();
    }
    if (failed) {
        // Containers must not outlive a job that broke inside kiln either.
        if (docker_) {
            co_await docker_->cleanup();
        }
        std::rethrow_exception(failed);
    }
    control_->set_handler(nullptr);
    buffer_.close();
    outcome_.final_state_sent = co_await send_final_state();
    // duration: pickup to final update; engine: the part spent waiting on the Docker engine
    // (bench/docker_overhead.py reads both to show kiln's own share).
    const auto engine = docker_ ? docker_->engine_time() : std::chrono::nanoseconds{0};
    log::info(outcome_.state == gitlab::job_state::success ? "Job succeeded" : "Job failed",
              {{"job", job_.id},
               {"runner", gitlab::short_token(ctx_.runner.token)},
               {"failure_reason", outcome_.failure_reason},
               {"duration_ms", milliseconds_text(std::chrono::steady_clock::now() - started_)},
               {"engine_ms", docker_ ? milliseconds_text(engine) : std::string()}});
    co_return outcome_;
}

}  // namespace

asio::awaitable<job_outcome> run_job(job_context ctx, gitlab::job_spec job,
                                     std::shared_ptr<job_control> control) {
    auto ex = co_await asio::this_coro::executor;
    // Owned by this frame; the deadline watcher is cancelled before the frame ends.
    auto run = std::make_unique<job_run>(ex, ctx, std::move(job), std::move(control));
    auto outcome = co_await run->run();
    co_return outcome;
}

}  // namespace kiln
