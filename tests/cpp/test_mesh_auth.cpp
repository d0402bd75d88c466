// Mesh pair keys (auth/mesh_auth.hpp): both members of a pair derive the same key from their own
// tokens, every other pair's key differs, and a listener's proof check (transport/mesh_handshake.hpp)
// accepts a slot only under the key of the member the handshake names as its sender.
#include <gtest/gtest.h>

#include <map>
#include <set>
#include <vector>

#include "auth/mesh_auth.hpp"
#include "transport/mesh_handshake.hpp"

namespace pccl {
namespace {

const std::vector<uint64_t> kIds = {7, 3, 1000, (uint64_t{1} << 62) - 1};

Nonce key_of(uint8_t b) {
    Nonce k;
    k.fill(b);
    return k;
}

std::map<uint64_t, Mac> keys_of(const std::string& secret, const Nonce& ek, uint64_t me, uint64_t epoch) {
    auto tokens = mesh_pair_tokens(ek, me, kIds);
    std::map<uint64_t, Mac> keys;
    for (size_t k = 0; k < kIds.size(); ++k)
        if (kIds[k] != me) keys[kIds[k]] = mesh_pair_key(secret, tokens[k], 5, epoch, me, kIds[k]);
    return keys;
}

TEST(MeshAuth, PairTokensAreSymmetricDistinctAndOwnPlaceZero) {
    const Nonce ek = key_of(9);
    std::map<uint64_t, std::vector<PairToken>> rows;
    for (uint64_t id : kIds) rows[id] = mesh_pair_tokens(ek, id, kIds);
    std::set<PairToken> seen;
    for (size_t a = 0; a < kIds.size(); ++a)
        for (size_t b = 0; b < kIds.size(); ++b) {
            const PairToken& t = rows[kIds[a]][b];
            if (a == b) {
                EXPECT_EQ(t, PairToken{});
                continue;
            }
            EXPECT_EQ(t, rows[kIds[b]][a]) << kIds[a] << "-" << kIds[b];
            if (a < b) {
                EXPECT_TRUE(seen.insert(t).second) << "two pairs share a token";
            }
        }
    // Another epoch key: other tokens.
    EXPECT_NE(mesh_pair_tokens(key_of(10), 7, kIds)[1], rows[7][1]);
}

TEST(MeshAuth, OnlyThePairsKeyOpensItsSlot) {
    const Nonce ek = key_of(1);
    const uint64_t epoch = 12;
    const uint64_t listener = 7, sender = 3, third = 1000;
    auto mine = keys_of("s", ek, listener, epoch);
    auto senders = keys_of("s", ek, sender, epoch);
    auto thirds = keys_of("s", ek, third, epoch);
    EXPECT_EQ(mine.at(sender), senders.at(listener));  // both ends derive the same key
    EXPECT_NE(thirds.at(listener), mine.at(sender));   // the third member holds no key of that pair
    EXPECT_NE(thirds.at(sender), mine.at(sender));
    EXPECT_NE(keys_of("other secret", ek, sender, epoch).at(listener), mine.at(sender));
    EXPECT_NE(keys_of("s", ek, sender, epoch + 1).at(listener), mine.at(sender));

    Handshake hs{kHandshakeMagic, kHandshakeVersion, 0, 5, 0, epoch, sender, listener};
    Nonce nl = key_of(0x22);
    MeshAuthTail tail{key_of(0x11), {}};
    const Mac* used = nullptr;
    tail.proof = mesh_dial_proof(senders.at(listener), hs, nl, tail.dial_nonce);
    EXPECT_EQ(check_dial_proof(mine, hs, nl, tail, &used), ProofCheck::kOk);
    EXPECT_EQ(used, &mine.at(sender));
    // The third member, with either of its keys, claiming the sender's slot.
    for (uint64_t other : {listener, sender}) {
        tail.proof = mesh_dial_proof(thirds.at(other), hs, nl, tail.dial_nonce);
        EXPECT_EQ(check_dial_proof(mine, hs, nl, tail, &used), ProofCheck::kWrongKey);
    }
    // A sender that is not a member of the epoch.
    Handshake stranger = hs;
    stranger.from_peer = 4242;
    EXPECT_EQ(check_dial_proof(mine, stranger, nl, tail, &used), ProofCheck::kNotMember);
}

}  // namespace
}  // namespace pccl
