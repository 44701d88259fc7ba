// kiln register: verify (glrt- tokens) or register (registration tokens) with GitLab, then add a
// [[runners]] entry to config.toml. Nothing is written unless GitLab accepted the runner, and a
// runner GitLab created is deleted again when the config cannot be saved.

#include <unistd.h>

#include <boost/asio/this_coro.hpp>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <set>

#include "config/paths.hpp"
#include "config/writer.hpp"
#include "runner/commands/common.hpp"
#include "runner/gitlab/tokens.hpp"
#include "runner/go_module.hpp"
#include "runner/system_id_state.hpp"
#include "runner/util/logging.hpp"

namespace kiln::commands {
namespace {

std::string ask(const std::string& prompt, const std::string& fallback) {
    std::cout << prompt;
    if (!fallback.empty()) {
        std::cout << " [" << fallback << "]";
    }
    std::cout << ":\n" << std::flush;
    std::string line;
    if (!std::getline(std::cin, line)) {
        throw command_error("no answer on standard input; use --non-interactive with flags");
    }
    while (!line.empty() && (line.back() == ' ' || line.back() == '\r')) {
        line.pop_back();
    }
    return line.empty() ? fallback : line;
}

std::string host_name() {
    char buf[256] = {};
    if (::gethostname(buf, sizeof buf - 1) != 0) {
        return "kiln";
    }
    return buf;
}

std::vector<std::string> split_tags(const std::string& list) {
    std::vector<std::string> tags;
    std::string cur;
    for (char c : list + ",") {
        if (c == ',') {
            auto b = cur.find_first_not_of(' ');
            auto e = cur.find_last_not_of(' ');
            if (b != std::string::npos) {
                tags.push_back(cur.substr(b, e - b + 1));
            }
            cur.clear();
        } else {
            cur += c;
        }
    }
    return tags;
}

void fill_interactively(register_options& o) {
    if (o.url.empty()) {
        o.url = ask("Enter the GitLab instance URL (for example, https://gitlab.com/)", "");
    }
    if (o.token.empty() && o.registration_token.empty()) {
        o.token = ask("Enter the runner authentication token (glrt-...)", "");
    }
    if (o.name.empty()) {
        o.name = ask("Enter a name for the runner", host_name());
    }
    if (o.executor.empty()) {
        o.executor = ask("Enter an executor: shell, docker", "");
    }
    if (o.executor == "docker" && o.docker_image.empty()) {
        o.docker_image = ask("Enter the default Docker image (for example, golang:1.23)", "");
    }
}

void validate(register_options& o) {
    if (o.url.empty()) {
        throw command_error("no GitLab URL: pass --url https://gitlab.example.com");
    }
    // gitlab-runner accepts an authentication token given as --registration-token.
    if (o.token.empty() && gitlab::is_created_runner_token(o.registration_token)) {
        o.token = std::move(o.registration_token);
        o.registration_token.clear();
    }
    if (o.token.empty() && o.registration_token.empty()) {
        throw command_error(
            "no token: pass --token with the runner authentication token (glrt-...) from GitLab "
            "(or --registration-token for a legacy registration token)");
    }
    if (!o.token.empty() && !o.registration_token.empty()) {
        throw command_error("pass either --token or --registration-token, not both");
    }
    if (o.executor.empty()) {
        throw command_error("no executor: pass --executor shell or --executor docker");
    }
    if (o.executor != "shell" && o.executor != "docker") {
        throw command_error("executor \"" + o.executor +
                            "\" is not supported by kiln: use shell or docker");
    }
    if (o.executor == "docker" && o.docker_image.empty()) {
        throw command_error("the docker executor needs a default image: pass --docker-image");
    }
    if (!o.shell.empty() && o.shell != "bash" && o.shell != "sh") {
        throw command_error("shell \"" + o.shell + "\" is not supported by kiln: use bash or sh");
    }
    if (!o.access_level.empty() && o.access_level != "not_protected" &&
        o.access_level != "ref_protected") {
        throw command_error("--access-level must be not_protected or ref_protected");
    }
    if (o.name.empty()) {
        o.name = host_name();
    }
}

// With authentication tokens these are chosen in GitLab when the runner is created.
void warn_server_side_settings(const register_options& o) {
    std::vector<std::string> given;
    if (!o.tag_list.empty()) given.push_back("--tag-list");
    if (o.run_untagged) given.push_back("--run-untagged");
    if (o.locked) given.push_back("--locked");
    if (!o.access_level.empty()) given.push_back("--access-level");
    if (o.maximum_timeout != 0) given.push_back("--maximum-timeout");
    if (o.paused) given.push_back("--paused");
    if (!o.maintenance_note.empty()) given.push_back("--maintenance-note");
    if (given.empty()) {
        return;
    }
    std::string list;
    for (const auto& g : given) {
        list += (list.empty() ? "" : ", ") + g;
    }
    log::warn("ignored " + list +
              ": with an authentication token (glrt-) these are set on the runner in GitLab "
              "(Settings > CI/CD > Runners), not at registration");
    if (!o.tag_list.empty()) {
        log::warn("set these tags on the runner in GitLab: " + o.tag_list);
    }
}

config::runner_entry make_entry(const register_options& o, std::int64_t id,
                                const std::string& token, const std::string& expires_at) {
    config::runner_entry r;
    r.name = o.name;
    r.url = o.url;
    r.id = id;
    r.token = token;
    r.token_obtained_at = utc_timestamp_now();
    if (!expires_at.empty()) {
        r.token_expires_at = expires_at;
    }
    r.executor = o.executor;
    r.shell = o.shell;
    r.builds_dir = o.builds_dir;
    r.cache_dir = o.cache_dir;
    r.tls_ca_file = o.tls_ca_file;
    r.tls_cert_file = o.tls_cert_file;
    r.tls_key_file = o.tls_key_file;
    r.environment = o.env;
    r.tags = split_tags(o.tag_list);
    r.limit = o.limit;
    if (o.request_concurrency > 0) {
        r.request_concurrency = o.request_concurrency;
    }
    if (o.output_limit > 0) {
        r.output_limit = o.output_limit;
    }
    if (o.executor == "docker") {
        config::docker_settings d;
        d.image = o.docker_image;
        d.memory = o.docker_memory;
        d.volumes = {"/cache"};
        r.docker = d;
    }
    return r;
}

std::string describe_rejection(int http_status, const std::string& message, const char* what) {
    std::string s = std::string("GitLab rejected the ") + what;
    if (http_status != 0) {
        s += " (HTTP " + std::to_string(http_status) + ")";
    }
    if (!message.empty()) {
        s += ": " + message;
    }
    return s;
}

}  // namespace

config::config_document open_config(const std::filesystem::path& path) {
    try {
        return config::config_document::open(path);
    } catch (const std::exception& e) {
        throw command_error(std::string(e.what()));
    }
}

// Registers one runner with GitLab and adds it to the config; throws command_error.
void register_one(const std::filesystem::path& path, const register_options& o) {
    auto doc = open_config(path);
    const bool created_runner_token = !o.token.empty();
    auto system_id = load_system_id(path);
    std::int64_t id = 0;
    std::string token;
    std::string expires_at;
    net::tls_settings tls{o.tls_ca_file, o.tls_cert_file, o.tls_key_file};

    // Each client lives inside the coroutine (and io_context) it was made for: its sockets
    // must not outlive the io_context that run_coroutine destroys on return.
    run_coroutine([&]() -> boost::asio::awaitable<void> {
        auto api = make_client(co_await boost::asio::this_coro::executor, o.url, tls);
        if (created_runner_token) {
            auto r = co_await api->verify_runner(o.token, system_id.id);
            if (!r.reached()) {
                throw command_error(explain(r.transport));
            }
            if (r.value.status != gitlab::verify_status::valid) {
                throw command_error(
                    describe_rejection(r.value.http_status, r.value.message, "token") +
                    "; check that --token is the runner authentication token shown in GitLab "
                    "and that the runner was not deleted");
            }
            id = r.value.runner.id;
            token = o.token;
            expires_at = r.value.runner.token_expires_at;
        } else {
            gitlab::register_params p;
            p.description = o.name;
            p.maintenance_note = o.maintenance_note;
            p.tags = split_tags(o.tag_list);
            // gitlab-runner: run untagged by default only when there are no tags.
            p.run_untagged = o.run_untagged.value_or(p.tags.empty());
            p.locked = o.locked.value_or(true);
            p.access_level = o.access_level;
            p.maximum_timeout = o.maximum_timeout;
            p.paused = o.paused;
            auto r = co_await api->register_runner(o.registration_token, p);
            if (!r.reached()) {
                throw command_error(explain(r.transport));
            }
            using st = gitlab::register_status;
            if (r.value.status == st::disallowed) {
                throw command_error(
                    "GitLab has registration tokens disabled (HTTP 410); create the runner in "
                    "GitLab and pass its authentication token with --token");
            }
            if (r.value.status != st::registered) {
                throw command_error(
                    describe_rejection(r.value.http_status, r.value.message,
                                       "registration") +
                    (r.value.status == st::forbidden ? "; check --registration-token" : ""));
            }
            id = r.value.runner.id;
            token = r.value.runner.token;
            expires_at = r.value.runner.token_expires_at;
        }
    });

    try {
        doc.add_runner(make_entry(o, id, token, expires_at));
        doc.save(path);
    } catch (const std::exception& e) {
        std::string msg = e.what();
        if (created_runner_token) {
            // verify created a manager for this host; take it away again, as gitlab-runner
            // does. The runner itself belongs to whoever created it in GitLab.
            run_coroutine([&]() -> boost::asio::awaitable<void> {
                auto api = make_client(co_await boost::asio::this_coro::executor, o.url, tls);
                co_await api->unregister_manager(token, system_id.id);
            });
        } else if (!o.leave_runner) {
            // Do not leave a runner in GitLab that no config knows about.
            bool deleted = false;
            run_coroutine([&]() -> boost::asio::awaitable<void> {
                auto api = make_client(co_await boost::asio::this_coro::executor, o.url, tls);
                auto r = co_await api->unregister_runner(token);
                deleted = r.reached() &&
                          r.value.status == gitlab::unregister_status::unregistered;
            });
            msg += deleted ? "; the runner was deleted from GitLab again"
                           : "; deleting the runner (id " + std::to_string(id) +
                                 ") from GitLab failed too: delete it there";
        }
        throw command_error(msg);
    }
    try {
        persist_system_id(path, system_id);
    } catch (const std::exception& e) {
        log::warn(std::string("cannot save the system ID: ") + e.what());
    }
    log::info("Runner registered successfully. Start it with `kiln run` (or as a service).",
              {{"runner", gitlab::short_token(token)},
               {"name", o.name},
               {"config", path.string()}});
}

// The directory whose name a module's runner carries: the repository's (the nearest directory
// above the go.mod with a .git), else the directory given to --go-modules-from, else the
// go.mod's own directory.
std::string default_project(const std::filesystem::path& go_mod,
                            const std::filesystem::path& from_dir) {
    namespace fs = std::filesystem;
    std::error_code ec;
    for (auto d = fs::absolute(go_mod, ec).parent_path(); !d.empty(); d = d.parent_path()) {
        if (fs::exists(d / ".git", ec)) {
            return d.filename().string();
        }
        if (d == d.parent_path()) {
            break;
        }
    }
    const auto base = from_dir.empty() ? fs::absolute(go_mod, ec).parent_path()
                                       : fs::absolute(from_dir, ec).lexically_normal();
    auto name = base.filename().string();
    if (name.empty()) {
        name = base.parent_path().filename().string();
    }
    return name;
}

struct module_runner {
    std::filesystem::path go_mod;
    go_module::named_module named;
};

// Which go.mod files to register and the names their runners get.
std::vector<module_runner> plan_module_runners(const register_options& o,
                                               const config::settings& existing) {
    namespace fs = std::filesystem;
    std::vector<fs::path> files;
    std::error_code ec;
    if (!o.go_module.empty()) {
        fs::path p = o.go_module;
        if (fs::is_directory(p, ec)) {
            p /= "go.mod";
        }
        if (!fs::is_regular_file(p, ec)) {
            throw command_error("--go-module " + o.go_module +
                                ": no go.mod there; pass a go.mod file or the directory holding one");
        }
        files.push_back(p);
    } else {
        if (!fs::is_directory(o.go_modules_from, ec)) {
            throw command_error("--go-modules-from " + o.go_modules_from + " is not a directory");
        }
        try {
            files = go_module::find_go_mod_files(o.go_modules_from);
        } catch (const fs::filesystem_error& e) {
            throw command_error(e.path1().string() + ": " + e.code().message());
        }
        if (files.empty()) {
            throw command_error("no go.mod below " + o.go_modules_from +
                                " (vendor/, testdata/ and hidden directories are skipped)");
        }
    }
    std::vector<std::string> paths;
    std::string errors;
    for (const auto& f : files) {
        std::string text;
        if (auto in = std::ifstream(f, std::ios::binary)) {
            text.assign(std::istreambuf_iterator<char>(in), {});
        } else {
            errors += "\n       " + f.string() + ": cannot read the file";
            continue;
        }
        auto r = go_module::parse_module_path(text);
        if (!r.module_path) {
            errors += "\n       " + f.string() + (r.line > 0 ? ":" + std::to_string(r.line) : "") +
                      ": " + r.error;
            continue;
        }
        paths.push_back(*r.module_path);
    }
    if (!errors.empty()) {
        throw command_error("cannot read the module path of every go.mod (nothing registered):" +
                            errors);
    }
    const auto project =
        o.project.empty() ? default_project(files.front(), o.go_modules_from) : o.project;
    std::set<std::string> taken;
    for (const auto& r : existing.runners) {
        taken.insert(r.name);
    }
    // A batch is named on its own, so running --go-modules-from again finds the runners it
    // registered before under the same names and skips them; a single --go-module steers
    // clear of names already in the config instead.
    auto named = go_module::assign_names(project, paths, o.go_module.empty() ? std::set<std::string>{} : taken);
    std::vector<module_runner> out;
    for (std::size_t i = 0; i < files.size(); ++i) {
        if (!o.go_modules_from.empty() && taken.count(named[i].name) != 0) {
            log::info("already in the config, skipped",
                      {{"name", named[i].name}, {"module", named[i].module_path}});
            continue;
        }
        out.push_back({files[i], named[i]});
    }
    return out;
}

int run_register(const global_options& g, register_options o) {
    setup_logging(g);
    try {
        const auto path = config::resolve_config_path(g.config);
        // Fail on an unusable config before anything is created in GitLab.
        open_config(path);
        if (o.go_module.empty() && o.go_modules_from.empty()) {
            if (!o.non_interactive && ::isatty(0) != 0) {
                fill_interactively(o);
            }
            validate(o);
            if (!o.token.empty()) {
                warn_server_side_settings(o);
            }
            register_one(path, o);
            return 0;
        }
        if (!o.go_module.empty() && !o.go_modules_from.empty()) {
            throw command_error("pass either --go-module or --go-modules-from, not both");
        }
        if (!o.name.empty()) {
            throw command_error("--name cannot be combined with --go-module/--go-modules-from: "
                                "the runners are named runner-<project>-<module>");
        }
        auto plan = plan_module_runners(o, load_settings(path, true));
        if (plan.empty()) {
            log::info("every Go module is registered already");
            return 0;
        }
        o.name = plan.front().named.name;
        if (!o.non_interactive && ::isatty(0) != 0) {
            fill_interactively(o);
        }
        validate(o);
        if (!o.token.empty() && plan.size() > 1) {
            throw command_error(
                "found " + std::to_string(plan.size()) +
                " Go modules, but an authentication token (glrt-) belongs to one runner: create a "
                "runner per module in GitLab and register each with --go-module DIR --token, or "
                "use --registration-token");
        }
        if (!o.token.empty()) {
            auto copy = o;
            copy.tag_list.clear();
            warn_server_side_settings(copy);
        }
        for (const auto& m : plan) {
            auto one = o;
            one.name = m.named.name;
            std::string tags = "go-module," + m.named.element;
            for (const auto& t : split_tags(o.tag_list)) {
                if (t != "go-module" && t != m.named.element) {
                    tags += "," + t;
                }
            }
            one.tag_list = tags;
            log::info("registering the runner of a Go module",
                      {{"module", m.named.module_path},
                       {"go_mod", m.go_mod.string()},
                       {"name", one.name},
                       {"tags", tags}});
            register_one(path, one);
            if (!o.token.empty()) {
                // GitLab keeps the tags of runners created there; kiln cannot set them.
                std::printf("Set these tags on the runner in GitLab (Settings > CI/CD > Runners > "
                            "edit): %s\n",
                            tags.c_str());
            }
        }
        return 0;
    } catch (const command_error& e) {
        print_error(e.what());
        return 1;
    }
}

}  // namespace kiln::commands
