#include "runner/artifacts/artifact_rules.hpp"

#include <string>
#include <vector>

#include <catch2/catch.hpp>

using namespace kiln::artifacts;

TEST_CASE("artifact names are expanded from the job's variables", "[artifacts][rules]") {
    const std::vector<std::pair<std::string, std::string>> env{
        {"CI_COMMIT_SHORT_SHA", "abc123"}, {"NAME", "first"}, {"NAME", "second"}};
    CHECK(expand_variables("billing-svc-$CI_COMMIT_SHORT_SHA", env) == "billing-svc-abc123");
    CHECK(expand_variables("${NAME}.bin", env) == "second.bin");
    CHECK(expand_variables("$UNSET-x", env) == "-x");
    CHECK(expand_variables("cost$", env) == "cost$");
    CHECK(expand_variables("a$$b", env) == "a$b");
    CHECK(expand_variables("${broken", env) == "${broken");
}

TEST_CASE("upload file names follow gitlab-runner's artifactFilename", "[artifacts][rules]") {
    struct row {
        const char* name;
        const char* format;
        const char* file;
    };
    const std::vector<row> rows{
        {"", "zip", "artifacts.zip"},
        {"billing-svc-abc123", "zip", "billing-svc-abc123.zip"},
        {"dir/sub/name", "zip", "name.zip"},
        {"junit.xml", "gzip", "junit.xml.gz"},
        {".env", "gzip", ".env.gz"},
        {"gl-sast-report.json", "raw", "gl-sast-report.json"},
        {"/", "zip", "default.zip"},
        {".", "zip", "default.zip"},
        {"name/", "zip", "name.zip"},
    };
    for (const auto& r : rows) {
        INFO(r.name << " " << r.format);
        CHECK(artifact_file_name(r.name, r.format) == r.file);
    }
}

TEST_CASE("format defaults to zip", "[artifacts][rules]") {
    kiln::gitlab::artifact_spec a;
    CHECK(effective_format(a) == "zip");
    a.artifact_format = "gzip";
    CHECK(effective_format(a) == "gzip");
}

TEST_CASE("sizes read like gitlab-runner's", "[artifacts][rules]") {
    CHECK(format_size(0) == "0 B");
    CHECK(format_size(1023) == "1023 B");
    CHECK(format_size(1536) == "1.5 KiB");
    CHECK(format_size(300ULL << 20) == "300.0 MiB");
    CHECK(format_size(3ULL << 30) == "3.0 GiB");
}

TEST_CASE("the extraction cap stops zip bombs, not real artifacts", "[artifacts][rules]") {
    constexpr std::uint64_t mib = 1ULL << 20;
    constexpr std::uint64_t gib = 1ULL << 30;
    CHECK(extract_limit(0, "") == gib);                    // at least 1 GiB
    CHECK(extract_limit(50 * mib, "") == 200 * 50 * mib);  // 200x the archive
    CHECK(extract_limit(1000 * gib, "") == 16 * gib);      // never above 16 GiB
    CHECK(extract_limit(1 * mib, "2GiB") == 2 * gib);
    CHECK(extract_limit(1 * mib, "500 MB") == 500 * mib);
    CHECK(extract_limit(1 * mib, "1048576") == mib);
    CHECK(extract_limit(1 * mib, "lots") == gib);          // unparsable: the default
}
