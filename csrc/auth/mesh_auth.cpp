#include "auth/mesh_auth.hpp"

#include <algorithm>

namespace pccl {
namespace {
std::string_view hs_view(const Handshake& hs) { return as_view(reinterpret_cast<const uint8_t*>(&hs), sizeof hs); }

void put_le(uint8_t* out, uint64_t v) {
    for (int i = 0; i < 8; ++i) out[i] = static_cast<uint8_t>(v >> (8 * i));
}
}  // namespace

std::vector<PairToken> mesh_pair_tokens(const Nonce& epoch_key, uint64_t member, const std::vector<uint64_t>& ids) {
    // Two blocks per other member: (lo, hi) and (lo, hi + 2^63), lo < hi the pair's ids. Ids are below
    // 2^62, so no pair's second block equals another pair's first.
    std::vector<uint8_t> in(32 * ids.size(), 0);
    for (size_t k = 0; k < ids.size(); ++k) {
        if (ids[k] == member) continue;
        const uint64_t lo = std::min(ids[k], member), hi = std::max(ids[k], member);
        put_le(&in[32 * k], lo);
        put_le(&in[32 * k + 8], hi);
        put_le(&in[32 * k + 16], lo);
        put_le(&in[32 * k + 24], hi | (uint64_t{1} << 63));
    }
    std::vector<PairToken> out(ids.size());
    static_assert(sizeof(PairToken) == 32);
    aes256_blocks(epoch_key, in.data(), reinterpret_cast<uint8_t*>(out.data()), 2 * ids.size());
    for (size_t k = 0; k < ids.size(); ++k)
        if (ids[k] == member) out[k].fill(0);
    return out;
}

Mac mesh_pair_key(const std::string& secret, const PairToken& token, uint32_t group, uint64_t epoch, uint64_t me,
                  uint64_t other) {
    uint8_t f[28];
    for (int i = 0; i < 4; ++i) f[i] = static_cast<uint8_t>(group >> (8 * i));
    put_le(f + 4, epoch);
    put_le(f + 12, std::min(me, other));
    put_le(f + 20, std::max(me, other));
    return hmac_sha256(secret, {"pccl/4 mesh pair key", as_view(token), as_view(f, sizeof f)});
}

Mac mesh_dial_proof(const Mac& key, const Handshake& hs, const Nonce& nl, const Nonce& nd) {
    return hmac_sha256(as_view(key), {"pccl/3 mesh dial", hs_view(hs), as_view(nl), as_view(nd)});
}

Mac mesh_accept_proof(const Mac& key, const Handshake& hs, const Nonce& nl, const Nonce& nd) {
    return hmac_sha256(as_view(key), {"pccl/3 mesh accept", hs_view(hs), as_view(nl), as_view(nd)});
}

}  // namespace pccl
