#include "runner/trace/masker.hpp"

#include "runner/trace/byte_scan.hpp"

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <map>

namespace kiln::trace {
namespace {

constexpr std::size_t npos = std::string_view::npos;

// ---- UTF-8 as Go's unicode/utf8 reads it ---------------------------------------------------

enum class rune_status : std::uint8_t { valid, invalid, incomplete };

struct rune {
    rune_status status;
    std::uint8_t size;  // bytes of a valid rune; 1 for an invalid byte
    char32_t value;
};

// utf8.DecodeRune plus utf8.FullRune: `incomplete` when the bytes so far are a valid start of a
// longer sequence and the input ends (and it is not the end of the stream).
rune decode_rune(const unsigned char* p, std::size_t n, bool at_eof) {
    const unsigned c = p[0];
    if (c < 0x80) {
        return {rune_status::valid, 1, c};
    }
    std::size_t need = 0;
    unsigned lo = 0x80;
    unsigned hi = 0xBF;
    char32_t value = 0;
    if (c >= 0xC2 && c <= 0xDF) {
        need = 2;
        value = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
        need = 3;
        value = c & 0x0F;
        lo = c == 0xE0 ? 0xA0 : 0x80;
        hi = c == 0xED ? 0x9F : 0xBF;
    } else if (c >= 0xF0 && c <= 0xF4) {
        need = 4;
        value = c & 0x07;
        lo = c == 0xF0 ? 0x90 : 0x80;
        hi = c == 0xF4 ? 0x8F : 0xBF;
    } else {
        return {rune_status::invalid, 1, 0xFFFD};
    }
    for (std::size_t i = 1; i < need; ++i) {
        if (i >= n) {
            return at_eof ? rune{rune_status::invalid, 1, 0xFFFD}
                          : rune{rune_status::incomplete, 0, 0};
        }
        const unsigned b = p[i];
        const unsigned l = i == 1 ? lo : 0x80;
        const unsigned h = i == 1 ? hi : 0xBF;
        if (b < l || b > h) {
            return {rune_status::invalid, 1, 0xFFFD};
        }
        value = (value << 6) | (b & 0x3F);
    }
    return {rune_status::valid, static_cast<std::uint8_t>(need), value};
}

// unicode.IsSpace
bool is_space(char32_t r) {
    switch (r) {
        case '\t': case '\n': case '\v': case '\f': case '\r': case ' ': case 0x85: case 0xA0:
        case 0x1680: case 0x2028: case 0x2029: case 0x202F: case 0x205F: case 0x3000:
            return true;
        default:
            return r >= 0x2000 && r <= 0x200A;
    }
}

// unicode.IsControl
bool is_control(char32_t r) { return r < 0x20 || (r >= 0x7F && r <= 0x9F); }

const unsigned char* bytes(std::string_view s) {
    return reinterpret_cast<const unsigned char*>(s.data());
}

// For a stage that holds back only the start of an unfinished character: joins the held bytes
// with enough of `in` (`lookahead`) to decide it, then goes on in `in` itself, so the bulk of
// the output is never copied. `process(text)` returns how much of `text` it consumed.
template <class Process>
void write_after_held(std::string& pending, std::string_view in, std::size_t lookahead,
                      Process&& process) {
    if (!pending.empty()) {
        const std::size_t held = pending.size();
        const std::size_t take = std::min(in.size(), lookahead);
        std::string joined = pending;
        joined.append(in.substr(0, take));
        pending.clear();
        const std::size_t done = process(std::string_view(joined));
        if (take == in.size()) {
            pending.assign(joined, done);
            return;
        }
        in.remove_prefix(done - held);
    }
    pending.assign(in.substr(process(in)));
}

// ---- stage 1: masked variable values --------------------------------------------------------
//
// Why not Aho-Corasick: over 200 values of up to 40 bytes the automaton has ~5000 states; as a
// dense DFA that is over 1 MiB per job (hundreds of KiB even with byte classes), and walking it a
// byte at a time is bound by dependent loads: under 1 GB/s once the table leaves L1.
// Instead, sampled q-gram filtering (the idea of Wu-Manber's blocks): with m the shortest value,
// g = min(4, m) and stride = min(m - g + 1, 16), an occurrence starting at s contains, at the one
// sampled position j in [s, s + stride), the g-byte gram of the value at offset j - s < stride.
// The scan hashes the gram at every stride-th position and tests a bitmap of the grams of every
// value at offsets 0..stride-1 (8 KiB for 200 values, ~1.5% false hits); a hit for offset o is
// verified by a binary search of the sorted values at s = j - o. That is one multiply and one L1
// load per `stride` bytes (5 for values of 8+ bytes), whatever the number of values, and a hit
// costs O(log values) even when many values share a prefix. Shorter values shrink the stride,
// down to 1 for values of 1-4 bytes: slower, still correct.
class phrase_stage {
public:
    explicit phrase_stage(std::vector<std::string> phrases) {
        std::sort(phrases.begin(), phrases.end());
        phrases.erase(std::unique(phrases.begin(), phrases.end()), phrases.end());
        if (phrases.empty()) {
            return;
        }
        min_len_ = npos;
        for (const auto& p : phrases) {
            off_.push_back(static_cast<std::uint32_t>(pool_.size()));
            len_.push_back(static_cast<std::uint32_t>(p.size()));
            pool_ += p;
            min_len_ = std::min(min_len_, p.size());
            max_len_ = std::max(max_len_, p.size());
            for (unsigned char c : p) {
                in_phrase_[c] = true;
            }
        }
        if (min_len_ >= 2) {
            for (const auto& p : phrases) {
                pairs_.add(static_cast<unsigned char>(p[0]), static_cast<unsigned char>(p[1]));
            }
        }
        gram_ = static_cast<unsigned>(std::min<std::size_t>(4, min_len_));
        stride_ = static_cast<unsigned>(std::min<std::size_t>(min_len_ - gram_ + 1, max_stride));
        gram_mask_ = gram_ == 4 ? 0xFFFFFFFFu : (1u << (8 * gram_)) - 1;

        // Each phrase's nearest shorter phrase that is a prefix of it (phrases are sorted).
        parent_.assign(off_.size(), no_parent);
        std::vector<std::uint32_t> chain;
        for (std::uint32_t i = 0; i < off_.size(); ++i) {
            while (!chain.empty() && phrase(i).substr(0, len_[chain.back()]) != phrase(chain.back())) {
                chain.pop_back();
            }
            parent_[i] = chain.empty() ? no_parent : chain.back();
            chain.push_back(i);
        }

        struct raw {
            std::uint32_t gram, offset, idx;
            bool operator==(const raw& o) const { return gram == o.gram && offset == o.offset; }
            bool operator<(const raw& o) const {
                return gram != o.gram ? gram < o.gram : offset < o.offset;
            }
        };
        std::vector<raw> grams;
        for (std::uint32_t i = 0; i < off_.size(); ++i) {
            for (std::uint32_t o = 0; o < stride_; ++o) {
                grams.push_back({load_short(bytes(pool_) + off_[i] + o, gram_), o, 0});
            }
        }
        // Phrases that share a gram at the same offset (https://..., glpat-...) share one entry:
        // a hit costs one sorted search per offset, not one comparison per phrase.
        std::sort(grams.begin(), grams.end());
        grams.erase(std::unique(grams.begin(), grams.end()), grams.end());
        // At least 16 Ki bits (2 KiB): with few values a sparse map makes false hits, each a
        // bucket search, rare (0.1% of samples for one value) at little memory.
        bits_ = std::clamp(ceil_log2(grams.size() * 64), 14u, 18u);
        bucket_bits_ = std::clamp(ceil_log2(grams.size()), 1u, bits_);
        bitmap_.assign(std::size_t{1} << (bits_ - 6), 0);
        bucket_start_.assign((std::size_t{1} << bucket_bits_) + 1, 0);
        for (auto& g : grams) {
            g.idx = hash(g.gram);
            bitmap_[g.idx >> 6] |= std::uint64_t{1} << (g.idx & 63);
            ++bucket_start_[(g.idx >> (bits_ - bucket_bits_)) + 1];
        }
        for (std::size_t b = 1; b < bucket_start_.size(); ++b) {
            bucket_start_[b] += bucket_start_[b - 1];
        }
        entries_.resize(grams.size());
        auto fill = bucket_start_;
        for (const auto& g : grams) {
            entries_[fill[g.idx >> (bits_ - bucket_bits_)]++] = {g.gram, g.offset};
        }
    }

    bool empty() const { return off_.empty(); }
    std::size_t held_bytes() const { return carry_.size(); }
    std::size_t memory_footprint() const {
        return pool_.capacity() + (off_.capacity() + len_.capacity()) * sizeof(std::uint32_t) +
               bitmap_.capacity() * sizeof(std::uint64_t) +
               bucket_start_.capacity() * sizeof(std::uint32_t) + parent_.capacity() * sizeof(std::uint32_t) +
               entries_.capacity() * sizeof(entry) + carry_.capacity() + junction_.capacity();
    }

    void write(std::string_view in, const segment_sink& out) {
        if (in.empty()) {
            return;
        }
        if (carry_.empty()) {
            carry_.assign(in.substr(scan(in, 0, false, out)));
            return;
        }
        // Join the held bytes with enough of `in` that every start inside them is decided, then
        // go on in `in` itself, so the bulk of the output is never copied twice.
        const std::size_t take = std::min(in.size(), max_len_ + stride_ + gram_);
        junction_.assign(carry_);
        junction_.append(in.substr(0, take));
        const std::size_t done = scan(junction_, 0, false, out);
        if (take == in.size()) {
            carry_.assign(junction_, done);
            return;
        }
        if (done < carry_.size()) {  // not reachable with `take` as above; kept for safety
            junction_.erase(0, done);
            junction_.append(in.substr(take));
            const std::size_t d = scan(junction_, 0, false, out);
            carry_.assign(junction_, d);
            return;
        }
        const std::size_t from = done - carry_.size();
        carry_.assign(in.substr(scan(in, from, false, out)));
    }

    void flush(const segment_sink& out) {
        if (!carry_.empty()) {
            scan(carry_, 0, true, out);
        }
        carry_.clear();
        carry_.shrink_to_fit();
        junction_.clear();
        junction_.shrink_to_fit();
    }

private:
    static constexpr unsigned max_stride = 16;  // long values (tokens) are sampled sparsely
    static constexpr std::uint64_t hash_mul = 0x9E3779B97F4A7C15ull;

    static constexpr std::uint32_t no_parent = 0xFFFFFFFF;

    struct entry {
        std::uint32_t gram;
        std::uint32_t offset;
    };

    static unsigned ceil_log2(std::size_t v) {
        unsigned b = 0;
        while ((std::size_t{1} << b) < v) {
            ++b;
        }
        return b;
    }
    static std::uint32_t load_short(const unsigned char* p, unsigned n) {
        std::uint32_t x = 0;
        for (unsigned i = 0; i < n; ++i) {
            x |= std::uint32_t{p[i]} << (8 * i);
        }
        return x;
    }
    static std::uint32_t load4(const unsigned char* p) {
        std::uint32_t x;
        std::memcpy(&x, p, 4);
        return x;  // little endian, as load_short
    }
    std::uint32_t hash(std::uint32_t gram) const {
        return static_cast<std::uint32_t>((std::uint64_t{gram} * hash_mul) >> (64 - bits_));
    }
    bool maybe(std::uint32_t idx) const { return (bitmap_[idx >> 6] >> (idx & 63)) & 1; }

    std::string_view phrase(std::uint32_t i) const {
        return std::string_view(pool_).substr(off_[i], len_[i]);
    }

    struct match {
        std::size_t len = 0;     // the longest phrase `rest` starts with; 0: none
        bool undecided = false;  // `rest` is a proper prefix of a phrase
    };

    // Phrases are sorted: those that `rest` starts with are all prefixes of the last phrase not
    // greater than `rest`, reached through parent_ in decreasing length; those that start with
    // `rest` come right after it.
    match longest_at(std::string_view rest, bool final) const {
        std::uint32_t lo = 0;
        std::uint32_t hi = static_cast<std::uint32_t>(off_.size());
        while (lo < hi) {
            const std::uint32_t mid = lo + (hi - lo) / 2;
            if (rest < phrase(mid)) {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        match m;
        if (!final && rest.size() < max_len_ && lo < off_.size() && len_[lo] > rest.size() &&
            phrase(lo).substr(0, rest.size()) == rest) {
            m.undecided = true;
        }
        if (lo > 0) {
            const auto pred = phrase(lo - 1);
            const std::size_t common = static_cast<std::size_t>(
                std::mismatch(pred.begin(), pred.end(), rest.begin(), rest.end()).first - pred.begin());
            for (std::uint32_t k = lo - 1; k != no_parent; k = parent_[k]) {
                if (len_[k] <= common) {
                    m.len = len_[k];
                    break;
                }
            }
        }
        return m;
    }

    // Masks text[pos, ...). Every start before `pos` is decided and emitted. Appends the decided
    // output to `out`; returns where the undecided bytes begin (text.size() when `final`).
    std::size_t scan(std::string_view text, std::size_t pos, bool final, const segment_sink& out) const {
        if (pairs_.vector()) {
            return scan_pairs(text, pos, final, out);
        }
        const unsigned char* p = bytes(text);
        const std::size_t n = text.size();
        std::size_t j = pos + stride_ - 1;  // sample position; covers starts (j - stride_, j]
        for (;;) {
            std::uint32_t x = 0;
            std::uint32_t idx = 0;
            bool hit = false;
            // Four samples a step, independent of each other; the step that hits is redone
            // one sample at a time below.
            while (j + 3 * stride_ + 4 <= n &&
                   !(maybe(hash(load4(p + j) & gram_mask_)) |
                     maybe(hash(load4(p + j + stride_) & gram_mask_)) |
                     maybe(hash(load4(p + j + 2 * stride_) & gram_mask_)) |
                     maybe(hash(load4(p + j + 3 * stride_) & gram_mask_)))) {
                j += 4 * stride_;
            }
            while (j + 4 <= n) {
                x = load4(p + j) & gram_mask_;
                idx = hash(x);
                if (maybe(idx)) {
                    hit = true;
                    break;
                }
                j += stride_;
            }
            if (!hit) {
                if (j + gram_ > n) {
                    break;
                }
                x = load_short(p + j, gram_);
                idx = hash(x);
                if (!maybe(idx)) {
                    j += stride_;
                    continue;
                }
            }
            std::size_t best = npos;
            std::size_t best_len = 0;
            std::size_t undecided = npos;
            const std::uint32_t b = idx >> (bits_ - bucket_bits_);
            for (std::uint32_t k = bucket_start_[b]; k < bucket_start_[b + 1]; ++k) {
                const entry& e = entries_[k];
                if (e.gram != x) {
                    continue;
                }
                const std::size_t s = j - e.offset;  // entries are unique: each s comes once
                const match m = longest_at(text.substr(s), final);
                if (m.undecided) {
                    undecided = std::min(undecided, s);
                }
                if (m.len > 0 && s < best) {
                    best = s;
                    best_len = m.len;
                }
            }
            if (undecided != npos && undecided <= best) {
                // A match (maybe longer than `best`) may start here; wait for more output.
                out(text.substr(pos, undecided - pos));
                return undecided;
            }
            if (best != npos) {
                out(text.substr(pos, best - pos));
                out(masked_text);
                pos = best + best_len;
                j = pos + stride_ - 1;
                continue;
            }
            j += stride_;
        }
        if (final) {
            out(text.substr(pos));
            return n;
        }
        // Starts from j - stride_ + 1 on were not sampled: the text from each of them to the end
        // is shorter than any phrase, so it can only be the beginning of one. Hold back from the
        // first that is. No start at or before a byte that no phrase contains can be.
        std::size_t s = j + 1 - stride_;
        for (std::size_t k = n; k > s; --k) {
            if (!in_phrase_[p[k - 1]]) {
                s = k;
                break;
            }
        }
        for (; s < n; ++s) {
            if (longest_at(text.substr(s), false).undecided) {
                break;
            }
        }
        out(text.substr(pos, s - pos));
        return s;
    }

    // Few phrases (at most four distinct first bytes and four distinct second bytes, as a job's
    // token and a handful of masked values usually have): every start that could begin one is
    // found by a vector compare of byte pairs, 32 positions a step, and checked in order, so the
    // leftmost match wins, and a start that may still become a match holds back the rest.
    // The end of the text needs no special case: a start whose tail could begin a phrase has
    // its first byte (and second, if there is one) in the pair set.
    std::size_t scan_pairs(std::string_view text, std::size_t pos, bool final,
                           const segment_sink& out) const {
        const unsigned char* p = bytes(text);
        const std::size_t n = text.size();
        for (std::size_t s = pos; (s = scan::find_pair(p, s, n, pairs_)) < n;) {
            const match m = longest_at(text.substr(s), final);
            if (m.undecided) {
                out(text.substr(pos, s - pos));
                return s;
            }
            if (m.len > 0) {
                out(text.substr(pos, s - pos));
                out(masked_text);
                pos = s = s + m.len;
                continue;
            }
            ++s;
        }
        out(text.substr(pos));
        return n;
    }

    std::string pool_;  // phrases, sorted, back to back
    std::vector<std::uint32_t> off_;
    std::vector<std::uint32_t> len_;
    std::vector<std::uint32_t> parent_;
    std::size_t min_len_ = 0;
    std::size_t max_len_ = 0;
    unsigned gram_ = 1;
    unsigned stride_ = 1;
    std::uint32_t gram_mask_ = 0;
    unsigned bits_ = 10;
    unsigned bucket_bits_ = 1;
    std::vector<std::uint64_t> bitmap_;
    std::vector<std::uint32_t> bucket_start_;
    std::vector<entry> entries_;
    std::array<bool, 256> in_phrase_{};
    scan::pair_set pairs_;  // the first two bytes of every phrase
    std::string carry_;     // input not yet decided
    std::string junction_;  // carry_ joined with the start of the next write
};

// ---- stage 2: URL parameters (urlsanitizer.go) ----------------------------------------------
//
// A byte-level state machine with gitlab-runner's whole-text semantics: a key is what follows ?
// or & up to =, at most 20 bytes (its match buffer holds the separator and 20 bytes); a ? or &
// inside the key starts a new one. Keys pass through; only the value is swallowed, and one
// [MASKED] is written when it ends (even for an empty value). The only bytes held back are the
// start of a multi-byte character inside a value, which may be a terminating space.
class url_stage {
public:
    std::size_t held_bytes() const { return pending_.size(); }

    void write(std::string_view in, const segment_sink& out) {
        // 8 bytes of `in` decide the held character (at most 4 bytes long).
        write_after_held(pending_, in, 8,
                         [&](std::string_view text) { return process(text, out, false); });
    }

    void flush(const segment_sink& out) {
        if (!pending_.empty()) {
            std::string rest;
            rest.swap(pending_);
            process(rest, out, true);
        }
        if (state_ == state::value) {
            out(masked_text);
        }
        state_ = state::text;
        key_len_ = 0;
    }

private:
    enum class state : std::uint8_t { text, key, value };
    static constexpr std::size_t max_key = 20;

    bool sensitive_key() const {
        // strings.ToLower; U+212A KELVIN SIGN is the one non-ASCII rune that lowers into these.
        char lowered[max_key];
        std::size_t n = 0;
        for (std::size_t i = 0; i < key_len_; ++i) {
            const auto c = static_cast<unsigned char>(key_[i]);
            if (c == 0xE2 && i + 2 < key_len_ && static_cast<unsigned char>(key_[i + 1]) == 0x84 &&
                static_cast<unsigned char>(key_[i + 2]) == 0xAA) {
                lowered[n++] = 'k';
                i += 2;
            } else {
                lowered[n++] = static_cast<char>(c >= 'A' && c <= 'Z' ? c + 32 : c);
            }
        }
        const std::string_view key(lowered, n);
        return key == "private_token" || key == "authenticity_token" || key == "rss_token" ||
               key == "x-amz-signature" || key == "x-amz-credential" ||
               key == "x-amz-security-token";
    }

    // Returns how much of `in` was consumed; the rest (only ever an unfinished character inside a
    // value) waits for more input.
    std::size_t process(std::string_view in, const segment_sink& out, bool at_eof) {
        const unsigned char* p = bytes(in);
        const std::size_t n = in.size();
        std::size_t i = 0;
        std::size_t emit = 0;  // in[emit, i) still to be written
        while (i < n) {
            switch (state_) {
                case state::text: {
                    const std::size_t k = scan::find_either(p, i, n, '?', '&');
                    if (k == n) {
                        i = n;
                        break;
                    }
                    state_ = state::key;
                    key_len_ = 0;
                    i = k + 1;
                    break;
                }
                case state::key: {
                    const unsigned char c = p[i++];
                    if (c == '?' || c == '&') {
                        key_len_ = 0;
                    } else if (c == '=') {
                        if (sensitive_key()) {
                            out(in.substr(emit, i - emit));
                            emit = i;
                            state_ = state::value;
                        } else {
                            state_ = state::text;
                        }
                    } else if (key_len_ < max_key) {
                        key_[key_len_++] = static_cast<char>(c);
                    } else {
                        // Too long to be a key we mask. Until the next ? or & starts another,
                        // nothing can happen: that is the text state.
                        state_ = state::text;
                    }
                    break;
                }
                case state::value: {
                    while (i < n) {
                        const unsigned char c = p[i];
                        if (c < 0x80) {
                            if (c <= 0x20 || c == 0x7F || c == '?' || c == '&') {
                                break;
                            }
                            ++i;
                            continue;
                        }
                        const rune r = decode_rune(p + i, n - i, at_eof);
                        if (r.status == rune_status::incomplete) {
                            return i;  // swallowed so far: nothing to write
                        }
                        if (r.status == rune_status::valid && (is_space(r.value) || is_control(r.value))) {
                            break;
                        }
                        i += r.size;
                    }
                    emit = i;
                    if (i < n) {
                        out(masked_text);
                        state_ = state::text;
                    }
                    break;
                }
            }
        }
        out(in.substr(emit));
        return n;
    }

    state state_ = state::text;
    std::size_t key_len_ = 0;
    char key_[max_key] = {};
    std::string pending_;
};

// ---- stage 3: token prefixes (tokensanitizer.go) --------------------------------------------
//
// At most 15 prefixes, so an Aho-Corasick DFA over byte classes is small (defaults: ~70 states x
// ~22 classes). Prefix bytes pass through as they come, so nothing is held back; once a prefix
// is complete the body is swallowed and one [MASKED] written where it ends. While the DFA is in
// its start state, a SIMD scan skips to the next byte pair that can begin a prefix.
class token_stage {
public:
    explicit token_stage(const std::vector<std::string>& prefixes) {
        for (int c = 0; c < 256; ++c) {
            const bool alnum = (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
            body_[static_cast<std::size_t>(c)] = alnum || c == '-' || c == '.' || c == '_' || c == '=';
        }
        build(prefixes);
    }

    std::size_t memory_footprint() const {
        return delta_.capacity() * sizeof(std::uint32_t) + accept_.capacity();
    }

    void write(std::string_view in, const segment_sink& out) {
        const unsigned char* p = bytes(in);
        const std::size_t n = in.size();
        std::size_t i = 0;
        std::size_t emit = 0;
        while (i < n) {
            if (in_body_) {
                std::size_t k = i;
                while (k < n && body_[p[k]]) {
                    ++k;
                }
                body_seen_ = body_seen_ || k > i;
                i = k;
                emit = k;
                if (k == n) {
                    break;
                }
                if (body_seen_) {
                    out(masked_text);
                }
                in_body_ = false;
                continue;
            }
            if (state_ == 0) {
                i = scan::find_pair(p, i, n, starts_);
                if (i == n) {
                    break;
                }
            }
            state_ = delta_[state_ * classes_ + class_[p[i]]];
            ++i;
            if (accept_[state_] != 0) {
                out(in.substr(emit, i - emit));
                emit = i;
                state_ = 0;
                in_body_ = true;
                body_seen_ = false;
            }
        }
        out(in.substr(emit));
    }

    void flush(const segment_sink& out) {
        if (in_body_ && body_seen_) {
            out(masked_text);
        }
        in_body_ = false;
        body_seen_ = false;
        state_ = 0;
    }

private:
    void build(const std::vector<std::string>& prefixes) {
        // Byte classes: each byte used by a prefix is its own class, all others share class 0.
        class_.fill(0);
        classes_ = 1;
        for (const auto& pre : prefixes) {
            for (unsigned char c : pre) {
                if (class_[c] == 0) {
                    class_[c] = static_cast<std::uint8_t>(classes_++);
                }
            }
        }
        // Trie.
        std::vector<std::map<std::uint8_t, std::uint32_t>> next(1);
        accept_.assign(1, 0);
        for (const auto& pre : prefixes) {
            std::uint32_t s = 0;
            for (unsigned char c : pre) {
                auto it = next[s].find(class_[c]);
                if (it == next[s].end()) {
                    it = next[s].emplace(class_[c], static_cast<std::uint32_t>(next.size())).first;
                    next.emplace_back();
                    accept_.push_back(0);
                }
                s = it->second;
            }
            accept_[s] = 1;
        }
        // Dense DFA in BFS order; a state accepts when any prefix ends there.
        const std::size_t states = next.size();
        delta_.assign(states * classes_, 0);
        std::vector<std::uint32_t> fail(states, 0);
        std::vector<std::uint32_t> queue;
        for (std::uint32_t c = 0; c < classes_; ++c) {
            auto it = next[0].find(static_cast<std::uint8_t>(c));
            if (it != next[0].end()) {
                delta_[c] = it->second;
                queue.push_back(it->second);
            }
        }
        for (std::size_t q = 0; q < queue.size(); ++q) {
            const std::uint32_t s = queue[q];
            accept_[s] = accept_[s] | accept_[fail[s]];
            for (std::uint32_t c = 0; c < classes_; ++c) {
                auto it = next[s].find(static_cast<std::uint8_t>(c));
                if (it != next[s].end()) {
                    fail[it->second] = delta_[fail[s] * classes_ + c];
                    delta_[s * classes_ + c] = it->second;
                    queue.push_back(it->second);
                } else {
                    delta_[s * classes_ + c] = delta_[fail[s] * classes_ + c];
                }
            }
        }
        // Start-state filter: a prefix can only begin at one of its first bytes followed by one
        // of its second bytes.
        for (const auto& pre : prefixes) {
            if (pre.size() == 1) {
                starts_.add(static_cast<unsigned char>(pre[0]));
            } else {
                starts_.add(static_cast<unsigned char>(pre[0]), static_cast<unsigned char>(pre[1]));
            }
        }
    }

    std::array<bool, 256> body_{};
    std::array<std::uint8_t, 256> class_{};
    std::uint32_t classes_ = 1;
    std::vector<std::uint32_t> delta_;
    std::vector<std::uint8_t> accept_;
    scan::pair_set starts_;
    std::uint32_t state_ = 0;
    bool in_body_ = false;
    bool body_seen_ = false;
};

}  // namespace

// ---- public API -----------------------------------------------------------------------------

std::vector<std::string> default_token_prefixes(bool mask_all_default_tokens) {
    std::vector<std::string> p{"glpat-"};
    if (mask_all_default_tokens) {
        for (const char* s : {"gloas-", "gldt-", "glrt-", "glcbt-", "glrtr-", "glptt-", "glft-",
                              "glimt-", "glagent-", "glsoat-", "glffct-", "_gitlab_session=",
                              "gltok-"}) {
            p.emplace_back(s);
        }
    }
    return p;
}

std::vector<std::string> effective_token_prefixes(std::vector<std::string> from_payload,
                                                  bool mask_all_default_tokens) {
    // internal.Unique then tokensanitizer.New: the cap applies after sorting, so it keeps the
    // shortest prefixes, whichever list they came from.
    for (auto& d : default_token_prefixes(mask_all_default_tokens)) {
        from_payload.push_back(std::move(d));
    }
    for (auto& p : from_payload) {
        p = std::string(trim_space(p));
    }
    std::sort(from_payload.begin(), from_payload.end(), [](const auto& a, const auto& b) {
        return a.size() != b.size() ? a.size() < b.size() : a < b;
    });
    from_payload.erase(std::unique(from_payload.begin(), from_payload.end()), from_payload.end());
    from_payload.erase(std::remove(from_payload.begin(), from_payload.end(), std::string()),
                       from_payload.end());
    if (from_payload.size() > max_token_prefixes) {
        from_payload.resize(max_token_prefixes);
    }
    return from_payload;
}

std::string_view trim_space(std::string_view s) {
    const unsigned char* p = bytes(s);
    std::size_t b = 0;
    std::size_t e = s.size();
    while (b < e) {
        const rune r = decode_rune(p + b, e - b, true);
        if (r.status != rune_status::valid || !is_space(r.value)) {
            break;
        }
        b += r.size;
    }
    while (e > b) {
        std::size_t start = e - 1;
        while (start > b && e - start < 4 && (p[start] & 0xC0) == 0x80) {
            --start;
        }
        const rune r = decode_rune(p + start, e - start, true);
        if (r.status != rune_status::valid || start + r.size != e || !is_space(r.value)) {
            break;
        }
        e = start;
    }
    return s.substr(b, e - b);
}

struct masker::impl {
    explicit impl(const masker_options& o)
        : phrases(trimmed(o.phrases)), url(o.mask_url_params),
          tokens(effective_token_prefixes(o.token_prefixes, o.mask_all_default_tokens)) {}

    static std::vector<std::string> trimmed(const std::vector<std::string>& values) {
        std::vector<std::string> out;
        for (const auto& v : values) {
            auto t = trim_space(v);
            if (!t.empty()) {
                out.emplace_back(t);
            }
        }
        return out;
    }

    // Output of one stage goes straight into the next, a piece at a time: nothing is copied
    // between the stages (three copies of every byte were ~8% of kiln's CPU for a large log).
    void to_url(std::string_view s, const segment_sink& out) {
        if (!url) {
            tokens.write(s, out);
            return;
        }
        const auto next = [this, &out](std::string_view t) { tokens.write(t, out); };
        url_params.write(s, next);
    }
    void write(std::string_view in, const segment_sink& out) {
        if (phrases.empty()) {
            to_url(in, out);
            return;
        }
        const auto next = [this, &out](std::string_view t) { to_url(t, out); };
        phrases.write(in, next);
    }
    void flush(const segment_sink& out) {
        // What one stage releases at the end still goes through the stages after it.
        const auto to_tokens = [this, &out](std::string_view t) { tokens.write(t, out); };
        const auto after_phrases = [&](std::string_view t) {
            if (url) {
                url_params.write(t, to_tokens);
            } else {
                tokens.write(t, out);
            }
        };
        phrases.flush(after_phrases);
        if (url) {
            url_params.flush(to_tokens);
        }
        tokens.flush(out);
    }

    phrase_stage phrases;
    bool url;
    url_stage url_params;
    token_stage tokens;
};

masker::masker(const masker_options& options) : impl_(std::make_unique<impl>(options)) {}
masker::~masker() = default;
masker::masker(masker&&) noexcept = default;
masker& masker::operator=(masker&&) noexcept = default;

void masker::write(std::string_view in, const segment_sink& out) { impl_->write(in, out); }

void masker::write(std::string_view in, std::string& out) {
    impl_->write(in, [&out](std::string_view s) { out.append(s); });
}

std::string masker::write(std::string_view in) {
    std::string out;
    write(in, out);
    return out;
}

void masker::flush(const segment_sink& out) { impl_->flush(out); }

void masker::flush(std::string& out) {
    impl_->flush([&out](std::string_view s) { out.append(s); });
}

std::string masker::flush() {
    std::string out;
    flush(out);
    return out;
}

std::size_t masker::held_bytes() const {
    return impl_->phrases.held_bytes() + impl_->url_params.held_bytes();
}

std::size_t masker::memory_footprint() const {
    const auto& m = *impl_;
    return sizeof(*this) + sizeof(impl) + m.phrases.memory_footprint() +
           m.tokens.memory_footprint();
}

// ---- UTF-8 repair ---------------------------------------------------------------------------

void utf8_repair::write(std::string_view in, std::string& out) {
    write(in, [&out](std::string_view s) { out.append(s); });
}

void utf8_repair::flush(std::string& out) {
    flush([&out](std::string_view s) { out.append(s); });
}

void utf8_repair::write(std::string_view in, const segment_sink& out) {
    write_after_held(pending_, in, 4,
                     [&](std::string_view text) { return process(text, out, false); });
}

void utf8_repair::flush(const segment_sink& out) {
    if (!pending_.empty()) {
        std::string rest;
        rest.swap(pending_);
        process(rest, out, true);
    }
}

std::size_t utf8_repair::process(std::string_view in, const segment_sink& out, bool at_eof) {
    static constexpr std::string_view replacement = "\xEF\xBF\xBD";
    const unsigned char* p = bytes(in);
    const std::size_t n = in.size();
    std::size_t i = 0;
    std::size_t emit = 0;
    while (i < n) {
        i = scan::find_non_ascii(p, i, n);
        if (i >= n) {
            break;
        }
        const rune r = decode_rune(p + i, n - i, at_eof);
        if (r.status == rune_status::valid) {
            i += r.size;
            continue;
        }
        out(in.substr(emit, i - emit));
        if (r.status == rune_status::incomplete) {
            return i;
        }
        out(replacement);
        emit = ++i;
    }
    out(in.substr(emit));
    return n;
}

}  // namespace kiln::trace
