#include "runner/gitlab/client.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <random>
#include <stdexcept>

#include "runner/gitlab/retry_policy.hpp"
#include "runner/net/url.hpp"
#include "runner/util/logging.hpp"
#include "runner/version.hpp"

namespace kiln::gitlab {
namespace {

namespace asio = boost::asio;
using namespace std::chrono_literals;

constexpr int max_redirects = 5;

// Handshake and file errors will not get better by sending again; a refused or reset connection
// or a timeout might (GitLab restarting, a proxy reloading).
bool is_retriable_transport(net::transport_error::kind k) {
    using kind = net::transport_error::kind;
    return k == kind::connect || k == kind::io || k == kind::timeout || k == kind::resolve;
}

net::http_request json_request(std::string method, std::string target, std::string body,
                               bool expect_json) {
    net::http_request r;
    r.method = std::move(method);
    r.target = std::move(target);
    r.headers.set("Content-Type", "application/json");
    if (expect_json) {
        r.headers.set("Accept", "application/json");
    }
    r.set_body(std::move(body));
    return r;
}

std::string user_agent() {
    return std::string("kiln ") + version_string() + " (" + revision_string() + "; " +
           std::string(build_platform()) + "/" + std::string(build_architecture()) + ")";
}

}  // namespace

struct client::impl {
    asio::any_io_executor executor;
    client_config config;
    net::base_url base;
    std::map<std::string, std::unique_ptr<net::http_client>> clients;  // by origin
    net::origin upload_origin;  // re-targeted by a 307 on upload
    runner_info info;
    runner_info registration_info;
    status_counters counters;
    // Jitter and request ids need no more than this: mt19937_64 would add 2.5 KiB to every
    // runner entry's client.
    std::minstd_rand rng{std::random_device{}()};

    double jitter() { return std::uniform_real_distribution<double>(0.0, 1.0)(rng); }

    std::string request_id() {
        static constexpr char hex[] = "0123456789abcdef";
        std::string id(32, '0');
        for (auto& c : id) {
            c = hex[rng() & 15u];
        }
        return id;
    }

    std::string api(std::string_view path) const { return base.path + "/api/v4" + std::string(path); }

    net::http_client& client_for(const net::origin& o) {
        auto key = o.to_string();
        auto it = clients.find(key);
        if (it == clients.end()) {
            net::client_options opts;
            opts.connection_max_age = config.connection_max_age;
            opts.user_agent = user_agent();
            // Only GitLab's own origin gets the configured CA/client certificate; redirect
            // targets (object storage) are verified against the system store.
            auto tls = o == base.origin ? config.tls : net::tls_settings{};
            it = clients
                     .emplace(key, std::make_unique<net::http_client>(executor, o, tls, opts))
                     .first;
        }
        return *it->second;
    }

    /// One API call with gitlab-runner's retry layer (§1.5) on top: retriable statuses and
    /// transient transport failures are sent again after the policy's wait, up to
    /// config.max_attempts attempts. The last outcome is returned either way.
    asio::awaitable<net::http_outcome> call(const std::string& endpoint, const net::origin& o,
                                            net::http_request req) {
        auto& http = client_for(o);
        int backoff_attempt = 0;
        for (int attempt = 1;; ++attempt) {
            req.headers.set("X-Request-Id", request_id());
            auto out = co_await http.send(req);
            int status = out.response ? out.response->status : 0;
            ++counters[endpoint][status];

            std::chrono::milliseconds wait{};
            if (out.response) {
                if (!is_retriable_status(status) || attempt >= config.max_attempts) {
                    co_return out;
                }
                auto w = wait_before_retry(out.response->headers, backoff_attempt,
                                           std::chrono::system_clock::now(), jitter());
                if (w.source == wait_source::backoff) {
                    ++backoff_attempt;
                }
                wait = w.delay;
            } else {
                if (!is_retriable_transport(out.error.what) || attempt >= config.max_attempts) {
                    co_return out;
                }
                wait = exponential_backoff(backoff_attempt++, jitter());
            }
            log::debug("retrying GitLab request",
                       {{"endpoint", endpoint},
                        {"status", status},
                        {"attempt", attempt},
                        {"wait_ms", static_cast<long long>(wait.count())},
                        {"error", out.error.message}});
            asio::steady_timer timer(executor, wait);
            auto [ec] = co_await timer.async_wait(asio::as_tuple(asio::use_awaitable));
            if (ec) {
                co_return out;  // cancelled: give the caller what we have
            }
        }
    }

    // Parameters by value: the API methods return this awaitable without a frame of their own
    // (one frame less per held long poll), so it must own everything it uses.
    template <class Result, class Map>
    asio::awaitable<api_result<Result>> call_mapped(std::string endpoint, net::http_request req,
                                                    Map map) {
        auto out = co_await call(endpoint, base.origin, std::move(req));
        api_result<Result> r;
        if (!out.response) {
            r.transport = std::move(out.error);
            co_return r;
        }
        r.value = map(*out.response);
        co_return r;
    }
};

client::client(asio::any_io_executor executor, client_config config)
    : impl_(std::make_unique<impl>()) {
    auto parsed = net::parse_gitlab_url(config.url);
    if (auto* e = std::get_if<net::url_error>(&parsed)) {
        throw std::invalid_argument(e->message);
    }
    impl_->executor = std::move(executor);
    impl_->config = std::move(config);
    impl_->base = std::get<net::base_url>(parsed);
    impl_->upload_origin = impl_->base.origin;
    impl_->client_for(impl_->base.origin);  // loads TLS material now, so errors surface early
}

client::~client() = default;

void client::set_info(runner_info info) { impl_->info = std::move(info); }

void client::close_idle() {
    for (auto& [k, c] : impl_->clients) {
        c->close_idle();
    }
}

const status_counters& client::statuses() const { return impl_->counters; }

std::size_t client::connections_opened() const {
    std::size_t n = 0;
    for (const auto& [k, c] : impl_->clients) {
        n += c->connections_opened();
    }
    return n;
}

asio::awaitable<api_result<register_result>> client::register_runner(std::string registration_token,
                                                                      register_params p) {
    auto req = json_request("POST", impl_->api("/runners"),
                            register_body(p, impl_->registration_info, registration_token), true);
    req.headers.set("RUNNER-TOKEN", registration_token);
    req.timeout = impl_->config.request_timeout;
    return impl_->call_mapped<register_result>("runners", std::move(req),
                                                           map_register_response);
}

asio::awaitable<api_result<verify_result>> client::verify_runner(std::string token,
                                                                 std::string system_id) {
    auto req = json_request("POST", impl_->api("/runners/verify"),
                            verify_body(impl_->info, token, system_id), true);
    req.headers.set("RUNNER-TOKEN", token);
    req.timeout = impl_->config.request_timeout;
    return impl_->call_mapped<verify_result>("runners/verify", std::move(req),
                                                         map_verify_response);
}

asio::awaitable<api_result<unregister_result>> client::unregister_runner(std::string token) {
    auto req = json_request("DELETE", impl_->api("/runners"), unregister_body(token), false);
    req.headers.set("RUNNER-TOKEN", token);
    req.timeout = impl_->config.request_timeout;
    return impl_->call_mapped<unregister_result>("runners", std::move(req),
                                                             map_unregister_response);
}

asio::awaitable<api_result<unregister_result>> client::unregister_manager(std::string token,
                                                                          std::string system_id) {
    auto req = json_request("DELETE", impl_->api("/runners/managers"),
                            unregister_manager_body(token, system_id), false);
    req.headers.set("RUNNER-TOKEN", token);
    req.timeout = impl_->config.request_timeout;
    return impl_->call_mapped<unregister_result>(
        "runners/managers", std::move(req), map_unregister_manager_response);
}

asio::awaitable<api_result<reset_token_result>> client::reset_token(std::string token) {
    // No RUNNER-TOKEN header on this endpoint (protocol.md §2.8).
    auto req = json_request("POST", impl_->api("/runners/reset_authentication_token"),
                            reset_token_body(token), true);
    req.timeout = impl_->config.request_timeout;
    return impl_->call_mapped<reset_token_result>(
        "runners/reset_authentication_token", std::move(req), map_reset_token_response);
}

asio::awaitable<api_result<reset_token_result>> client::reset_token_with_pat(
    std::int64_t runner_id, std::string pat) {
    net::http_request req;
    req.method = "POST";
    req.target = impl_->api("/runners/" + std::to_string(runner_id) + "/reset_authentication_token");
    req.headers.set("Accept", "application/json");
    req.headers.set("PRIVATE-TOKEN", pat);
    req.timeout = impl_->config.request_timeout;
    return impl_->call_mapped<reset_token_result>(
        "runners/:id/reset_authentication_token", std::move(req), map_reset_token_response);
}

asio::awaitable<api_result<request_job_result>> client::request_job(std::string token,
                                                                    std::string system_id,
                                                                    std::string last_update) {
    auto req = json_request("POST", impl_->api("/jobs/request"),
                            job_request_body(impl_->info, token, system_id, last_update), true);
    req.headers.set("RUNNER-TOKEN", token);
    req.timeout = impl_->config.job_request_timeout;
    return impl_->call_mapped<request_job_result>("jobs/request", std::move(req),
                                                              map_request_job_response);
}

asio::awaitable<api_result<update_result>> client::update_job(std::int64_t job_id,
                                                              job_update update) {
    auto token = update.token;
    auto req = json_request("PUT", impl_->api("/jobs/" + std::to_string(job_id)),
                            job_update_body(impl_->info, update), false);
    req.headers.set("JOB-TOKEN", token);
    req.timeout = impl_->config.request_timeout;
    return impl_->call_mapped<update_result>("jobs/:id", std::move(req),
                                                         map_update_response);
}

asio::awaitable<api_result<patch_result>> client::patch_trace(std::int64_t job_id,
                                                              std::string job_token,
                                                              std::string_view content,
                                                              std::int64_t offset,
                                                              bool debug_trace) {
    const auto length = static_cast<std::int64_t>(content.size());
    net::http_request req;
    req.method = "PATCH";
    req.target = impl_->api("/jobs/" + std::to_string(job_id) + "/trace") +
                 (debug_trace ? "?debug_trace=true" : "?debug_trace=false");
    // Without an explicit text type GitLab parses the log as JSON (protocol.md §10.3).
    req.headers.set("Content-Type", "text/plain");
    // The end is inclusive (§10.1).
    req.headers.set("Content-Range",
                    std::to_string(offset) + "-" + std::to_string(offset + length - 1));
    req.headers.set("JOB-TOKEN", job_token);
    net::body_part body;
    body.borrowed = content;
    req.body.push_back(std::move(body));
    req.timeout = impl_->config.request_timeout;
    return impl_->call_mapped<patch_result>(
        "jobs/:id/trace", std::move(req),
        [offset, length](const net::http_response& r) { return map_patch_response(r, offset, length); });
}

asio::awaitable<api_result<upload_result>> client::upload_artifacts(
    std::int64_t job_id, std::string job_token, std::filesystem::path archive,
    artifact_upload_params params) {
    std::string query;
    auto add = [&](std::string_view key, const std::string& value) {
        if (!value.empty()) {
            query += (query.empty() ? "?" : "&") + std::string(key) + "=" + net::query_escape(value);
        }
    };
    add("artifact_format", params.artifact_format);
    add("artifact_type", params.artifact_type);
    add("expire_in", params.expire_in);

    std::string boundary = "kiln-" + impl_->request_id();
    std::string file_name = params.file_name.empty() ? "artifacts.zip" : params.file_name;
    for (auto& c : file_name) {
        if (c == '"' || c == '\r' || c == '\n') {
            c = '_';
        }
    }
    api_result<upload_result> result;
    for (int hop = 0; hop <= max_redirects; ++hop) {
        net::http_request req;
        req.method = "POST";
        req.target = impl_->api("/jobs/" + std::to_string(job_id) + "/artifacts") + query;
        req.headers.set("JOB-TOKEN", job_token);
        req.headers.set("Content-Type", "multipart/form-data; boundary=" + boundary);
        req.body.push_back({"--" + boundary +
                                "\r\nContent-Disposition: form-data; name=\"file\"; filename=\"" +
                                file_name + "\"\r\nContent-Type: application/octet-stream\r\n\r\n",
                            {}});
        req.body.push_back({{}, archive});
        req.body.push_back({"\r\n--" + boundary + "--\r\n", {}});
        req.timeout = std::chrono::hours(1);
        auto out = co_await impl_->call("jobs/:id/artifacts", impl_->upload_origin, std::move(req));
        if (!out.response) {
            result.transport = std::move(out.error);
            co_return result;
        }
        result.value = map_upload_response(*out.response);
        if (result.value.status != upload_status::redirected) {
            co_return result;
        }
        auto split = net::split_absolute_url(result.value.new_base_url + "/");
        if (auto* e = std::get_if<net::url_error>(&split)) {
            result.value.status = upload_status::failed;
            result.value.message = "redirect to an invalid URL: " + e->message;
            co_return result;
        }
        impl_->upload_origin = std::get<0>(split).first;
    }
    result.value.status = upload_status::failed;
    result.value.message = "too many redirects";
    co_return result;
}

asio::awaitable<api_result<download_result>> client::download_artifacts(
    std::int64_t job_id, std::string job_token, std::filesystem::path destination) {
    net::origin origin = impl_->base.origin;
    std::string target = impl_->api("/jobs/" + std::to_string(job_id) + "/artifacts");
    api_result<download_result> result;
    for (int hop = 0; hop <= max_redirects; ++hop) {
        net::http_request req;
        req.method = "GET";
        req.target = target;
        // The job token is for GitLab only; a presigned object-storage URL carries its own.
        if (origin == impl_->base.origin) {
            req.headers.set("JOB-TOKEN", job_token);
        }
        req.response_file = destination;
        req.timeout = std::chrono::hours(1);
        auto out = co_await impl_->call("jobs/:id/artifacts", origin, std::move(req));
        if (!out.response) {
            result.transport = std::move(out.error);
            co_return result;
        }
        result.value = map_download_response(*out.response);
        if (result.value.status != download_status::redirected) {
            co_return result;
        }
        if (!result.value.location.empty() && result.value.location[0] == '/') {
            target = result.value.location;  // relative redirect: same origin
            continue;
        }
        auto split = net::split_absolute_url(result.value.location);
        if (auto* e = std::get_if<net::url_error>(&split)) {
            result.value.status = download_status::failed;
            result.value.message = "redirect to an invalid URL: " + e->message;
            co_return result;
        }
        std::tie(origin, target) = std::get<0>(split);
    }
    result.value.status = download_status::failed;
    result.value.message = "too many redirects";
    co_return result;
}

}  // namespace kiln::gitlab
