#include "runner/artifacts/artifact_stages.hpp"

#include <malloc.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <system_error>

#include "runner/artifacts/path_match.hpp"
#include "runner/artifacts/project_files.hpp"
#include "runner/util/blocking.hpp"
#include "runner/util/logging.hpp"

namespace kiln::artifacts {
namespace {

namespace fs = std::filesystem;
namespace asio = boost::asio;

// GitLab's log colours, as the job trace uses them.
constexpr std::string_view ansi_reset = "\x1b[0;m";
constexpr std::string_view ansi_bold_green = "\x1b[32;1m";
constexpr std::string_view ansi_bold_red = "\x1b[31;1m";
constexpr std::string_view ansi_bold_yellow = "\x1b[33;1m";
constexpr std::string_view erase_line = "\x1b[0K";

void line(const stage_context& ctx, std::string_view color, std::string_view text) {
    std::string s(erase_line);
    s += color;
    s += text;
    if (!color.empty()) {
        s += ansi_reset;
    }
    s += "\n";
    ctx.out(s);
}

std::string count(std::uint64_t n, const char* noun) {
    return std::to_string(n) + " " + noun + (n == 1 ? "" : "s");
}

std::string env_value(const stage_context& ctx, std::string_view key) {
    std::string value;
    for (const auto& [k, v] : ctx.env) {
        if (k == key) {
            value = v;
        }
    }
    return value;
}

struct built_archive {
    bool ok = false;
    std::string error;
    fs::path file;           // what to upload
    bool temporary = false;  // remove after the upload
    std::uint64_t files = 0;  // regular files in it
    std::uint64_t content_bytes = 0;
    std::uint64_t archive_bytes = 0;
};

struct prepared_upload {
    selection chosen;
    std::string untracked_error;
    built_archive archive;
};

// Selection and archiving for one artifacts[] entry; runs on the blocking pool.
prepared_upload prepare_upload(const gitlab::artifact_spec& a, const std::string& format,
                               const fs::path& project_dir, const fs::path& out_path,
                               compression_level level,
                               const decltype(stage_context::sign_zip)& sign_zip) {
    prepared_upload p;
    selection_spec spec;
    spec.paths = a.paths;
    spec.exclude = a.exclude;
    spec.untracked = a.untracked;
    if (a.untracked) {
        spec.untracked_files = untracked_files(project_dir, p.untracked_error);
    }
    disk_view view(project_dir);
    p.chosen = select_files(project_dir.string(), spec, view);
    auto& b = p.archive;
    if (p.chosen.entries.empty()) {
        b.ok = true;
        return p;
    }
    try {
        if (format == "zip") {
            std::vector<archive_entry> entries;
            entries.reserve(p.chosen.entries.size());
            for (const auto& e : p.chosen.entries) {
                if (e.kind == node_kind::other) {
                    continue;  // sockets, fifos, devices are not archived
                }
                archive_entry ae;
                ae.name = e.kind == node_kind::directory ? e.path + "/" : e.path;
                ae.source = project_dir / e.path;
                entries.push_back(std::move(ae));
            }
            zip_options o;
            o.level = level;
            if (sign_zip) {
                o.trailer = sign_zip(entries);
            }
            auto st = write_zip(entries, out_path, o);
            b.file = out_path;
            b.temporary = true;
            b.content_bytes = st.uncompressed_bytes;
            b.archive_bytes = st.archive_bytes;
            for (const auto& e : p.chosen.entries) {
                b.files += e.kind == node_kind::file ? 1 : 0;
            }
        } else if (format == "gzip") {
            // One gzip member per regular file, concatenated (gitlab-runner's gzip format).
            b.file = out_path;
            b.temporary = true;
            std::ofstream out(out_path, std::ios::binary | std::ios::trunc);
            if (!out) {
                throw std::system_error(errno, std::generic_category(),
                                        "cannot create " + out_path.string());
            }
            const fs::path member = out_path.string() + ".member";
            for (const auto& e : p.chosen.entries) {
                if (e.kind != node_kind::file) {
                    continue;
                }
                auto st = write_gzip(project_dir / e.path, member, level, e.path);
                std::ifstream in(member, std::ios::binary);
                out << in.rdbuf();
                b.files += 1;
                b.content_bytes += st.uncompressed_bytes;
            }
            std::error_code ec;
            fs::remove(member, ec);
            out.close();
            if (!out) {
                throw std::system_error(errno, std::generic_category(),
                                        "cannot write " + out_path.string());
            }
            b.archive_bytes = fs::file_size(out_path);
        } else if (format == "raw") {
            std::vector<const selected_entry*> regular;
            for (const auto& e : p.chosen.entries) {
                if (e.kind == node_kind::file) {
                    regular.push_back(&e);
                }
            }
            if (regular.size() != 1) {
                b.error = "a raw artifact must be exactly one file, but the paths select " +
                          std::to_string(regular.size()) +
                          "; narrow artifacts:reports to a single file";
                return p;
            }
            b.file = project_dir / regular.front()->path;
            b.files = 1;
            b.content_bytes = b.archive_bytes = fs::file_size(b.file);
        } else {
            b.error = "artifact_format \"" + format +
                      "\" is not supported (GitLab accepts zip, gzip and raw)";
            return p;
        }
        b.ok = true;
    } catch (const std::exception& e) {
        b.error = e.what();
    }
    // The compression workers' buffers are freed by now but stay in their malloc arenas; give
    // them back so the upload (and the rest of the job) runs at the daemon's usual size.
    ::malloc_trim(0);
    return p;
}

std::string upload_failure_text(const gitlab::upload_result& r, const built_archive& b,
                                const std::string& file_name) {
    const std::string size = format_size(b.archive_bytes);
    switch (r.status) {
        case gitlab::upload_status::too_large:
            return "too large archive: " + file_name + " is " + size +
                   " and GitLab refused it as over its maximum artifacts size (HTTP 413" +
                   (r.message.empty() ? std::string() : ": " + r.message) +
                   "). Upload less (narrow artifacts:paths or add artifacts:exclude) or ask a "
                   "GitLab administrator to raise the maximum artifacts size (Admin area > "
                   "Settings > CI/CD, or the project's or group's setting)";
        case gitlab::upload_status::forbidden:
            return "forbidden (HTTP 403" + (r.message.empty() ? std::string() : ": " + r.message) +
                   "): the job token was refused; the job may no longer be running on GitLab";
        default:
            return "failed (HTTP " + std::to_string(r.http_status) +
                   (r.message.empty() ? std::string() : ": " + r.message) + ")";
    }
}

std::int64_t parse_attempts(const std::string& text) {
    char* end = nullptr;
    long v = std::strtol(text.c_str(), &end, 10);
    if (text.empty() || end == nullptr || *end != '\0') {
        return 1;
    }
    return std::clamp<long>(v, 1, 10);
}

}  // namespace

// ---- download_artifacts -------------------------------------------------------------------------

asio::awaitable<stage_outcome> download_artifacts_stage(stage_context ctx) {
    stage_outcome outcome;
    std::vector<const gitlab::job_dependency*> deps;
    for (const auto& d : ctx.job.dependencies) {
        if (d.artifacts && !d.artifacts->filename.empty()) {
            deps.push_back(&d);
        }
    }
    if (deps.empty()) {
        co_return outcome;
    }
    const std::string section = "download_artifacts";
    ctx.section_start(section, "Downloading artifacts");
    const auto attempts = parse_attempts(env_value(ctx, "ARTIFACT_DOWNLOAD_ATTEMPTS"));
    const auto limit_override = env_value(ctx, "KILN_ARTIFACT_EXTRACT_MAX_SIZE");
    std::error_code ec;
    fs::create_directories(ctx.scratch_dir, ec);
    fs::create_directories(ctx.project_dir, ec);

    for (const auto* dep : deps) {
        line(ctx, ansi_bold_green,
             "Downloading artifacts for " + dep->name + " (" + std::to_string(dep->id) + ")...");
        // Named as GitLab names it, so messages about its entries say which archive it was.
        const fs::path dep_dir = ctx.scratch_dir / ("dependency-" + std::to_string(dep->id));
        fs::create_directories(dep_dir, ec);
        auto base = fs::path(dep->artifacts->filename).filename();
        const fs::path file = dep_dir / (base.empty() || base == ".." ? fs::path("artifacts.zip") : base);
        const std::string token = dep->token.empty() ? ctx.job.token : dep->token;
        std::string failure;
        bool downloaded = false;
        for (std::int64_t attempt = 1; attempt <= attempts && !downloaded; ++attempt) {
            auto r = co_await ctx.api.download_artifacts(dep->id, token, file);
            if (!r.reached()) {
                failure = "failed: " + r.transport.message;
                continue;
            }
            switch (r.value.status) {
                case gitlab::download_status::succeeded:
                    downloaded = true;
                    break;
                case gitlab::download_status::forbidden:
                    failure = "forbidden (HTTP " + std::to_string(r.value.http_status) +
                              "): GitLab refused the job token for this dependency";
                    attempt = attempts;  // no retry
                    break;
                case gitlab::download_status::not_found:
                    failure = "not found (HTTP 404): the dependency's artifacts are gone "
                              "(expired or deleted); run that job again";
                    attempt = attempts;
                    break;
                default:
                    failure = "failed (HTTP " + std::to_string(r.value.http_status) +
                              (r.value.message.empty() ? std::string() : ": " + r.value.message) +
                              ")";
                    break;
            }
        }
        if (!downloaded) {
            fs::remove_all(dep_dir, ec);
            line(ctx, ansi_bold_red, "ERROR: Downloading artifacts from coordinator... " + failure);
            outcome.ok = false;
            outcome.message = "downloading the artifacts of " + dep->name + " (" +
                              std::to_string(dep->id) + ") " + failure;
            break;
        }
        const auto size = fs::file_size(file, ec);
        line(ctx, "", "Downloading artifacts from coordinator... ok  id=" + std::to_string(dep->id) +
                          " responseStatus=200 OK size=" + format_size(ec ? 0 : size));

        if (ctx.verify_download) {
            auto verify = ctx.verify_download;
            auto check = [verify, file, dep] { return verify(file, *dep); };
            auto checked = co_await util::run_blocking(std::move(check));
            if (!checked.ok) {
                fs::remove_all(dep_dir, ec);
                line(ctx, ansi_bold_red, "ERROR: the artifacts archive of " + dep->name + " (" +
                                             std::to_string(dep->id) +
                                             ") does not verify: " + checked.message);
                outcome.ok = false;
                outcome.message = "the artifacts archive of " + dep->name + " (" +
                                  std::to_string(dep->id) + ") does not verify: " +
                                  checked.message;
                break;
            }
            line(ctx, "", checked.message);
        }

        extract_limits limits;
        limits.max_total_bytes = extract_limit(ec ? 0 : size, limit_override);
        const fs::path dest = ctx.project_dir;
        auto extract = [file, dest, limits] { return extract_archive(file, dest, limits); };
        auto result = co_await util::run_blocking(std::move(extract));
        fs::remove_all(dep_dir, ec);
        if (!result.ok) {
            line(ctx, ansi_bold_red,
                 "ERROR: the artifacts archive of " + dep->name + " (" + std::to_string(dep->id) +
                     ") was refused: " + result.error +
                     ". Nothing was written outside the project directory.");
            outcome.ok = false;
            outcome.message = "the artifacts archive of " + dep->name + " (" +
                              std::to_string(dep->id) + ") was refused: " + result.error;
            break;
        }
        line(ctx, "", "Extracted " + count(result.files, "file") + " (" +
                          format_size(result.bytes) + ") from " + dep->artifacts->filename);
    }
    ctx.section_end(section);
    co_return outcome;
}

// ---- upload_artifacts ---------------------------------------------------------------------------

asio::awaitable<stage_outcome> upload_artifacts_stage(stage_context ctx, bool job_succeeded) {
    stage_outcome outcome;
    std::vector<const gitlab::artifact_spec*> todo;
    for (const auto& a : ctx.job.artifacts) {
        if (job_succeeded ? gitlab::when_on_success(a.when) : gitlab::when_on_failure(a.when)) {
            todo.push_back(&a);
        }
    }
    if (todo.empty()) {
        co_return outcome;
    }
    const std::string section =
        job_succeeded ? "upload_artifacts_on_success" : "upload_artifacts_on_failure";
    ctx.section_start(section, job_succeeded ? "Uploading artifacts for successful job"
                                             : "Uploading artifacts for failed job");
    const auto level = parse_compression_level(env_value(ctx, "ARTIFACT_COMPRESSION_LEVEL"));
    std::error_code ec;
    fs::create_directories(ctx.scratch_dir, ec);

    std::uint64_t uploaded = 0;
    std::uint64_t uploaded_files = 0;
    std::uint64_t uploaded_bytes = 0;
    std::vector<std::string> kinds;
    int index = 0;
    for (const auto* a : todo) {
        ++index;
        const std::string type = a->artifact_type.empty() ? "archive" : a->artifact_type;
        const std::string format = effective_format(*a);
        line(ctx, ansi_bold_green, "Uploading artifacts...");
        const std::string file_name =
            artifact_file_name(expand_variables(a->name, ctx.env), format);
        const fs::path out_path =
            ctx.scratch_dir / ("artifacts-" + std::to_string(index) + "-" + type +
                               (format == "gzip" ? ".gz" : format == "zip" ? ".zip" : ""));
        const fs::path project_dir = ctx.project_dir;
        const gitlab::artifact_spec spec = *a;
        auto sign_zip = format == "zip" ? ctx.sign_zip : nullptr;
        auto prepare = [spec, format, project_dir, out_path, level, sign_zip] {
            return prepare_upload(spec, format, project_dir, out_path, level, sign_zip);
        };
        auto prepared = co_await util::run_blocking(std::move(prepare));
        if (!prepared.untracked_error.empty()) {
            line(ctx, ansi_bold_yellow, "WARNING: untracked: " + prepared.untracked_error);
        }
        for (const auto& m : prepared.chosen.messages) {
            line(ctx, m.warning ? ansi_bold_yellow : std::string_view(),
                 (m.warning ? "WARNING: " : "") + m.text);
        }
        auto& b = prepared.archive;
        if (!b.ok) {
            if (b.temporary) {
                fs::remove(b.file, ec);
            }
            line(ctx, ansi_bold_red, "ERROR: Uploading artifacts as \"" + type + "\": " + b.error);
            outcome.ok = false;
            outcome.message = "uploading artifacts as \"" + type + "\" failed: " + b.error;
            break;
        }
        if (prepared.chosen.entries.empty()) {
            line(ctx, ansi_bold_yellow, "WARNING: No files to upload");
            continue;
        }
        gitlab::artifact_upload_params params;
        params.file_name = file_name;
        params.artifact_type = type;
        params.artifact_format = format;
        params.expire_in = a->expire_in;
        auto r = co_await ctx.api.upload_artifacts(ctx.job.id, ctx.job.token, b.file, params);
        if (b.temporary) {
            fs::remove(b.file, ec);
        }
        const std::string what = "Uploading artifacts as \"" + type + "\" to coordinator... ";
        if (!r.reached()) {
            line(ctx, ansi_bold_red, "ERROR: " + what + "failed: " + r.transport.message);
            outcome.ok = false;
            outcome.message = "uploading artifacts as \"" + type + "\" failed: " +
                              r.transport.message;
            break;
        }
        if (r.value.status != gitlab::upload_status::succeeded) {
            auto text = upload_failure_text(r.value, b, file_name);
            line(ctx, ansi_bold_red, "ERROR: " + what + text);
            outcome.ok = false;
            outcome.message = "uploading artifacts as \"" + type + "\" failed: " +
                              (r.value.status == gitlab::upload_status::too_large
                                   ? "too large (" + format_size(b.archive_bytes) + ", HTTP 413)"
                                   : text);
            break;
        }
        line(ctx, "", what + "201 Created  id=" + std::to_string(ctx.job.id) + " " + file_name +
                          ": " + count(b.files, "file") + ", " +
                          format_size(b.content_bytes) + " in " + format_size(b.archive_bytes) +
                          (a->expire_in.empty() ? std::string() : ", expire_in=" + a->expire_in));
        if (sign_zip && !ctx.signed_note.empty()) {
            line(ctx, "", ctx.signed_note);
        }
        ++uploaded;
        uploaded_files += b.files;
        uploaded_bytes += b.archive_bytes;
        kinds.push_back(type);
    }
    if (uploaded > 0) {
        std::string list;
        for (const auto& k : kinds) {
            list += (list.empty() ? "" : ", ") + k;
        }
        line(ctx, "", "Uploaded " + std::to_string(uploaded) + " artifact" +
                          (uploaded == 1 ? "" : "s") + " (" + list + "): " +
                          count(uploaded_files, "file") + ", " + format_size(uploaded_bytes));
    }
    ctx.section_end(section);
    co_return outcome;
}

}  // namespace kiln::artifacts
