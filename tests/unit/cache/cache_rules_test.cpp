#include "runner/cache/cache_rules.hpp"

#include <map>

#include <catch2/catch.hpp>

#include "runner/gitlab/job_payload.hpp"

using namespace kiln::cache;
using kiln::gitlab::cache_spec;

namespace {

variable_lookup vars(std::map<std::string, std::string> m) {
    return [m = std::move(m)](std::string_view k) -> std::optional<std::string> {
        auto it = m.find(std::string(k));
        if (it == m.end()) {
            return std::nullopt;
        }
        return it->second;
    };
}

job_facts facts() {
    job_facts j;
    j.job_name = "build";
    j.git_ref = "main";
    j.repo_url = "https://gitlab-ci-token:secret@gitlab.example.com/group/sub/project.git";
    j.project_id = 42;
    return j;
}

cache_spec entry(std::string key, std::vector<std::string> paths = {"vendor"}) {
    cache_spec c;
    c.key = std::move(key);
    c.paths = std::move(paths);
    return c;
}

std::vector<std::string> human_keys(const restore_plan& p) {
    std::vector<std::string> out;
    for (const auto& k : p.keys) {
        out.push_back(k.human);
    }
    return out;
}

}  // namespace

// gitlab-runner's own table (cache/cachekey/cachekey_test.go).
TEST_CASE("cache keys are sanitised as gitlab-runner does", "[cache]") {
    struct row {
        std::string raw;
        std::string expected;  // "" = unusable
    };
    const std::vector<row> rows = {
        {"fallback_key", "fallback_key"},
        {"some-job/some-ref", "some-job/some-ref"},
        {".../....", ".../...."},
        {"...", "..."},
        {"fallback_key/", "fallback_key"},
        {"fallback_key ", "fallback_key"},
        {"fallback_key\\", "fallback_key"},
        {"fallback_key/ \\", "fallback_key"},
        {"fallback_key/ / \\  \\", "fallback_key"},
        {"fallback_key/o", "fallback_key/o"},
        {"fallback_key / \\o", "fallback_key / /o"},
        {"\t foo bar \t\r", "\t foo bar"},
        {" foo / bar ", " foo / bar"},
        {"foo\r", "foo"},
        {"foo \t \r ", "foo"},
        {"\\", ""},
        {"\\.", ""},
        {"/", ""},
        {" ", ""},
        {".", ""},
        {"..", ""},
        {" / ", ""},
        {"//", ""},
        {"//\\", ""},
        {"../.", ""},
        {"foo\\bar\\..\\..", ""},
        {"foo/bar/../..", ""},
        {" \t\r\n", ""},
        {"something %2F something", "something / something"},
        {"something %2f something", "something / something"},
        {"some%2f../job/some/ref/.", "job/some/ref"},
        {"%2E", ""},
        {"%2E%2E", ""},
        {"%2E%2E%2E", "..."},
        {"%2e%2E", ""},
        {".%2E", ""},
        {"%5C", "%5C"},
        {"foo/./bar", "foo/bar"},
        {"foo/blipp/../bar", "foo/bar"},
        {"/foo/bar", "foo/bar"},
        {"//foo/bar", "foo/bar"},
        {"../foo/bar", "foo/bar"},
        {".../foo/bar", ".../foo/bar"},
        {"foo/bar/../../../.././blerp", "blerp"},
        {"a/b/c/../../d", "a/d"},
        {"job\\name/git\\ref", "job/name/git/ref"},
        {"foo\\blipp\\..\\bar", "foo/bar"},
        {"\\\\foo\\bar", "foo/bar"},
        {"..\\foo\\bar", "foo/bar"},
        {"foo\\bar\\..\\..\\..\\..\\.\\blerp", "blerp"},
        {"foo/ /bar", "foo/ /bar"},
        {"foo/ /", "foo"},
        {"foo/ / /", "foo"},
    };
    for (const auto& r : rows) {
        INFO("raw key: " << go_quote(r.raw));
        auto s = sanitize_key(r.raw);
        CHECK(s.key == r.expected);
        if (r.expected.empty()) {
            CHECK(s.warning == "cache key " + go_quote(r.raw) + " could not be sanitized");
        } else if (r.expected == r.raw) {
            CHECK(s.warning.empty());
        } else {
            CHECK(s.warning ==
                  "cache key " + go_quote(r.raw) + " sanitized to " + go_quote(r.expected));
        }
        if (!s.key.empty()) {
            CHECK(sanitize_key(s.key).key == s.key);  // idempotent
        }
    }
    CHECK(sanitize_key("").key.empty());
    CHECK(sanitize_key("").warning.empty());
}

TEST_CASE("variables in keys expand as Go's os.Expand with gitlab-runner's mapping", "[cache]") {
    auto v = vars({{"CI_COMMIT_REF_SLUG", "feature-x"}, {"A", "1"}, {"EMPTY", ""}});
    CHECK(expand_variables("deps-$CI_COMMIT_REF_SLUG", v) == "deps-feature-x");
    CHECK(expand_variables("deps-${CI_COMMIT_REF_SLUG}-x", v) == "deps-feature-x-x");
    CHECK(expand_variables("$UNDEFINED-x", v) == "-x");
    CHECK(expand_variables("a$$b", v) == "a$b");
    CHECK(expand_variables("$1-$@", v) == "$1-$@");
    CHECK(expand_variables("x${}y", v) == "xy");
    CHECK(expand_variables("x${A", v) == "xA");
    CHECK(expand_variables("cost: 5$", v) == "cost: 5$");
    CHECK(expand_variables("$%", v) == "$%");
    CHECK(expand_variables("$A$A", v) == "11");
    CHECK(expand_variables("no vars", v) == "no vars");
}

TEST_CASE("policy and when", "[cache]") {
    CHECK(parse_policy("") == policy::pull_push);
    CHECK(parse_policy("pull-push") == policy::pull_push);
    CHECK(parse_policy("pull") == policy::pull);
    CHECK(parse_policy("push") == policy::push);
    CHECK_FALSE(parse_policy("pul"));
    CHECK(should_archive("", true));
    CHECK(should_archive("on_success", true));
    CHECK_FALSE(should_archive("on_success", false));
    CHECK_FALSE(should_archive("on_failure", true));
    CHECK(should_archive("on_failure", false));
    CHECK(should_archive("always", true));
    CHECK(should_archive("always", false));
    CHECK_FALSE(should_archive("", false));
}

TEST_CASE("CACHE_COMPRESSION_FORMAT", "[cache]") {
    CHECK(parse_compression_format("").format == archive_format::zip);
    CHECK(parse_compression_format("zip").warning.empty());
    CHECK(parse_compression_format("tarzstd").format == archive_format::tar_zstd);
    auto z = parse_compression_format("zipzstd");
    CHECK(z.format == archive_format::zip);
    CHECK(z.warning.find("zipzstd") != std::string::npos);
}

TEST_CASE("restore order: key, fallback_keys, CACHE_FALLBACK_KEY", "[cache]") {
    auto e = entry("deps-$CI_COMMIT_REF_SLUG-protected");
    e.fallback_keys = {"deps-$DEFAULT_BRANCH-protected", "", "deps-any-protected"};
    auto p = plan_restore(e, facts(),
                          vars({{"CI_COMMIT_REF_SLUG", "feat"},
                                {"DEFAULT_BRANCH", "main"},
                                {"CACHE_FALLBACK_KEY", "global-non_protected"}}));
    CHECK(p.error.empty());
    CHECK(p.messages.empty());
    CHECK(human_keys(p) == std::vector<std::string>{"deps-feat-protected", "deps-main-protected",
                                                    "deps-any-protected",
                                                    "global-non_protected"});
}

TEST_CASE("a CACHE_FALLBACK_KEY ending in -protected is refused", "[cache]") {
    auto p = plan_restore(entry("k"), facts(), vars({{"CACHE_FALLBACK_KEY", "main-protected"}}));
    CHECK(human_keys(p) == std::vector<std::string>{"k"});
    REQUIRE(p.messages.size() == 1);
    CHECK(p.messages[0].kind == message::level::warning);
    CHECK(p.messages[0].text == "CACHE_FALLBACK_KEY \"main-protected\" not allowed to end in \"-protected\"");
    // fallback_keys from the job itself carry GitLab's suffixes and are not refused.
    auto e = entry("k");
    e.fallback_keys = {"main-protected"};
    CHECK(human_keys(plan_restore(e, facts(), vars({}))) ==
          std::vector<std::string>{"k", "main-protected"});
}

TEST_CASE("the default key is <job name>/<ref>", "[cache]") {
    auto p = plan_restore(entry(""), facts(), vars({}));
    CHECK(human_keys(p) == std::vector<std::string>{"build/main"});
    auto j = facts();
    j.job_name = "test 1/2";
    j.git_ref = "feature/x";
    CHECK(human_keys(plan_restore(entry(""), j, vars({}))) ==
          std::vector<std::string>{"test 1/2/feature/x"});
}

TEST_CASE("restore: policy, unusable keys, entries without files", "[cache]") {
    SECTION("policy push does not download") {
        auto e = entry("k");
        e.policy = "push";
        auto p = plan_restore(e, facts(), vars({}));
        CHECK(p.keys.empty());
        REQUIRE(p.messages.size() == 1);
        CHECK(p.messages[0].text == "Not downloading cache k due to policy");
    }
    SECTION("policy may come from a variable") {
        auto e = entry("k");
        e.policy = "$POLICY";
        CHECK(plan_restore(e, facts(), vars({{"POLICY", "push"}})).keys.empty());
        CHECK(plan_restore(e, facts(), vars({{"POLICY", "pull"}})).keys.size() == 1);
    }
    SECTION("an unknown policy is an error naming the key") {
        auto e = entry("k");
        e.policy = "sometimes";
        auto p = plan_restore(e, facts(), vars({}));
        CHECK(p.keys.empty());
        CHECK(p.error.find("unknown cache policy sometimes for k") == 0);
    }
    SECTION("a key that sanitises to nothing is skipped with a notice") {
        auto p = plan_restore(entry("../.."), facts(), vars({}));
        CHECK(p.keys.empty());
        REQUIRE(p.messages.size() == 2);
        CHECK(p.messages[0].kind == message::level::warning);
        CHECK(p.messages[1].text == "Skipping cache extraction due to empty cache key");
    }
    SECTION("a sanitised key is used with a warning") {
        auto p = plan_restore(entry("a/../b/"), facts(), vars({}));
        CHECK(human_keys(p) == std::vector<std::string>{"b"});
        REQUIRE(p.messages.size() == 1);
        CHECK(p.messages[0].text == "cache key \"a/../b/\" sanitized to \"b\"");
    }
    SECTION("no paths and no untracked: nothing at all") {
        auto p = plan_restore(entry("k", {}), facts(), vars({}));
        CHECK(p.keys.empty());
        CHECK(p.messages.empty());
        auto u = entry("k", {});
        u.untracked = true;
        CHECK(plan_restore(u, facts(), vars({})).keys.size() == 1);
    }
}

TEST_CASE("archive: when and policy", "[cache]") {
    auto e = entry("k");
    CHECK(plan_archive(e, facts(), vars({}), true).key);
    CHECK_FALSE(plan_archive(e, facts(), vars({}), false).key);
    e.when = "on_failure";
    CHECK_FALSE(plan_archive(e, facts(), vars({}), true).key);
    CHECK(plan_archive(e, facts(), vars({}), false).key);
    e.when = "always";
    e.policy = "pull";
    auto p = plan_archive(e, facts(), vars({}), true);
    CHECK_FALSE(p.key);
    REQUIRE(p.messages.size() == 1);
    CHECK(p.messages[0].text == "Not uploading cache k due to policy");
    e.policy = "push";
    CHECK(plan_archive(e, facts(), vars({}), false).key->human == "k");
}

TEST_CASE("FF_HASH_CACHE_KEYS stores under the SHA-256 of the key", "[cache]") {
    auto j = facts();
    j.hash_keys = true;
    std::vector<message> m;
    auto k = resolve_key("abc", j, vars({}), m);
    REQUIRE(k);
    CHECK(k->human == "abc");
    CHECK(k->storage == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    auto o = object_name("", true, "abcdefgh", 7, *k, true);
    CHECK(o.path == "project/7/ba/" + k->storage);
}

TEST_CASE("local archive layout under cache_dir", "[cache]") {
    auto j = facts();
    cache_key k{"deps/x", "deps/x"};
    CHECK(project_cache_dir(j) == "group/sub/project");
    CHECK(local_archive_path(j, k) == "group/sub/project/deps/x/cache.zip");
    j.git_strategy_empty = true;
    CHECK(project_cache_dir(j) == "group/sub/project-empty");
    j.git_strategy_empty = false;
    j.repo_url = "not a url";
    CHECK(project_cache_dir(j) == "project-42");
    j.repo_url = "https://h/a/../../etc.git";
    CHECK(project_cache_dir(j) == "etc");
    j.repo_url = "https://h/my%20group/p.git";
    CHECK(project_cache_dir(j) == "my group/p");
}

// gitlab-runner's cache_test.go expectations.
TEST_CASE("distributed cache object names", "[cache]") {
    cache_key k{"key", "key"};
    CHECK(object_name("", false, "longtoke", 10, k, false).path == "runner/longtoke/project/10/key");
    CHECK(object_name("whatever", false, "longtoke", 10, k, false).path ==
          "whatever/runner/longtoke/project/10/key");
    CHECK(object_name("some/other/path/goes/here", false, "longtoke", 10, k, false).path ==
          "some/other/path/goes/here/runner/longtoke/project/10/key");
    CHECK(object_name("", true, "longtoke", 10, k, false).path == "project/10/key");
    cache_key bad{"../../x", "../../x"};
    auto o = object_name("", true, "longtoke", 10, bad, false);
    CHECK(o.path.empty());
    CHECK(o.error.find("outside of project bucket") != std::string::npos);
}
