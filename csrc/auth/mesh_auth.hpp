// Authentication of the mesh (peer-to-peer data connections), once per connection per epoch:
//
//   listener -> dialer   NL (32 random bytes), as soon as it accepts
//   dialer -> listener   Handshake (group, epoch, from, to, conn_index), ND (32 random bytes),
//                        HMAC(Ke, "pccl/3 mesh dial", Handshake, NL, ND)
//   listener -> dialer   HMAC(Ke, "pccl/3 mesh accept", Handshake, NL, ND)
//
// Ke = HMAC(secret, "pccl/3 mesh key", T, group, epoch), where T is the random token the master
// sends, with EPOCH, to that epoch's members only (over their authenticated control connections).
// So only a member of that very epoch can open a connection for it (a stale or guessed epoch, or a
// recorded handshake replayed against a fresh NL, fails), the listener parks it only under the
// (epoch, from, index) slot the handshake names and the MAC covers, and the dialer hands the
// connection to its mesh only after the listener proved it holds Ke too. The token is group-wide:
// members are trusted with each other's slots (docs/security.md). Both proofs cost one HMAC per
// connection per epoch; the data path is untouched.
#pragma once
#include <array>
#include <cstdint>
#include <string>

#include "auth/crypto.hpp"
#include "protocol/frame.hpp"

namespace pccl {

// What follows the Handshake on the wire from the dialer.
struct MeshAuthTail {
    Nonce dial_nonce;
    Mac proof;
};
static_assert(sizeof(MeshAuthTail) == 64);

Mac mesh_epoch_key(const std::string& secret, const std::array<uint8_t, 32>& token, uint32_t group, uint64_t epoch);
Mac mesh_dial_proof(const Mac& key, const Handshake& hs, const Nonce& listener_nonce, const Nonce& dial_nonce);
Mac mesh_accept_proof(const Mac& key, const Handshake& hs, const Nonce& listener_nonce, const Nonce& dial_nonce);

}  // namespace pccl
