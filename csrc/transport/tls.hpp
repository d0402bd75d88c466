// Encryption of every connection (encryption="tls"): TLS 1.3 from OpenSSL's libssl, in userspace.
//
// Why userspace: kernel TLS needs the "tls" upper-layer protocol module, which many kernels (this
// project's CI among them) do not have, and it would not change what the code must handle anyway
// (records, handshakes, alerts). So bytes go through SSL_read/SSL_write at the one place each plane
// touches its sockets: the mesh's I/O thread (transport/mesh.cpp), the master's loop
// (coordinator/master.cpp) and the peer's control connection (a Link, below).
//
// Authentication: no certificates. Both ends hold the job secret, so each handshake uses an external
// pre-shared key (RFC 8446, section 4.2.11) derived from it:
//   control connections (peer <-> master):  K = HMAC(secret, "pccl/3 tls control psk")
//   mesh connections of a pair in an epoch: K = HMAC(Kab, "pccl/3 tls mesh psk"), Kab = mesh_pair_key
//                                           (auth/mesh_auth.hpp: only the pair's two members hold it)
// A handshake completes only when both ends hold the same K, so TLS itself refuses a wrong secret
// (the client sees a decrypt_error alert, the server a binder that does not verify), before a byte of
// the protocol is exchanged. Each handshake also runs an X25519 exchange (psk_dhe_ke, OpenSSL's only
// PSK mode by default), so a secret that leaks later does not decrypt recorded traffic. The
// challenge-response of auth/ still runs inside the TLS stream: the same code path with and without
// encryption, and it binds the join request and the mesh slot as before.
//
// Cipher: TLS_AES_128_GCM_SHA256 (AES-NI and carry-less multiply make it the cheapest AEAD on x86),
// ChaCha20-Poly1305 as the fallback OpenSSL picks on machines without them.
//
// What encryption switches off: lending payload pages to the kernel (transport/page_sender.hpp);
// the bytes on the socket are ciphertext that OpenSSL writes from its own buffer. (Swapping result
// pages, collectives/page_swap.hpp, happens after the bytes are received and is unaffected.)
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <sys/types.h>
#include <vector>

#include "auth/crypto.hpp"
#include "common/clock.hpp"
#include "transport/socket.hpp"

typedef struct ssl_st SSL;

namespace pccl {

using TlsKey = Mac;

// The pre-shared keys (see above). Both refuse an empty secret: TLS without one would authenticate
// nobody, and the callers check for that first with a clearer message.
TlsKey control_tls_key(const std::string& secret);
TlsKey mesh_tls_key(const Mac& mesh_key);

// A TLS fatal alert (protocol_version) sent in clear: what a plaintext master answers a TLS client
// with, so the client's handshake fails at once with a reason (is_plaintext_refusal) instead of a
// timeout.
const uint8_t* plaintext_master_alert(size_t* len);

// One TLS session on a connected socket it does not own. The socket may be blocking or not: all I/O
// goes through recv/send with MSG_DONTWAIT | MSG_NOSIGNAL. Calls are serialised by an internal mutex
// (the control connection is read by one thread and written by others); none blocks.
class TlsSession {
public:
    enum class Role { kClient, kServer };
    // Throws Error(kIo) when OpenSSL cannot make a session.
    TlsSession(int fd, Role role, const TlsKey& key);
    ~TlsSession();
    TlsSession(const TlsSession&) = delete;
    TlsSession& operator=(const TlsSession&) = delete;

    // recv()/send() conventions: the byte count (> 0); 0 from read() when the other end closed; -1
    // with errno EAGAIN when the socket must become readable (or writable: wants_write()) first; -1
    // with another errno on failure (error() says why). Both first complete the handshake.
    ssize_t read(void* buf, size_t len);
    ssize_t write(const void* buf, size_t len);
    // Advances the handshake only: 1 when complete, 0 when it waits for the socket (wants_write()
    // says which way), -1 on failure (error(), key_mismatch()).
    int handshake();
    bool established() const { return established_; }
    // The last call that returned EAGAIN waits for the socket to become writable (else readable).
    bool wants_write() const { return want_write_; }
    // Why the session failed, for a log line or an error message.
    const std::string& error() const { return error_; }
    // The failure means the two ends hold different keys (different job secrets).
    bool key_mismatch() const { return key_mismatch_; }
    // The failure is the alert a plaintext master answers a ClientHello with (plaintext_master_alert).
    bool plaintext_refusal() const { return plaintext_refusal_; }

    // Coalesced output (the mesh's bulk connections): encrypted records collect in a buffer of
    // `bytes` and leave in one send() per buffer instead of one per 16 KiB record. The caller must
    // flush() after each batch of writes and, while output_pending(), wait for the socket to become
    // writable and flush again. Two loopback peers in one process, twelve 64 MiB all-reduces: 1.8 s
    // of system time with a send per record, 1.3 s with 256 KiB sends (0.9-1.2 s without TLS).
    void coalesce_output(size_t bytes);
    // Sends what the buffer holds: 1 when it is empty, 0 when the socket is full, -1 on failure.
    int flush();
    bool output_pending() const { return out_len_ > out_sent_; }

private:
    friend struct TlsBio;
    ssize_t finish(int rc, bool reading);  // maps a failed SSL call; mutex_ held
    SSL* ssl_ = nullptr;
    int fd_;
    TlsKey key_;
    int sys_errno_ = 0;  // errno of the BIO's socket call that failed during the current SSL call (0: none)
    bool eof_ = false;   // the BIO's recv() returned 0: the other end closed (BIO_CTRL_EOF reports it)
    std::mutex mutex_;
    bool established_ = false;
    bool want_write_ = false;
    bool key_mismatch_ = false;
    bool plaintext_refusal_ = false;
    std::string error_;
    std::vector<uint8_t> out_;  // coalesced records: [out_sent_, out_len_) not sent yet
    size_t out_len_ = 0, out_sent_ = 0;
    int flush_locked();
};

// A byte stream to one other process: a socket, with a TLS session on top once start_tls() ran. The
// peer's control connection to the master is one; the blocking helpers keep send_all/recv_all's
// contract (false on timeout, Error(kIo) on failure).
class Link {
public:
    Link() = default;
    explicit Link(Fd fd) : fd_(std::move(fd)) {}
    Link(Link&&) noexcept = default;
    Link& operator=(Link&& o) noexcept {
        if (this != &o) {
            tls_ = std::move(o.tls_);
            fd_ = std::move(o.fd_);
        }
        return *this;
    }
    ~Link() { reset(); }
    int get() const { return fd_.get(); }
    bool valid() const { return fd_.valid(); }
    bool encrypted() const { return tls_ != nullptr; }
    void reset() {
        tls_.reset();
        fd_.reset();
    }
    // Runs the client side of the handshake until the deadline. Throws Error(kAuth) when the other end
    // holds another key or is a plaintext master, Error(kTimeout) at the deadline, Error(kIo) else.
    void start_tls(const TlsKey& key, TimePoint deadline, const std::string& who);
    bool send_all(const void* data, size_t len, TimePoint deadline);
    bool recv_all(void* data, size_t len, TimePoint deadline);
    // What the connection has now, without waiting: recv() conventions (errno EAGAIN: nothing yet).
    ssize_t recv_some(void* data, size_t len);

private:
    // Waits (at most until the deadline) for what the session's last EAGAIN asked for.
    bool wait(TimePoint deadline);
    std::unique_ptr<TlsSession> tls_;  // uses fd_'s descriptor: reset before fd_ closes it
    Fd fd_;
};

}  // namespace pccl
