#include "runner/gitlab/responses.hpp"

#include <cctype>
#include <charconv>
#include <limits>
#include <utility>

#include <nlohmann/json.hpp>

namespace kiln::gitlab {

namespace {

// ordered: error messages keep the order GitLab wrote the fields in.
using json = nlohmann::ordered_json;

constexpr std::size_t max_summary_length = 200;

std::string_view trim(std::string_view s) {
    while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) {
        s.remove_prefix(1);
    }
    while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) {
        s.remove_suffix(1);
    }
    return s;
}

bool iequals(std::string_view a, std::string_view b) {
    return net::http_headers::name_equals(a, b);
}

/// Whitespace runs become one space; long text is cut (never inside a UTF-8 sequence).
std::string one_line(std::string_view text) {
    std::string out;
    bool pending_space = false;
    for (char c : trim(text)) {
        if (std::isspace(static_cast<unsigned char>(c))) {
            pending_space = true;
            continue;
        }
        if (pending_space) {
            out += ' ';
            pending_space = false;
        }
        out += c;
    }
    if (out.size() > max_summary_length) {
        std::size_t cut = max_summary_length;
        while (cut > 0 && (static_cast<unsigned char>(out[cut]) & 0xC0) == 0x80) {
            --cut;
        }
        out.resize(cut);
        out += "...";
    }
    return out;
}

std::string json_text(const json& v) { return v.is_string() ? v.get<std::string>() : v.dump(); }

// Grape validation errors: {"field": ["msg", ...], ...}.
std::string field_messages(const json& fields) {
    std::string out;
    for (const auto& [field, value] : fields.items()) {
        if (!out.empty()) {
            out += "; ";
        }
        out += field;
        out += ": ";
        if (value.is_array()) {
            bool first = true;
            for (const auto& m : value) {
                if (!first) {
                    out += ", ";
                }
                first = false;
                out += json_text(m);
            }
        } else {
            out += json_text(value);
        }
    }
    return out;
}

// Object storage answers 403 with XML: <Error><Code>…</Code><Message>…</Message></Error>.
std::optional<std::string> xml_error(std::string_view body) {
    auto tag = [&](std::string_view name) -> std::optional<std::string_view> {
        std::string open = "<" + std::string(name) + ">";
        std::string close = "</" + std::string(name) + ">";
        auto b = body.find(open);
        if (b == std::string_view::npos) {
            return std::nullopt;
        }
        b += open.size();
        auto e = body.find(close, b);
        if (e == std::string_view::npos) {
            return std::nullopt;
        }
        return body.substr(b, e - b);
    };
    auto message = tag("Message");
    if (!message) {
        return std::nullopt;
    }
    auto code = tag("Code");
    return code ? std::string(*code) + ": " + std::string(*message) : std::string(*message);
}

std::optional<std::int64_t> parse_int64(std::string_view s) {
    s = trim(s);
    if (!s.empty() && s.front() == '+') {
        s.remove_prefix(1);  // Go's strconv.Atoi accepts a sign
    }
    std::int64_t v = 0;
    auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    if (ec != std::errc{} || end != s.data() + s.size() || s.empty()) {
        return std::nullopt;
    }
    return v;
}

/// The JSON object of a 2xx that must be decoded, or a description of why it cannot be.
struct decoded {
    json value;
    std::string problem;
};

decoded decode_object(const net::http_response& r) {
    if (!is_json_content_type(r.headers)) {
        return {
            {},
            "response is not application/json (Content-Type: \"" +
                r.headers.get("Content-Type").value_or("") + "\")",
        };
    }
    json v = json::parse(r.body, nullptr, false);
    if (v.is_discarded() || !v.is_object()) {
        return {{}, "response body is not a JSON object"};
    }
    return {std::move(v), {}};
}

std::string string_member(const json& obj, std::string_view key) {
    auto it = obj.find(key);
    return it != obj.end() && it->is_string() ? it->get<std::string>() : std::string{};
}

/// nullopt when present but not an integer; 0 when missing or null.
std::optional<std::int64_t> id_member(const json& obj) {
    auto it = obj.find("id");
    if (it == obj.end() || it->is_null()) {
        return 0;
    }
    if (it->is_number_unsigned()) {
        auto u = it->get<std::uint64_t>();
        if (u > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) {
            return std::nullopt;
        }
        return static_cast<std::int64_t>(u);
    }
    if (it->is_number_integer()) {
        return it->get<std::int64_t>();
    }
    return std::nullopt;
}

std::string job_status_of(const net::http_response& r) {
    return std::string(trim(r.headers.get("Job-Status").value_or("")));
}

/// scheme://host[:port] of an absolute http(s) URL; empty when it is not one.
std::string base_of(std::string_view url) {
    url = trim(url);
    auto sep = url.find("://");
    if (sep == std::string_view::npos) {
        return {};
    }
    auto scheme = url.substr(0, sep);
    if (!iequals(scheme, "http") && !iequals(scheme, "https")) {
        return {};
    }
    auto rest = url.substr(sep + 3);
    auto host = rest.substr(0, rest.find_first_of("/?#"));
    if (host.empty()) {
        return {};
    }
    return std::string(url.substr(0, sep + 3)) + std::string(host);
}

}  // namespace

std::string error_summary(std::string_view body) {
    auto text = trim(body);
    if (text.empty()) {
        return {};
    }
    json v = json::parse(text, nullptr, false);
    if (!v.is_discarded() && v.is_object()) {
        if (auto m = v.find("message"); m != v.end() && !m->is_null()) {
            return one_line(m->is_object() ? field_messages(*m) : json_text(*m));
        }
        if (auto e = v.find("error"); e != v.end() && !e->is_null()) {
            return one_line(json_text(*e));
        }
        return one_line(v.dump());
    }
    if (text.front() == '<') {
        if (auto xml = xml_error(text)) {
            return one_line(*xml);
        }
    }
    return one_line(text);
}

bool is_json_content_type(const net::http_headers& headers) {
    auto ct = headers.get("Content-Type");
    if (!ct) {
        return false;
    }
    std::string_view v = *ct;
    return iequals(trim(v.substr(0, v.find(';'))), "application/json");
}

bool is_abort_job_status(std::string_view job_status) {
    return job_status == "canceled" || job_status == "failed";
}

std::optional<std::chrono::seconds> parse_update_interval(const net::http_headers& headers) {
    auto h = headers.get("X-GitLab-Trace-Update-Interval");
    if (!h) {
        return std::nullopt;
    }
    auto v = parse_int64(*h);
    if (!v || *v <= 0) {
        return std::nullopt;
    }
    if (*v > max_update_interval.count()) {
        return max_update_interval;
    }
    return std::chrono::seconds{*v};
}

register_result map_register_response(const net::http_response& r) {
    register_result out;
    out.http_status = r.status;
    switch (r.status) {
        case 201: {
            auto d = decode_object(r);
            if (!d.problem.empty()) {
                out.message = d.problem;
                return out;
            }
            auto id = id_member(d.value);
            out.runner.token = string_member(d.value, "token");
            if (!id || out.runner.token.empty()) {
                out.message = "registration response lacks an integer id or a token";
                return out;
            }
            out.runner.id = *id;
            out.runner.token_expires_at = string_member(d.value, "token_expires_at");
            out.status = register_status::registered;
            return out;
        }
        case 400:
            out.status = register_status::bad_request;
            break;
        case 403:
            out.status = register_status::forbidden;
            break;
        case 410:
            out.status = register_status::disallowed;
            break;
        default:
            break;
    }
    out.message = error_summary(r.body);
    return out;
}

verify_result map_verify_response(const net::http_response& r) {
    verify_result out;
    out.http_status = r.status;
    switch (r.status) {
        case 200: {
            auto d = decode_object(r);
            if (!d.problem.empty()) {
                // Old GitLab answers a plain "200"; gitlab-runner re-sends without decoding and
                // accepts it, so any 200 we cannot decode counts as valid without id or expiry.
                out.status = verify_status::valid;
                out.legacy_response = true;
                return out;
            }
            auto id = id_member(d.value);
            if (!id || *id == 0) {
                out.message = "GitLab did not return a runner id";
                return out;
            }
            out.runner.id = *id;
            out.runner.token = string_member(d.value, "token");
            out.runner.token_expires_at = string_member(d.value, "token_expires_at");
            out.status = verify_status::valid;
            return out;
        }
        case 403:
            out.status = verify_status::forbidden;
            break;
        case 422:
            out.status = verify_status::unprocessable;
            break;
        default:
            break;
    }
    out.message = error_summary(r.body);
    return out;
}

namespace {

unregister_result map_delete(const net::http_response& r, bool not_found_known) {
    unregister_result out;
    out.http_status = r.status;
    switch (r.status) {
        case 204:
            out.status = unregister_status::unregistered;
            return out;
        case 400:
            out.status = unregister_status::bad_request;
            break;
        case 403:
            out.status = unregister_status::forbidden;
            break;
        case 404:
            out.status = not_found_known ? unregister_status::not_found : unregister_status::failed;
            break;
        default:
            break;
    }
    out.message = error_summary(r.body);
    return out;
}

}  // namespace

unregister_result map_unregister_response(const net::http_response& r) {
    return map_delete(r, false);
}

unregister_result map_unregister_manager_response(const net::http_response& r) {
    return map_delete(r, true);
}

reset_token_result map_reset_token_response(const net::http_response& r) {
    reset_token_result out;
    out.http_status = r.status;
    switch (r.status) {
        case 201: {
            auto d = decode_object(r);
            if (!d.problem.empty()) {
                out.message = d.problem;
                return out;
            }
            out.token = string_member(d.value, "token");
            if (out.token.empty()) {
                out.message = "reset token response lacks a token";
                return out;
            }
            out.token_expires_at = string_member(d.value, "token_expires_at");
            out.status = reset_token_status::reset;
            return out;
        }
        case 403:
            out.status = reset_token_status::forbidden;
            break;
        case 422:
            out.status = reset_token_status::unprocessable;
            break;
        default:
            break;
    }
    out.message = error_summary(r.body);
    return out;
}

request_job_result map_request_job_response(const net::http_response& r) {
    request_job_result out;
    out.http_status = r.status;
    // gitlab-runner remembers a non-empty X-GitLab-Last-Update from any answer; Workhorse's
    // long-poll 204s carry none, which must not erase the previous value.
    if (auto lu = r.headers.get("X-GitLab-Last-Update"); lu && !trim(*lu).empty()) {
        out.last_update = std::string(trim(*lu));
    }
    switch (r.status) {
        case 201: {
            auto parsed = parse_job_payload(r.body);
            if (!is_json_content_type(r.headers)) {
                out.status = request_job_status::invalid_job;
                payload_error e;
                e.message = "jobs/request: 201 response is not application/json (Content-Type: \"" +
                            r.headers.get("Content-Type").value_or("") + "\")";
                if (parsed) {
                    e.job_id = parsed->id;
                    e.job_token = parsed->token;
                }
                out.payload_problem = std::move(e);
                out.message = out.payload_problem->message;
                return out;
            }
            if (!parsed) {
                out.status = request_job_status::invalid_job;
                out.payload_problem = parsed.error();
                out.message = parsed.error().message;
                return out;
            }
            out.status = request_job_status::job_received;
            out.job = std::make_unique<job_spec>(std::move(*parsed));
            return out;
        }
        case 204:
            out.status = request_job_status::no_job;
            return out;
        case 403:
            out.status = request_job_status::forbidden;
            break;
        default:
            break;
    }
    out.message = error_summary(r.body);
    return out;
}

update_result map_update_response(const net::http_response& r) {
    update_result out;
    out.http_status = r.status;
    out.job_status = job_status_of(r);
    out.cancel_requested = out.job_status == "canceling";
    out.update_interval = parse_update_interval(r.headers);
    // Job-Status is checked before the status code: a final PUT `failed` gets 200 + "failed".
    if (is_abort_job_status(out.job_status)) {
        out.status = update_status::abort;
        return out;
    }
    switch (r.status) {
        case 200:
            out.status = update_status::succeeded;
            break;
        case 202:
            out.status = update_status::accepted;
            break;
        case 403:
        case 404:
            out.status = update_status::abort;
            break;
        case 412:
            out.status = update_status::trace_validation_failed;
            break;
        default:
            out.status = update_status::failed;
            break;
    }
    return out;
}

patch_result map_patch_response(
    const net::http_response& r, std::int64_t start, std::int64_t length
) {
    patch_result out;
    out.http_status = r.status;
    out.new_offset = start;
    out.job_status = job_status_of(r);
    out.cancel_requested = out.job_status == "canceling";
    out.update_interval = parse_update_interval(r.headers);
    if (r.status == 403 || is_abort_job_status(out.job_status)) {
        out.status = patch_status::abort;
        return out;
    }
    switch (r.status) {
        case 202:
            // gitlab-runner ignores Range on success; what was sent is what was appended.
            out.status = patch_status::succeeded;
            out.new_offset = start + length;
            break;
        case 404:
            out.status = patch_status::not_found;
            break;
        case 416: {
            // GitLab's Range "0-<length>" is authoritative, and its end is exclusive (a byte
            // count). Unparsable means 0 as in gitlab-runner: resending from 0 earns a 416 with a
            // usable Range.
            out.status = patch_status::range_mismatch;
            std::string range = r.headers.get("Range").value_or("");
            auto dash = range.find('-');
            auto end =
                dash == std::string::npos ? std::nullopt : parse_int64(range.substr(dash + 1));
            out.new_offset = end && *end >= 0 ? *end : 0;
            break;
        }
        default:
            out.status = patch_status::failed;
            break;
    }
    return out;
}

upload_result map_upload_response(const net::http_response& r) {
    upload_result out;
    out.http_status = r.status;
    switch (r.status) {
        case 201:
            out.status = upload_status::succeeded;
            return out;
        case 307:
            out.new_base_url = base_of(r.headers.get("Location").value_or(""));
            if (!out.new_base_url.empty()) {
                out.status = upload_status::redirected;
                return out;
            }
            out.message = "307 without an absolute http(s) Location";
            return out;
        case 403:
            out.status = upload_status::forbidden;
            break;
        case 413:
            out.status = upload_status::too_large;
            break;
        case 503:
            out.status = upload_status::unavailable;
            break;
        default:
            break;
    }
    out.message = error_summary(r.body);
    return out;
}

download_result map_download_response(const net::http_response& r) {
    download_result out;
    out.http_status = r.status;
    switch (r.status) {
        case 200:
            out.status = download_status::succeeded;
            return out;
        case 302:
        case 307:
            out.location = std::string(trim(r.headers.get("Location").value_or("")));
            if (!out.location.empty()) {
                out.status = download_status::redirected;
                return out;
            }
            out.message = std::to_string(r.status) + " without a Location";
            return out;
        case 401:
        case 403:
            out.status = download_status::forbidden;
            break;
        case 404:
            out.status = download_status::not_found;
            break;
        default:
            break;
    }
    out.message = error_summary(r.body);
    return out;
}

}  // namespace kiln::gitlab
