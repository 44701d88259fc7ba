#pragma once
// The job's artifact stages as gitlab-runner runs them (gitlab-runner-reference.md §3.1):
// download_artifacts (dependencies' archives, before the script) and
// upload_artifacts_on_success / upload_artifacts_on_failure (after after_script and the cache).
// File selection is path_match's pure core; archives come from archive.hpp on the blocking
// pool; transfers go through gitlab::client.

#include <boost/asio/awaitable.hpp>
#include <filesystem>
#include <functional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "runner/artifacts/archive.hpp"
#include "runner/artifacts/artifact_rules.hpp"
#include "runner/gitlab/client.hpp"
#include "runner/gitlab/job_payload.hpp"

namespace kiln::artifacts {

struct stage_context {
    gitlab::client& api;
    const gitlab::job_spec& job;
    std::filesystem::path project_dir;
    std::filesystem::path scratch_dir;  // for archives in transit (the job's .tmp directory)
    /// The job's environment in order (later entries win), for $VAR in names and settings.
    const std::vector<std::pair<std::string, std::string>>& env;
    std::function<void(std::string_view)> out;  // the job trace
    std::function<void(const std::string& name, std::string_view description)> section_start;
    std::function<void(const std::string& name)> section_end;

    /// Signed artifacts (signing.hpp, docs/artifacts.md). `sign_zip`, when set, is given the
    /// entries of each zip about to be written (it drops kiln's own .kiln/ manifest files left
    /// over from a dependency) and returns the trailer that appends the signed manifest;
    /// `signed_note` is the trace line after such an upload. `verify_download`, when set,
    /// checks a downloaded dependency archive before it is extracted: ok and a line for the
    /// trace, or not ok and the reason, which fails the job.
    std::function<std::function<std::vector<generated_file>(const std::vector<file_digest>&)>(
        std::vector<archive_entry>& entries)>
        sign_zip;
    std::string signed_note;
    struct download_check {
        bool ok = true;
        std::string message;
    };
    std::function<download_check(const std::filesystem::path& archive,
                                 const gitlab::job_dependency& dependency)>
        verify_download;
};

struct stage_outcome {
    bool ok = true;
    std::string message;  // why the job fails, for "ERROR: Job failed: ..."
};

/// download_artifacts: every dependency with an archive is downloaded with its token and
/// extracted into the project directory (safely: see extract_archive). No-op (no section)
/// when no dependency has artifacts.
boost::asio::awaitable<stage_outcome> download_artifacts_stage(stage_context ctx);

/// upload_artifacts_on_success / _on_failure: every artifacts[] entry whose `when` matches the
/// job's result is archived and uploaded. No-op (no section) when none matches.
boost::asio::awaitable<stage_outcome> upload_artifacts_stage(stage_context ctx,
                                                             bool job_succeeded);

}  // namespace kiln::artifacts
