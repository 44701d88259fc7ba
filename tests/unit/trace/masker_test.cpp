#include <catch2/catch.hpp>

#include <algorithm>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "runner/trace/masker.hpp"

using kiln::trace::masker;
using kiln::trace::masker_options;

namespace {

const std::string M = "[MASKED]";

masker_options phrases_only(std::vector<std::string> phrases) {
    masker_options o;
    o.phrases = std::move(phrases);
    return o;
}

std::string whole(const masker_options& o, std::string_view text) {
    masker m(o);
    auto out = m.write(text);
    out += m.flush();
    return out;
}

// Writes `text` cut at `cuts` (ascending offsets); checks on the way that what is released is
// only ever extended, never revised.
std::string in_parts(const masker_options& o, std::string_view text, const std::vector<std::size_t>& cuts) {
    masker m(o);
    std::string out;
    std::size_t from = 0;
    for (auto c : cuts) {
        m.write(text.substr(from, c - from), out);
        from = c;
    }
    m.write(text.substr(from), out);
    m.flush(out);
    return out;
}

std::string bytewise(const masker_options& o, std::string_view text) {
    masker m(o);
    std::string out;
    for (char c : text) {
        m.write(std::string_view(&c, 1), out);
    }
    m.flush(out);
    return out;
}

// ---- reference semantics, written the obvious way over the whole text ----------------------

std::string ref_phrases(std::string_view text, std::vector<std::string> phrases) {
    std::vector<std::string> ps;
    for (auto& p : phrases) {
        auto t = kiln::trace::trim_space(p);
        if (!t.empty()) {
            ps.emplace_back(t);
        }
    }
    std::string out;
    for (std::size_t i = 0; i < text.size();) {
        std::size_t best = 0;
        for (const auto& p : ps) {
            if (p.size() > best && text.substr(i, p.size()) == p) {
                best = p.size();
            }
        }
        if (best > 0) {
            out += M;
            i += best;
        } else {
            out += text[i++];
        }
    }
    return out;
}

struct go_rune {
    char32_t r;
    std::size_t size;
};

go_rune go_decode(std::string_view s) {
    const auto b = [&](std::size_t i) { return static_cast<unsigned char>(s[i]); };
    const unsigned c = b(0);
    if (c < 0x80) {
        return {c, 1};
    }
    std::size_t need = c >= 0xC2 && c <= 0xDF ? 2 : c >= 0xE0 && c <= 0xEF ? 3 : c >= 0xF0 && c <= 0xF4 ? 4 : 0;
    if (need == 0 || s.size() < need) {
        return {0xFFFD, 1};
    }
    unsigned lo = c == 0xE0 ? 0xA0 : c == 0xF0 ? 0x90 : 0x80;
    unsigned hi = c == 0xED ? 0x9F : c == 0xF4 ? 0x8F : 0xBF;
    char32_t r = c & (need == 2 ? 0x1F : need == 3 ? 0x0F : 0x07);
    for (std::size_t i = 1; i < need; ++i) {
        if (b(i) < (i == 1 ? lo : 0x80) || b(i) > (i == 1 ? hi : 0xBF)) {
            return {0xFFFD, 1};
        }
        r = (r << 6) | (b(i) & 0x3F);
    }
    return {r, need};
}

bool go_param_end(char32_t r) {
    const bool space = r == '\t' || r == '\n' || r == '\v' || r == '\f' || r == '\r' || r == ' ' ||
                       r == 0x85 || r == 0xA0 || r == 0x1680 || (r >= 0x2000 && r <= 0x200A) ||
                       r == 0x2028 || r == 0x2029 || r == 0x202F || r == 0x205F || r == 0x3000;
    return r == '?' || r == '&' || space || r < 0x20 || (r >= 0x7F && r <= 0x9F);
}

// urlsanitizer.go's Write over the whole text, then Close.
std::string ref_url(std::string_view p) {
    static const std::vector<std::string> keys = {"private_token", "authenticity_token", "rss_token",
                                                  "x-amz-signature", "x-amz-credential", "x-amz-security-token"};
    const std::size_t cap = 21;
    std::string out;
    std::string match;
    bool masking = false;
    std::size_t n = 0;
    std::size_t last = 0;
    while (n < p.size()) {
        if (masking) {
            std::size_t k = n;
            while (k < p.size()) {
                auto r = go_decode(p.substr(k));
                if (go_param_end(r.r) && !(r.r == 0xFFFD && r.size == 1)) {
                    break;
                }
                k += r.size;
            }
            if (k >= p.size()) {
                n = last = p.size();
                break;
            }
            n = last = k;
            masking = false;
            out += M;
        }
        if (match.size() == cap) {
            match.clear();
        }
        if (match.empty()) {
            auto k = p.find_first_of("?&", n);
            if (k == std::string_view::npos) {
                n = p.size();
                break;
            }
            match += p[k];
            n = k + 1;
        }
        if (n >= p.size()) {
            break;
        }
        auto k = p.find_first_of("=?&", n);
        if (k == std::string_view::npos) {
            match += p[n++];
            continue;
        }
        if (p[k] == '?' || p[k] == '&') {
            match.clear();
            n = k;
            continue;
        }
        if (k - n + match.size() > cap) {
            match.clear();
            ++n;
            continue;
        }
        std::string key = match.substr(1) + std::string(p.substr(n, k - n));
        n = k + 1;
        std::string lowered;
        for (std::size_t i = 0; i < key.size(); ++i) {
            if (key.compare(i, 3, "\xE2\x84\xAA") == 0) {  // KELVIN SIGN lowers to k
                lowered += 'k';
                i += 2;
            } else {
                lowered += static_cast<char>(std::tolower(static_cast<unsigned char>(key[i])));
            }
        }
        if (std::find(keys.begin(), keys.end(), lowered) != keys.end()) {
            out += p.substr(last, n - last);
            last = n;
            masking = true;
        }
        match.clear();
    }
    out += p.substr(last);
    if (masking) {
        out += M;
    }
    return out;
}

bool body_char(char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '.' || c == '_' || c == '=';
}

// The first prefix to end in the text (searching again from where the last body ended) keeps
// its bytes; the run of body characters after it becomes one [MASKED].
std::string ref_tokens(std::string_view t, const std::vector<std::string>& prefixes) {
    std::string out;
    std::size_t from = 0;  // where prefixes may start
    std::size_t emitted = 0;
    for (std::size_t end = 1; end <= t.size(); ++end) {
        bool hit = false;
        for (const auto& p : prefixes) {
            if (p.size() <= end - from && t.substr(end - p.size(), p.size()) == p) {
                hit = true;
            }
        }
        if (!hit) {
            continue;
        }
        std::size_t b = end;
        while (b < t.size() && body_char(t[b])) {
            ++b;
        }
        out += t.substr(emitted, end - emitted);
        if (b > end) {
            out += M;
        }
        emitted = from = b;
        end = b;  // the loop's ++end looks at b + 1: a prefix needs at least one byte
    }
    out += t.substr(emitted);
    return out;
}

std::string reference(std::string_view text, const masker_options& o) {
    auto prefixes = kiln::trace::effective_token_prefixes(o.token_prefixes, o.mask_all_default_tokens);
    auto s = ref_phrases(text, o.phrases);
    if (o.mask_url_params) {
        s = ref_url(s);
    }
    return ref_tokens(s, prefixes);
}

}  // namespace

// ---- masked values ----------------------------------------------------------------------------

TEST_CASE("masker: masked values, table", "[trace]") {
    struct row {
        std::string input;  // '|' separates writes
        std::vector<std::string> values;
        std::string expected;
    };
    const std::vector<row> rows = {
        {"empty values have no effect", {""}, "empty values have no effect"},
        {"no values at all", {}, "no values at all"},
        {"secrets", {"secrets"}, M},
        {"secret|s", {"secrets"}, M},
        {"s|ecrets", {"secrets"}, M},
        {"secretssecrets", {"secrets"}, M + M},
        {"ssecrets", {"secrets"}, "s" + M},
        {"s|secrets", {"secrets"}, "s" + M},
        {"at the start", {"at"}, M + " the start"},
        {"in the middle of it", {"middle"}, "in the " + M + " of it"},
        {"at the end", {"end"}, "at the " + M},
        {"all values are masked", {"all", "values", "are", "masked"}, M + " " + M + " " + M + " " + M},
        {"xfoox ybary ffoo barr ffooo bbarr", {"foo", "bar"},
         "x" + M + "x y" + M + "y f" + M + " " + M + "r f" + M + "o b" + M + "r"},
        {"xfo|ox y|bary ffo|o ba|rr", {"foo", "bar"}, "x" + M + "x y" + M + "y f" + M + " " + M + "r"},
        {"prefix_mask mask prefix_|mask prefix_ma|sk mas|k", {"mask", "prefix_mask"},
         M + " " + M + " " + M + " " + M + " " + M},
        {"overlap: this is the en| foobar", {"this is the end", "en foobar", "en"}, "overlap: this is the " + M},
        {"  padded  ", {"  padded  "}, "  " + M + "  "},
        {"nbsp\xC2\xA0trimmed", {"\xC2\xA0trimmed\xC2\xA0"}, "nbsp\xC2\xA0" + M},
        {"dup dup", {"dup", "dup", " dup "}, M + " " + M},
        {"regex .*+?[](){} ^$\\ chars", {".*+?[](){}", "^$\\"}, "regex " + M + " " + M + " chars"},
        {"aaaab", {"aab"}, "aa" + M},
        {"abababc", {"ababc"}, "ab" + M},
        {"one char a", {"a"}, "one ch" + M + "r " + M},
    };
    for (const auto& r : rows) {
        std::vector<std::size_t> cuts;
        std::string input;
        for (char c : r.input) {
            if (c == '|') {
                cuts.push_back(input.size());
            } else {
                input += c;
            }
        }
        INFO(r.input);
        CHECK(in_parts(phrases_only(r.values), input, cuts) == r.expected);
        CHECK(whole(phrases_only(r.values), input) == r.expected);
    }
}

TEST_CASE("masker: every value split at every offset, and byte by byte", "[trace]") {
    const std::vector<std::string> values = {"s3cr3t-Passw0rd", "tok", "token", "token-extended",
                                             "aaaaaaaab", "$(rm -rf /)*?", "a|b\\d+[^x]", "\xE2\x82\xAC" "euro\xF0\x9F\x94\x91",
                                             "abcabcabd"};
    for (const auto& v : values) {
        for (const auto& text : {"before " + v + " after\n", v, v + v, "x" + v.substr(0, v.size() - 1) + v + "y"}) {
            const auto expected = reference(text, phrases_only(values));
            INFO(text);
            CHECK(whole(phrases_only(values), text) == expected);
            CHECK(bytewise(phrases_only(values), text) == expected);
            for (std::size_t cut = 0; cut <= text.size(); ++cut) {
                masker m(phrases_only(values));
                std::string out = m.write(std::string_view(text).substr(0, cut));
                // Nothing released may contain the value or change later.
                CHECK(out.find(v) == std::string::npos);
                CHECK(expected.compare(0, out.size(), out) == 0);
                out += m.write(std::string_view(text).substr(cut));
                out += m.flush();
                CHECK(out == expected);
            }
        }
    }
}

TEST_CASE("masker: the longest value starting at a position wins; the leftmost start first", "[trace]") {
    const auto o = phrases_only({"token", "token-extended", "ken-ex", "xtoke"});
    CHECK(whole(o, "a token-extended b token c") == "a " + M + " b " + M + " c");
    CHECK(whole(o, "token-ex") == M + "-ex");
    CHECK(whole(o, "xtoken-extended") == M + "n-extended");
    // A value that is a prefix of another: the longer wins when complete, the shorter otherwise.
    CHECK(bytewise(o, "token-extende") == M + "-extende");
    CHECK(bytewise(o, "token-extended") == M);
}

TEST_CASE("masker: release only holds back what may still become a value", "[trace]") {
    masker m(phrases_only({"secretvalue", "other"}));
    CHECK(m.write("ends with secr") == "ends with ");
    CHECK(m.held_bytes() == 4);
    CHECK(m.write("et") == "");
    CHECK(m.write("!") == "secret!");
    CHECK(m.held_bytes() == 0);
    CHECK(m.write("line\n") == "line\n");
    CHECK(m.write("oth") == "");
    CHECK(m.flush() == "oth");
}

TEST_CASE("masker: 200 values, each found whole and split", "[trace]") {
    std::mt19937 rng(42);
    const std::string alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_";
    std::vector<std::string> values;
    for (int i = 0; i < 200; ++i) {
        std::string v(8 + rng() % 33, ' ');
        for (auto& c : v) {
            c = alphabet[rng() % alphabet.size()];
        }
        values.push_back(v);
    }
    std::string text;
    for (std::size_t i = 0; i < values.size(); ++i) {
        text += "line " + std::to_string(i) + ": export SECRET=" + values[i] + " done\n";
    }
    const auto o = phrases_only(values);
    const auto expected = reference(text, o);
    CHECK(expected.find("export SECRET=" + M + " done\n") != std::string::npos);
    for (const auto& v : values) {
        CHECK(expected.find(v) == std::string::npos);
    }
    CHECK(whole(o, text) == expected);
    CHECK(bytewise(o, text) == expected);
    for (std::size_t step : {2, 3, 7, 64, 4096}) {
        std::vector<std::size_t> cuts;
        for (std::size_t c = step; c < text.size(); c += step) {
            cuts.push_back(c);
        }
        CHECK(in_parts(o, text, cuts) == expected);
    }
}

TEST_CASE("masker: values sharing prefixes, and values that are prefixes of others", "[trace]") {
    std::mt19937 rng(11);
    std::vector<std::string> values = {"https://", "https://deploy:", "glpat-", "glpat-abc"};
    for (int i = 0; i < 100; ++i) {
        values.push_back("https://deploy:" + std::to_string(rng()) + "@registry.example.com");
        values.push_back("glpat-" + std::to_string(rng() % 1000));
    }
    std::string text;
    for (std::size_t i = 0; i < values.size(); i += 3) {
        text += "pull " + values[i] + "/image:latest " + values[(i * 7) % values.size()].substr(0, 10) +
                " glpat-abcd " + values[i].substr(0, values[i].size() - 1) + "\n";
    }
    const auto o = phrases_only(values);
    const auto expected = reference(text, o);
    CHECK(whole(o, text) == expected);
    CHECK(bytewise(o, text) == expected);
    for (std::size_t cut = 0; cut <= 400; ++cut) {
        CHECK(in_parts(o, text, {cut, cut + 17}) == expected);
    }
    masker m(o);
    CHECK(m.memory_footprint() < 64 * 1024);
}

TEST_CASE("masker: a very long value split in the middle", "[trace]") {
    const std::string v(16000, '_');
    const auto o = phrases_only({v});
    CHECK(in_parts(o, "large: " + v, {7 + 8000}) == "large: " + M);
    CHECK(in_parts(o, "large: " + v.substr(1) + "!", {7 + 8000}) == "large: " + v.substr(1) + "!");
}

// ---- token prefixes ---------------------------------------------------------------------------

TEST_CASE("masker: token prefixes, table", "[trace]") {
    struct row {
        std::vector<std::string> prefixes;
        std::string input;  // '|' separates writes
        std::string expected;
    };
    const std::vector<row> rows = {
        {{}, "commodo glpat-imperdiet in velit", "commodo glpat-" + M + " in velit"},
        {{}, "velit esseglpat-imperdiet", "velit esseglpat-" + M},
        {{}, "glpat-imperdiet Lorem", "glpat-" + M + " Lorem"},
        {{}, "esseglpat-imperdiet=_-. end", "esseglpat-" + M + " end"},
        {{}, "glpat-impglpat-erdiet Lorem", "glpat-" + M + " Lorem"},
        {{}, "glpat|-imperdiet Lorem gl|pat-imperdiet in", "glpat-" + M + " Lorem glpat-" + M + " in"},
        {{}, "glpat| -imperdiet Lorem", "glpat -imperdiet Lorem"},
        {{}, "prefix without body: glpat- and glpat-", "prefix without body: glpat- and glpat-"},
        {{}, "at the end glpat-", "at the end glpat-"},
        {{}, "at the end glpat-abc", "at the end glpat-" + M},
        {{}, "at the end glpat-a|b|c", "at the end glpat-" + M},
        {{}, "ggllpat-x glglpat-y", "ggllpat-x glglpat-" + M},
        {{}, "glrt-abc glrtr-def glrtrx-ghi", "glrt-" + M + " glrtr-" + M + " glrtrx-ghi"},
        {{}, "_gitlab_session=abcd1234; path=/", "_gitlab_session=" + M + "; path=/"},
        {{}, "gloas- gldt-1 glcbt-2 glptt-3 glft-4 glimt-5 glagent-6 glsoat-7 glffct-8 gltok-9",
         "gloas- gldt-" + M + " glcbt-" + M + " glptt-" + M + " glft-" + M + " glimt-" + M + " glagent-" + M +
             " glsoat-" + M + " glffct-" + M + " gltok-" + M},
        {{"tok-"}, "Lortok-ipsu amt|ok-t, cons-ctg|lpat-tur stok-|d", "Lortok-" + M + " amtok-" + M + ", cons-ctglpat-" + M + " stok-" + M},
        {{" token- "}, "token-imperdiet Lorem", "token-" + M + " Lorem"},
        {{}, "body stops at non-alphabet: glpat-ab/cd glpat-ab+cd glpat-a\xC3\xA9",
         "body stops at non-alphabet: glpat-" + M + "/cd glpat-" + M + "+cd glpat-" + M + "\xC3\xA9"},
    };
    for (const auto& r : rows) {
        masker_options o;
        o.token_prefixes = r.prefixes;
        std::vector<std::size_t> cuts;
        std::string input;
        for (char c : r.input) {
            if (c == '|') {
                cuts.push_back(input.size());
            } else {
                input += c;
            }
        }
        INFO(r.input);
        CHECK(in_parts(o, input, cuts) == r.expected);
        CHECK(bytewise(o, input) == r.expected);
        CHECK(reference(input, o) == r.expected);
    }
}

TEST_CASE("masker: a token split at every offset across two writes", "[trace]") {
    masker_options o;
    const std::string text = "token: glrtr-AbC_12.3=4-5 and _gitlab_session=deadbeef\n";
    const std::string expected = "token: glrtr-" + M + " and _gitlab_session=" + M + "\n";
    for (std::size_t cut = 0; cut <= text.size(); ++cut) {
        CHECK(in_parts(o, text, {cut}) == expected);
    }
    CHECK(bytewise(o, text) == expected);
}

TEST_CASE("masker: only the FF_MASK_ALL_DEFAULT_TOKENS flag adds the other GitLab prefixes", "[trace]") {
    masker_options o;
    o.mask_all_default_tokens = false;
    CHECK(whole(o, "glpat-a glrt-b") == "glpat-" + M + " glrt-b");
}

TEST_CASE("masker: at most 15 prefixes, the shortest, as gitlab-runner keeps them", "[trace]") {
    using kiln::trace::effective_token_prefixes;
    CHECK(effective_token_prefixes({}).size() == 14);
    CHECK(effective_token_prefixes({}, false) == std::vector<std::string>{"glpat-"});
    CHECK(effective_token_prefixes({" ", "glpat-", "  glpat-  "}, false) == std::vector<std::string>{"glpat-"});
    auto p = effective_token_prefixes({"zz-", "yyyyyyyyyyyyyyyyyyyy-"});
    REQUIRE(p.size() == 15);
    CHECK(p.front() == "zz-");  // shorter than every default
    CHECK(std::find(p.begin(), p.end(), "_gitlab_session=") != p.end());
    CHECK(std::find(p.begin(), p.end(), "yyyyyyyyyyyyyyyyyyyy-") == p.end());  // 16th: dropped
    // Sixteen custom prefixes shorter than the defaults push every default out (gitlab-runner
    // behaves the same).
    std::vector<std::string> many;
    for (char c = 'a'; c < 'a' + 16; ++c) {
        many.push_back(std::string(1, c) + "-");
    }
    masker_options o;
    o.token_prefixes = many;
    CHECK(whole(o, "a-x glpat-y p-z") == "a-" + M + " glpat-y p-z");
}

// ---- URL parameters ---------------------------------------------------------------------------

TEST_CASE("masker: URL parameters, table", "[trace]") {
    struct row {
        std::string input;  // '|' separates writes
        std::string expected;
    };
    const std::vector<row> rows = {
        {"no escaping http://example.org/?test=foobar", "no escaping http://example.org/?test=foobar"},
        {"multiple: &private_token=hello &?x-amz-security-token=hello ?x-amz-security?x-amz-security-token=hello",
         "multiple: &private_token=" + M + " &?x-amz-security-token=" + M + " ?x-amz-security?x-amz-security-token=" + M},
        {"long key: http://example.org/?this-is-a-really-really-long-key-name=foobar",
         "long key: http://example.org/?this-is-a-really-really-long-key-name=foobar"},
        {"http://example.com/?private_token=deadbeef at the start", "http://example.com/?private_token=" + M + " at the start"},
        {"at the end http://example.com/?authenticity_token=deadbeef", "at the end http://example.com/?authenticity_token=" + M},
        {"mixed case ?X-AMZ-sigNATure=deadbeef ok", "mixed case ?X-AMZ-sigNATure=" + M + " ok"},
        {"second ?param=second&x-amz-credential=deadbeef p", "second ?param=second&x-amz-credential=" + M + " p"},
        {"both ?rss_token=hide&x-amz-credential=deadbeef p", "both ?rss_token=" + M + "&x-amz-credential=" + M + " p"},
        {"spl|it ?x-amz-cred|ential=abcdefghij|klmnopqrstuvwxyz01234567", "split ?x-amz-credential=" + M},
        {"newline ?x-amz-credential=abc\n?x-amz-credential=abc", "newline ?x-amz-credential=" + M + "\n?x-amz-credential=" + M},
        {"control ?x-amz-credential=abc\b?x", "control ?x-amz-credential=" + M + "\b?x"},
        {"rss_token=notmasked ?rss_token=!@#$A&x-amz-credential=abc&test=test",
         "rss_token=notmasked ?rss_token=" + M + "&x-amz-credential=" + M + "&test=test"},
        {"no value ?x-amz-credential=&private_token=gitlab", "no value ?x-amz-credential=" + M + "&private_token=" + M},
        {"double & ?x-amz-credential=abc&&private_token=gitlab", "double & ?x-amz-credential=" + M + "&&private_token=" + M},
        {"double ? ?x-amz-credential=abc??private_token=gitlab", "double ? ?x-amz-credential=" + M + "??private_token=" + M},
        {"split on &: /|&|x-amz-cre|dential=abc", "split on &: /&x-amz-credential=" + M},
        {"split after ?: /|?||x-amz-cre|dential=abc", "split after ?: /?x-amz-credential=" + M},
        {"interweaved: ?|one ?x-amz-credential=abc two=three ?|one=two &token &x-amz-credential=abc =token ?=",
         "interweaved: ?one ?x-amz-credential=" + M + " two=three ?one=two &token &x-amz-credential=" + M + " =token ?="},
        {"terminated: ?x|-", "terminated: ?x-"},
        {"terminated: ?x-amz-credential=", "terminated: ?x-amz-credential=" + M},
        {"terminated: ?x-amz-credential=|", "terminated: ?x-amz-credential=" + M},
        {"20-byte key split: ?x-amz-security-|token|=abc", "20-byte key split: ?x-amz-security-token=" + M},
        {"unicode space ends it ?private_token=ab\xC2\xA0" "cd", "unicode space ends it ?private_token=" + M + "\xC2\xA0" "cd"},
        {"split unicode space ?private_token=ab\xE2\x80|\x80" "cd", "split unicode space ?private_token=" + M + "\xE2\x80\x80" "cd"},
        {"other unicode is value ?private_token=\xC3\xA9t\xC3\xA9 x", "other unicode is value ?private_token=" + M + " x"},
        {"kelvin ?private_to\xE2\x84\xAA" "en=abc x", "kelvin ?private_to\xE2\x84\xAA" "en=" + M + " x"},
    };
    masker_options o;
    for (const auto& r : rows) {
        std::vector<std::size_t> cuts;
        std::string input;
        for (char c : r.input) {
            if (c == '|') {
                cuts.push_back(input.size());
            } else {
                input += c;
            }
        }
        INFO(r.input);
        CHECK(in_parts(o, input, cuts) == r.expected);
        CHECK(bytewise(o, input) == r.expected);
        CHECK(reference(input, o) == r.expected);
    }
}

TEST_CASE("masker: URL masking can be turned off", "[trace]") {
    masker_options o;
    o.mask_url_params = false;
    CHECK(whole(o, "?private_token=abc") == "?private_token=abc");
}

// ---- the stages together ----------------------------------------------------------------------

TEST_CASE("masker: stages run in gitlab-runner's order", "[trace]") {
    masker_options o;
    o.phrases = {"s3cr3t-value", "glpat-mine"};
    // A value next to a token, a token inside a URL value, a value inside a token.
    CHECK(whole(o, "s3cr3t-valueglpat-abc") == M + "glpat-" + M);
    CHECK(whole(o, "glpat-abcs3cr3t-value") == "glpat-" + M + M);
    CHECK(whole(o, "glpat-mine glpat-minex") == M + " " + M + "x");
    CHECK(whole(o, "?private_token=glpat-abc&x=1") == "?private_token=" + M + "&x=1");
    CHECK(whole(o, "?private_token=s3cr3t-value&x=1") == "?private_token=" + M + "&x=1");
    CHECK(whole(o, "?x=s3cr3t-value&private_token=y") == "?x=" + M + "&private_token=" + M);
}

TEST_CASE("masker: random text, values, prefixes and writes agree with the reference", "[trace]") {
    std::mt19937 rng(7);
    const std::string alphabet = "ab?&=-_glpt. \n\xC2\xA0";
    auto random_string = [&](std::size_t max_len) {
        std::string s(1 + rng() % max_len, ' ');
        for (auto& c : s) {
            c = alphabet[rng() % alphabet.size()];
        }
        return s;
    };
    for (int round = 0; round < 3000; ++round) {
        masker_options o;
        for (std::size_t i = 0, n = rng() % 6; i < n; ++i) {
            o.phrases.push_back(random_string(7));
        }
        for (std::size_t i = 0, n = rng() % 3; i < n; ++i) {
            o.token_prefixes.push_back(random_string(4));
        }
        o.mask_url_params = rng() % 4 != 0;
        std::string text = random_string(120);
        if (rng() % 2 == 0) {
            text += "?private_token=" + random_string(10) + "glpat-" + random_string(10);
        }
        std::vector<std::size_t> cuts;
        for (std::size_t i = 0, n = rng() % 6; i < n; ++i) {
            cuts.push_back(rng() % (text.size() + 1));
        }
        std::sort(cuts.begin(), cuts.end());
        const auto expected = reference(text, o);
        INFO("round " << round);
        REQUIRE(in_parts(o, text, cuts) == expected);
        if (round % 10 == 0) {
            REQUIRE(bytewise(o, text) == expected);
        }
    }
}

// ---- UTF-8 repair -----------------------------------------------------------------------------

TEST_CASE("utf8_repair: invalid bytes become U+FFFD one by one, split sequences are kept", "[trace]") {
    const std::string R = "\xEF\xBF\xBD";
    struct row {
        std::string in;
        std::string out;
    };
    const std::vector<row> rows = {
        {"plain ascii", "plain ascii"},
        {"caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x94\x91", "caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x94\x91"},
        {"bad \xFF byte", "bad " + R + " byte"},
        {"lone \x80\xBF cont", "lone " + R + R + " cont"},
        {"short \xE2\x82x", "short " + R + R + "x"},
        {"overlong \xC0\x80", "overlong " + R + R},
        {"surrogate \xED\xA0\x80", "surrogate " + R + R + R},
        {"too big \xF4\x90\x80\x80", "too big " + R + R + R + R},
        {"cut at end \xE2\x82", "cut at end " + R + R},
    };
    for (const auto& r : rows) {
        INFO(r.in);
        for (std::size_t cut = 0; cut <= r.in.size(); ++cut) {
            kiln::trace::utf8_repair u;
            std::string out;
            u.write(std::string_view(r.in).substr(0, cut), out);
            u.write(std::string_view(r.in).substr(cut), out);
            u.flush(out);
            CHECK(out == r.out);
        }
        kiln::trace::utf8_repair u;
        std::string out;
        for (char c : r.in) {
            u.write(std::string_view(&c, 1), out);
        }
        u.flush(out);
        CHECK(out == r.out);
    }
}

TEST_CASE("masker: few values (the vector pair scan) against the reference, split anywhere", "[trace]") {
    // A job's token and a few masked values take the pair-scan path (at most four distinct
    // first and second bytes); many values take the sampled one. The same texts through both,
    // over a three-letter alphabet so that starts, overlaps and prefixes collide all the time.
    std::mt19937 rng(7);
    for (int round = 0; round < 300; ++round) {
        std::vector<std::string> values;
        const int count = 1 + static_cast<int>(rng() % 4);
        for (int i = 0; i < count; ++i) {
            std::string v(2 + rng() % 6, ' ');
            for (auto& c : v) {
                c = "abc"[rng() % 3];
            }
            values.push_back(v);
        }
        std::string text(200 + rng() % 200, ' ');
        for (auto& c : text) {
            c = "abcx"[rng() % 4];
        }
        const auto o = phrases_only(values);
        const auto expected = reference(text, o);
        INFO("values " << values.size() << ": " << values[0] << ", text " << text);
        CHECK(whole(o, text) == expected);
        CHECK(bytewise(o, text) == expected);
        for (int k = 0; k < 5; ++k) {
            std::vector<std::size_t> cuts;
            for (std::size_t c = 1 + rng() % 9; c < text.size(); c += 1 + rng() % 40) {
                cuts.push_back(c);
            }
            CHECK(in_parts(o, text, cuts) == expected);
        }
    }
}

TEST_CASE("masker: each value alone, split at every offset", "[trace]") {
    const std::vector<std::string> values = {"s3cr3t-Passw0rd", "token", "aaaaaaaab", "$(rm -rf /)*?",
                                             "\xE2\x82\xAC" "euro\xF0\x9F\x94\x91", "abcabcabd",
                                             "glcbt-64_pXb3kZq1Yw7cVt9mRn2s"};
    for (const auto& v : values) {
        for (const auto& text : {"before " + v + " after\n", v, v + v,
                                 "x" + v.substr(0, v.size() - 1) + v + "y"}) {
            const auto expected = reference(text, phrases_only({v}));
            INFO(text);
            CHECK(expected.find(v) == std::string::npos);
            for (std::size_t cut = 0; cut <= text.size(); ++cut) {
                CHECK(in_parts(phrases_only({v}), text, {cut}) == expected);
            }
        }
    }
}
