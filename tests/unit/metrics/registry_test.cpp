#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <stdexcept>

#include "runner/metrics/registry.hpp"

using namespace kiln::metrics;

TEST_CASE("numbers use the exposition format's syntax") {
    CHECK(format_number(0) == "0");
    CHECK(format_number(42) == "42");
    CHECK(format_number(-3) == "-3");
    CHECK(format_number(0.25) == "0.25");
    CHECK(format_number(1e20) == "1e+20");
    CHECK(format_number(std::numeric_limits<double>::infinity()) == "+Inf");
    CHECK(format_number(-std::numeric_limits<double>::infinity()) == "-Inf");
    CHECK(format_number(std::nan("")) == "NaN");
}

TEST_CASE("label values and help text are escaped") {
    CHECK(escape_label_value(R"(a\b"c)" "\n" "d") == R"(a\\b\"c\nd)");
    CHECK(escape_help("a\\b\"c\nd") == "a\\\\b\"c\\nd");  // quotes stay in help text
}

TEST_CASE("names are checked") {
    CHECK(valid_metric_name("gitlab_runner_jobs"));
    CHECK(valid_metric_name("a:b"));
    CHECK_FALSE(valid_metric_name("9lives"));
    CHECK_FALSE(valid_metric_name("with-dash"));
    CHECK_FALSE(valid_metric_name(""));
    CHECK(valid_label_name("runner"));
    CHECK_FALSE(valid_label_name("a:b"));
    CHECK_FALSE(valid_label_name("__reserved"));
    registry r;
    CHECK_THROWS_AS(r.counter("bad name", "x"), std::invalid_argument);
    CHECK_THROWS_AS(r.gauge("g", "x", {"a", "a"}), std::invalid_argument);
    CHECK_THROWS_AS(r.histogram("h", "x", {"le"}, {1}), std::invalid_argument);
    CHECK_THROWS_AS(r.histogram("h2", "x", {}, {2, 1}), std::invalid_argument);
    r.counter("c", "x");
    CHECK_THROWS_AS(r.counter("c", "again"), std::invalid_argument);
}

TEST_CASE("counters and gauges render sorted with HELP and TYPE lines") {
    registry r;
    auto& g = r.gauge("zeta", "Last family by name");
    auto& c = r.counter("alpha_total", "Counts\nthings", {"runner", "status"});
    c.inc({"tok2", "200"});
    c.inc({"tok1", "500"}, 2);
    c.inc({"tok1", "200"});
    g.set({}, 3.5);
    CHECK(r.render() ==
          "# HELP alpha_total Counts\\nthings\n"
          "# TYPE alpha_total counter\n"
          "alpha_total{runner=\"tok1\",status=\"200\"} 1\n"
          "alpha_total{runner=\"tok1\",status=\"500\"} 2\n"
          "alpha_total{runner=\"tok2\",status=\"200\"} 1\n"
          "# HELP zeta Last family by name\n"
          "# TYPE zeta gauge\n"
          "zeta 3.5\n");
    CHECK(c.value({"tok1", "500"}) == 2);
    CHECK(c.value({"nobody", "200"}) == 0);
    CHECK_THROWS_AS(c.inc({"tok1", "200"}, -1), std::invalid_argument);
    CHECK_THROWS_AS(c.inc({"only-one"}), std::invalid_argument);
    g.inc({}, -1.5);
    CHECK(g.value({}) == 2);
}

TEST_CASE("label values with quotes, backslashes and newlines stay one line") {
    registry r;
    r.gauge("g", "h", {"name"}).set({"say \"hi\"\\\n"}, 1);
    CHECK(r.render() == "# HELP g h\n# TYPE g gauge\ng{name=\"say \\\"hi\\\"\\\\\\n\"} 1\n");
}

TEST_CASE("histograms have cumulative buckets, +Inf, sum and count") {
    registry r;
    auto& h = r.histogram("job_seconds", "Durations", {"runner"}, {1, 10});
    h.observe({"a"}, 0.5);
    h.observe({"a"}, 1);  // le is inclusive
    h.observe({"a"}, 5);
    h.observe({"a"}, 100);
    CHECK(r.render() ==
          "# HELP job_seconds Durations\n"
          "# TYPE job_seconds histogram\n"
          "job_seconds_bucket{runner=\"a\",le=\"1\"} 2\n"
          "job_seconds_bucket{runner=\"a\",le=\"10\"} 3\n"
          "job_seconds_bucket{runner=\"a\",le=\"+Inf\"} 4\n"
          "job_seconds_sum{runner=\"a\"} 106.5\n"
          "job_seconds_count{runner=\"a\"} 4\n");
    CHECK(h.value({"a"}) == 4);
    CHECK_THROWS_AS(h.inc({"a"}), std::logic_error);
}

TEST_CASE("touch creates a zero series and remove drops one") {
    registry r;
    auto& c = r.counter("c_total", "h", {"reason"});
    c.touch({"script_failure"});
    CHECK(r.render().find("c_total{reason=\"script_failure\"} 0\n") != std::string::npos);
    c.remove({"script_failure"});
    CHECK(r.render() == "# HELP c_total h\n# TYPE c_total counter\n");
}
