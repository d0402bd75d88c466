#include "auth/mesh_auth.hpp"

namespace pccl {
namespace {
std::string_view hs_view(const Handshake& hs) { return as_view(reinterpret_cast<const uint8_t*>(&hs), sizeof hs); }
}  // namespace

Mac mesh_epoch_key(const std::string& secret, const std::array<uint8_t, 32>& token, uint32_t group, uint64_t epoch) {
    uint8_t ge[12];
    for (int i = 0; i < 4; ++i) ge[i] = static_cast<uint8_t>(group >> (8 * i));
    for (int i = 0; i < 8; ++i) ge[4 + i] = static_cast<uint8_t>(epoch >> (8 * i));
    return hmac_sha256(secret, {"pccl/3 mesh key", as_view(token), as_view(ge, sizeof ge)});
}

Mac mesh_dial_proof(const Mac& key, const Handshake& hs, const Nonce& nl, const Nonce& nd) {
    return hmac_sha256(as_view(key), {"pccl/3 mesh dial", hs_view(hs), as_view(nl), as_view(nd)});
}

Mac mesh_accept_proof(const Mac& key, const Handshake& hs, const Nonce& nl, const Nonce& nd) {
    return hmac_sha256(as_view(key), {"pccl/3 mesh accept", hs_view(hs), as_view(nl), as_view(nd)});
}

}  // namespace pccl
