// The mesh listener's handshake decoding under libFuzzer: the 104 bytes a dialer sends (Handshake,
// its nonce, its proof; auth/mesh_auth.hpp) checked by check_handshake_fields() (the function the
// listener calls, transport/mesh_handshake.hpp) and then the proof against the epoch's key with the
// same calls MeshListener::verify makes. The fuzzer also picks the listener's state (its group and id,
// 0 = not welcomed yet, the oldest epoch it accepts, whether it knows the epoch's key) and may ask the
// harness to sign the handshake with the right key, as a member would, so the accepting path runs too.
// Checked beyond "no crash, no sanitizer report": a handshake accepted with a known key names this
// listener's group, this peer, an index below 64 and an epoch it still accepts, and its proof is the
// key's; a proof that is not the key's is never accepted.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "auth/mesh_auth.hpp"
#include "fuzz/input.hpp"
#include "transport/mesh_handshake.hpp"

using namespace pccl;

namespace {
constexpr size_t kHandshakeBytes = sizeof(Handshake) + sizeof(MeshAuthTail);

[[noreturn]] void fail(const char* what) {
    std::fprintf(stderr, "%s\n", what);
    std::abort();
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    // Layout: group u32, peer id u64, oldest epoch u64, flags u8 (1: key known, 2: sign), the
    // listener's nonce (32 bytes), then the dialer's bytes.
    pccl_fuzz::Input in(data, size);
    const uint32_t group = in.take<uint32_t>();
    const uint64_t peer_id = in.take<uint64_t>();
    const uint64_t min_epoch = in.take<uint64_t>();
    const uint8_t flags = in.take<uint8_t>();
    const bool key_known = flags & 1;
    const bool sign = flags & 2;  // the dialer is a member: its proof is the key's
    Nonce listener_nonce{};
    in.fill(listener_nonce.data(), listener_nonce.size());
    std::vector<uint8_t> wire = in.bytes(kHandshakeBytes);
    if (wire.size() < sizeof(Handshake)) return 0;  // the listener waits for more (or its deadline)

    Handshake h;
    std::memcpy(&h, wire.data(), sizeof h);
    const HandshakeCheck check = check_handshake_fields(h, group, peer_id, min_epoch);
    if (check.reject || check.wait_for_identity || wire.size() < kHandshakeBytes) return 0;

    // The fields passed: they must be what the listener promises to accept.
    if (h.group != group || h.to_peer != peer_id || peer_id == 0 || h.conn_index >= 64 || h.epoch < min_epoch ||
        h.magic != kHandshakeMagic || h.version != kHandshakeVersion)
        fail("check_handshake_fields accepted a handshake the listener must refuse");

    MeshAuthTail tail;
    std::memcpy(&tail, wire.data() + sizeof(Handshake), sizeof tail);
    if (!key_known) return 0;  // parked; verified when taken, as below
    std::array<uint8_t, 32> token{};
    const Mac key = mesh_epoch_key("fuzz secret", token, group, uint64_t{h.epoch});
    const Mac right = mesh_dial_proof(key, h, listener_nonce, tail.dial_nonce);
    if (sign) tail.proof = right;
    const bool accepted = mac_equal(right.data(), tail.proof.data(), right.size());
    if (accepted && std::memcmp(right.data(), tail.proof.data(), right.size()) != 0) fail("mac_equal accepted a wrong proof");
    if (!accepted && sign) fail("a member's proof was refused");
    if (accepted) {
        // The listener's answer: a proof in the other direction, never equal to the dialer's.
        const Mac mine = mesh_accept_proof(key, h, listener_nonce, tail.dial_nonce);
        if (std::memcmp(mine.data(), right.data(), mine.size()) == 0) fail("accept proof equals the dial proof");
    }
    return 0;
}
