#pragma once
// Rewrites job output before it is stored, as gitlab-runner does (protocol.md §6.4 items 1-3 and
// 6): masked variable values, sensitive URL parameters and GitLab tokens become [MASKED], and
// invalid UTF-8 becomes U+FFFD. Pure and streaming: bytes go in as the job writes them, final
// bytes come out; only bytes that could still become (or continue) a match are held back.

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

namespace kiln::trace {

/// Where rewritten output goes, a piece at a time. A piece is valid only during the call (it is
/// a view of the input, of bytes held back, or of "[MASKED]"), so unchanged output is passed on
/// without a copy. Empty pieces are not passed. A reference to a callable, for the length of
/// the call it is given to.
class segment_sink {
public:
    template <class F>
        requires(!std::is_same_v<std::remove_cvref_t<F>, segment_sink>)
    segment_sink(F&& f) noexcept  // NOLINT: implicit, as a function parameter type
        : object_(const_cast<void*>(static_cast<const void*>(std::addressof(f)))),
          call_([](void* o, std::string_view s) { (*static_cast<std::remove_reference_t<F>*>(o))(s); }) {}

    void operator()(std::string_view s) const {
        if (!s.empty()) {
            call_(object_, s);
        }
    }

private:
    void* object_;
    void (*call_)(void*, std::string_view);
};

inline constexpr std::string_view masked_text = "[MASKED]";

/// Most token prefixes gitlab-runner masks (tokensanitizer.New).
inline constexpr std::size_t max_token_prefixes = 15;

/// glpat- and, with FF_MASK_ALL_DEFAULT_TOKENS (on by default), the other GitLab token kinds.
std::vector<std::string> default_token_prefixes(bool mask_all_default_tokens = true);

/// The prefixes gitlab-runner ends up masking: the payload's plus the defaults, trimmed,
/// ordered by length then bytes, de-duplicated, and the first max_token_prefixes of those.
std::vector<std::string> effective_token_prefixes(std::vector<std::string> from_payload,
                                                  bool mask_all_default_tokens = true);

/// strings.TrimSpace: strips Unicode white space at both ends.
std::string_view trim_space(std::string_view s);

struct masker_options {
    std::vector<std::string> phrases;         ///< values of masked variables
    std::vector<std::string> token_prefixes;  ///< features.token_mask_prefixes
    bool mask_all_default_tokens = true;      ///< FF_MASK_ALL_DEFAULT_TOKENS
    bool mask_url_params = true;
};

/// The three masking stages of gitlab-runner's build logger, in its order:
///  1. phrases: each value trimmed, empty ones dropped, duplicates dropped; the leftmost
///     occurrence wins and, of those starting there, the longest;
///  2. URL parameters: the value after ?key= or &key= for private_token, authenticity_token,
///     rss_token, x-amz-signature, x-amz-credential, x-amz-security-token (key case-insensitive),
///     up to the next ?, & or white space/control character;
///  3. token prefixes: the body after a prefix (bytes [A-Za-z0-9._=-]) while the prefix stays.
/// The result does not depend on how the output is split into writes.
class masker {
public:
    explicit masker(const masker_options& options);
    ~masker();
    masker(masker&&) noexcept;
    masker& operator=(masker&&) noexcept;

    /// Passes on what is final of the output so far.
    void write(std::string_view in, const segment_sink& out);
    void write(std::string_view in, std::string& out);  ///< appends
    std::string write(std::string_view in);

    /// End of output: passes on everything still held back. The masker can then start over.
    void flush(const segment_sink& out);
    void flush(std::string& out);
    std::string flush();

    /// Input bytes not yet decided.
    std::size_t held_bytes() const;
    /// Heap and object bytes this masker holds (tables and buffers).
    std::size_t memory_footprint() const;

private:
    struct impl;
    std::unique_ptr<impl> impl_;
};

/// Replaces invalid UTF-8 by U+FFFD as Go's encoding.Replacement encoder does: one U+FFFD per
/// byte that does not start a valid sequence. A sequence split across writes is held back, not
/// replaced, until the next write or flush().
class utf8_repair {
public:
    void write(std::string_view in, const segment_sink& out);
    void write(std::string_view in, std::string& out);  ///< appends
    void flush(const segment_sink& out);
    void flush(std::string& out);
    std::size_t held_bytes() const { return pending_.size(); }

private:
    std::size_t process(std::string_view in, const segment_sink& out, bool at_eof);

    std::string pending_;  // at most 3 bytes of an unfinished sequence
};

}  // namespace kiln::trace
