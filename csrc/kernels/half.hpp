// IEEE binary16 and bfloat16 <-> float conversions with round-to-nearest-even. Reductions on 16-bit
// floats widen to float, combine, and round once, so every peer that performs the same step gets the
// same bits.
#pragma once
#include <cstdint>
#include <cstring>

#include "kernels/vec8.hpp"

namespace pccl {

inline float bits_to_float(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }
inline uint32_t float_to_bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }

inline float bf16_to_float(uint16_t h) { return bits_to_float(static_cast<uint32_t>(h) << 16); }

inline uint16_t float_to_bf16(float f) {
    uint32_t u = float_to_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);  // quiet NaN
    u += 0x7fffu + ((u >> 16) & 1u);
    return static_cast<uint16_t>(u >> 16);
}

inline float fp16_to_float(uint16_t h) {
    uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;
    if (exp == 0) {
        if (mant == 0) return bits_to_float(sign);
        // subnormal: value = mant * 2^-24
        float v = static_cast<float>(mant) * (1.0f / 16777216.0f);
        return sign ? -v : v;
    }
    if (exp == 31) return bits_to_float(sign | 0x7f800000u | (mant << 13));
    return bits_to_float(sign | ((exp + 112) << 23) | (mant << 13));
}

inline uint16_t float_to_fp16(float f) {
    uint32_t u = float_to_bits(f);
    uint32_t sign = (u >> 16) & 0x8000u;
    uint32_t absu = u & 0x7fffffffu;
    if (absu > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u);  // NaN
    if (absu >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // overflow -> inf (incl. rounding)
    if (absu < 0x38800000u) {
        // result is subnormal or zero: round absu * 2^24 to an integer, ties to even
        float a = bits_to_float(absu) * 16777216.0f;
        uint32_t i = static_cast<uint32_t>(a);
        float frac = a - static_cast<float>(i);
        if (frac > 0.5f || (frac == 0.5f && (i & 1u))) ++i;
        return static_cast<uint16_t>(sign | i);
    }
    uint32_t mant_odd = (absu >> 13) & 1u;
    absu += 0xc8000fffu + mant_odd;  // rebias exponent (-112 << 23) and round to nearest even
    return static_cast<uint16_t>(sign | (absu >> 13));
}

// Eight lanes at a time, bit for bit the functions above (a lane takes the path its scalar would).
PCCL_VEC_INLINE void bf16_to_float8(const v8u& h, v8f& out) { out = (v8f)(h << 16); }

PCCL_VEC_INLINE void float_to_bf16_8(const v8f& f, v8u& out) {
    v8u u = (v8u)f;
    v8u rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    out = (v8i)(u & 0x7fffffffu) > 0x7f800000 ? (u >> 16) | 0x40u : rounded;
}

PCCL_VEC_INLINE void fp16_to_float8(const v8u& h, v8f& out) {
    v8u sign = (h & 0x8000u) << 16;
    v8i exp = (v8i)((h >> 10) & 0x1fu);
    v8u mant = h & 0x3ffu;
    v8u normal = sign | ((v8u)(exp + 112) << 23) | (mant << 13);
    v8u special = sign | 0x7f800000u | (mant << 13);
    v8f sub = __builtin_convertvector((v8i)mant, v8f) * (1.0f / 16777216.0f);  // signed zero when mant = 0
    v8u r = exp == 31 ? special : normal;
    out = (v8f)(exp == 0 ? sign | (v8u)sub : r);
}

PCCL_VEC_INLINE void float_to_fp16_8(const v8f& f, v8u& out) {
    v8u u = (v8u)f;
    v8u sign = (u >> 16) & 0x8000u;
    v8u absu = u & 0x7fffffffu;
    v8i a = (v8i)absu;
    v8i tiny = a < 0x38800000;
    // Subnormal results; other lanes scale 0 so that the float-to-int conversion stays in range.
    v8f scaled = tiny ? (v8f)absu * 16777216.0f : (v8f){};
    v8i i = __builtin_convertvector(scaled, v8i);  // truncates, like the scalar cast
    v8f frac = scaled - __builtin_convertvector(i, v8f);
    v8i up = (frac > 0.5f) | ((frac == 0.5f) & ((i & 1) != 0));  // -1 where rounding up
    v8u r = tiny ? sign | (v8u)(i - up) : sign | ((absu + 0xc8000fffu + ((absu >> 13) & 1u)) >> 13);
    r = a >= 0x477ff000 ? sign | 0x7c00u : r;
    out = a > 0x7f800000 ? sign | 0x7e00u : r;
}

// By format: BF16 selects bfloat16, else IEEE binary16.
template <bool BF16>
inline float half_to_float(uint16_t h) { return BF16 ? bf16_to_float(h) : fp16_to_float(h); }
template <bool BF16>
inline uint16_t float_to_half(float f) { return BF16 ? float_to_bf16(f) : float_to_fp16(f); }
template <bool BF16>
PCCL_VEC_INLINE void half_to_float8(const v8u& h, v8f& out) {
    if constexpr (BF16) bf16_to_float8(h, out);
    else fp16_to_float8(h, out);
}
template <bool BF16>
PCCL_VEC_INLINE void float_to_half8(const v8f& f, v8u& out) {
    if constexpr (BF16) float_to_bf16_8(f, out);
    else float_to_fp16_8(f, out);
}

}  // namespace pccl
