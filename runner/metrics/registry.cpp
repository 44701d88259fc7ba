#include "runner/metrics/registry.hpp"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <stdexcept>

namespace kiln::metrics {

namespace {

bool name_char(char c, bool first, bool colon) {
    const bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
                       (colon && c == ':');
    return alpha || (!first && c >= '0' && c <= '9');
}

bool valid_name(std::string_view n, bool colon) {
    if (n.empty()) {
        return false;
    }
    for (std::size_t i = 0; i < n.size(); ++i) {
        if (!name_char(n[i], i == 0, colon)) {
            return false;
        }
    }
    return true;
}

const char* type_name(metric_type t) {
    switch (t) {
        case metric_type::counter:
            return "counter";
        case metric_type::gauge:
            return "gauge";
        case metric_type::histogram:
            return "histogram";
    }
    return "untyped";
}

// {a="x",b="y"} with an optional extra label (le for histogram buckets); nothing for no labels.
void render_labels(std::string& out, const std::vector<std::string>& names,
                   const std::vector<std::string>& values, std::string_view extra_name = {},
                   std::string_view extra_value = {}) {
    if (names.empty() && extra_name.empty()) {
        return;
    }
    out += '{';
    bool first = true;
    for (std::size_t i = 0; i < names.size(); ++i) {
        out += first ? "" : ",";
        first = false;
        out += names[i];
        out += "=\"";
        out += escape_label_value(values[i]);
        out += '"';
    }
    if (!extra_name.empty()) {
        out += first ? "" : ",";
        out += extra_name;
        out += "=\"";
        out += extra_value;
        out += '"';
    }
    out += '}';
}

}  // namespace

bool valid_metric_name(std::string_view name) { return valid_name(name, true); }

// Names starting with "__" are reserved for Prometheus itself.
bool valid_label_name(std::string_view name) {
    return valid_name(name, false) && name.substr(0, 2) != "__";
}

std::string format_number(double v) {
    if (std::isnan(v)) {
        return "NaN";
    }
    if (std::isinf(v)) {
        return v > 0 ? "+Inf" : "-Inf";
    }
    if (v == std::floor(v) && std::fabs(v) < 1e15) {
        return std::to_string(static_cast<long long>(v));
    }
    char buf[64];
    auto r = std::to_chars(buf, buf + sizeof buf, v);  // shortest form that reads back exactly
    return std::string(buf, r.ptr);
}

std::string escape_label_value(std::string_view v) {
    std::string out;
    out.reserve(v.size());
    for (char c : v) {
        switch (c) {
            case '\\':
                out += "\\\\";
                break;
            case '"':
                out += "\\\"";
                break;
            case '\n':
                out += "\\n";
                break;
            default:
                out += c;
        }
    }
    return out;
}

std::string escape_help(std::string_view v) {
    std::string out;
    out.reserve(v.size());
    for (char c : v) {
        if (c == '\\') {
            out += "\\\\";
        } else if (c == '\n') {
            out += "\\n";
        } else {
            out += c;
        }
    }
    return out;
}

family::family(std::string name, std::string help, metric_type type,
               std::vector<std::string> label_names, std::vector<double> buckets)
    : name_(std::move(name)), help_(std::move(help)), type_(type),
      label_names_(std::move(label_names)), buckets_(std::move(buckets)) {
    if (!valid_metric_name(name_)) {
        throw std::invalid_argument("invalid metric name: " + name_);
    }
    for (const auto& l : label_names_) {
        if (!valid_label_name(l) || (type_ == metric_type::histogram && l == "le")) {
            throw std::invalid_argument("invalid label name for " + name_ + ": " + l);
        }
    }
    auto sorted = label_names_;
    std::sort(sorted.begin(), sorted.end());
    if (std::adjacent_find(sorted.begin(), sorted.end()) != sorted.end()) {
        throw std::invalid_argument("duplicate label name for " + name_);
    }
    if (type_ == metric_type::histogram) {
        // +Inf is implicit; the bounds must be finite and strictly increasing.
        for (std::size_t i = 0; i < buckets_.size(); ++i) {
            if (!std::isfinite(buckets_[i]) || (i > 0 && buckets_[i] <= buckets_[i - 1])) {
                throw std::invalid_argument("histogram buckets must increase: " + name_);
            }
        }
    }
}

family::series& family::at(const label_values& values) {
    if (values.size() != label_names_.size()) {
        throw std::invalid_argument(name_ + ": expected " + std::to_string(label_names_.size()) +
                                    " label values, got " + std::to_string(values.size()));
    }
    auto [it, inserted] = series_.try_emplace(values);
    if (inserted && type_ == metric_type::histogram) {
        it->second.hits.assign(buckets_.size(), 0);
    }
    return it->second;
}

void family::inc(const label_values& values, double by) {
    if (type_ == metric_type::histogram) {
        throw std::logic_error(name_ + " is a histogram");
    }
    if (type_ == metric_type::counter && !(by >= 0)) {
        throw std::invalid_argument(name_ + ": a counter only goes up");
    }
    at(values).value += by;
}

void family::set(const label_values& values, double value) {
    if (type_ == metric_type::histogram) {
        throw std::logic_error(name_ + " is a histogram");
    }
    at(values).value = value;
}

void family::observe(const label_values& values, double value) {
    if (type_ != metric_type::histogram) {
        throw std::logic_error(name_ + " is not a histogram");
    }
    auto& s = at(values);
    s.value += value;
    ++s.count;
    auto it = std::lower_bound(buckets_.begin(), buckets_.end(), value);  // le: value <= bound
    if (it != buckets_.end()) {
        ++s.hits[static_cast<std::size_t>(it - buckets_.begin())];
    }
}

void family::touch(const label_values& values) { at(values); }

void family::remove(const label_values& values) { series_.erase(values); }

void family::clear() { series_.clear(); }

double family::value(const label_values& values) const {
    auto it = series_.find(values);
    if (it == series_.end()) {
        return 0;
    }
    return type_ == metric_type::histogram ? static_cast<double>(it->second.count)
                                           : it->second.value;
}

void family::render(std::string& out) const {
    out += "# HELP ";
    out += name_;
    out += ' ';
    out += escape_help(help_);
    out += "\n# TYPE ";
    out += name_;
    out += ' ';
    out += type_name(type_);
    out += '\n';
    for (const auto& [values, s] : series_) {
        if (type_ != metric_type::histogram) {
            out += name_;
            render_labels(out, label_names_, values);
            out += ' ';
            out += format_number(s.value);
            out += '\n';
            continue;
        }
        std::uint64_t cumulative = 0;
        for (std::size_t i = 0; i < buckets_.size(); ++i) {
            cumulative += s.hits[i];
            out += name_;
            out += "_bucket";
            render_labels(out, label_names_, values, "le", format_number(buckets_[i]));
            out += ' ';
            out += std::to_string(cumulative);
            out += '\n';
        }
        out += name_;
        out += "_bucket";
        render_labels(out, label_names_, values, "le", "+Inf");
        out += ' ';
        out += std::to_string(s.count);
        out += '\n';
        out += name_;
        out += "_sum";
        render_labels(out, label_names_, values);
        out += ' ';
        out += format_number(s.value);
        out += '\n';
        out += name_;
        out += "_count";
        render_labels(out, label_names_, values);
        out += ' ';
        out += std::to_string(s.count);
        out += '\n';
    }
}

family& registry::add(std::unique_ptr<family> f) {
    const auto& name = f->name();
    // A histogram's series names must not collide with another family either.
    if (families_.count(name) != 0) {
        throw std::invalid_argument("metric registered twice: " + name);
    }
    auto& ref = *f;
    families_.emplace(name, std::move(f));
    return ref;
}

family& registry::counter(std::string name, std::string help, std::vector<std::string> labels) {
    return add(std::make_unique<family>(std::move(name), std::move(help), metric_type::counter,
                                        std::move(labels), std::vector<double>{}));
}

family& registry::gauge(std::string name, std::string help, std::vector<std::string> labels) {
    return add(std::make_unique<family>(std::move(name), std::move(help), metric_type::gauge,
                                        std::move(labels), std::vector<double>{}));
}

family& registry::histogram(std::string name, std::string help, std::vector<std::string> labels,
                            std::vector<double> buckets) {
    return add(std::make_unique<family>(std::move(name), std::move(help), metric_type::histogram,
                                        std::move(labels), std::move(buckets)));
}

std::string registry::render() const {
    std::string out;
    for (const auto& [name, f] : families_) {
        f->render(out);
    }
    return out;
}

}  // namespace kiln::metrics
