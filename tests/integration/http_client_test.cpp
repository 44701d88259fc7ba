#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <catch2/catch.hpp>
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <iterator>
#include <random>
#include <string>

#include "runner/net/http_client.hpp"
#include "tests/support/run_coroutine_test.hpp"
#include "tests/support/test_certs.hpp"
#include "tests/support/test_http_server.hpp"

namespace {

namespace asio = boost::asio;
namespace net = kiln::net;
using namespace std::chrono_literals;
using kiln::test::recorded_request;
using kiln::test::respond_with;
using kiln::test::run_coroutine_test;
using kiln::test::server_options;
using kiln::test::test_certs;
using kiln::test::test_http_server;
using kind = net::transport_error::kind;

net::http_request post(std::string target, std::string body) {
    net::http_request r;
    r.method = "POST";
    r.target = std::move(target);
    r.headers.set("Content-Type", "application/json");
    r.set_body(std::move(body));
    r.timeout = 5s;
    return r;
}

net::http_request get(std::string target) {
    net::http_request r;
    r.target = std::move(target);
    r.timeout = 5s;
    return r;
}

server_options tls_server(std::string cert, std::string key) {
    server_options o;
    o.cert_file = std::move(cert);
    o.key_file = std::move(key);
    return o;
}

std::string read_file(const std::filesystem::path& p) {
    std::ifstream in(p, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

std::string random_bytes(std::size_t n) {
    std::mt19937_64 rng(42);
    std::string s(n, '\0');
    for (std::size_t i = 0; i < n; i += sizeof(std::uint64_t)) {
        const auto v = rng();
        std::memcpy(s.data() + i, &v, std::min(sizeof v, n - i));
    }
    return s;
}

}  // namespace

TEST_CASE("sequential requests share one kept-alive connection", "[net]") {
    test_http_server server(
        [](const recorded_request& r) { return net::http_response{200, {}, "echo " + r.body}; }
    );
    run_coroutine_test(
        [&]() -> asio::awaitable<void> {
            auto ex = co_await asio::this_coro::executor;
            net::http_client client(ex, server.origin(), {}, {});
            for (int i = 0; i < 100; ++i) {
                auto body = "{\"n\":" + std::to_string(i) + "}";
                auto out = co_await client.send(post("/api/v4/jobs/1", body));
                REQUIRE(out.response);
                CHECK(out.response->status == 200);
                CHECK(out.response->body == "echo " + body);
            }
            CHECK(client.connections_opened() == 1);
        },
        20s
    );
    CHECK(server.connections_accepted() == 1);
    auto requests = server.requests();
    REQUIRE(requests.size() == 100);
    CHECK(requests.front().connection == 1);
    CHECK(requests.back().connection == 1);
    CHECK(requests.back().headers.get("Host") == "127.0.0.1:" + std::to_string(server.port()));
    CHECK(requests.back().headers.get("Content-Length") == "8");
}

TEST_CASE("concurrent requests get separate connections, which are then reused", "[net]") {
    test_http_server server(respond_with(200, "ok"));
    run_coroutine_test(
        [&]() -> asio::awaitable<void> {
            using namespace asio::experimental::awaitable_operators;
            auto ex = co_await asio::this_coro::executor;
            net::http_client client(ex, server.origin(), {}, {});
            auto [a, b] = co_await (client.send(get("/a")) && client.send(get("/b")));
            REQUIRE(a.response);
            REQUIRE(b.response);
            CHECK(client.connections_opened() == 2);
            auto [c, d] = co_await (client.send(get("/c")) && client.send(get("/d")));
            REQUIRE(c.response);
            REQUIRE(d.response);
            CHECK(client.connections_opened() == 2);
        },
        5s
    );
    CHECK(server.connections_accepted() == 2);
    auto requests = server.requests();
    REQUIRE(requests.size() == 4);
    CHECK(requests[0].connection != requests[1].connection);
    CHECK(requests[2].connection != requests[3].connection);
}

TEST_CASE("a request after the server closed the idle kept-alive connection succeeds", "[net]") {
    const bool tls = GENERATE(false, true);
    INFO((tls ? "https" : "http"));
    const auto& certs = test_certs();
    test_http_server server(
        respond_with(200, "ok"), tls ? tls_server(certs.server, certs.server_key) : server_options{}
    );
    server.close_after_responses(1);
    run_coroutine_test(
        [&]() -> asio::awaitable<void> {
            auto ex = co_await asio::this_coro::executor;
            net::http_client client(
                ex, server.origin(), {certs.ca, {}, {}}, {}
            );
            auto first = co_await client.send(post("/api/v4/jobs/1/trace", "one"));
            REQUIRE(first.response);
            // The client holds the connection as idle and has not noticed the close yet.
            REQUIRE(server.wait_for_closed_connections(1, 2s));
            auto second = co_await client.send(post("/api/v4/jobs/1/trace", "two"));
            INFO(second.error.message);
            REQUIRE(second.response);
            CHECK(second.response->status == 200);
            CHECK(client.connections_opened() == 2);
        },
        5s
    );
    CHECK(server.connections_accepted() == 2);
    auto requests = server.requests();
    REQUIRE(requests.size() == 2);
    CHECK(requests[1].body == "two");
    CHECK(requests[1].connection == 2);
}

TEST_CASE("a request dropped on a fresh connection is reported, not sent again", "[net]") {
    test_http_server server(respond_with(200, "ok"));
    server.drop_requests(1);
    run_coroutine_test(
        [&]() -> asio::awaitable<void> {
            auto ex = co_await asio::this_coro::executor;
            net::http_client client(ex, server.origin(), {}, {});
            auto out = co_await client.send(post("/api/v4/jobs/1", "{}"));
            REQUIRE_FALSE(out.response);
            CHECK(out.error.what == kind::io);
            CHECK_THAT(out.error.message, Catch::Contains(server.url()));
        },
        5s
    );
    CHECK(server.request_count() == 1);
}

TEST_CASE("the per-request deadline ends a request the server does not answer", "[net]") {
    const bool tls = GENERATE(false, true);
    INFO((tls ? "https" : "http"));
    const auto& certs = test_certs();
    test_http_server server(respond_with(200, "late"),
                            tls ? tls_server(certs.server, certs.server_key) : server_options{});
    server.delay_responses(10s);
    run_coroutine_test(
        [&]() -> asio::awaitable<void> {
            auto ex = co_await asio::this_coro::executor;
            net::http_client client(ex, server.origin(), {certs.ca, {}, {}}, {});
            auto req = get("/slow");
            req.timeout = 200ms;
            const auto start = std::chrono::steady_clock::now();
            auto out = co_await client.send(req);
            const auto elapsed = std::chrono::steady_clock::now() - start;
            REQUIRE_FALSE(out.response);
            CHECK(out.error.what == kind::timeout);
            CHECK_THAT(out.error.message, Catch::Contains("timed out"));
            CHECK(elapsed >= 190ms);
            CHECK(elapsed < 1s);
        },
        5s
    );
}

TEST_CASE("a refused connection is a connect error naming the address", "[net]") {
    const auto port = kiln::test::unused_port();
    run_coroutine_test(
        [port]() -> asio::awaitable<void> {
            auto ex = co_await asio::this_coro::executor;
            net::http_client client(
                ex, net::origin{false, "127.0.0.1", port}, {}, {}
            );
            auto out = co_await client.send(get("/"));
            REQUIRE_FALSE(out.response);
            CHECK(out.error.what == kind::connect);
            CHECK_THAT(out.error.message, Catch::Contains("127.0.0.1:" + std::to_string(port)));
            CHECK_THAT(out.error.message, Catch::Contains("refused"));
        },
        5s
    );
}

TEST_CASE("TLS verifies the server against the configured CA", "[net][tls]") {
    const auto& certs = test_certs();
    test_http_server server(
        respond_with(200, "secure"), tls_server(certs.server, certs.server_key)
    );

    SECTION("the right CA, by IP address and by name") {
        const std::string host = GENERATE("127.0.0.1", "localhost");
        run_coroutine_test(
            [&]() -> asio::awaitable<void> {
                auto ex = co_await asio::this_coro::executor;
                net::http_client client(
                    ex, net::origin{true, host, server.port()},
                    {certs.ca, {}, {}}, {}
                );
                auto out = co_await client.send(get("/"));
                INFO(out.error.message);
                REQUIRE(out.response);
                CHECK(out.response->body == "secure");
                auto again = co_await client.send(get("/"));
                REQUIRE(again.response);
                CHECK(client.connections_opened() == 1);
            },
            5s
        );
    }

    SECTION("an unrelated CA") {
        run_coroutine_test(
            [&]() -> asio::awaitable<void> {
                auto ex = co_await asio::this_coro::executor;
                net::http_client client(
                    ex, server.origin(), {certs.other_ca, {}, {}}, {}
                );
                auto out = co_await client.send(get("/"));
                REQUIRE_FALSE(out.response);
                CHECK(out.error.what == kind::tls_verify);
                CHECK_THAT(out.error.message, Catch::Contains("certificate verify failed"));
                CHECK_THAT(
                    out.error.message, Catch::Contains("unable to get local issuer certificate")
                );
                CHECK_THAT(out.error.message, Catch::Contains(server.url()));
            },
            5s
        );
        CHECK(server.request_count() == 0);
    }
}

TEST_CASE("TLS rejects a certificate for another host name or IP address", "[net][tls]") {
    const auto& certs = test_certs();

    SECTION("host name not in the certificate") {
        test_http_server server(
            respond_with(200), tls_server(certs.wrong_name, certs.wrong_name_key)
        );
        run_coroutine_test(
            [&]() -> asio::awaitable<void> {
                auto ex = co_await asio::this_coro::executor;
                net::http_client client(
                    ex, net::origin{true, "localhost", server.port()},
                    {certs.ca, {}, {}}, {}
                );
                auto out = co_await client.send(get("/"));
                REQUIRE_FALSE(out.response);
                CHECK(out.error.what == kind::tls_verify);
                CHECK_THAT(out.error.message, Catch::Contains("certificate verify failed"));
                CHECK_THAT(out.error.message, Catch::Contains("hostname mismatch"));
            },
            5s
        );
        CHECK(server.request_count() == 0);
    }

    SECTION("IP address not in the certificate") {
        // All of 127/8 is loopback on Linux; the certificate names only 127.0.0.1 and ::1.
        auto options = tls_server(certs.server, certs.server_key);
        options.address = "127.0.0.2";
        test_http_server server(respond_with(200), options);
        run_coroutine_test(
            [&]() -> asio::awaitable<void> {
                auto ex = co_await asio::this_coro::executor;
                net::http_client client(
                    ex, server.origin(), {certs.ca, {}, {}}, {}
                );
                auto out = co_await client.send(get("/"));
                REQUIRE_FALSE(out.response);
                CHECK(out.error.what == kind::tls_verify);
                CHECK_THAT(out.error.message, Catch::Contains("IP address mismatch"));
                CHECK_THAT(out.error.message, Catch::Contains("127.0.0.2"));
            },
            5s
        );
        CHECK(server.request_count() == 0);
    }
}

TEST_CASE("a server requiring a client certificate", "[net][tls]") {
    const auto& certs = test_certs();
    auto options = tls_server(certs.server, certs.server_key);
    options.client_ca_file = certs.ca;
    test_http_server server(respond_with(200, "hello client"), options);

    SECTION("accepts the configured one") {
        run_coroutine_test(
            [&]() -> asio::awaitable<void> {
                auto ex = co_await asio::this_coro::executor;
                net::http_client client(
                    ex, server.origin(),
                    {certs.ca, certs.client, certs.client_key}, {}
                );
                auto out = co_await client.send(get("/"));
                INFO(out.error.message);
                REQUIRE(out.response);
                CHECK(out.response->body == "hello client");
            },
            5s
        );
        CHECK(server.tls_handshake_failures() == 0);
    }

    SECTION("refuses a client without one") {
        run_coroutine_test(
            [&]() -> asio::awaitable<void> {
                auto ex = co_await asio::this_coro::executor;
                net::http_client client(
                    ex, server.origin(), {certs.ca, {}, {}}, {}
                );
                auto out = co_await client.send(get("/"));
                REQUIRE_FALSE(out.response);
                // TLS 1.3 finishes the client's side of the handshake before the server checks
                // the certificate, so the refusal arrives as an alert on the first read.
                CHECK_THAT(out.error.message, Catch::Contains("certificate required"));
                CHECK_THAT(out.error.message, Catch::Contains(server.url()));
            },
            5s
        );
        CHECK(server.request_count() == 0);
        CHECK(server.tls_handshake_failures() == 1);
    }
}

TEST_CASE("a body streamed from a 20 MiB file arrives byte for byte", "[net]") {
    const bool tls = GENERATE(false, true);
    INFO((tls ? "https" : "http"));
    const auto& certs = test_certs();
    kiln::test::temp_dir dir;
    const auto path = dir / "upload.bin";
    // A random block repeated with a period that is prime, so no two 64 KiB reads carry the
    // same bytes and a lost, repeated or reordered read shows.
    const auto block = random_bytes(1048573);
    std::string content;
    content.reserve(20 * 1024 * 1024);
    while (content.size() < 20 * 1024 * 1024) {
        content.append(block, 0, std::min(block.size(), 20 * 1024 * 1024 - content.size()));
    }
    std::ofstream(path, std::ios::binary) << content;
    test_http_server server(respond_with(201),
                            tls ? tls_server(certs.server, certs.server_key) : server_options{});
    run_coroutine_test(
        [&]() -> asio::awaitable<void> {
            auto ex = co_await asio::this_coro::executor;
            net::http_client client(ex, server.origin(), {certs.ca, {}, {}}, {});
            net::http_request req;
            req.method = "PUT";
            req.target = "/upload";
            req.body.push_back({{}, path});
            req.timeout = 20s;
            auto out = co_await client.send(req);
            INFO(out.error.message);
            REQUIRE(out.response);
            CHECK(out.response->status == 201);
        },
        30s
    );
    auto requests = server.requests();
    REQUIRE(requests.size() == 1);
    CHECK(requests[0].headers.get("Content-Length") == std::to_string(content.size()));
    CHECK(requests[0].body.size() == content.size());
    CHECK(requests[0].body == content);
}

TEST_CASE("a 2xx body goes to the response file, a 4xx body stays in memory", "[net]") {
    const bool tls = GENERATE(false, true);
    INFO((tls ? "https" : "http"));
    const auto& certs = test_certs();
    kiln::test::temp_dir dir;
    // Over TLS several records per read, and a body that is not a whole number of them.
    const auto payload = random_bytes(3 * 1024 * 1024 + 17);
    test_http_server server(
        [&](const recorded_request& r) {
            if (r.target == "/ok") {
                return net::http_response{200, {}, payload};
            }
            return net::http_response{404, {}, "{\"message\":\"404 Not Found\"}"};
        },
        tls ? tls_server(certs.server, certs.server_key) : server_options{});
    run_coroutine_test(
        [&]() -> asio::awaitable<void> {
            auto ex = co_await asio::this_coro::executor;
            net::http_client client(ex, server.origin(), {certs.ca, {}, {}}, {});
            auto ok = get("/ok");
            ok.response_file = dir / "ok.bin";
            auto a = co_await client.send(ok);
            REQUIRE(a.response);
            CHECK(a.response->status == 200);
            CHECK(a.response->body.empty());
            CHECK(read_file(dir / "ok.bin") == payload);

            auto missing = get("/missing");
            missing.response_file = dir / "missing.bin";
            auto b = co_await client.send(missing);
            REQUIRE(b.response);
            CHECK(b.response->status == 404);
            CHECK(b.response->body == "{\"message\":\"404 Not Found\"}");
            CHECK_FALSE(std::filesystem::exists(dir / "missing.bin"));
            CHECK(client.connections_opened() == 1);
        },
        10s
    );
}

TEST_CASE("a body of several in-memory parts arrives intact over TLS", "[net][tls]") {
    // Larger than one encryption batch (tls_stream::max_batch), parts not aligned to records.
    const auto first = random_bytes(700 * 1024 + 3);
    const auto second = random_bytes(300 * 1024 + 5);
    const auto& certs = test_certs();
    test_http_server server(respond_with(202), tls_server(certs.server, certs.server_key));
    run_coroutine_test(
        [&]() -> asio::awaitable<void> {
            auto ex = co_await asio::this_coro::executor;
            net::http_client client(ex, server.origin(), {certs.ca, {}, {}}, {});
            for (int i = 0; i < 3; ++i) {
                net::http_request req;
                req.method = "PATCH";
                req.target = "/api/v4/jobs/1/trace";
                req.body.push_back({{}, {}, first});
                req.body.push_back({second, {}, {}});
                req.timeout = 10s;
                auto out = co_await client.send(req);
                INFO(out.error.message);
                REQUIRE(out.response);
                CHECK(out.response->status == 202);
            }
            CHECK(client.connections_opened() == 1);
        },
        30s
    );
    auto requests = server.requests();
    REQUIRE(requests.size() == 3);
    for (const auto& r : requests) {
        CHECK(r.body == first + second);
    }
}
