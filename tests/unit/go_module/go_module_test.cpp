#include <catch2/catch.hpp>

#include "runner/go_module.hpp"

using namespace kiln::go_module;

namespace {
std::string path_of(std::string_view text) {
    auto r = parse_module_path(text);
    INFO(r.error << " (line " << r.line << ")");
    REQUIRE(r.module_path);
    return *r.module_path;
}
}  // namespace

TEST_CASE("module directive forms", "[go_module]") {
    CHECK(path_of("module example.com/acme/billing\n\ngo 1.22\n") == "example.com/acme/billing");
    CHECK(path_of("// Package billing.\nmodule example.com/m // trailing comment\n") ==
          "example.com/m");
    CHECK(path_of("module \"example.com/quoted\"\n") == "example.com/quoted");
    CHECK(path_of("module `example.com/raw`\n") == "example.com/raw");
    CHECK(path_of("module (\n\texample.com/block\n)\n") == "example.com/block");
    CHECK(path_of("module (\n  // comment\n  \"example.com/block/v3\"\n\n)\n") ==
          "example.com/block/v3");
    CHECK(path_of("\xef\xbb\xbfmodule x") == "x");  // byte-order mark, no final newline
    CHECK(path_of("go 1.21\n\nrequire (\n\tmodule v1.0.0\n\texample.com/dep v1.2.3\n)\n\n"
                  "module example.com/after-require\n") == "example.com/after-require");
    CHECK(path_of("// Deprecated: use example.com/new.\nmodule example.com/old\r\n") ==
          "example.com/old");
}

TEST_CASE("go.mod problems are reported with their line", "[go_module]") {
    auto none = parse_module_path("go 1.22\nrequire example.com/x v1.0.0\n");
    CHECK_FALSE(none.module_path);
    CHECK(none.error == "no module directive");

    auto twice = parse_module_path("module a.com/x\nmodule a.com/y\n");
    CHECK_FALSE(twice.module_path);
    CHECK(twice.line == 2);
    CHECK(twice.error.find("repeated module directive") != std::string::npos);

    auto missing = parse_module_path("module\n");
    CHECK_FALSE(missing.module_path);
    CHECK(missing.line == 1);

    auto unterminated = parse_module_path("\nmodule \"example.com/x\n");
    CHECK_FALSE(unterminated.module_path);
    CHECK(unterminated.line == 2);

    auto extra = parse_module_path("module a.com/x b\n");
    CHECK_FALSE(extra.module_path);

    auto empty_block = parse_module_path("module (\n)\n");
    CHECK_FALSE(empty_block.module_path);

    auto two_in_block = parse_module_path("module (\n a.com/x\n a.com/y\n)\n");
    CHECK_FALSE(two_in_block.module_path);
    CHECK(two_in_block.line == 3);
}

TEST_CASE("short names drop major-version suffixes", "[go_module]") {
    CHECK(short_name("example.com/acme/billing") == "billing");
    CHECK(short_name("example.com/acme/billing/v2") == "billing");
    CHECK(short_name("example.com/acme/billing/v12") == "billing");
    CHECK(short_name("example.com/acme/v1") == "v1");  // v1 is never a suffix
    CHECK(short_name("gopkg.in/yaml.v3") == "yaml");
    CHECK(short_name("example.com/yaml.v3") == "yaml.v3");
    CHECK(short_name("billing") == "billing");
    CHECK(qualifiers("example.com/acme/cmd/tools/v2") ==
          std::vector<std::string>{"cmd", "acme", "example.com"});
}

TEST_CASE("runner names are unique and qualified only when needed", "[go_module]") {
    auto n = assign_names("shop", {"example.com/shop/billing", "example.com/shop/api/v2"}, {});
    REQUIRE(n.size() == 2);
    CHECK(n[0].name == "runner-shop-billing");
    CHECK(n[0].element == "billing");
    CHECK(n[1].name == "runner-shop-api");

    auto clash = assign_names("shop", {"example.com/a/cmd/tools", "example.com/b/cmd/tools",
                                       "example.com/shop/web"},
                              {});
    CHECK(clash[0].name == "runner-shop-a-cmd-tools");
    CHECK(clash[1].name == "runner-shop-b-cmd-tools");
    CHECK(clash[2].name == "runner-shop-web");

    auto existing = assign_names("shop", {"example.com/x/web"}, {"runner-shop-web"});
    CHECK(existing[0].name == "runner-shop-x-web");

    auto same = assign_names("p", {"m", "m"}, {});
    CHECK(same[0].name == "runner-p-m");
    CHECK(same[1].name == "runner-p-m-2");
}
