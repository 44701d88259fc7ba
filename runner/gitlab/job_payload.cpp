#include "runner/gitlab/job_payload.hpp"

#include <cmath>
#include <limits>
#include <stdexcept>
#include <utility>

#include <boost/throw_exception.hpp>
#include <nlohmann/json.hpp>

namespace kiln::gitlab {

namespace {

using json = nlohmann::json;

// Thrown inside this file only; parse_job_payload turns it into a payload_error value.
struct bad_field {
    std::string path;
    std::string expectation;  // "must be a string"
};

std::string child(std::string_view parent, std::string_view key) {
    std::string p(parent);
    if (!p.empty()) {
        p += '.';
    }
    p += key;
    return p;
}

std::string element(std::string_view parent, std::size_t i) {
    return std::string(parent) + '[' + std::to_string(i) + ']';
}

/// The value of `key`, or nullptr when it is missing or null: both mean "use the default".
const json* member(const json& obj, std::string_view key) {
    auto it = obj.find(key);
    if (it == obj.end() || it->is_null()) {
        return nullptr;
    }
    return &*it;
}

std::optional<std::int64_t> as_int64(const json& v) {
    if (v.is_number_integer() && !v.is_number_unsigned()) {
        return v.get<std::int64_t>();
    }
    if (v.is_number_unsigned()) {
        auto u = v.get<std::uint64_t>();
        if (u <= static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) {
            return static_cast<std::int64_t>(u);
        }
        return std::nullopt;
    }
    if (v.is_number_float()) {
        // JSON has one number type; "3600.0" is still an integer for a Go decoder into int64.
        double d = v.get<double>();
        if (std::isfinite(d) && std::trunc(d) == d && d >= -9.2e18 && d <= 9.2e18) {
            return static_cast<std::int64_t>(d);
        }
    }
    return std::nullopt;
}

void read(const json& obj, std::string_view key, std::string_view path, std::string& out) {
    if (const json* v = member(obj, key)) {
        if (!v->is_string()) {
            throw bad_field{child(path, key), "must be a string"};
        }
        out = v->get<std::string>();
    }
}

void read(const json& obj, std::string_view key, std::string_view path, bool& out) {
    if (const json* v = member(obj, key)) {
        if (!v->is_boolean()) {
            throw bad_field{child(path, key), "must be a boolean"};
        }
        out = v->get<bool>();
    }
}

void read(const json& obj, std::string_view key, std::string_view path, std::int64_t& out) {
    if (const json* v = member(obj, key)) {
        auto i = as_int64(*v);
        if (!i) {
            throw bad_field{child(path, key), "must be an integer"};
        }
        out = *i;
    }
}

void read(
    const json& obj, std::string_view key, std::string_view path, std::optional<std::int64_t>& out
) {
    if (const json* v = member(obj, key)) {
        auto i = as_int64(*v);
        if (!i) {
            throw bad_field{child(path, key), "must be an integer"};
        }
        out = *i;
    }
}

void read(
    const json& obj, std::string_view key, std::string_view path, std::vector<std::string>& out
) {
    const json* v = member(obj, key);
    if (!v) {
        return;
    }
    if (!v->is_array()) {
        throw bad_field{child(path, key), "must be an array of strings"};
    }
    out.clear();
    out.reserve(v->size());
    for (const auto& e : *v) {
        if (e.is_null()) {
            out.emplace_back();  // Go decodes a null element of []string as ""
        } else if (e.is_string()) {
            out.push_back(e.get<std::string>());
        } else {
            throw bad_field{child(path, key), "must be an array of strings"};
        }
    }
}

/// A nested object, or nullptr when missing/null.
const json* object_member(const json& obj, std::string_view key, std::string_view path) {
    const json* v = member(obj, key);
    if (v && !v->is_object()) {
        throw bad_field{child(path, key), "must be an object"};
    }
    return v;
}

/// Reads an array of objects with `parse_one(element_json, element_path)`; null elements are
/// skipped (GitLab never sends them; a zero-valued entry would only mislead later stages).
template <class T, class F>
void read_objects(
    const json& obj, std::string_view key, std::string_view path, std::vector<T>& out, F parse_one
) {
    const json* v = member(obj, key);
    if (!v) {
        return;
    }
    const std::string here = child(path, key);
    if (!v->is_array()) {
        throw bad_field{here, "must be an array"};
    }
    out.clear();
    out.reserve(v->size());
    for (std::size_t i = 0; i < v->size(); ++i) {
        const json& e = (*v)[i];
        if (e.is_null()) {
            continue;
        }
        const std::string at = element(here, i);
        if (!e.is_object()) {
            throw bad_field{at, "must be an object"};
        }
        out.push_back(parse_one(e, at));
    }
}

job_variable parse_variable(const json& j, const std::string& path) {
    job_variable v;
    read(j, "key", path, v.key);
    read(j, "value", path, v.value);
    read(j, "public", path, v.is_public);
    read(j, "masked", path, v.masked);
    read(j, "file", path, v.file);
    read(j, "raw", path, v.raw);
    return v;
}

// executor_opts.docker.user / kubernetes.user: YAML `user: 1000` reaches us as a number.
void read_user(const json& obj, std::string_view key, std::string_view path, std::string& out) {
    const json* v = member(obj, key);
    if (!v) {
        return;
    }
    if (v->is_string()) {
        out = v->get<std::string>();
    } else if (auto i = as_int64(*v); i && !v->is_number_float()) {
        out = std::to_string(*i);
    } else {
        throw bad_field{child(path, key), "must be a string or an integer"};
    }
}

executor_options parse_executor_options(const json& j, const std::string& path) {
    executor_options o;
    for (const auto& [name, value] : j.items()) {
        if (value.is_null()) {
            continue;
        }
        const std::string here = child(path, name);
        if (name != "docker" && name != "kubernetes") {
            o.unsupported.push_back(name);
            continue;
        }
        if (!value.is_object()) {
            throw bad_field{here, "must be an object"};
        }
        for (const auto& [opt, opt_value] : value.items()) {
            if (opt_value.is_null()) {
                continue;
            }
            if (name == "docker" && opt == "platform") {
                read(value, opt, here, o.docker_platform);
            } else if (name == "docker" && opt == "user") {
                read_user(value, opt, here, o.docker_user);
            } else if (name == "kubernetes" && opt == "user") {
                read_user(value, opt, here, o.kubernetes_user);
            } else {
                o.unsupported.push_back(name + "." + opt);
            }
        }
    }
    return o;
}

image_spec parse_image(const json& j, const std::string& path) {
    image_spec im;
    read(j, "name", path, im.name);
    read(j, "alias", path, im.alias);
    read(j, "entrypoint", path, im.entrypoint);
    read(j, "command", path, im.command);
    read_objects(j, "ports", path, im.ports, [](const json& p, const std::string& at) {
        image_port port;
        read(p, "number", at, port.number);
        read(p, "protocol", at, port.protocol);
        read(p, "name", at, port.name);
        return port;
    });
    read_objects(j, "variables", path, im.variables, parse_variable);
    read(j, "pull_policy", path, im.pull_policy);
    if (const json* opts = object_member(j, "executor_opts", path)) {
        im.executor_opts = parse_executor_options(*opts, child(path, "executor_opts"));
    }
    return im;
}

void parse_body(const json& root, job_spec& job) {
    read(root, "allow_git_fetch", "", job.allow_git_fetch);

    if (const json* ji = object_member(root, "job_info", "")) {
        const std::string p = "job_info";
        auto& i = job.info;
        read(*ji, "id", p, i.id);
        read(*ji, "name", p, i.name);
        read(*ji, "stage", p, i.stage);
        read(*ji, "project_id", p, i.project_id);
        read(*ji, "project_name", p, i.project_name);
        read(*ji, "project_full_path", p, i.project_full_path);
        read(*ji, "namespace_id", p, i.namespace_id);
        read(*ji, "root_namespace_id", p, i.root_namespace_id);
        read(*ji, "organization_id", p, i.organization_id);
        read(*ji, "instance_id", p, i.instance_id);
        read(*ji, "instance_uuid", p, i.instance_uuid);
        read(*ji, "user_id", p, i.user_id);
        read(*ji, "scoped_user_id", p, i.scoped_user_id);
        read(*ji, "time_in_queue_seconds", p, i.time_in_queue_seconds);
        read(
            *ji,
            "project_jobs_running_on_instance_runners_count",
            p,
            i.project_jobs_running_on_instance_runners_count
        );
        read(*ji, "queue_size", p, i.queue_size);
        read(*ji, "queue_depth", p, i.queue_depth);
    }

    if (const json* gi = object_member(root, "git_info", "")) {
        const std::string p = "git_info";
        auto& g = job.git;
        read(*gi, "repo_url", p, g.repo_url);
        read(*gi, "ref", p, g.ref);
        read(*gi, "sha", p, g.sha);
        read(*gi, "before_sha", p, g.before_sha);
        read(*gi, "ref_type", p, g.ref_type);
        read(*gi, "refspecs", p, g.refspecs);
        read(*gi, "depth", p, g.depth);
        read(*gi, "repo_object_format", p, g.repo_object_format);
        read(*gi, "protected", p, g.protected_ref);
    }

    if (const json* ri = object_member(root, "runner_info", "")) {
        const std::string p = "runner_info";
        read(*ri, "timeout", p, job.runner.timeout);
        read(*ri, "runner_session_url", p, job.runner.runner_session_url);
        read(*ri, "uuid", p, job.runner.uuid);
    }
    if (job.runner.timeout <= 0) {
        job.runner.timeout = default_job_timeout_seconds;  // gitlab-runner GetBuildTimeout
    }

    read_objects(root, "variables", "", job.variables, parse_variable);

    read_objects(root, "steps", "", job.steps, [](const json& j, const std::string& at) {
        job_step s;
        read(j, "name", at, s.name);
        read(j, "script", at, s.script);
        read(j, "timeout", at, s.timeout);
        read(j, "when", at, s.when);
        read(j, "allow_failure", at, s.allow_failure);
        return s;
    });

    read_objects(root, "hooks", "", job.hooks, [](const json& j, const std::string& at) {
        job_hook h;
        read(j, "name", at, h.name);
        read(j, "script", at, h.script);
        return h;
    });

    if (const json* im = object_member(root, "image", "")) {
        job.image = parse_image(*im, "image");
    }
    read_objects(root, "services", "", job.services, parse_image);

    read_objects(root, "artifacts", "", job.artifacts, [](const json& j, const std::string& at) {
        artifact_spec a;
        read(j, "name", at, a.name);
        read(j, "untracked", at, a.untracked);
        read(j, "paths", at, a.paths);
        read(j, "exclude", at, a.exclude);
        read(j, "when", at, a.when);
        read(j, "expire_in", at, a.expire_in);
        read(j, "artifact_type", at, a.artifact_type);
        read(j, "artifact_format", at, a.artifact_format);
        return a;
    });

    read_objects(root, "cache", "", job.cache, [](const json& j, const std::string& at) {
        cache_spec c;
        read(j, "key", at, c.key);
        read(j, "untracked", at, c.untracked);
        read(j, "paths", at, c.paths);
        read(j, "policy", at, c.policy);
        read(j, "when", at, c.when);
        read(j, "fallback_keys", at, c.fallback_keys);
        return c;
    });

    read_objects(
        root,
        "credentials",
        "",
        job.credentials,
        [](const json& j, const std::string& at) {
            registry_credential c;
            read(j, "type", at, c.type);
            read(j, "url", at, c.url);
            read(j, "username", at, c.username);
            read(j, "password", at, c.password);
            return c;
        }
    );

    read_objects(
        root,
        "dependencies",
        "",
        job.dependencies,
        [](const json& j, const std::string& at) {
            job_dependency d;
            read(j, "id", at, d.id);
            read(j, "name", at, d.name);
            read(j, "token", at, d.token);
            if (const json* af = object_member(j, "artifacts_file", at)) {
                const std::string p = child(at, "artifacts_file");
                artifacts_file f;
                read(*af, "filename", p, f.filename);
                read(*af, "size", p, f.size);
                d.artifacts = std::move(f);
            }
            return d;
        }
    );

    if (const json* f = object_member(root, "features", "")) {
        read(*f, "trace_sections", "features", job.features.trace_sections);
        read(*f, "failure_reasons", "features", job.features.failure_reasons);
        read(*f, "token_mask_prefixes", "features", job.features.token_mask_prefixes);
    }

    read(root, "run", "", job.run);
}

payload_error make_error(std::string field, std::string message) {
    return payload_error{std::move(field), std::move(message), 0, {}};
}

}  // namespace

void throw_exception_from_error(const payload_error& e, const boost::source_location& loc) {
    boost::throw_exception(std::runtime_error(e.message), loc);
}

payload_result parse_job_payload(std::string_view text) {
    json root;
    try {
        root = json::parse(text);
    } catch (const json::parse_error& e) {
        // what() reads "[json.exception.parse_error.101] parse error at line 1, column 10: <why>".
        std::string_view what = e.what();
        if (auto pos = what.find("] "); pos != std::string_view::npos) {
            what.remove_prefix(pos + 2);
        }
        std::string where = "byte " + std::to_string(e.byte);
        constexpr std::string_view lead = "parse error at ";
        if (what.substr(0, lead.size()) == lead) {
            what.remove_prefix(lead.size());
            if (auto colon = what.find(": "); colon != std::string_view::npos) {
                where = std::string(what.substr(0, colon)) + " (" + where + ")";
                what.remove_prefix(colon + 2);
            }
        }
        return make_error("", "job payload: invalid JSON at " + where + ": " + std::string(what));
    }
    if (!root.is_object()) {
        return make_error("", "job payload: top level must be a JSON object");
    }

    job_spec job;
    const json* id = member(root, "id");
    auto id_value = id ? as_int64(*id) : std::nullopt;
    if (!id_value || *id_value <= 0) {
        return make_error("id", "job payload: field \"id\" must be a positive integer");
    }
    job.id = *id_value;

    const json* token = member(root, "token");
    if (!token || !token->is_string() || token->get_ref<const std::string&>().empty()) {
        auto e = make_error("token", "job payload: field \"token\" must be a non-empty string");
        e.job_id = job.id;
        return e;
    }
    job.token = token->get<std::string>();

    try {
        parse_body(root, job);
    } catch (const bad_field& f) {
        return payload_error{
            f.path, "job payload: field \"" + f.path + "\" " + f.expectation, job.id, job.token};
    }
    return job;
}

const job_variable* find_variable(
    const std::vector<job_variable>& variables, std::string_view key
) {
    for (auto it = variables.rbegin(); it != variables.rend(); ++it) {
        if (it->key == key) {
            return &*it;
        }
    }
    return nullptr;
}

bool when_on_success(std::string_view when) {
    return when.empty() || when == "on_success" || when == "always";
}

bool when_on_failure(std::string_view when) { return when == "on_failure" || when == "always"; }

}  // namespace kiln::gitlab
