// The master's half of the control-plane authentication (auth/control_auth.hpp describes the
// exchange). Kept apart from master.cpp: nothing here touches a group; a connection reaches
// on_hello/on_rejoin only after its proof checked out.
#include <cerrno>
#include <cstring>
#include <sys/socket.h>

#include "auth/control_auth.hpp"
#include "common/log.hpp"
#include "coordinator/master.hpp"

namespace pccl {

void Master::warn_if_exposed() const {
    if (!secret_.empty() || !binds_beyond_loopback(host_)) return;
    PCCL_WARN("master",
              "*** SECURITY WARNING: listening on %s:%u without a job secret. Anyone who can reach this port can "
              "join, and then receives every member's address, results and shared state. Give the master and "
              "every peer the same secret (pccl-master --secret-file, or PCCL_SECRET), or bind to 127.0.0.1. ***",
              host_.c_str(), port_);
}

void Master::refuse_auth(Peer& p, const std::string& why) {
    if (closed_log_.allow("master", "connections closed before joining"))
        PCCL_WARN("master", "refused connection %llu from %s: %s", (unsigned long long)p.id, p.remote.c_str(), why.c_str());
    send(p, encode_auth_refused(why));
    drop(p, "authentication refused: " + why, false);
}

bool Master::screen_first_byte(Peer& p) {
    uint8_t first = 0;
    if (::recv(p.fd.get(), &first, 1, MSG_PEEK | MSG_DONTWAIT) != 1) return true;  // nothing yet, or the read path's error
    p.screened = true;
    // A TLS client opens with a handshake record (type 22); a plaintext peer with AUTH_HELLO's length,
    // whose low byte is not 22.
    const bool speaks_tls = first == 22;
    if (encrypt_ && !speaks_tls) {
        p.tls.reset();  // answered in the clear, which is what it reads
        refuse_auth(p, "this master encrypts every connection (encryption='tls'); pass encryption='tls' to the "
                       "Communicator (or set PCCL_ENCRYPTION=tls) on every peer");
        return false;
    }
    if (!encrypt_ && speaks_tls) {
        PCCL_WARN("master", "refused connection %llu from %s: it speaks TLS, and this master runs without encryption "
                            "(start it with --encryption tls, or drop encryption on the peers)",
                  (unsigned long long)p.id, p.remote.c_str());
        size_t len = 0;
        const uint8_t* alert = plaintext_master_alert(&len);
        (void)!::send(p.fd.get(), alert, len, MSG_NOSIGNAL | MSG_DONTWAIT);
        drop(p, "authentication refused: the peer speaks TLS", false);
        return false;
    }
    return true;
}

void Master::drop_broken(Peer& p, const char* what) {
    const int err = errno;
    if (p.tls && !p.tls->established()) {
        std::string why = p.tls->key_mismatch() ? "wrong job secret (its TLS key did not match)"
                                                : "TLS handshake failed: " + p.tls->error();
        PCCL_WARN("master", "refused connection %llu from %s: %s", (unsigned long long)p.id, p.remote.c_str(), why.c_str());
        drop(p, "authentication refused: " + why, false);
        return;
    }
    drop(p, std::string(what) + " failed: " + (p.tls ? p.tls->error() : std::string(std::strerror(err))), false);
}

// Precondition: p.state == kHandshake. Any message out of order is a protocol error (the caller
// closes the connection); nothing here changes a group until the join's proof checked out.
void Master::on_handshake(Peer& p, MsgType type, Reader& r) {
    auto expect = [&](MsgType want) {
        if (type != want)
            throw ProtocolError(std::string("message '") + msg_type_name(type) + "' before authentication (expected '" +
                                msg_type_name(want) + "')");
    };
    switch (p.auth) {
        case Peer::Auth::kHello: {
            expect(MsgType::kAuthHello);
            AuthHello h = decode_auth_hello(r);
            if (h.has_secret && secret_.empty())
                return refuse_auth(p, "the peer has a job secret but this master runs without one; start pccl-master with "
                                      "the same secret (--secret-file or PCCL_SECRET), or drop the peer's secret");
            if (!h.has_secret && !secret_.empty())
                return refuse_auth(p, "this master requires the job secret; pass secret= to the Communicator (or set "
                                      "PCCL_SECRET) to the master's secret");
            p.peer_nonce = h.nonce;
            p.master_nonce = random_nonce();
            p.auth = Peer::Auth::kProof;
            send(p, encode_auth_challenge(AuthChallenge{static_cast<uint8_t>(!secret_.empty()), p.master_nonce}));
            return;
        }
        case Peer::Auth::kProof:
            expect(MsgType::kAuthProof);
            p.proof = decode_auth_mac(r);
            p.auth = Peer::Auth::kJoin;
            p.in.set_max_frame(kMaxControlMessage);  // a REJOIN lists the membership (max_preauth_bytes bounds the sum)
            return;
        case Peer::Auth::kJoin: {
            if (type != MsgType::kHello && type != MsgType::kRejoin)
                throw ProtocolError(std::string("message '") + msg_type_name(type) + "' after the proof (expected hello or rejoin)");
            // The proof covers the whole join message: its type byte, then the fields the reader holds.
            std::vector<uint8_t> join(1 + r.remaining());
            join[0] = static_cast<uint8_t>(type);
            if (r.remaining()) std::memcpy(join.data() + 1, r.position(), r.remaining());
            Mac want = control_peer_proof(secret_, p.peer_nonce, p.master_nonce, join.data(), join.size());
            if (!mac_equal(want.data(), p.proof.data(), want.size()))
                return refuse_auth(p, "wrong job secret (its proof did not verify); give every peer the master's secret");
            Mac mine = control_master_proof(secret_, p.peer_nonce, p.master_nonce, join.data(), join.size());
            if (type == MsgType::kHello) {
                Hello h = decode_hello(r);
                send(p, encode_auth_mac(MsgType::kAuthOk, mine));
                on_hello(p, h);
            } else {
                Rejoin m = decode_rejoin(r);
                send(p, encode_auth_mac(MsgType::kAuthOk, mine));
                on_rejoin(p, m);
            }
            return;
        }
    }
}

}  // namespace pccl
