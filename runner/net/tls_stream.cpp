#include "runner/net/tls_stream.hpp"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <sys/socket.h>

#include <boost/asio/ssl/error.hpp>
#include <cerrno>
#include <stdexcept>

#include "runner/net/tls.hpp"

namespace kiln::net {
namespace {

namespace asio = boost::asio;

// Room for the records' framing (TLS 1.3: 22 bytes per 16 KiB record) when `size` bytes are
// encrypted, so out_ grows once per write.
std::size_t with_framing(std::size_t size) { return size + (size / 16384 + 1) * 64; }

}  // namespace

tls_stream::tls_stream(const executor_type& ex, SSL_CTX* ctx) : next_(ex) {
    ssl_ = ::SSL_new(ctx);
    if (ssl_ == nullptr) {
        throw std::runtime_error("cannot create a TLS connection: " + last_openssl_error());
    }
    BIO* bio = ::BIO_new(bio_method());
    if (bio == nullptr) {
        ::SSL_free(ssl_);
        throw std::runtime_error("cannot create a TLS connection: " + last_openssl_error());
    }
    ::BIO_set_data(bio, this);
    ::SSL_set_bio(ssl_, bio, bio);  // one reference for both directions
    ::SSL_set_connect_state(ssl_);
    // Whole socket reads into OpenSSL's record buffer instead of a header and a body read per
    // record.
    ::SSL_set_read_ahead(ssl_, 1);
}

tls_stream::~tls_stream() { ::SSL_free(ssl_); }

boost::system::error_code tls_stream::wait_error(const boost::system::error_code& ec) const {
    // The peer closed without close_notify, as asio::ssl::stream reports it.
    if (ec == asio::error::eof) {
        return asio::ssl::error::stream_truncated;
    }
    return ec;
}

namespace {

boost::system::error_code ssl_error(int e, int saved_errno) {
    switch (e) {
        case SSL_ERROR_ZERO_RETURN:
            return asio::error::eof;  // close_notify
        case SSL_ERROR_SYSCALL:
            if (saved_errno != 0) {
                return {saved_errno, boost::system::system_category()};
            }
            return asio::ssl::error::stream_truncated;
        case SSL_ERROR_SSL: {
            const unsigned long code = ::ERR_get_error();
            ::ERR_clear_error();
            if (ERR_GET_REASON(code) == SSL_R_UNEXPECTED_EOF_WHILE_READING) {
                return asio::ssl::error::stream_truncated;
            }
            return {static_cast<int>(code), asio::error::get_ssl_category()};
        }
        default:
            return {EPROTO, boost::system::system_category()};
    }
}

}  // namespace

tls_stream::step tls_stream::handshake_step() {
    ::ERR_clear_error();
    read_errno_ = 0;
    const int r = ::SSL_connect(ssl_);
    if (r == 1) {
        return {};
    }
    const int e = ::SSL_get_error(ssl_, r);
    if (e == SSL_ERROR_WANT_READ) {
        return {need::input, 0, {}};
    }
    return {need::failed, 0, ssl_error(e, read_errno_)};
}

tls_stream::step tls_stream::read_step(char* data, std::size_t size) {
    if (!peeked_ && drained_ && ::SSL_has_pending(ssl_) == 0) {
        return {need::input, 0, {}};
    }
    std::size_t total = 0;
    while (total < size) {
        ::ERR_clear_error();
        read_errno_ = 0;
        std::size_t n = 0;
        if (::SSL_read_ex(ssl_, data + total, size - total, &n) == 1) {
            total += n;
            continue;
        }
        const int e = ::SSL_get_error(ssl_, 0);
        if (total > 0) {
            break;  // an error shows again on the next call
        }
        if (e == SSL_ERROR_WANT_READ) {
            return {need::input, 0, {}};
        }
        return {need::failed, 0, ssl_error(e, read_errno_)};
    }
    return {need::done, total, {}};
}

tls_stream::step tls_stream::write_step(const char* data, std::size_t size) {
    out_.reserve(out_.size() + with_framing(size));
    ::ERR_clear_error();
    std::size_t n = 0;
    if (::SSL_write_ex(ssl_, data, size, &n) == 1) {
        return {need::done, n, {}};
    }
    return {need::failed, 0, ssl_error(::SSL_get_error(ssl_, 0), 0)};
}

void tls_stream::sent() {
    // A kept-alive connection should not hold a large body's records while it waits.
    if (out_.capacity() > 64 * 1024) {
        std::vector<char>().swap(out_);
    } else {
        out_.clear();
    }
    drained_ = true;  // the answer cannot have come yet; wait for it without a record buffer
}

int tls_stream::bio_write(BIO* b, const char* data, std::size_t size, std::size_t* written) {
    auto* s = static_cast<tls_stream*>(::BIO_get_data(b));
    s->out_.insert(s->out_.end(), data, data + size);
    *written = size;
    return 1;
}

int tls_stream::bio_read(BIO* b, char* data, std::size_t size, std::size_t* read) {
    auto* s = static_cast<tls_stream*>(::BIO_get_data(b));
    ::BIO_clear_retry_flags(b);
    *read = 0;
    if (size == 0) {
        return 0;
    }
    std::size_t got = 0;
    if (s->peeked_) {
        data[0] = s->peek_;
        s->peeked_ = false;
        got = 1;
    }
    const int fd = s->next_.socket().native_handle();
    const ssize_t r = ::recv(fd, data + got, size - got, MSG_DONTWAIT);
    if (r > 0) {
        got += static_cast<std::size_t>(r);
    } else if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
        s->drained_ = errno != EINTR;
        if (got == 0) {
            ::BIO_set_retry_read(b);
            return 0;
        }
    } else if (r < 0) {
        s->read_errno_ = errno;
    }
    // r == 0: end of stream; reported once the peeked byte (if any) is consumed.
    *read = got;
    return got > 0 ? 1 : 0;
}

long tls_stream::bio_ctrl(BIO* /*b*/, int cmd, long /*num*/, void* /*ptr*/) {
    // Writes are gathered in out_ and sent by the operation that made them.
    return cmd == BIO_CTRL_FLUSH ? 1 : 0;
}

BIO_METHOD* tls_stream::bio_method() {
    static BIO_METHOD* const method = [] {
        BIO_METHOD* m = ::BIO_meth_new(::BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "kiln socket");
        ::BIO_meth_set_write_ex(m, &tls_stream::bio_write);
        ::BIO_meth_set_read_ex(m, &tls_stream::bio_read);
        ::BIO_meth_set_ctrl(m, &tls_stream::bio_ctrl);
        ::BIO_meth_set_create(m, [](BIO* b) {
            ::BIO_set_init(b, 1);
            return 1;
        });
        return m;
    }();
    return method;
}

}  // namespace kiln::net
