// Wire codecs: sizes, the documented per-element error bounds of q8 and q4, decoding what encode_adopt
// adopted bit for bit, and decode_reduce equal to decode followed by the reduction.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "kernels/codec.hpp"

namespace pccl {
namespace {

std::vector<float> normal(size_t n, unsigned seed, float scale = 1.0f, float shift = 0.0f) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> d(0.0f, 1.0f);
    std::vector<float> v(n);
    for (auto& x : v) x = shift + scale * d(rng);
    return v;
}

std::vector<float> roundtrip(Quant q, const std::vector<float>& x) {
    std::vector<uint8_t> wire(wire_bytes(q, DType::kFloat32, x.size()));
    encode(q, DType::kFloat32, x.data(), x.size(), wire.data());
    std::vector<float> y(x.size());
    decode(q, DType::kFloat32, wire.data(), x.size(), y.data());
    return y;
}

TEST(Codec, WireSizes) {
    EXPECT_EQ(wire_bytes(Quant::kNone, DType::kFloat32, 1000), 4000u);
    EXPECT_EQ(wire_bytes(Quant::kFp16, DType::kFloat32, 1000), 2000u);
    EXPECT_EQ(wire_bytes(Quant::kBf16, DType::kFloat64, 1000), 2000u);
    // q8: 8 bytes of header per 256-element block and a byte per element.
    EXPECT_EQ(wire_bytes(Quant::kQ8, DType::kFloat32, 512), 2 * (8 + 256u));
    // q4: 36 bytes per 64-element block; a short last block takes 4 + ceil(len / 2).
    EXPECT_EQ(wire_bytes(Quant::kQ4, DType::kFloat32, 64), kQ4BlockBytes);
    EXPECT_EQ(wire_bytes(Quant::kQ4, DType::kFloat32, 64 + 5), kQ4BlockBytes + 4 + 3);
    EXPECT_FALSE(quant_supports(Quant::kQ8, DType::kInt32));
    EXPECT_TRUE(quant_supports(Quant::kQ4, DType::kFloat64));
}

TEST(Codec, Q8ErrorWithinHalfAStepPerBlock) {
    for (size_t n : {1u, 255u, 256u, 1000u, 4099u}) {
        auto x = normal(n, 1 + static_cast<unsigned>(n));
        auto y = roundtrip(Quant::kQ8, x);
        for (size_t b = 0; b < n; b += kQ8Block) {
            size_t e = std::min(n, b + kQ8Block);
            auto [lo, hi] = std::minmax_element(x.begin() + b, x.begin() + e);
            float step = (*hi - *lo) / 255.0f;
            for (size_t i = b; i < e; ++i) ASSERT_LE(std::fabs(y[i] - x[i]), step / 2 * 1.001f + 1e-6f) << i;
        }
    }
}

TEST(Codec, Q4ErrorWithinTheDocumentedBound) {
    for (float shift : {0.0f, 3.0f}) {
        auto x = normal(64 * 50 + 17, 9, 1.0f, shift);
        auto y = roundtrip(Quant::kQ4, x);
        for (size_t b = 0; b < x.size(); b += kQ4Block) {
            size_t e = std::min(x.size(), b + kQ4Block);
            auto [lo, hi] = std::minmax_element(x.begin() + b, x.begin() + e);
            // docs/quantization.md: |x^ - x| <= (max - min + 2^-7 |min|) (1 + 2^-7) / 30, plus float32 rounding.
            float bound = (*hi - *lo + std::ldexp(std::fabs(*lo), -7)) * (1 + std::ldexp(1.0f, -7)) / 30;
            for (size_t i = b; i < e; ++i) ASSERT_LE(std::fabs(y[i] - x[i]), bound * 1.0001f + 1e-6f) << i;
        }
    }
}

TEST(Codec, AdoptedValuesAreExactlyWhatReceiversDecode) {
    for (Quant q : {Quant::kFp16, Quant::kBf16, Quant::kQ8, Quant::kQ4}) {
        auto x = normal(3001, 4);
        std::vector<uint8_t> wire(wire_bytes(q, DType::kFloat32, x.size()));
        auto adopted = x;
        encode_adopt(q, DType::kFloat32, adopted.data(), adopted.size(), wire.data());
        std::vector<float> decoded(x.size());
        decode(q, DType::kFloat32, wire.data(), x.size(), decoded.data());
        EXPECT_EQ(0, std::memcmp(adopted.data(), decoded.data(), x.size() * sizeof(float))) << quant_name(q);
    }
}

TEST(Codec, DecodeReduceEqualsDecodeThenReduce) {
    for (Quant q : {Quant::kNone, Quant::kBf16, Quant::kQ8, Quant::kQ4}) {
        auto x = normal(1500, 5), mine = normal(1500, 6);
        std::vector<uint8_t> wire(wire_bytes(q, DType::kFloat32, x.size()));
        encode(q, DType::kFloat32, x.data(), x.size(), wire.data());
        std::vector<float> fused(x.size()), decoded(x.size());
        decode_reduce(q, DType::kFloat32, ReduceOp::kSum, wire.data(), x.size(), mine.data(), fused.data());
        decode(q, DType::kFloat32, wire.data(), x.size(), decoded.data());
        for (size_t i = 0; i < x.size(); ++i) ASSERT_EQ(fused[i], decoded[i] + mine[i]) << quant_name(q) << " " << i;
    }
}

TEST(Codec, EncodingIsAFunctionOfTheBytes) {
    auto x = normal(5000, 8);
    for (Quant q : {Quant::kQ8, Quant::kQ4}) {
        std::vector<uint8_t> a(wire_bytes(q, DType::kFloat32, x.size())), b(a.size());
        encode(q, DType::kFloat32, x.data(), x.size(), a.data());
        encode(q, DType::kFloat32, x.data(), x.size(), b.data());
        EXPECT_EQ(a, b) << quant_name(q);
    }
}

TEST(Codec, RoundtripMatchesEncodeDecode) {
    auto x = normal(777, 3);
    for (Quant q : {Quant::kFp16, Quant::kQ8, Quant::kQ4}) {
        std::vector<float> r(x.size());
        quantize_roundtrip(q, DType::kFloat32, x.data(), x.size(), r.data());
        EXPECT_EQ(r, roundtrip(q, x)) << quant_name(q);
    }
}

}  // namespace
}  // namespace pccl
