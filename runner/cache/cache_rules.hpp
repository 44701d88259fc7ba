#pragma once
// The job cache's rules, pure: how gitlab-runner turns a payload's cache[] entry into keys,
// file locations and decisions (protocol.md §8, gitlab-runner-reference.md §5.2).
//  - keys: $VARS expanded, then sanitised (cache/cachekey in gitlab-runner), or SHA-256 hashed
//    with FF_HASH_CACHE_KEYS; the default key is "<job name>/<git ref>";
//  - restore order: key, each fallback_keys entry, then CACHE_FALLBACK_KEY (refused when it
//    ends in "-protected", so an unprotected branch cannot read a protected branch's cache);
//  - policy pull / push / pull-push, when on_success / on_failure / always;
//  - local archive <cache_dir>/<project path>/<key>/cache.zip, distributed object
//    [<Path>/][runner/<short token>/]project/<id>/[<shard>/]<key>.

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace kiln::gitlab {
struct cache_spec;
}

namespace kiln::cache {

/// A line for the job's trace, in the order gitlab-runner prints them.
struct message {
    enum class level { info, notice, warning };
    level kind = level::info;
    std::string text;
    bool operator==(const message&) const = default;
};

/// Go's %q for the short strings that appear in messages.
std::string go_quote(std::string_view s);

struct sanitized_key {
    std::string key;      // empty when the key cannot be used
    std::string warning;  // "cache key "a/../b" sanitized to "b"", or why it is unusable
};

/// gitlab-runner's cachekey.Sanitize: %2f/%2F → '/', %2e/%2E → '.', '\' → '/', path.Clean
/// inside a virtual root (".." never leaves it), trailing whitespace trimmed from the rightmost
/// segments (dropping those that become empty). "" stays "" with no warning.
sanitized_key sanitize_key(std::string_view raw);

/// Looks a job variable up by name (the last definition wins); nullopt when undefined.
using variable_lookup = std::function<std::optional<std::string>(std::string_view)>;

/// Go's os.Expand with gitlab-runner's mapping: $NAME and ${NAME} become the variable's value
/// (empty when undefined), "$$" becomes "$", shell specials ($1, $@, …) stay as written, a "$"
/// followed by nothing usable stays, "${}" disappears.
std::string expand_variables(std::string_view text, const variable_lookup& lookup);

enum class policy { pull_push, pull, push };

/// "" and "pull-push" → pull_push, "pull", "push"; anything else → nullopt.
std::optional<policy> parse_policy(std::string_view text);

/// cache:when — "" / on_success: after a successful job; on_failure: after a failed one;
/// always: both.
bool should_archive(std::string_view when, bool job_succeeded);

enum class archive_format { zip, tar_zstd };

struct format_choice {
    archive_format format = archive_format::zip;
    std::string warning;  // for a value kiln does not write
};

/// CACHE_COMPRESSION_FORMAT: "" / zip → zip, tarzstd → tar.zst; zipzstd (zip with zstd
/// members, which few tools read) and anything else → zip with a warning.
format_choice parse_compression_format(std::string_view text);

/// The job facts the cache needs.
struct job_facts {
    std::string job_name;
    std::string git_ref;
    std::string repo_url;      // for the project's directory under cache_dir
    std::int64_t project_id = 0;
    bool git_strategy_empty = false;  // GIT_STRATEGY=empty: "<project>-empty"
    bool hash_keys = false;            // FF_HASH_CACHE_KEYS
};

/// One usable key: `human` for the trace, `storage` for file and object names (the same
/// unless keys are hashed).
struct cache_key {
    std::string human;
    std::string storage;
    bool operator==(const cache_key&) const = default;
};

/// Resolves one user key (or the default when `user_key` is empty) as newCacheConfig does:
/// expand, then sanitise or hash. nullopt (with messages saying why) when it is unusable.
std::optional<cache_key> resolve_key(std::string_view user_key, const job_facts& job,
                                     const variable_lookup& lookup,
                                     std::vector<message>& messages);

/// Whether the entry names anything to cache (paths or untracked); entries without are
/// skipped silently, and a job where all are has no cache stages at all.
bool has_files(const gitlab::cache_spec& entry);

struct restore_plan {
    std::vector<message> messages;   // printed before the first key is tried
    std::vector<cache_key> keys;     // try in this order; empty: nothing to restore
    std::string error;               // an unknown policy: the job fails with this
};

/// The keys to try for one cache[] entry in restore_cache.
restore_plan plan_restore(const gitlab::cache_spec& entry, const job_facts& job,
                          const variable_lookup& lookup);

struct archive_plan {
    std::vector<message> messages;
    std::optional<cache_key> key;  // nothing to archive when empty
    std::string error;
};

/// The key to write for one cache[] entry in archive_cache / archive_cache_on_failure.
archive_plan plan_archive(const gitlab::cache_spec& entry, const job_facts& job,
                          const variable_lookup& lookup, bool job_succeeded);

/// gitlab-runner's ProjectSlug: the repository URL's path without ".git", cleaned; or
/// "project-<id>" when the URL has no usable path; "-empty" appended for GIT_STRATEGY=empty.
std::string project_cache_dir(const job_facts& job);

/// "<project dir>/<storage key>/cache.zip", relative to the cache directory.
std::string local_archive_path(const job_facts& job, const cache_key& key);

struct object_location {
    std::string path;        // "[Path/][runner/<short>/]project/<id>/<key>"
    std::string error;       // when the key would leave the project's prefix
};

/// The distributed cache object name (cache/cache.go GetAdapter). `shared` drops the runner's
/// namespace; hashed keys get a "<key[0:2]>/" shard directory.
object_location object_name(std::string_view config_path, bool shared,
                            std::string_view short_token, std::int64_t project_id,
                            const cache_key& key, bool hashed);

}  // namespace kiln::cache
