#include "runner/util/logging.hpp"

#include <atomic>

#include <unistd.h>

#include <chrono>
#include <memory>
#include <nlohmann/json.hpp>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

namespace kiln::log {
namespace {

enum class format { text, color, json };

struct state {
    std::shared_ptr<spdlog::logger> logger;
    format fmt = format::text;
    level min = level::info;
};

state& global() {
    static state s = [] {
        state st;
        st.logger = std::make_shared<spdlog::logger>(
            "kiln", std::make_shared<spdlog::sinks::stderr_sink_mt>()
        );
        st.logger->set_pattern("%v");  // lines are formatted here, spdlog only writes them
        st.logger->set_level(spdlog::level::trace);
        st.logger->flush_on(spdlog::level::trace);
        st.fmt = ::isatty(2) != 0 ? format::color : format::text;
        return st;
    }();
    return s;
}

const char* level_name(level l) {
    switch (l) {
        case level::debug: return "debug";
        case level::info: return "info";
        case level::warn: return "warning";
        case level::error: return "error";
    }
    return "info";
}

std::string utc_now() {
    auto now = std::chrono::system_clock::now();
    auto t = std::chrono::system_clock::to_time_t(now);
    auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()) % 1000;
    std::tm tm{};
    ::gmtime_r(&t, &tm);
    char buf[64];
    std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
                  tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                  static_cast<int>(ms.count()));
    return buf;
}

bool needs_quotes(std::string_view v) {
    return v.empty() || v.find_first_of(" \"=\t\n") != std::string_view::npos;
}

}  // namespace

bool setup(std::string_view level_name_text, std::string_view fmt) {
    auto& s = global();
    bool ok = true;
    if (fmt == "json") {
        s.fmt = format::json;
    } else if (fmt == "text") {
        s.fmt = format::text;
    } else if (fmt == "runner" || fmt.empty()) {
        s.fmt = ::isatty(2) != 0 ? format::color : format::text;
    } else {
        ok = false;
    }
    if (level_name_text == "debug") {
        s.min = level::debug;
    } else if (level_name_text == "info" || level_name_text.empty()) {
        s.min = level::info;
    } else if (level_name_text == "warn" || level_name_text == "warning") {
        s.min = level::warn;
    } else if (level_name_text == "error" || level_name_text == "fatal" ||
               level_name_text == "panic") {
        s.min = level::error;
    } else {
        ok = false;
    }
    return ok;
}

bool enabled(level l) { return l >= global().min; }

namespace {
// Counted on the I/O thread and read by the metrics endpoint on the same thread; atomic
// because blocking-pool threads may log too.
std::atomic<unsigned long long> line_counts[4];
}  // namespace

unsigned long long written(level l) { return line_counts[static_cast<int>(l)].load(std::memory_order_relaxed); }

void write(level l, std::string_view message, fields f) {
    line_counts[static_cast<int>(l)].fetch_add(1, std::memory_order_relaxed);
    auto& s = global();
    if (l < s.min) {
        return;
    }
    std::string line;
    if (s.fmt == format::json) {
        nlohmann::ordered_json j;
        j["time"] = utc_now();
        j["level"] = level_name(l);
        j["msg"] = message;
        for (const auto& kv : f) {
            if (!kv.value.empty()) {
                j[std::string(kv.key)] = kv.value;
            }
        }
        line = j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    } else {
        static constexpr const char* colors[] = {"\x1b[37m", "\x1b[36m", "\x1b[33;1m",
                                                 "\x1b[31;1m"};
        const bool color = s.fmt == format::color;
        line = utc_now() + " ";
        if (color) {
            line += colors[static_cast<int>(l)];
        }
        std::string lv = level_name(l);
        lv.resize(7, ' ');
        line += lv;
        if (color) {
            line += "\x1b[0m";
        }
        line += " ";
        line += message;
        if (f.size() > 0) {
            line += " ";
        }
        for (const auto& kv : f) {
            if (kv.value.empty()) {
                continue;  // an absent fact (no failure reason, no engine) is left out
            }
            line += " ";
            line += kv.key;
            line += "=";
            if (needs_quotes(kv.value)) {
                line += nlohmann::json(kv.value).dump();
            } else {
                line += kv.value;
            }
        }
    }
    s.logger->log(spdlog::level::info, "{}", line);
}

}  // namespace kiln::log
