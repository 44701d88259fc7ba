#pragma once
// A small Prometheus registry: counters, gauges and histograms with labels, rendered in the
// text exposition format 0.0.4. Pure (no I/O, no clock, no threads): the daemon updates it on
// the I/O thread and the HTTP endpoint renders it there.

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace kiln::metrics {

enum class metric_type { counter, gauge, histogram };

/// One metric family: a name, help text, label names and one sample (or one histogram) per
/// combination of label values. Label values are given in the order of the label names.
class family {
public:
    using label_values = std::vector<std::string>;

    family(std::string name, std::string help, metric_type type,
           std::vector<std::string> label_names, std::vector<double> buckets);

    /// Counters: add a non-negative amount. Gauges: add any amount.
    void inc(const label_values& values, double by = 1);
    /// Gauges; and counters whose count is kept elsewhere (mirrored when scraped).
    void set(const label_values& values, double value);
    /// Histograms.
    void observe(const label_values& values, double value);
    /// Makes the series exist with zero (dashboards see 0 instead of no data).
    void touch(const label_values& values);
    void remove(const label_values& values);
    void clear();
    double value(const label_values& values) const;  // 0 when absent; histograms: the count

    const std::string& name() const { return name_; }
    metric_type type() const { return type_; }
    void render(std::string& out) const;

private:
    struct series {
        double value = 0;                 // counter/gauge; histogram: sum
        std::uint64_t count = 0;          // histogram
        std::vector<std::uint64_t> hits;  // histogram: per bucket, not cumulative
    };
    series& at(const label_values& values);

    std::string name_;
    std::string help_;
    metric_type type_;
    std::vector<std::string> label_names_;
    std::vector<double> buckets_;
    std::map<label_values, series> series_;  // ordered: stable output
};

class registry {
public:
    /// Registration throws std::invalid_argument for an invalid or duplicate name, an invalid
    /// or reserved label name, or unsorted buckets (programming errors, found by the tests).
    family& counter(std::string name, std::string help, std::vector<std::string> labels = {});
    family& gauge(std::string name, std::string help, std::vector<std::string> labels = {});
    family& histogram(std::string name, std::string help, std::vector<std::string> labels,
                      std::vector<double> buckets);

    /// Families in name order, each with # HELP and # TYPE lines.
    std::string render() const;

private:
    family& add(std::unique_ptr<family> f);
    std::map<std::string, std::unique_ptr<family>, std::less<>> families_;
};

/// The exposition format's number syntax: integers without a fraction, "+Inf", "-Inf", "NaN".
std::string format_number(double v);
/// Escapes a label value (backslash, double quote, line feed) or help text (backslash, line feed).
std::string escape_label_value(std::string_view v);
std::string escape_help(std::string_view v);
bool valid_metric_name(std::string_view name);
bool valid_label_name(std::string_view name);

/// The Content-Type of render()'s output.
inline constexpr std::string_view content_type = "text/plain; version=0.0.4; charset=utf-8";

}  // namespace kiln::metrics
