// [runners.signing]: kiln's signed-artifact keys (docs/artifacts.md).

#include <catch2/catch.hpp>

#include <string>

#include "config/loader.hpp"

using kiln::config::parse_config;

namespace {

const std::string runner = R"(
[[runners]]
  name = "r"
  url = "https://gitlab.example.com"
  token = "glrt-abc"
  executor = "shell"
)";

std::string all_lines(const kiln::config::load_result& r) {
    std::string out;
    for (const auto& d : r.diagnostics) {
        out += d.to_string() + "\n";
    }
    return out;
}

}  // namespace

TEST_CASE("a runner without [runners.signing] neither signs nor verifies", "[config][signing]") {
    auto r = parse_config(runner, "config.toml");
    REQUIRE(r.ok());
    CHECK_FALSE(r.value->runners[0].signing);
}

TEST_CASE("[runners.signing] keys are read", "[config][signing]") {
    auto r = parse_config(runner + R"(
  [runners.signing]
    key_file = "/etc/kiln/artifact-signing.pem"
    verify_key_files = ["/etc/kiln/a.pub.pem", "/etc/kiln/b.pub.pem"]
    provenance = false
)",
                          "config.toml");
    REQUIRE(r.ok());
    INFO(all_lines(r));
    CHECK(r.diagnostics.empty());
    const auto& s = *r.value->runners[0].signing;
    CHECK(s.key_file == "/etc/kiln/artifact-signing.pem");
    CHECK(s.verify_key_files ==
          std::vector<std::string>{"/etc/kiln/a.pub.pem", "/etc/kiln/b.pub.pem"});
    CHECK_FALSE(s.provenance);
}

TEST_CASE("verify_key_files may be one string; provenance defaults to on", "[config][signing]") {
    auto r = parse_config(runner + R"(
  [runners.signing]
    verify_key_files = "/etc/kiln/a.pub.pem"
)",
                          "config.toml");
    REQUIRE(r.ok());
    const auto& s = *r.value->runners[0].signing;
    CHECK(s.key_file.empty());
    CHECK(s.verify_key_files == std::vector<std::string>{"/etc/kiln/a.pub.pem"});
    CHECK(s.provenance);
}

TEST_CASE("relative or empty key paths are errors with the line", "[config][signing]") {
    auto r = parse_config(runner + R"(
  [runners.signing]
    key_file = "keys/signing.pem"
    verify_key_files = ["/etc/kiln/ok.pem", ""]
)",
                          "config.toml");
    CHECK_FALSE(r.ok());
    auto errors = r.errors();
    REQUIRE(errors.size() == 2);
    CHECK(errors[0].to_string() ==
          "config.toml:9: error: runners[0].signing.key_file: expected the absolute path of a PEM "
          "key file, found \"keys/signing.pem\"");
    CHECK(errors[1].line == 10);
    CHECK(errors[1].key == "runners[0].signing.verify_key_files");
    CHECK(errors[1].message.find("found \"\"") != std::string::npos);
}

TEST_CASE("wrong types and typos in [runners.signing] are reported", "[config][signing]") {
    auto r = parse_config(runner + R"(
  [runners.signing]
    key_file = 3
    verify_key_file = "/etc/kiln/a.pub.pem"
)",
                          "config.toml");
    CHECK_FALSE(r.ok());
    INFO(all_lines(r));
    auto errors = r.errors();
    REQUIRE(errors.size() == 1);
    CHECK(errors[0].message == "expected the absolute path of a PEM key file, found 3");
    auto warnings = r.warnings();
    REQUIRE(warnings.size() == 1);
    CHECK(warnings[0].key == "runners[0].signing.verify_key_file");
    CHECK(warnings[0].message == "unknown key (did you mean \"verify_key_files\"?)");
}

TEST_CASE("an empty [runners.signing] is warned about", "[config][signing]") {
    auto r = parse_config(runner + "  [runners.signing]\n    provenance = true\n", "config.toml");
    REQUIRE(r.ok());
    auto warnings = r.warnings();
    REQUIRE(warnings.size() == 1);
    CHECK(warnings[0].key == "runners[0].signing");
    CHECK(warnings[0].message.find("neither signed nor verified") != std::string::npos);
}
