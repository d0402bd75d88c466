// The mutual challenge-response that opens every control connection (peer <-> master), before the
// master changes any state for it:
//
//   peer   -> master  AUTH_HELLO     magic, version, has_secret, Np (32 random bytes)
//   master -> peer    AUTH_CHALLENGE has_secret, Nm (32 random bytes)   | or AUTH_REFUSED, close
//   peer   -> master  AUTH_PROOF     HMAC(K, "pccl/3 peer->master", Np, Nm, J)   followed by J, the
//                                    HELLO or REJOIN frame body it vouches for
//   master -> peer    AUTH_OK        HMAC(K, "pccl/3 master->peer", Np, Nm, J)   | or AUTH_REFUSED
//
// K is the job secret. Both nonces are in both proofs, so a recorded exchange replayed against a
// fresh nonce fails; the direction labels differ, so a proof reflected back to its sender fails; J
// is covered, so nobody can swap the join request under a valid proof. The peer checks the master's
// proof before it handles anything the master sends, so it never takes orders from an impostor.
// Without a secret on both sides the exchange still runs (with an empty key, proving nothing), so
// the wire format does not depend on configuration; a secret on one side only is refused clearly.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "auth/crypto.hpp"
#include "common/clock.hpp"

namespace pccl {

class Link;

Mac control_peer_proof(const std::string& secret, const Nonce& peer_nonce, const Nonce& master_nonce,
                       const uint8_t* join, size_t join_len);
Mac control_master_proof(const std::string& secret, const Nonce& peer_nonce, const Nonce& master_nonce,
                         const uint8_t* join, size_t join_len);

// The peer's half, blocking on a fresh connection until the deadline (inside TLS when the link is
// encrypted: transport/tls.hpp): runs the exchange and
// sends `join_frame` (a complete HELLO or REJOIN frame) under the proof. Returns once the master's
// proof checked out; the master's next frames (WELCOME, ...) are left unread on the socket.
// Throws Error(kAuth) when either side refuses the other, Error(kTimeout) at the deadline and
// Error(kIo)/ProtocolError when the connection breaks or carries garbage.
void authenticate_to_master(Link& link, const std::string& secret, const std::vector<uint8_t>& join_frame,
                            TimePoint deadline, const std::string& master_address);

// Whether binding `host` exposes a port beyond this machine (anything but a loopback address).
bool binds_beyond_loopback(const std::string& host);

}  // namespace pccl
