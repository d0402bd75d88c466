#include "transport/tls.hpp"

#include <cerrno>
#include <cstring>
#include <mutex>
#include <poll.h>
#include <sys/socket.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "common/error.hpp"

namespace pccl {
namespace {

constexpr char kIdentity[] = "pccl/3 psk";
// TLS_AES_128_GCM_SHA256: the PSK's hash must be the negotiated suite's (SHA-256 for both suites).
constexpr unsigned char kAes128GcmSha256[2] = {0x13, 0x01};
// OpenSSL reads up to this much per recv() when read-ahead is on: several 16 KiB records per system
// call on a busy link instead of two reads (header, body) per record.
constexpr size_t kReadBuffer = 256u << 10;

std::string openssl_errors() {
    std::string out;
    char buf[256];
    for (unsigned long e; (e = ERR_get_error()) != 0;) {
        ERR_error_string_n(e, buf, sizeof buf);
        if (!out.empty()) out += "; ";
        out += buf;
    }
    return out.empty() ? "unknown TLS error" : out;
}

}  // namespace

// The custom BIO: OpenSSL's socket BIO uses read()/write(), which block on a blocking socket and
// raise SIGPIPE on a reset one.
struct TlsBio {
    static TlsSession* self(BIO* b) { return static_cast<TlsSession*>(BIO_get_data(b)); }
    static int write(BIO* b, const char* data, int len) {
        TlsSession* s = self(b);
        BIO_clear_retry_flags(b);
        if (!s->out_.empty()) {  // coalescing: collect the record, send when the buffer is full
            const size_t n = static_cast<size_t>(len);
            if (s->out_len_ + n > s->out_.size() && s->flush_locked() < 0) return -1;
            if (s->out_sent_ > 0) {  // a partial send: move the rest to the front
                std::memmove(s->out_.data(), s->out_.data() + s->out_sent_, s->out_len_ - s->out_sent_);
                s->out_len_ -= s->out_sent_;
                s->out_sent_ = 0;
            }
            if (s->out_len_ + n > s->out_.size()) {
                BIO_set_retry_write(b);
                return -1;
            }
            std::memcpy(s->out_.data() + s->out_len_, data, n);
            s->out_len_ += n;
            return len;
        }
        ssize_t n = ::send(s->fd_, data, static_cast<size_t>(len), MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n >= 0) return static_cast<int>(n);
        s->sys_errno_ = errno;
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) BIO_set_retry_write(b);
        return -1;
    }
    static int read(BIO* b, char* out, int len) {
        TlsSession* s = self(b);
        BIO_clear_retry_flags(b);
        ssize_t n = ::recv(s->fd_, out, static_cast<size_t>(len), MSG_DONTWAIT);
        if (n == 0) s->eof_ = true;
        if (n >= 0) return static_cast<int>(n);
        s->sys_errno_ = errno;
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) BIO_set_retry_read(b);
        return -1;
    }
    static long ctrl(BIO* b, int cmd, long, void*) {
        // OpenSSL asks whether a read of 0 bytes was the end of the stream. Answering 0 (as for any
        // command we do not know) made every close by the other end an SSL_ERROR_SYSCALL that finish()
        // reported with the errno of an earlier, unrelated call, often EAGAIN: a closed connection then
        // read as "no data yet", the reader spun on it, and the close was noticed only at the heartbeat
        // timeout (a TLS close() waited out its 2 s leave deadline; tests/security/test_tls.py). With
        // SSL_OP_IGNORE_UNEXPECTED_EOF, a reported EOF reads as a clean close (SSL_ERROR_ZERO_RETURN).
        if (cmd == BIO_CTRL_EOF) return self(b)->eof_ ? 1 : 0;
        if (cmd != BIO_CTRL_FLUSH) return 0;
        BIO_clear_retry_flags(b);
        TlsSession* s = self(b);
        if (s->out_.empty()) return 1;
        int rc = s->flush_locked();
        if (rc == 0) BIO_set_retry_write(b);
        return rc > 0 ? 1 : 0;  // handshake flights wait for the socket like a short write
    }
    static int create(BIO* b) {
        BIO_set_init(b, 1);
        return 1;
    }
    static int destroy(BIO*) { return 1; }
    static const BIO_METHOD* method() {
        static BIO_METHOD* m = [] {
            BIO_METHOD* bm = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "pccl socket");
            if (bm == nullptr) return bm;
            BIO_meth_set_write(bm, &TlsBio::write);
            BIO_meth_set_read(bm, &TlsBio::read);
            BIO_meth_set_ctrl(bm, &TlsBio::ctrl);
            BIO_meth_set_create(bm, &TlsBio::create);
            BIO_meth_set_destroy(bm, &TlsBio::destroy);
            return bm;
        }();
        return m;
    }
    static const TlsKey& key(SSL* ssl) { return static_cast<TlsSession*>(SSL_get_app_data(ssl))->key_; }
    // The session both ends resume: the PSK, the suite whose hash it is used with, TLS 1.3.
    static SSL_SESSION* psk_session(SSL* ssl) {
        const SSL_CIPHER* cipher = SSL_CIPHER_find(ssl, kAes128GcmSha256);
        if (cipher == nullptr) return nullptr;
        SSL_SESSION* s = SSL_SESSION_new();
        if (s == nullptr) return nullptr;
        const TlsKey& k = key(ssl);
        if (SSL_SESSION_set1_master_key(s, k.data(), k.size()) != 1 || SSL_SESSION_set_cipher(s, cipher) != 1 ||
            SSL_SESSION_set_protocol_version(s, TLS1_3_VERSION) != 1) {
            SSL_SESSION_free(s);
            return nullptr;
        }
        return s;
    }
    static int use_psk(SSL* ssl, const EVP_MD* md, const unsigned char** id, size_t* idlen, SSL_SESSION** sess) {
        *sess = nullptr;
        const SSL_CIPHER* cipher = SSL_CIPHER_find(ssl, kAes128GcmSha256);
        // After a HelloRetryRequest md names the hash already chosen: the PSK must match it.
        if (cipher == nullptr || (md != nullptr && md != SSL_CIPHER_get_handshake_digest(cipher))) return 1;
        *sess = psk_session(ssl);  // OpenSSL takes this reference
        *id = reinterpret_cast<const unsigned char*>(kIdentity);
        *idlen = sizeof kIdentity - 1;
        return *sess != nullptr;
    }
    static int find_psk(SSL* ssl, const unsigned char* id, size_t idlen, SSL_SESSION** sess) {
        *sess = nullptr;
        if (idlen != sizeof kIdentity - 1 || std::memcmp(id, kIdentity, idlen) != 0) return 1;  // not ours: no PSK
        *sess = psk_session(ssl);
        return *sess != nullptr;
    }
    static SSL_CTX* context(TlsSession::Role role) {
        static SSL_CTX* ctx[2] = {make(TlsSession::Role::kClient), make(TlsSession::Role::kServer)};
        return ctx[role == TlsSession::Role::kServer];
    }
    static SSL_CTX* make(TlsSession::Role role) {
        SSL_CTX* c = SSL_CTX_new(role == TlsSession::Role::kClient ? TLS_client_method() : TLS_server_method());
        if (c == nullptr) return nullptr;
        SSL_CTX_set_min_proto_version(c, TLS1_3_VERSION);
        SSL_CTX_set_max_proto_version(c, TLS1_3_VERSION);
        SSL_CTX_set_ciphersuites(c, "TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256");
        // Partial writes: SSL_write returns after each record, so the I/O loops keep their budgets
        // and never hold the caller's whole buffer hostage; a retried write may come from a buffer
        // that moved (the master's output vector grows).
        SSL_CTX_set_mode(c, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
        // Frames are length-prefixed, so a connection cut without close_notify is an ordinary close
        // (the reader notices a short frame itself); no session tickets (nothing is resumed).
        SSL_CTX_set_options(c, SSL_OP_IGNORE_UNEXPECTED_EOF | SSL_OP_NO_TICKET);
        SSL_CTX_set_num_tickets(c, 0);
        SSL_CTX_set_session_cache_mode(c, SSL_SESS_CACHE_OFF);
        SSL_CTX_set_read_ahead(c, 1);
        SSL_CTX_set_default_read_buffer_len(c, kReadBuffer);
        if (role == TlsSession::Role::kClient) SSL_CTX_set_psk_use_session_callback(c, &TlsBio::use_psk);
        else SSL_CTX_set_psk_find_session_callback(c, &TlsBio::find_psk);
        return c;
    }
};

TlsKey control_tls_key(const std::string& secret) {
    if (secret.empty()) throw Error(ErrorCode::kInvalidArgument, "encryption='tls' needs the job secret");
    return hmac_sha256(secret, {"pccl/3 tls control psk"});
}

TlsKey mesh_tls_key(const Mac& mesh_key) { return hmac_sha256(as_view(mesh_key), {"pccl/3 tls mesh psk"}); }

const uint8_t* plaintext_master_alert(size_t* len) {
    // Record: alert (21), TLS 1.2 record version, 2 bytes: fatal (2), protocol_version (70).
    static const uint8_t kAlert[] = {21, 3, 3, 0, 2, 2, 70};
    *len = sizeof kAlert;
    return kAlert;
}

TlsSession::TlsSession(int fd, Role role, const TlsKey& key) : fd_(fd), key_(key) {
    SSL_CTX* ctx = TlsBio::context(role);
    const BIO_METHOD* method = TlsBio::method();
    if (ctx == nullptr || method == nullptr || (ssl_ = SSL_new(ctx)) == nullptr)
        throw Error(ErrorCode::kIo, "OpenSSL cannot create a TLS session: " + openssl_errors());
    BIO* bio = BIO_new(method);
    if (bio == nullptr) {
        SSL_free(ssl_);
        throw Error(ErrorCode::kIo, "OpenSSL cannot create a TLS session: " + openssl_errors());
    }
    BIO_set_data(bio, this);
    SSL_set_bio(ssl_, bio, bio);  // the session owns the BIO (one reference for both directions)
    SSL_set_app_data(ssl_, this);
    if (role == Role::kClient) SSL_set_connect_state(ssl_);
    else SSL_set_accept_state(ssl_);
}

TlsSession::~TlsSession() { SSL_free(ssl_); }

ssize_t TlsSession::finish(int rc, bool reading) {
    const int err = SSL_get_error(ssl_, rc);
    switch (err) {
        case SSL_ERROR_WANT_READ:
            want_write_ = false;
            errno = EAGAIN;
            return -1;
        case SSL_ERROR_WANT_WRITE:
            want_write_ = true;
            errno = EAGAIN;
            return -1;
        case SSL_ERROR_ZERO_RETURN:
            if (reading) return 0;
            error_ = "the other end closed the TLS session";
            errno = EPIPE;
            return -1;
        case SSL_ERROR_SYSCALL:
            error_ = sys_errno_ ? std::strerror(sys_errno_) : "connection closed";
            errno = sys_errno_ ? sys_errno_ : ECONNRESET;
            ERR_clear_error();
            return -1;
        default: {
            unsigned long e = ERR_peek_error();
            const int reason = ERR_GET_REASON(e);
            // A wrong key: the server finds that the PSK binder does not verify and answers with
            // illegal_parameter (OpenSSL 3.0; decrypt_error in other versions).
            key_mismatch_ = reason == SSL_R_BINDER_DOES_NOT_VERIFY || reason == SSL_R_TLSV1_ALERT_DECRYPT_ERROR ||
                            reason == SSL_R_SSLV3_ALERT_ILLEGAL_PARAMETER;
            plaintext_refusal_ = reason == SSL_R_TLSV1_ALERT_PROTOCOL_VERSION;
            error_ = openssl_errors();
            errno = EPROTO;
            return -1;
        }
    }
}

// SSL_get_error needs this thread's error queue empty before the call. Every failure path drains it,
// so it normally is: peeking is cheap, while ERR_clear_error frees every slot (2.5% of a loopback
// all-reduce's CPU when called per record).
static void clear_errors() {
    if (ERR_peek_error() != 0) ERR_clear_error();
}

ssize_t TlsSession::read(void* buf, size_t len) {
    std::lock_guard<std::mutex> lock(mutex_);
    clear_errors();
    sys_errno_ = 0;  // finish() must not report an earlier call's errno
    size_t got = 0;
    int rc = SSL_read_ex(ssl_, buf, len, &got);
    if (rc == 1) {
        established_ = true;
        return static_cast<ssize_t>(got);
    }
    return finish(rc, true);
}

ssize_t TlsSession::write(const void* buf, size_t len) {
    std::lock_guard<std::mutex> lock(mutex_);
    clear_errors();
    sys_errno_ = 0;
    size_t put = 0;
    int rc = SSL_write_ex(ssl_, buf, len, &put);
    if (rc == 1) {
        established_ = true;
        return static_cast<ssize_t>(put);
    }
    return finish(rc, false);
}

int TlsSession::handshake() {
    std::lock_guard<std::mutex> lock(mutex_);
    if (established_) return 1;
    ERR_clear_error();
    sys_errno_ = 0;
    int rc = SSL_do_handshake(ssl_);
    if (rc == 1) {
        established_ = true;
        return 1;
    }
    if (finish(rc, true) == 0) {
        error_ = "the other end closed the connection during the TLS handshake";
        return -1;
    }
    return errno == EAGAIN ? 0 : -1;
}

void TlsSession::coalesce_output(size_t bytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (out_len_ == out_sent_) {
        out_.assign(bytes, 0);
        out_len_ = out_sent_ = 0;
    }
}

int TlsSession::flush_locked() {
    while (out_sent_ < out_len_) {
        ssize_t n = ::send(fd_, out_.data() + out_sent_, out_len_ - out_sent_, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) {
            out_sent_ += static_cast<size_t>(n);
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
            want_write_ = true;
            return 0;
        }
        sys_errno_ = errno;
        error_ = std::string("send: ") + std::strerror(errno);
        return -1;
    }
    out_len_ = out_sent_ = 0;
    return 1;
}

int TlsSession::flush() {
    std::lock_guard<std::mutex> lock(mutex_);
    return flush_locked();
}

bool Link::wait(TimePoint deadline) {
    pollfd p{fd_.get(), static_cast<short>(tls_ && tls_->wants_write() ? POLLOUT : POLLIN), 0};
    return ::poll(&p, 1, millis_until(deadline)) > 0;
}

void Link::start_tls(const TlsKey& key, TimePoint deadline, const std::string& who) {
    tls_ = std::make_unique<TlsSession>(fd_.get(), TlsSession::Role::kClient, key);
    for (;;) {
        int rc = tls_->handshake();
        if (rc == 1) return;
        if (rc < 0) {
            if (tls_->plaintext_refusal())
                throw Error(ErrorCode::kAuth, who + " does not use encryption: start it with encryption='tls' "
                                                    "(pccl-master --encryption tls), or drop encryption on this peer");
            if (tls_->key_mismatch())
                throw Error(ErrorCode::kAuth, who + " refused the TLS handshake: its job secret differs from this "
                                                    "peer's; give every peer the master's secret");
            throw Error(ErrorCode::kIo, "TLS handshake with " + who + " failed: " + tls_->error() +
                                            " (is it started with encryption='tls'?)");
        }
        if (Clock::now() >= deadline || !wait(deadline))
            throw Error(ErrorCode::kTimeout, "TLS handshake with " + who + " timed out");
    }
}

bool Link::send_all(const void* data, size_t len, TimePoint deadline) {
    if (!tls_) return pccl::send_all(fd_.get(), data, len, deadline);
    auto* p = static_cast<const uint8_t*>(data);
    while (len > 0) {
        ssize_t n = tls_->write(p, len);
        if (n > 0) {
            p += n;
            len -= static_cast<size_t>(n);
            continue;
        }
        if (errno != EAGAIN) throw Error(ErrorCode::kIo, "send (TLS): " + tls_->error());
        if (Clock::now() >= deadline || !wait(deadline)) return false;
    }
    return true;
}

bool Link::recv_all(void* data, size_t len, TimePoint deadline) {
    if (!tls_) return pccl::recv_all(fd_.get(), data, len, deadline);
    auto* p = static_cast<uint8_t*>(data);
    while (len > 0) {
        ssize_t n = tls_->read(p, len);
        if (n > 0) {
            p += n;
            len -= static_cast<size_t>(n);
            continue;
        }
        if (n == 0) throw Error(ErrorCode::kIo, "the connection was closed by the other end");
        if (errno != EAGAIN) throw Error(ErrorCode::kIo, "recv (TLS): " + tls_->error());
        if (Clock::now() >= deadline || !wait(deadline)) return false;
    }
    return true;
}

ssize_t Link::recv_some(void* data, size_t len) {
    if (!tls_) return ::recv(fd_.get(), data, len, MSG_DONTWAIT);
    return tls_->read(data, len);
}

}  // namespace pccl
