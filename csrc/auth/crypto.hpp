// The only cryptography in pccl_py, all of it delegated to OpenSSL's libcrypto: random nonces
// (RAND_bytes), HMAC-SHA256, AES-256 as a keyed pseudorandom function, and a constant-time comparison. Nothing here is hand-written crypto;
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

// AES-256 of `blocks` 16-byte blocks (each on its own, no chaining: EVP's ECB mode) under `key`: a
// pseudorandom function of each distinct input block. The master derives the mesh pair tokens with it
// (auth/mesh_auth.hpp) because an epoch of n members needs n*(n-1) of them: 16.7 million at 4096
// members, about 1.1 s in all with AES (0.01 us per 32 bytes plus each row's setup), against 44 s
// with one-shot HMAC-SHA256 (2.6 us each); both measured on the 2-core development machine under
// load. Throws Error(kIo) if OpenSSL fails.
void aes256_blocks(const std::array<uint8_t, 32>& key, const uint8_t* in, uint8_t* out, size_t blocks);

// Constant-time equality (CRYPTO_memcmp): a byte-by-byte early exit would leak how much of a
// forged MAC was right.
bool mac_equal(const uint8_t* a, const uint8_t* b, size_t len);

inline std::string_view as_view(const uint8_t* p, size_t n) { return {reinterpret_cast<const char*>(p), n}; }
template <size_t N>
std::string_view as_view(const std::array<uint8_t, N>& a) {
    return as_view(a.data(), N);
}

}  // namespace pccl
