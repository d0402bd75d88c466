// The mesh listener's handshake decoding under libFuzzer: the 104 bytes a dialer sends (Handshake,
// its nonce, its proof; auth/mesh_auth.hpp) checked by check_handshake_fields() and then, when the
// epoch's keys are known, by check_dial_proof() (the two functions the listener calls,
// transport/mesh_handshake.hpp). The fuzzer also picks the listener's state (its group and id, 0 = not
// welcomed yet, the oldest epoch it accepts, whether it knows the epoch's keys, the epoch's other
// members) and may ask the harness to sign the handshake as a member would: either the member the
// handshake names as its sender (with its own pair key, derived from the tokens the master would send
// that member), or another member posing as it (with that member's own key with this listener).
// Checked beyond "no crash, no sanitizer report": a handshake whose fields pass names this listener's
// group, this peer, an index below 64 and an epoch it still accepts; the sender's own proof is
// accepted (both ends of a pair derive the same key from their own tokens); a proof under another
// pair's key, or a sender that is not a member, is never accepted; an accepted proof is the pair key's.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <vector>

#include "auth/mesh_auth.hpp"
#include "fuzz/input.hpp"
#include "protocol/messages.hpp"
#include "transport/mesh_handshake.hpp"

using namespace pccl;

namespace {
constexpr size_t kHandshakeBytes = sizeof(Handshake) + sizeof(MeshAuthTail);
const char* const kSecret = "fuzz secret";

[[noreturn]] void fail(const char* what) {
    std::fprintf(stderr, "%s\n", what);
    std::abort();
}

// Member `who`'s key with `other`, from the tokens the master sends `who` (mesh_pair_tokens).
Mac key_of(const Nonce& epoch_key, const std::vector<uint64_t>& ids, uint64_t who, uint64_t other, uint32_t group,
           uint64_t epoch) {
    const auto tokens = mesh_pair_tokens(epoch_key, who, ids);
    const size_t k = static_cast<size_t>(std::find(ids.begin(), ids.end(), other) - ids.begin());
    return mesh_pair_key(kSecret, tokens.at(k), group, epoch, who, other);
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    // Layout: group u32, peer id u64, oldest epoch u64, flags u8 (1: keys known, 2: signed by the named
    // sender, 4: signed by another member posing as it), member count u8 (mod 9) and that many ids
    // u64 (the epoch's other members), the listener's nonce (32 bytes), then the dialer's bytes.
    pccl_fuzz::Input in(data, size);
    const uint32_t group = in.take<uint32_t>();
    const uint64_t peer_id = in.take<uint64_t>();
    const uint64_t min_epoch = in.take<uint64_t>();
    const uint8_t flags = in.take<uint8_t>();
    const bool keys_known = flags & 1;
    const bool sign = flags & 2;
    const bool impostor = (flags & 4) && !sign;
    std::vector<uint64_t> ids;  // the epoch's members, this listener among them
    const size_t n = in.take<uint8_t>() % 9;
    for (size_t i = 0; i < n; ++i) {
        const uint64_t id = in.take<uint64_t>() & kMaxPeerId;  // the EPOCH decoder admits ids up to kMaxPeerId
        if (id != 0 && id != peer_id && std::find(ids.begin(), ids.end(), id) == ids.end()) ids.push_back(id);
    }
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
    if (!keys_known) return 0;  // parked; verified when taken, as below

    // The listener's keys, as control_plane.cpp derives them from its own EPOCH.
    const uint64_t epoch = h.epoch, from = h.from_peer;
    Nonce epoch_key{};
    std::memcpy(epoch_key.data(), &epoch, sizeof epoch);  // the master's random key of the epoch
    std::vector<uint64_t> all = ids;
    all.push_back(peer_id);
    std::map<uint64_t, Mac> keys;
    for (uint64_t id : ids) keys[id] = key_of(epoch_key, all, peer_id, id, group, epoch);

    const bool member = keys.count(from) > 0;
    uint64_t signer = 0;  // whose own key signs the proof
    if (sign && member) signer = from;
    if (impostor)
        for (uint64_t id : ids)
            if (id != from) {
                signer = id;
                break;
            }
    if (signer != 0) {
        const Mac k = key_of(epoch_key, all, signer, peer_id, group, epoch);
        tail.proof = mesh_dial_proof(k, h, listener_nonce, tail.dial_nonce);
    }
    const Mac* key = nullptr;
    const ProofCheck got = check_dial_proof(keys, h, listener_nonce, tail, &key);
    if (!member && got != ProofCheck::kNotMember) fail("a sender that is not a member passed the proof check");
    if (got == ProofCheck::kOk) {
        if (key != &keys.at(from)) fail("accepted under a key other than the named sender's");
        const Mac right = mesh_dial_proof(*key, h, listener_nonce, tail.dial_nonce);
        if (std::memcmp(right.data(), tail.proof.data(), right.size()) != 0) fail("accepted a proof that is not the pair key's");
        if (signer != 0 && signer != from) fail("a member posing as another was accepted");
        // The listener's answer: a proof in the other direction, never equal to the dialer's.
        const Mac mine = mesh_accept_proof(*key, h, listener_nonce, tail.dial_nonce);
        if (std::memcmp(mine.data(), right.data(), mine.size()) == 0) fail("accept proof equals the dial proof");
    } else if (signer == from && member) {
        fail("a member's proof was refused");
    }
    return 0;
}
