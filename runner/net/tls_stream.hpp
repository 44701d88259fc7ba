#pragma once
// A TLS client stream over a Beast tcp_stream, for http_client only (Beast and OpenSSL stay
// inside runner/net). Why not asio::ssl::stream: it moves every byte through a BIO pair and two
// 17 KiB buffers per connection (about 68 KiB resident per kept-alive connection: 3.4 MiB for
// 50 held long polls), and it writes one TLS record per send (64 sendmsg calls per 1 MiB trace
// PATCH). Here OpenSSL reads straight from the socket, and what it writes is gathered in one
// buffer that goes out in a single write per call, so an idle connection holds only OpenSSL's
// own state (record buffers are released, SSL_MODE_RELEASE_BUFFERS) and a large body costs a
// few system calls.
//
// Waiting happens on the tcp_stream, so its deadlines (expires_at) bound every TLS operation:
// readiness to read is awaited with a one-byte read, and that byte is handed to OpenSSL first.
// Models Asio's AsyncReadStream and AsyncWriteStream for Beast's HTTP parser and async_write.

#include <openssl/ssl.h>

#include <boost/asio/compose.hpp>
#include <boost/asio/coroutine.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/buffers_range.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <cstddef>
#include <memory>
#include <vector>

namespace kiln::net {

class tls_stream {
public:
    using executor_type = boost::beast::tcp_stream::executor_type;
    using next_layer_type = boost::beast::tcp_stream;

    /// Throws std::runtime_error when OpenSSL cannot make the connection object.
    tls_stream(const executor_type& ex, SSL_CTX* ctx);
    ~tls_stream();
    tls_stream(const tls_stream&) = delete;
    tls_stream& operator=(const tls_stream&) = delete;

    executor_type get_executor() { return next_.get_executor(); }
    next_layer_type& next_layer() { return next_; }
    SSL* native_handle() { return ssl_; }

    /// Most bytes one write call encrypts before sending them: bounds the gathered buffer.
    static constexpr std::size_t max_batch = 256 * 1024;

    /// The client handshake; the completion gets an error_code.
    template <class Token>
    auto async_handshake(Token&& token) {
        return boost::asio::async_compose<Token, void(boost::system::error_code)>(
            drive_op<handshake_stepper>{*this, {}}, token, next_);
    }

    template <class MutableBuffers, class Token>
    auto async_read_some(const MutableBuffers& buffers, Token&& token) {
        return boost::asio::async_compose<Token, void(boost::system::error_code, std::size_t)>(
            drive_op<read_stepper<MutableBuffers>>{*this, {buffers}}, token, next_);
    }

    template <class ConstBuffers, class Token>
    auto async_write_some(const ConstBuffers& buffers, Token&& token) {
        return boost::asio::async_compose<Token, void(boost::system::error_code, std::size_t)>(
            write_op<ConstBuffers>{*this, buffers}, token, next_);
    }

private:
    // One step of an operation, decided without I/O: what OpenSSL needs before it can go on.
    enum class need { done, input, failed };
    struct step {
        need what = need::done;
        std::size_t bytes = 0;
        boost::system::error_code error;
    };

    step handshake_step();
    /// Decrypts into [data, data + size) as far as buffered and readable input allows. Asks
    /// for input before calling OpenSSL when the socket was found empty and nothing is
    /// buffered, so a connection waiting for a response (a held long poll) holds no record
    /// buffer while it waits.
    step read_step(char* data, std::size_t size);
    /// Encrypts into out_; never needs input (a renegotiation is refused by TLS 1.3 peers and
    /// OpenSSL's client never starts one).
    step write_step(const char* data, std::size_t size);
    /// After a one-byte wait completed: hand the byte to OpenSSL next.
    void got_peek() {
        peeked_ = true;
        drained_ = false;
    }
    boost::system::error_code wait_error(const boost::system::error_code& ec) const;
    void sent();

    static int bio_write(BIO* b, const char* data, std::size_t size, std::size_t* written);
    static int bio_read(BIO* b, char* data, std::size_t size, std::size_t* read);
    static long bio_ctrl(BIO* b, int cmd, long num, void* ptr);
    static BIO_METHOD* bio_method();

    // Sends all of out_. Not asio::async_write: that hands the socket 64 KiB per call, so a
    // 1 MiB PATCH took 17 sendmsg calls and as many waits; here each call offers the rest.
    struct send_op {
        tls_stream& s;
        std::size_t done = 0;
        boost::asio::coroutine coro{};

        template <class Self>
        void operator()(Self& self, boost::system::error_code ec = {}, std::size_t n = 0) {
            BOOST_ASIO_CORO_REENTER(coro) {
                while (done < s.out_.size()) {
                    BOOST_ASIO_CORO_YIELD s.next_.async_write_some(
                        boost::asio::const_buffer(s.out_.data() + done, s.out_.size() - done),
                        std::move(self));
                    done += n;
                    if (ec) {
                        self.complete(ec, done);
                        return;
                    }
                }
                self.complete({}, done);
            }
        }
    };
    template <class Token>
    auto async_send_output(Token&& token) {
        return boost::asio::async_compose<Token, void(boost::system::error_code, std::size_t)>(
            send_op{*this}, token, next_);
    }
    boost::asio::mutable_buffer peek_buffer() { return {&peek_, 1}; }

    // Drives OpenSSL through one operation: each step sends what OpenSSL wrote (handshake
    // messages, an answer to a TLS 1.3 key update) and, when it asks for input, waits for a byte
    // of it. The stepper makes the OpenSSL call; `with_size` says whether the completion carries
    // a byte count (a read) or not (the handshake).
    template <class Stepper>
    struct drive_op {
        tls_stream& s;
        Stepper next_step;
        boost::asio::coroutine coro{};
        step st{};
        bool waited = false;

        template <class Self>
        void operator()(Self& self, boost::system::error_code ec = {}, std::size_t = 0) {
            BOOST_ASIO_CORO_REENTER(coro) {
                for (;;) {
                    st = next_step(s);
                    if (!s.out_.empty()) {
                        BOOST_ASIO_CORO_YIELD s.async_send_output(std::move(self));
                        s.sent();
                        waited = true;
                        if (ec) {
                            finish(self, ec, 0);
                            return;
                        }
                    }
                    if (st.what != need::input) {
                        break;
                    }
                    BOOST_ASIO_CORO_YIELD s.next_.async_read_some(s.peek_buffer(), std::move(self));
                    waited = true;
                    if (ec) {
                        finish(self, s.wait_error(ec), 0);
                        return;
                    }
                    s.got_peek();
                }
                if (!waited) {
                    // Completed from buffered input: never call the handler from inside the
                    // initiating call (a parser loop would otherwise recurse once per record).
                    BOOST_ASIO_CORO_YIELD boost::asio::post(s.get_executor(), std::move(self));
                }
                finish(self, st.error, st.bytes);
            }
        }

        template <class Self>
        static void finish(Self& self, boost::system::error_code ec, std::size_t n) {
            if constexpr (Stepper::with_size) {
                self.complete(ec, n);
            } else {
                self.complete(ec);
            }
        }
    };

    struct handshake_stepper {
        static constexpr bool with_size = false;
        step operator()(tls_stream& s) const { return s.handshake_step(); }
    };

    template <class MutableBuffers>
    struct read_stepper {
        static constexpr bool with_size = true;
        MutableBuffers buffers;
        step operator()(tls_stream& s) const {
            // Only the first non-empty buffer is filled, as a read_some may.
            for (auto b : boost::beast::buffers_range_ref(buffers)) {
                if (b.size() > 0) {
                    return s.read_step(static_cast<char*>(b.data()), b.size());
                }
            }
            return {};
        }
    };

    template <class ConstBuffers>
    struct write_op {
        tls_stream& s;
        ConstBuffers buffers;
        boost::asio::coroutine coro{};
        step st{};

        template <class Self>
        void operator()(Self& self, boost::system::error_code ec = {}, std::size_t = 0) {
            BOOST_ASIO_CORO_REENTER(coro) {
                for (auto b : boost::beast::buffers_range_ref(buffers)) {
                    if (st.bytes >= max_batch) {
                        break;
                    }
                    const auto room = max_batch - st.bytes;
                    const auto n = b.size() < room ? b.size() : room;
                    if (n == 0) {
                        continue;
                    }
                    const step one = s.write_step(static_cast<const char*>(b.data()), n);
                    st.bytes += one.bytes;
                    if (one.what == need::failed) {
                        st.error = one.error;
                        break;
                    }
                }
                if (s.out_.empty()) {
                    BOOST_ASIO_CORO_YIELD boost::asio::post(s.get_executor(), std::move(self));
                } else {
                    BOOST_ASIO_CORO_YIELD s.async_send_output(std::move(self));
                    s.sent();
                    if (ec) {
                        self.complete(ec, 0);
                        return;
                    }
                }
                self.complete(st.error, st.error ? 0 : st.bytes);
            }
        }
    };

    next_layer_type next_;
    SSL* ssl_ = nullptr;
    std::vector<char> out_;  // encrypted bytes OpenSSL wrote, not yet sent
    char peek_ = 0;          // the byte a readiness wait read
    bool peeked_ = false;
    bool drained_ = true;    // the last recv found the socket empty (or a request just went out)
    int read_errno_ = 0;     // errno of a failed recv, for the error OpenSSL reports
};

}  // namespace kiln::net
