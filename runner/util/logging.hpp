#pragma once
// kiln's own log (not the job trace): spdlog underneath, text or JSON lines, with structured
// fields such as the runner name and the job id. Tokens never go in here except as short tokens.

#include <initializer_list>
#include <string>
#include <string_view>
#include <utility>

namespace kiln::log {

enum class level { debug, info, warn, error };

struct field {
    std::string_view key;
    std::string value;
    field(std::string_view k, std::string v) : key(k), value(std::move(v)) {}
    field(std::string_view k, const char* v) : key(k), value(v) {}
    field(std::string_view k, std::string_view v) : key(k), value(v) {}
    field(std::string_view k, long long v) : key(k), value(std::to_string(v)) {}
    field(std::string_view k, long v) : key(k), value(std::to_string(v)) {}
    field(std::string_view k, int v) : key(k), value(std::to_string(v)) {}
    field(std::string_view k, unsigned long v) : key(k), value(std::to_string(v)) {}
};
using fields = std::initializer_list<field>;

/// Configures the process-wide logger: `format` is runner|text|json (gitlab-runner's names;
/// runner = text with colours on a TTY), `level_name` debug|info|warn|warning|error|fatal|panic.
/// Logs go to stderr. Returns false (and keeps the defaults) for unknown names.
bool setup(std::string_view level_name, std::string_view format);

bool enabled(level l);
/// Lines written at `l` since start, also those below the configured level (for metrics).
unsigned long long written(level l);
/// Fields with an empty value are left out of the line.
void write(level l, std::string_view message, fields f = {});

inline void debug(std::string_view m, fields f = {}) { write(level::debug, m, f); }
inline void info(std::string_view m, fields f = {}) { write(level::info, m, f); }
inline void warn(std::string_view m, fields f = {}) { write(level::warn, m, f); }
inline void error(std::string_view m, fields f = {}) { write(level::error, m, f); }

}  // namespace kiln::log
