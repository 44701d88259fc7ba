#include <catch2/catch.hpp>

#include <unistd.h>

#include <cstdlib>

#include "config/paths.hpp"

using kiln::config::resolve_config_path;

TEST_CASE("the config flag wins over CONFIG_FILE", "[config][paths]") {
    ::setenv("CONFIG_FILE", "/tmp/from-env.toml", 1);
    CHECK(resolve_config_path("/tmp/from-flag.toml") == "/tmp/from-flag.toml");
    CHECK(resolve_config_path("") == "/tmp/from-env.toml");
    ::unsetenv("CONFIG_FILE");
}

TEST_CASE("without flag or CONFIG_FILE the path depends on the user", "[config][paths]") {
    ::unsetenv("CONFIG_FILE");
    auto p = resolve_config_path("");
    if (::geteuid() == 0) {
        CHECK(p == "/etc/kiln/config.toml");
    } else {
        CHECK(p.filename() == "config.toml");
        CHECK(p.parent_path().filename() == ".kiln");
    }
}
