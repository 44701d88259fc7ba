#include <catch2/catch.hpp>

#include <stdlib.h>

#include <cstdio>
#include <string>

#include "executors/shell/script_builder.hpp"

using namespace kiln::executors;

namespace {

// Runs a script with /bin/sh and returns its output: the quoting must survive a real shell.
std::string run_sh(const std::string& script) {
    // A file of its own: ctest runs test cases in parallel processes.
    char path_template[] = "/tmp/kiln-script-builder-test-XXXXXX";
    int fd = ::mkstemp(path_template);
    REQUIRE(fd >= 0);
    std::string path = path_template;
    if (FILE* f = ::fdopen(fd, "w")) {
        std::fputs(script.c_str(), f);
        std::fclose(f);
    }
    std::string out;
    if (FILE* p = ::popen(("sh " + path + " 2>&1").c_str(), "r")) {
        char buf[512];
        while (std::fgets(buf, sizeof buf, p) != nullptr) {
            out += buf;
        }
        ::pclose(p);
    }
    std::remove(path.c_str());
    return out;
}

}  // namespace

TEST_CASE("values are exported literally, whatever they contain", "[executors][script]") {
    stage_script s;
    s.exports = {{"TRICKY", "it's $HOME `id` \"quoted\" \\ done"}, {"EMPTY", ""}};
    s.commands = {"printf '%s|%s\\n' \"$TRICKY\" \"$EMPTY\""};
    auto out = run_sh(build_stage_script(s));
    CHECK(out.find("it's $HOME `id` \"quoted\" \\ done|\n") != std::string::npos);
}

TEST_CASE("each command is echoed in green before it runs", "[executors][script]") {
    stage_script s;
    s.commands = {"echo one", "echo two"};
    auto out = run_sh(build_stage_script(s));
    CHECK(out == "\x1b[32;1m$ echo one\x1b[0;m\none\n\x1b[32;1m$ echo two\x1b[0;m\ntwo\n");
}

TEST_CASE("the first failing command ends the stage", "[executors][script]") {
    stage_script s;
    s.commands = {"echo before", "false", "echo after"};
    auto out = run_sh(build_stage_script(s));
    CHECK(out.find("before") != std::string::npos);
    CHECK(out.find("after\n") == std::string::npos);
}

TEST_CASE("shell_quote makes one literal word", "[executors][script]") {
    CHECK(shell_quote("plain") == "'plain'");
    CHECK(shell_quote("it's") == "'it'\\''s'");
    CHECK(shell_quote("") == "''");
}
