// The only cryptography in pccl_py, all of it delegated to OpenSSL's libcrypto: random nonces
// (RAND_bytes), HMAC-SHA256 and a constant-time comparison. Nothing here is hand-written crypto;
// these wrappers only fix the sizes, concatenate the labelled fields and turn failures into Error.
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace pccl {

constexpr size_t kNonceBytes = 32;
constexpr size_t kMacBytes = 32;  // HMAC-SHA256
using Nonce = std::array<uint8_t, kNonceBytes>;
using Mac = std::array<uint8_t, kMacBytes>;

// Fresh bytes from OpenSSL's CSPRNG; throws Error(kIo) if it cannot provide them.
void random_bytes(uint8_t* out, size_t len);
Nonce random_nonce();

// HMAC-SHA256 over the concatenation of `parts`, keyed by `key` (any length, may be empty).
// Callers put a direction label first so a proof for one direction never verifies in another.
Mac hmac_sha256(std::string_view key, const std::vector<std::string_view>& parts);

// Constant-time equality (CRYPTO_memcmp): a byte-by-byte early exit would leak how much of a
// forged MAC was right.
bool mac_equal(const uint8_t* a, const uint8_t* b, size_t len);

inline std::string_view as_view(const uint8_t* p, size_t n) { return {reinterpret_cast<const char*>(p), n}; }
template <size_t N>
std::string_view as_view(const std::array<uint8_t, N>& a) {
    return as_view(a.data(), N);
}

}  // namespace pccl
