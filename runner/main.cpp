// The kiln command line: gitlab-runner's command and flag names, parsed here and nowhere else.

#include <CLI/CLI.hpp>
#include <cstdio>
#include <string>

#include "runner/commands/commands.hpp"
#include "runner/version.hpp"

namespace {

using namespace kiln::commands;

void add_global_options(CLI::App* cmd, global_options& g) {
    cmd->add_option("-c,--config", g.config, "Config file (default: $CONFIG_FILE, "
                                             "/etc/kiln/config.toml as root, ~/.kiln/config.toml)");
    cmd->add_option("--log-level,-l", g.log_level, "debug, info, warn, error")
        ->envname("LOG_LEVEL");
    cmd->add_option("--log-format", g.log_format, "runner, text or json")->envname("LOG_FORMAT");
}

void add_selector(CLI::App* cmd, runner_selector& s, bool with_all) {
    cmd->add_option("-n,--name", s.name, "Runner name");
    cmd->add_option("-u,--url", s.url, "GitLab URL (with --token)");
    cmd->add_option("-t,--token", s.token, "Runner authentication token (with --url)");
    if (with_all) {
        cmd->add_flag("--all-runners", s.all_runners, "Apply to every configured runner");
    }
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"kiln: a GitLab runner for Linux build hosts that build Go services"};
    app.set_version_flag("--version,-v", std::string("kiln ") + kiln::version_string());
    app.require_subcommand(1);
    app.failure_message(CLI::FailureMessage::help);

    global_options g;
    int rc = 0;

    register_options reg;
    auto* c_register = app.add_subcommand("register", "Register a runner with GitLab and add it to the config");
    add_global_options(c_register, g);
    c_register->add_flag("-n,--non-interactive", reg.non_interactive, "Do not prompt; fail when a value is missing")
        ->envname("REGISTER_NON_INTERACTIVE");
    c_register->add_option("-u,--url", reg.url, "GitLab instance URL")->envname("CI_SERVER_URL");
    c_register->add_option("-t,--token", reg.token, "Runner authentication token (glrt-...)")
        ->envname("CI_SERVER_TOKEN");
    c_register->add_option("-r,--registration-token", reg.registration_token,
                           "Registration token (deprecated by GitLab)")
        ->envname("REGISTRATION_TOKEN");
    c_register->add_option("--name,--description", reg.name, "Runner name")->envname("RUNNER_NAME");
    c_register->add_option("--executor", reg.executor, "shell or docker")->envname("RUNNER_EXECUTOR");
    c_register->add_option("--shell", reg.shell, "bash or sh")->envname("RUNNER_SHELL");
    c_register->add_option("--docker-image", reg.docker_image, "Default Docker image")
        ->envname("DOCKER_IMAGE");
    c_register->add_option("--docker-memory", reg.docker_memory, "Memory limit, e.g. 2g")
        ->envname("DOCKER_MEMORY");
    c_register->add_option("--tag-list", reg.tag_list, "Comma-separated tags (registration tokens only)")
        ->envname("RUNNER_TAG_LIST");
    bool run_untagged_value = false;
    bool locked_value = false;
    auto* run_untagged = c_register->add_flag("--run-untagged", run_untagged_value, "Run untagged jobs (registration tokens only)")
        ->envname("REGISTER_RUN_UNTAGGED");
    auto* locked = c_register->add_flag("--locked", locked_value, "Lock to the project (registration tokens only)")
        ->envname("REGISTER_LOCKED");
    c_register->add_option("--access-level", reg.access_level, "not_protected or ref_protected")
        ->envname("REGISTER_ACCESS_LEVEL");
    c_register->add_option("--maximum-timeout", reg.maximum_timeout, "Maximum job timeout in seconds")
        ->envname("REGISTER_MAXIMUM_TIMEOUT");
    c_register->add_flag("--paused", reg.paused, "Register the runner paused")->envname("REGISTER_PAUSED");
    c_register->add_option("--maintenance-note", reg.maintenance_note, "Maintenance note")
        ->envname("REGISTER_MAINTENANCE_NOTE");
    c_register->add_option("--limit", reg.limit, "Maximum concurrent jobs of this runner")
        ->envname("RUNNER_LIMIT");
    c_register->add_option("--request-concurrency", reg.request_concurrency,
                           "Maximum concurrent job requests")
        ->envname("RUNNER_REQUEST_CONCURRENCY");
    c_register->add_option("--output-limit", reg.output_limit, "Maximum job log size in KiB")
        ->envname("RUNNER_OUTPUT_LIMIT");
    c_register->add_option("--builds-dir", reg.builds_dir, "Directory for builds")
        ->envname("RUNNER_BUILDS_DIR");
    c_register->add_option("--cache-dir", reg.cache_dir, "Directory for caches")
        ->envname("RUNNER_CACHE_DIR");
    c_register->add_option("--tls-ca-file", reg.tls_ca_file, "CA certificates for GitLab (PEM)")
        ->envname("CI_SERVER_TLS_CA_FILE");
    c_register->add_option("--tls-cert-file", reg.tls_cert_file, "Client certificate (PEM)")
        ->envname("CI_SERVER_TLS_CERT_FILE");
    c_register->add_option("--tls-key-file", reg.tls_key_file, "Client key (PEM)")
        ->envname("CI_SERVER_TLS_KEY_FILE");
    c_register->add_option("--env", reg.env, "KEY=value added to every job (repeatable)");
    c_register->add_flag("--leave-runner", reg.leave_runner,
                         "Keep the runner in GitLab if saving the config fails");
    c_register->add_option("--go-module", reg.go_module,
                           "Register a runner for the Go module of this go.mod (file or its directory)");
    c_register->add_option("--go-modules-from", reg.go_modules_from,
                           "Register one runner per go.mod below this directory");
    c_register->add_option("--project", reg.project,
                           "Project part of Go module runner names (default: the repository's directory name)");
    c_register->callback([&] {
        if (run_untagged->count() > 0) {
            reg.run_untagged = run_untagged_value;
        }
        if (locked->count() > 0) {
            reg.locked = locked_value;
        }
        rc = run_register(g, reg);
    });

    runner_selector verify_sel;
    bool verify_delete = false;
    auto* c_verify = app.add_subcommand("verify", "Check the runners' tokens with GitLab");
    add_global_options(c_verify, g);
    add_selector(c_verify, verify_sel, false);
    c_verify->add_flag("--delete", verify_delete, "Remove runners GitLab no longer knows from the config");
    c_verify->callback([&] { rc = run_verify(g, verify_sel, verify_delete); });

    runner_selector unreg_sel;
    auto* c_unregister = app.add_subcommand("unregister", "Remove runners from GitLab and the config");
    add_global_options(c_unregister, g);
    add_selector(c_unregister, unreg_sel, true);
    c_unregister->callback([&] { rc = run_unregister(g, unreg_sel); });

    auto* c_list = app.add_subcommand("list", "List the configured runners");
    add_global_options(c_list, g);
    c_list->callback([&] { rc = run_list(g); });

    reset_token_options reset;
    auto* c_reset = app.add_subcommand("reset-token", "Rotate runner authentication tokens");
    add_global_options(c_reset, g);
    add_selector(c_reset, reset.select, true);
    c_reset->add_option("--id", reset.id, "Runner id (with --url and --pat)");
    c_reset->add_option("--pat", reset.pat, "Personal access token (with --url and --id)");
    c_reset->callback([&] { rc = run_reset_token(g, reset); });

    auto* c_lint = app.add_subcommand("lint", "Check a config file; non-zero exit on errors");
    add_global_options(c_lint, g);
    c_lint->callback([&] { rc = run_lint(g); });

    run_options run;
    auto* c_run = app.add_subcommand("run", "Run the daemon: ask GitLab for jobs and run them");
    add_global_options(c_run, g);
    c_run->add_option("-d,--working-directory", run.working_directory, "Directory to run in");
    c_run->add_option("--max-jobs", run.max_jobs, "Exit after this many jobs (0: until signalled)");
    c_run->add_option("-u,--user", run.user,
                      "Run jobs as this user: started as root, kiln becomes it (as `user` in "
                      "the config)");
    c_run->add_option("-n,--service", run.service,
                      "Accepted as gitlab-runner does (systemd names the service)")
        ->envname("SERVICE_NAME");
    c_run->add_flag("--syslog", run.syslog,
                    "Accepted as gitlab-runner does (under systemd the journal takes the log)");
    c_run->callback([&] { rc = run_daemon(g, run); });

    prune_options prune;
    auto* c_prune = app.add_subcommand(
        "prune", "Remove builds/cache directories and Docker cache volumes unused for a while");
    add_global_options(c_prune, g);
    c_prune->add_option("--older-than", prune.older_than,
                        "Age, e.g. 7d, 168h, 90m (default: prune_older_than, else 7d)");
    c_prune->add_flag("--dry-run", prune.dry_run, "Only show what would be removed");
    c_prune->add_option("-d,--working-directory", prune.working_directory,
                        "The daemon's working directory (for the default ./builds and ./cache)");
    c_prune->callback([&] { rc = run_prune(g, prune); });

    artifacts_verify_options art_verify;
    auto* c_artifacts = app.add_subcommand("artifacts", "Signed artifact archives (docs/artifacts.md)");
    c_artifacts->require_subcommand(1);
    auto* c_art_verify = c_artifacts->add_subcommand(
        "verify", "Check an artifact archive's signed manifest; exit 1 when it does not verify");
    c_art_verify->add_option("archive", art_verify.archive, "The archive (zip) to check")
        ->required();
    c_art_verify->add_option("--key,-k", art_verify.key_files,
                             "Public key (PEM) it must be signed with; repeat for several")
        ->required()
        ->allow_extra_args(false);
    c_art_verify->callback([&] { rc = run_artifacts_verify(art_verify); });

    service_options svc;
    auto add_service_flags = [&](CLI::App* cmd, bool install) {
        add_global_options(cmd, g);
        cmd->add_option("-n,--service", svc.service, "Service (systemd unit) name")
            ->envname("SERVICE_NAME");
        if (install) {
            cmd->add_option("-d,--working-directory", svc.working_directory,
                            "Working directory of the service (default /var/lib/kiln)");
            cmd->add_option("-u,--user", svc.user,
                            "User the jobs run as; alone, the service runs as it too "
                            "(default root)");
            cmd->add_option("-i,--init-user", svc.init_user,
                            "User the service starts as (root: it becomes --user at start)");
            cmd->add_flag("--syslog", svc.syslog,
                          "Accepted as gitlab-runner does (the journal takes the log)");
            cmd->add_option("--unit-dir", svc.unit_dir,
                            "Where to write the unit (default /etc/systemd/system)");
        } else {
            cmd->add_option("--unit-dir", svc.unit_dir, "Where the unit is (default /etc/systemd/system)");
        }
    };
    auto* c_install = app.add_subcommand("install", "Install kiln as a systemd service");
    add_service_flags(c_install, true);
    c_install->callback([&] { rc = run_install(g, svc); });
    auto* c_uninstall = app.add_subcommand("uninstall", "Stop, disable and remove the service");
    add_service_flags(c_uninstall, false);
    c_uninstall->callback([&] { rc = run_uninstall(g, svc); });
    for (const char* verb : {"start", "stop", "restart", "status"}) {
        const std::string v = verb;
        auto* c = app.add_subcommand(v, v == "status" ? "Show whether the service runs (exit 0 if so)"
                                        : v == "stop" ? "Stop the service (drains running jobs)"
                                                      : v + " the service");
        add_service_flags(c, false);
        c->callback([&, v] { rc = run_service_control(v, g, svc); });
    }

    // CLI11 would only say "A subcommand is required" for a mistyped command.
    if (argc > 1 && argv[1][0] != '-') {
        bool known = false;
        std::string names;
        for (const auto* sub : app.get_subcommands({})) {
            known = known || sub->check_name(argv[1]);
            names += (names.empty() ? "" : ", ") + sub->get_name();
        }
        if (!known) {
            std::fprintf(stderr, "ERROR: unknown command \"%s\"; the commands are: %s\n", argv[1],
                         names.c_str());
            return 1;
        }
    }
    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        return app.exit(e);
    }
    return rc;
}
