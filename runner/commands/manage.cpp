// kiln verify, unregister, list, reset-token and lint: commands over the runners of one
// config.toml. Runners are changed in the file only after GitLab agreed.

#include <boost/asio/this_coro.hpp>
#include <cstdio>

#include "config/paths.hpp"
#include "config/writer.hpp"
#include "runner/commands/common.hpp"
#include "runner/gitlab/tokens.hpp"
#include "runner/system_id_state.hpp"
#include "runner/util/logging.hpp"

namespace kiln::commands {
namespace {

net::tls_settings tls_of(const config::runner_entry& r) {
    return {r.tls_ca_file, r.tls_cert_file, r.tls_key_file};
}

std::vector<config::runner_entry> select_runners(const config::settings& s,
                                                 const runner_selector& sel,
                                                 const std::filesystem::path& path,
                                                 bool default_all) {
    std::vector<config::runner_entry> out;
    const bool by_name = !sel.name.empty();
    const bool by_url_token = !sel.url.empty() || !sel.token.empty();
    if (by_url_token && (sel.url.empty() || sel.token.empty())) {
        throw command_error("--url and --token select a runner together; pass both");
    }
    if (!by_name && !by_url_token && !sel.all_runners && !default_all) {
        throw command_error("say which runner: --name NAME, --url URL --token TOKEN, or "
                            "--all-runners");
    }
    for (const auto& r : s.runners) {
        bool match = sel.all_runners || (!by_name && !by_url_token && default_all) ||
                     (by_name && r.name == sel.name) ||
                     (by_url_token && r.url == sel.url && r.token == sel.token);
        if (match) {
            out.push_back(r);
        }
    }
    if (out.empty() && (by_name || by_url_token)) {
        throw command_error(std::string("no runner ") +
                            (by_name ? "named \"" + sel.name + "\""
                                     : "with URL " + sel.url + " and token " +
                                           gitlab::short_token(sel.token)) +
                            " in " + path.string() + " (see `kiln list`)");
    }
    return out;
}

// Rewrites the config without the runners holding these tokens.
void remove_runners_by_token(const std::filesystem::path& path,
                             const std::vector<std::string>& tokens) {
    auto doc = config::config_document::open(path);
    doc.remove_runners([&](const config::runner_entry& r) {
        return std::find(tokens.begin(), tokens.end(), r.token) != tokens.end();
    });
    doc.save(path);
}

}  // namespace

int run_list(const global_options& g) {
    setup_logging(g);
    try {
        const auto path = config::resolve_config_path(g.config);
        auto s = load_settings(path);
        log::info("Listing configured runners", {{"config", path.string()}});
        for (const auto& r : s.runners) {
            std::string tags;
            for (const auto& t : r.tags) {
                tags += (tags.empty() ? "" : ",") + t;
            }
            std::printf("%-20s Executor=%s Token=%s URL=%s%s%s\n", r.name.c_str(),
                        r.executor.c_str(), gitlab::short_token(r.token).c_str(), r.url.c_str(),
                        tags.empty() ? "" : " Tags=", tags.c_str());
        }
        return 0;
    } catch (const command_error& e) {
        print_error(e.what());
        return 1;
    }
}

int run_verify(const global_options& g, const runner_selector& sel, bool delete_removed) {
    setup_logging(g);
    try {
        const auto path = config::resolve_config_path(g.config);
        auto s = load_settings(path);
        auto runners = select_runners(s, sel, path, true);
        auto system_id = load_system_id(path);
        std::vector<std::string> removed;
        int failures = 0;
        run_coroutine([&]() -> boost::asio::awaitable<void> {
            auto ex = co_await boost::asio::this_coro::executor;
            for (const auto& r : runners) {
                const auto short_token = gitlab::short_token(r.token);
                std::unique_ptr<gitlab::client> api;
                try {
                    api = make_client(ex, r.url, tls_of(r));
                } catch (const command_error& e) {
                    log::error(std::string("Verifying runner... failed: ") + e.what(),
                               {{"runner", short_token}, {"name", r.name}});
                    ++failures;
                    continue;
                }
                auto res = co_await api->verify_runner(r.token, system_id.id);
                if (!res.reached()) {
                    log::error("Verifying runner... failed: " + explain(res.transport),
                               {{"runner", short_token}, {"name", r.name}});
                    ++failures;
                } else if (res.value.status == gitlab::verify_status::valid) {
                    log::info("Verifying runner... is valid",
                              {{"runner", short_token}, {"name", r.name}});
                } else if (res.value.status == gitlab::verify_status::forbidden) {
                    log::error("Verifying runner... is removed (GitLab rejected its token)",
                               {{"runner", short_token}, {"name", r.name}});
                    if (delete_removed) {
                        removed.push_back(r.token);
                    } else {
                        ++failures;
                    }
                } else {
                    log::error("Verifying runner... failed: HTTP " +
                                   std::to_string(res.value.http_status) + " " + res.value.message,
                               {{"runner", short_token}, {"name", r.name}});
                    ++failures;
                }
            }
        });
        if (!removed.empty()) {
            remove_runners_by_token(path, removed);
            log::info("Removed " + std::to_string(removed.size()) +
                      " runner(s) GitLab no longer knows from the config",
                      {{"config", path.string()}});
        }
        if (failures > 0 && !delete_removed) {
            print_error(std::to_string(failures) + " runner(s) could not be verified" +
                        " (run `kiln verify --delete` to drop the ones GitLab removed)");
        }
        return failures > 0 ? 1 : 0;
    } catch (const std::exception& e) {  // command_error included
        print_error(e.what());
        return 1;
    }
}

int run_unregister(const global_options& g, const runner_selector& sel) {
    setup_logging(g);
    try {
        const auto path = config::resolve_config_path(g.config);
        auto s = load_settings(path);
        auto runners = select_runners(s, sel, path, false);
        auto system_id = load_system_id(path);
        std::vector<std::string> removed;
        std::vector<std::string> failed;
        run_coroutine([&]() -> boost::asio::awaitable<void> {
            auto ex = co_await boost::asio::this_coro::executor;
            for (const auto& r : runners) {
                const auto short_token = gitlab::short_token(r.token);
                auto api = make_client(ex, r.url, tls_of(r));
                // Runners created in GitLab (glrt-) only lose this host's manager; legacy
                // runners are deleted.
                // (if/else, not ?: — GCC 12 miscompiles co_await in a conditional expression)
                gitlab::api_result<gitlab::unregister_result> res;
                if (gitlab::is_created_runner_token(r.token)) {
                    res = co_await api->unregister_manager(r.token, system_id.id);
                } else {
                    res = co_await api->unregister_runner(r.token);
                }
                if (!res.reached()) {
                    failed.push_back(r.name + ": " + explain(res.transport));
                    continue;
                }
                using st = gitlab::unregister_status;
                if (res.value.status == st::unregistered || res.value.status == st::not_found) {
                    if (res.value.status == st::not_found) {
                        log::warn("GitLab has no manager for this host; removing the runner "
                                  "from the config",
                                  {{"runner", short_token}, {"name", r.name}});
                    }
                    log::info("Unregistering runner from GitLab succeeded",
                              {{"runner", short_token}, {"name", r.name}});
                    removed.push_back(r.token);
                } else {
                    failed.push_back(
                        r.name + ": GitLab answered HTTP " + std::to_string(res.value.http_status) +
                        (res.value.message.empty() ? "" : " " + res.value.message) +
                        (res.value.status == st::forbidden
                             ? " (token rejected: if the runner was deleted in GitLab, run "
                               "`kiln verify --delete`)"
                             : ""));
                }
            }
        });
        if (!removed.empty()) {
            remove_runners_by_token(path, removed);
            log::info("Updated config", {{"config", path.string()}});
        }
        for (const auto& f : failed) {
            print_error("cannot unregister " + f);
        }
        return failed.empty() ? 0 : 1;
    } catch (const std::exception& e) {  // command_error included
        print_error(e.what());
        return 1;
    }
}

int run_reset_token(const global_options& g, const reset_token_options& o) {
    setup_logging(g);
    try {
        const auto path = config::resolve_config_path(g.config);
        auto s = load_settings(path);
        struct change {
            std::string old_token, new_token, expires_at;
        };
        std::vector<change> changes;
        std::vector<std::string> failed;

        std::vector<config::runner_entry> runners;
        const bool with_pat = !o.pat.empty() || o.id != 0;
        if (with_pat) {
            if (o.pat.empty() || o.id == 0 || o.select.url.empty()) {
                throw command_error("resetting with a personal access token needs --url, --id "
                                    "and --pat");
            }
            for (const auto& r : s.runners) {
                if (r.url == o.select.url && r.id == o.id) {
                    runners.push_back(r);
                }
            }
            if (runners.empty()) {
                throw command_error("no runner with URL " + o.select.url + " and id " +
                                    std::to_string(o.id) + " in " + path.string());
            }
        } else {
            runners = select_runners(s, o.select, path, false);
        }

        run_coroutine([&]() -> boost::asio::awaitable<void> {
            auto ex = co_await boost::asio::this_coro::executor;
            for (const auto& r : runners) {
                auto api = make_client(ex, r.url, tls_of(r));
                gitlab::api_result<gitlab::reset_token_result> res;
                if (with_pat) {
                    res = co_await api->reset_token_with_pat(r.id, o.pat);
                } else {
                    res = co_await api->reset_token(r.token);
                }
                if (!res.reached()) {
                    failed.push_back(r.name + ": " + explain(res.transport));
                } else if (res.value.status != gitlab::reset_token_status::reset) {
                    failed.push_back(r.name + ": GitLab answered HTTP " +
                                     std::to_string(res.value.http_status) +
                                     (res.value.message.empty() ? "" : " " + res.value.message));
                } else {
                    changes.push_back({r.token, res.value.token, res.value.token_expires_at});
                    log::info("Token reset",
                              {{"runner", gitlab::short_token(res.value.token)}, {"name", r.name}});
                }
            }
        });
        if (!changes.empty()) {
            auto doc = config::config_document::open(path);
            const auto now = utc_timestamp_now();
            for (const auto& c : changes) {
                std::optional<std::string> exp;
                if (!c.expires_at.empty()) {
                    exp = c.expires_at;
                }
                doc.replace_token(c.old_token, c.new_token, now, exp);
            }
            doc.save(path);
        }
        for (const auto& f : failed) {
            print_error("cannot reset the token of " + f);
        }
        return failed.empty() ? 0 : 1;
    } catch (const std::exception& e) {  // command_error included
        print_error(e.what());
        return 1;
    }
}

int run_lint(const global_options& g) {
    setup_logging(g);
    const auto path = config::resolve_config_path(g.config);
    auto r = config::load_config_file(path);
    for (const auto& d : r.diagnostics) {
        std::fprintf(stderr, "%s\n", d.to_string().c_str());
    }
    auto errors = r.errors().size();
    auto warnings = r.warnings().size();
    std::fprintf(stderr, "%s: %zu error(s), %zu warning(s)\n", path.c_str(), errors, warnings);
    return errors == 0 ? 0 : 1;
}

}  // namespace kiln::commands
