#include "auth/crypto.hpp"

#include <algorithm>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include "common/error.hpp"

namespace pccl {

void random_bytes(uint8_t* out, size_t len) {
    if (len == 0) return;
    if (RAND_bytes(out, static_cast<int>(len)) != 1)
        throw Error(ErrorCode::kIo, "OpenSSL's random number generator failed (RAND_bytes)");
}

Nonce random_nonce() {
    Nonce n;
    random_bytes(n.data(), n.size());
    return n;
}

Mac hmac_sha256(std::string_view key, const std::vector<std::string_view>& parts) {
    std::string msg;
    size_t total = 0;
    for (auto p : parts) total += p.size() + 4;
    msg.reserve(total);
    // Each part is length-prefixed so that moving bytes from one field to the next changes the MAC.
    for (auto p : parts) {
        uint32_t n = static_cast<uint32_t>(p.size());
        for (int i = 0; i < 4; ++i) msg.push_back(static_cast<char>(n >> (8 * i)));
        msg.append(p);
    }
    Mac out{};
    unsigned int len = 0;
    static const uint8_t kEmpty = 0;
    const void* k = key.empty() ? static_cast<const void*>(&kEmpty) : static_cast<const void*>(key.data());
    if (HMAC(EVP_sha256(), k, static_cast<int>(key.size()), reinterpret_cast<const unsigned char*>(msg.data()),
             msg.size(), out.data(), &len) == nullptr ||
        len != out.size())
        throw Error(ErrorCode::kIo, "OpenSSL's HMAC-SHA256 failed");
    return out;
}

void aes256_blocks(const std::array<uint8_t, 32>& key, const uint8_t* in, uint8_t* out, size_t blocks) {
    if (blocks == 0) return;
    EVP_CIPHER_CTX* ctx = EVP_CIPHER_CTX_new();
    bool ok = ctx != nullptr && EVP_EncryptInit_ex(ctx, EVP_aes_256_ecb(), nullptr, key.data(), nullptr) == 1 &&
              EVP_CIPHER_CTX_set_padding(ctx, 0) == 1;
    // EVP takes an int length: feed at most 2^20 blocks per call.
    for (size_t done = 0; ok && done < blocks;) {
        const size_t n = std::min<size_t>(blocks - done, size_t{1} << 20);
        int len = 0;
        ok = EVP_EncryptUpdate(ctx, out + 16 * done, &len, in + 16 * done, static_cast<int>(16 * n)) == 1 &&
             len == static_cast<int>(16 * n);
        done += n;
    }
    EVP_CIPHER_CTX_free(ctx);
    if (!ok) throw Error(ErrorCode::kIo, "OpenSSL's AES-256 failed");
}

bool mac_equal(const uint8_t* a, const uint8_t* b, size_t len) { return CRYPTO_memcmp(a, b, len) == 0; }

}  // namespace pccl
