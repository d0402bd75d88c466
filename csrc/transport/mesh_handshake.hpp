// The mesh listener's checks of a dialer's handshake fields, as a pure function of the bytes and the
// listener's identity, so the fuzz target (fuzz/fuzz_mesh_handshake.cpp) runs the very checks the
// listener runs (transport/mesh_listener.cpp) without sockets or threads. The proof that follows the
// fields is checked once the epoch's keys are known (check_dial_proof, called by MeshListener::verify).
#pragma once
#include <cstdint>
#include <cstring>
#include <map>

#include "auth/mesh_auth.hpp"
#include "protocol/frame.hpp"

namespace pccl {

struct HandshakeCheck {
    const char* reject = nullptr;    // why the connection must be closed; nullptr: the fields are fine so far
    bool wait_for_identity = false;  // fine so far, but this peer does not know its id yet: wait
};

// `h` was copied out of the received bytes (memcpy: the struct is packed). peer_id == 0: this peer has
// not read its welcome yet (members may dial a newcomer before that), so the addressing cannot be
// checked and the handshake waits within its deadline.
inline HandshakeCheck check_handshake_fields(const Handshake& h, uint32_t group, uint64_t peer_id, uint64_t min_epoch) {
    if (h.magic != kHandshakeMagic) return {"bad handshake magic (not a pccl_py peer)"};
    if (h.version != kHandshakeVersion) return {"unsupported protocol version"};
    if (peer_id == 0) return {nullptr, true};
    if (h.group != group) return {"wrong peer group"};
    if (h.to_peer != peer_id) return {"handshake addressed to another peer"};
    if (h.conn_index >= 64) return {"connection index out of range"};
    if (h.epoch < min_epoch) return {"stale epoch"};
    return {};
}

enum class ProofCheck { kOk, kNotMember, kWrongKey };

// Checks the dialer's proof against the key this listener holds with the member the handshake names
// as its sender (`keys`: the epoch's keys by the other member's id, mesh_pair_key). Only that member
// holds the key, so the slot (epoch, from, index) is bound to it; a sender without a key is not a
// member of the epoch. On kOk, *key is the pair's key (for the listener's own proof).
inline ProofCheck check_dial_proof(const std::map<uint64_t, Mac>& keys, const Handshake& h, const Nonce& listener_nonce,
                                   const MeshAuthTail& tail, const Mac** key) {
    auto it = keys.find(uint64_t{h.from_peer});  // a copy: the packed field may be misaligned
    if (it == keys.end()) return ProofCheck::kNotMember;
    const Mac want = mesh_dial_proof(it->second, h, listener_nonce, tail.dial_nonce);
    if (!mac_equal(want.data(), tail.proof.data(), want.size())) return ProofCheck::kWrongKey;
    *key = &it->second;
    return ProofCheck::kOk;
}

}  // namespace pccl
