// Authentication of the mesh (peer-to-peer data connections), once per connection per epoch, with a
// key only the two members of that connection hold:
//
//   listener -> dialer   NL (32 random bytes), as soon as it accepts
//   dialer -> listener   Handshake (group, epoch, from, to, conn_index), ND (32 random bytes),
//                        HMAC(Kab, "pccl/3 mesh dial", Handshake, NL, ND)
//   listener -> dialer   HMAC(Kab, "pccl/3 mesh accept", Handshake, NL, ND)
//
// Kab = HMAC(secret, "pccl/4 mesh pair key", Tab, group, epoch, a, b) for the members a < b (ids) that
// the handshake names as from and to. Tab, the pair token, is AES-256 under a random key E that the
// master draws for every epoch and never sends: Tab = AES_E(a, b) || AES_E(a, b + 2^63) (two distinct
// 16-byte blocks, as peer ids are below 2^62). The master sends member a, with its EPOCH and over its
// authenticated control connection, the tokens of a's own pairs only. So:
// - only a and b can open or accept a connection between a and b: a third member m holds Tam and Tbm,
//   never Tab, and cannot pose as a to b (before protocol 4 one token per epoch was shared by all
//   members, and any member could take any other's slot);
// - only a member of that very epoch can open a connection for it (a stale or guessed epoch, or a
//   recorded handshake replayed against a fresh NL, fails);
// - the secret enters at the members, so a token seen on the wire (the control connection is clear
//   text without TLS) is worthless without the secret. Without a secret (an empty HMAC key) the
//   token is the key: protection then rests on the token reaching only a and b (see docs/security.md).
// The listener parks a connection only under the (epoch, from, index) slot the handshake names and the
// MAC covers, and the dialer hands the connection to its mesh only after the listener proved it holds
// Kab too. Why AES for the tokens and HMAC for the keys: the master derives n*(n-1) tokens per epoch
// and must stay fast at thousands of members (auth/crypto.hpp, aes256_blocks); each member derives only
// n-1 keys. Both proofs cost one HMAC per connection per epoch; the data path is untouched.
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "auth/crypto.hpp"
#include "protocol/frame.hpp"

namespace pccl {

// What follows the Handshake on the wire from the dialer.
struct MeshAuthTail {
    Nonce dial_nonce;
    Mac proof;
};
static_assert(sizeof(MeshAuthTail) == 64);

using PairToken = std::array<uint8_t, 32>;

// The master's side: the pair tokens of `member` with every entry of `ids` (the epoch's members, in
// their order), all zero at member's own place. `epoch_key` is the master's random key of the epoch.
std::vector<PairToken> mesh_pair_tokens(const Nonce& epoch_key, uint64_t member, const std::vector<uint64_t>& ids);
// A member's side: the key of its connections with `other` (symmetric in me/other).
Mac mesh_pair_key(const std::string& secret, const PairToken& token, uint32_t group, uint64_t epoch, uint64_t me,
                  uint64_t other);
Mac mesh_dial_proof(const Mac& key, const Handshake& hs, const Nonce& listener_nonce, const Nonce& dial_nonce);
Mac mesh_accept_proof(const Mac& key, const Handshake& hs, const Nonce& listener_nonce, const Nonce& dial_nonce);

}  // namespace pccl
