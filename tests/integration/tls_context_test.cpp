#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <catch2/catch.hpp>
#include <chrono>
#include <filesystem>

#include "runner/net/http_client.hpp"
#include "runner/net/tls.hpp"
#include "tests/support/run_coroutine_test.hpp"
#include "tests/support/test_certs.hpp"
#include "tests/support/test_http_server.hpp"

namespace {

namespace asio = boost::asio;
namespace net = kiln::net;
namespace fs = std::filesystem;
using namespace std::chrono_literals;

net::http_request get(std::string target) {
    net::http_request r;
    r.target = std::move(target);
    r.timeout = 5s;
    return r;
}

}  // namespace

TEST_CASE("TLS contexts are shared per set of files and reloaded when a file changes",
          "[net][tls]") {
    const auto& certs = kiln::test::test_certs();
    kiln::test::temp_dir dir;
    const auto ca = (dir / "ca.pem").string();
    fs::copy_file(certs.other_ca, ca);

    auto first = net::make_client_tls_context({ca, {}, {}});
    CHECK(net::make_client_tls_context({ca, {}, {}}) == first);
    CHECK(net::make_client_tls_context({certs.ca, {}, {}}) != first);

    kiln::test::server_options options;
    options.cert_file = certs.server;
    options.key_file = certs.server_key;
    kiln::test::test_http_server server(kiln::test::respond_with(200, "ok"), options);
    kiln::test::run_coroutine_test(
        [&]() -> asio::awaitable<void> {
            auto ex = co_await asio::this_coro::executor;
            // The file holds an unrelated CA: rejected.
            net::http_client before(ex, server.origin(), {ca, {}, {}}, {});
            auto refused = co_await before.send(get("/"));
            REQUIRE_FALSE(refused.response);
            CHECK(refused.error.what == net::transport_error::kind::tls_verify);

            // The operator puts the right CA in place; `before` (and `first`) still hold the old
            // context, a client made now must load the new file.
            fs::copy_file(certs.ca, ca, fs::copy_options::overwrite_existing);
            net::http_client after(ex, server.origin(), {ca, {}, {}}, {});
            auto out = co_await after.send(get("/"));
            INFO(out.error.message);
            REQUIRE(out.response);
            CHECK(out.response->body == "ok");
        },
        5s
    );
}
