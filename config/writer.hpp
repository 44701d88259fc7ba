#pragma once
// Editing config.toml for register/unregister/verify --delete/reset-token. Edits are made on
// the parsed document, so the global section, the other runners and keys kiln does not model
// survive a rewrite (comments do not: TOML libraries do not keep them, nor does gitlab-runner).

#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "config/settings.hpp"

namespace kiln::config {

class config_document {
public:
    config_document();
    ~config_document();
    config_document(config_document&&) noexcept;
    config_document& operator=(config_document&&) noexcept;

    /// Opens `path` for editing. A missing file gives an empty document with gitlab-runner's
    /// global defaults (concurrent = 1, check_interval = 0, …). Throws std::runtime_error with a
    /// "FILE:LINE: …" message when the file exists but is not valid TOML.
    static config_document open(const std::filesystem::path& path);
    static config_document parse(std::string_view text, std::string_view source);

    /// Appends a [[runners]] entry, writing only keys that differ from their defaults plus the
    /// ones gitlab-runner always writes (name, url, id, token, token_obtained_at,
    /// token_expires_at, executor). Token times must be RFC 3339 (unset: the zero time, "never
    /// expires"); otherwise std::invalid_argument is thrown and the document is unchanged.
    void add_runner(const runner_entry& runner);

    /// Removes every [[runners]] entry for which `match` returns true; returns how many.
    std::size_t remove_runners(const std::function<bool(const runner_entry&)>& match);

    /// Replaces token, token_obtained_at and token_expires_at of entries whose token equals
    /// `old_token`; returns how many were changed. The times are RFC 3339 (no expiry: the zero
    /// time is written); other text throws std::invalid_argument before anything changes.
    std::size_t replace_token(
        const std::string& old_token,
        const std::string& new_token,
        const std::string& obtained_at,
        const std::optional<std::string>& expires_at
    );

    /// Serialises the document as TOML text.
    std::string to_toml() const;

    /// Writes atomically: a temporary file in the same directory with mode 0600, fsync, rename,
    /// fsync of the directory. Creates the directory (0700) if missing. Throws
    /// std::system_error naming the path on failure; the old file is then untouched.
    void save(const std::filesystem::path& path) const;

private:
    struct impl;
    std::unique_ptr<impl> impl_;
};

}  // namespace kiln::config
