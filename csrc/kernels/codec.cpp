#include "kernels/codec.hpp"

#include <cmath>
#include <algorithm>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "kernels/combine.hpp"
#include "kernels/half.hpp"

namespace pccl {
namespace {

// 16-bit formats: eight elements at a time, then the scalar conversions for the tail (the same bits).
template <typename T, bool BF16>
PCCL_KERNEL void encode_16(const void* src, size_t n, uint8_t* wire) {
    auto* s = static_cast<const T*>(src);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        v8f f;
        v8u h;
        load8(s + i, f);
        float_to_half8<BF16>(f, h);
        store8_low_u16(h, wire + 2 * i);
    }
    for (; i < n; ++i) {
        uint16_t h = float_to_half<BF16>(static_cast<float>(s[i]));
        std::memcpy(wire + 2 * i, &h, 2);
    }
}

template <typename T, bool BF16>
PCCL_KERNEL void decode_16(const uint8_t* wire, size_t n, void* dst) {
    auto* d = static_cast<T*>(dst);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        v8u h;
        v8f f;
        load8_u16(wire + 2 * i, h);
        half_to_float8<BF16>(h, f);
        store8(f, d + i);
    }
    for (; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, wire + 2 * i, 2);
        d[i] = static_cast<T>(half_to_float<BF16>(h));
    }
}

// Stores the low byte of each lane of four code vectors: 32 bytes, in order. Byte shuffles: GCC's
// generic int32 -> uint8 vector conversion extracts lanes one by one on AVX2.
inline void store_low_bytes(const v8i (&codes)[4], uint8_t* out) {
#if defined(__clang__) || __GNUC__ >= 12
    typedef uint8_t v32b __attribute__((vector_size(32)));
    typedef uint8_t v16b __attribute__((vector_size(16)));
    v16b lo = __builtin_shufflevector((v32b)codes[0], (v32b)codes[1], 0, 4, 8, 12, 16, 20, 24, 28, 32, 36, 40, 44, 48, 52,
                                      56, 60);
    v16b hi = __builtin_shufflevector((v32b)codes[2], (v32b)codes[3], 0, 4, 8, 12, 16, 20, 24, 28, 32, 36, 40, 44, 48, 52,
                                      56, 60);
    std::memcpy(out, &lo, sizeof lo);
    std::memcpy(out + 16, &hi, sizeof hi);
#else
    for (int k = 0; k < 4; ++k) {
        v8b bytes = __builtin_convertvector(codes[k], v8b);
        std::memcpy(out + 8 * k, &bytes, sizeof bytes);
    }
#endif
}

// Min and max of one block of `len` elements, and `poison`, which becomes NaN if any element is NaN or
// infinite (x * 0). Min and max need no NaN care: a block with a NaN is poisoned whatever they return.
// A full block (len == Block, a multiple of 32) runs eight lanes at a time; min and max are exact and
// the poison is 0 or NaN in any order, so both paths give the same three values.
template <size_t Block, typename T>
PCCL_VEC_INLINE void block_range(const T* x, size_t len, float& lo, float& hi, float& poison) {
    static_assert(Block % 32 == 0);
    if (len == Block) {
        // Four independent accumulators each: one would chain every step on the last one's latency.
        v8f lo8[4], hi8[4], p8[4] = {};
        for (int k = 0; k < 4; ++k) {
            load8(x + 8 * k, lo8[k]);
            hi8[k] = lo8[k];
        }
        for (size_t i = 0; i < Block; i += 32)
            for (int k = 0; k < 4; ++k) {
                v8f v;
                load8(x + i + 8 * k, v);
                lo8[k] = v < lo8[k] ? v : lo8[k];
                hi8[k] = v > hi8[k] ? v : hi8[k];
                p8[k] += v * 0.0f;
            }
        for (int k = 1; k < 4; ++k) {
            lo8[0] = lo8[k] < lo8[0] ? lo8[k] : lo8[0];
            hi8[0] = hi8[k] > hi8[0] ? hi8[k] : hi8[0];
            p8[0] += p8[k];
        }
        lo = lo8[0][0], hi = hi8[0][0], poison = p8[0][0];
        for (int k = 1; k < 8; ++k) {
            lo = std::min(lo, lo8[0][k]);
            hi = std::max(hi, hi8[0][k]);
            poison += p8[0][k];
        }
    } else {
        lo = hi = static_cast<float>(x[0]);
        poison = 0.0f;
        for (size_t i = 0; i < len; ++i) {
            float v = static_cast<float>(x[i]);
            lo = std::min(lo, v);
            hi = std::max(hi, v);
            poison += v * 0.0f;
        }
    }
}

// Min-max 8-bit quantization. A block holding any NaN or infinity cannot be scaled; it is sent with a
// NaN step and decodes to NaN throughout, so non-finite values are never silently replaced.
// With `adopt`, each element is then overwritten by the value its code decodes to (the same
// `lo + code * step` as decode_q8), while the block is still in L1.
// Always inlined: it must be compiled as part of each target clone of its callers.
template <typename T, bool Adopt>
__attribute__((always_inline)) inline void encode_q8_blocks(T* s, size_t n, uint8_t* wire) {
    for (size_t b = 0; b < n; b += kQ8Block) {
        const size_t len = std::min(kQ8Block, n - b);
        T* x = s + b;
        uint8_t* out = wire + (b / kQ8Block) * (kQ8Block + 8);
        float lo, hi, poison;
        block_range<kQ8Block>(x, len, lo, hi, poison);
        float step = (hi - lo) / 255.0f;
        if (poison != 0.0f || !std::isfinite(step)) {
            step = std::numeric_limits<float>::quiet_NaN();
            lo = 0.0f;
        }
        std::memcpy(out, &lo, 4);
        std::memcpy(out + 4, &step, 4);
        const float inv = step > 0.0f ? 1.0f / step : 0.0f;
        size_t i = 0;
        for (; i + 32 <= len; i += 32) {
            v8i codes[4];
            for (int k = 0; k < 4; ++k) {
                v8f q;
                load8(x + i + 8 * k, q);
                q = (q - lo) * inv;
                q = q > 0.0f ? q : 0.0f;
                q = q < 255.0f ? q : 255.0f;
                codes[k] = __builtin_convertvector(q + 0.5f, v8i);  // round half up; each in [0, 255]
            }
            store_low_bytes(codes, out + 8 + i);
            if constexpr (Adopt)
                for (int k = 0; k < 4; ++k) store8(lo + __builtin_convertvector(codes[k], v8f) * step, x + i + 8 * k);
        }
        for (; i < len; ++i) {
            float q = (static_cast<float>(x[i]) - lo) * inv;
            q = std::min(std::max(q, 0.0f), 255.0f);
            out[8 + i] = static_cast<uint8_t>(static_cast<int>(q + 0.5f));
            if constexpr (Adopt) x[i] = static_cast<T>(lo + static_cast<float>(out[8 + i]) * step);
        }
    }
}

template <typename T>
PCCL_KERNEL void encode_q8(const void* src, size_t n, uint8_t* wire) {
    encode_q8_blocks<T, false>(const_cast<T*>(static_cast<const T*>(src)), n, wire);  // read only
}

template <typename T>
PCCL_KERNEL void encode_adopt_q8(void* values, size_t n, uint8_t* wire) {
    encode_q8_blocks<T, true>(static_cast<T*>(values), n, wire);
}

// Walks the q8 blocks of `n` elements: emit(first element, block length, decoded value of code i).
template <typename Emit>
inline void for_each_q8_block(const uint8_t* wire, size_t n, Emit&& emit) {
    for (size_t b = 0; b < n; b += kQ8Block) {
        const uint8_t* in = wire + (b / kQ8Block) * (kQ8Block + 8);
        float lo, step;
        std::memcpy(&lo, in, 4);
        std::memcpy(&step, in + 4, 4);
        const uint8_t* codes = in + 8;
        emit(b, std::min(kQ8Block, n - b), [=](size_t i) { return lo + static_cast<float>(codes[i]) * step; });
    }
}

template <typename T>
PCCL_KERNEL void decode_q8(const uint8_t* wire, size_t n, void* dst) {
    auto* d = static_cast<T*>(dst);
    for_each_q8_block(wire, n, [&](size_t b, size_t len, auto value) {
        for (size_t i = 0; i < len; ++i) d[b + i] = static_cast<T>(value(i));
    });
}

// decode() followed by reduce(), in one pass: out = decoded (op) mine, with the same roundings as the
// two separate passes, so fusing changes speed, not bits.
template <typename T, ReduceOp OP>
PCCL_KERNEL void decode_reduce_q8(const uint8_t* wire, size_t n, const T* mine, T* out) {
    for_each_q8_block(wire, n, [&](size_t b, size_t len, auto value) {
        for (size_t i = 0; i < len; ++i) out[b + i] = combine<T, OP>(static_cast<T>(value(i)), mine[b + i]);
    });
}

// --- q4 -----------------------------------------------------------------------------------------
// Min-max 4-bit blocks of kQ4Block elements with a bfloat16 header: the min rounded down and the step
// rounded up to bfloat16, so codes 0..15 still span [min, max]. Decoded values are lo + code * step in
// float32, the same expression in every path. NaN and infinity poison the block like q8's, and so
// does a min, range or step that leaves float32's range.

// float32 -> bfloat16 bits, rounded toward -inf (down) or +inf (up). Finite inputs only; a result
// past the largest bfloat16 becomes an infinity, which the caller's finiteness check catches.
inline uint16_t bf16_round(float v, bool up) {
    uint32_t b;
    std::memcpy(&b, &v, 4);
    const bool negative = b >> 31;
    uint32_t t = b >> 16;
    if ((b & 0xFFFFu) != 0 && negative != up) ++t;  // away from zero: down for negatives, up for positives
    return static_cast<uint16_t>(t);
}

inline float bf16_bits_to_float(uint16_t h) {
    uint32_t b = static_cast<uint32_t>(h) << 16;
    float f;
    std::memcpy(&f, &b, 4);
    return f;
}

// Eight 4-bit codes (four bytes, element k in bits 4k..4k+3 of the little-endian word) as floats.
PCCL_VEC_INLINE void load8_nibbles(const uint8_t* p, v8f& out) {
    uint32_t w;
    std::memcpy(&w, p, 4);
    const v8u shift = {0, 4, 8, 12, 16, 20, 24, 28};
    v8u v = (v8u{w, w, w, w, w, w, w, w} >> shift) & 15u;
    out = __builtin_convertvector((v8i)v, v8f);
}

inline unsigned nibble(const uint8_t* codes, size_t i) { return (codes[i >> 1] >> ((i & 1) * 4)) & 15u; }

// Encodes blocks of q4 like encode_q8_blocks (and with Adopt, overwrites each element by its decoded
// value). Always inlined into each target clone of its callers.
template <typename T, bool Adopt>
__attribute__((always_inline)) inline void encode_q4_blocks(T* s, size_t n, uint8_t* wire) {
    static_assert(kQ4Block % 64 == 0);
    for (size_t b = 0; b < n; b += kQ4Block) {
        const size_t len = std::min(kQ4Block, n - b);
        T* x = s + b;
        uint8_t* out = wire + (b / kQ4Block) * kQ4BlockBytes;
        float lo, hi, poison;
        block_range<kQ4Block>(x, len, lo, hi, poison);
        uint16_t lo_bits = 0, step_bits = 0x7FC0;  // a NaN step: the block decodes to NaN throughout
        if (poison == 0.0f) {
            lo_bits = bf16_round(lo, false);
            float range = (hi - bf16_bits_to_float(lo_bits)) / 15.0f;
            if (std::isfinite(range)) step_bits = bf16_round(range, true);
            // The largest decoded value, lo + 15 * step, must be finite too (step was rounded up).
            const float top = bf16_bits_to_float(lo_bits) + 15.0f * bf16_bits_to_float(step_bits);
            if (!std::isfinite(bf16_bits_to_float(lo_bits)) || !std::isfinite(top)) {
                lo_bits = 0;
                step_bits = 0x7FC0;
            }
        }
        std::memcpy(out, &lo_bits, 2);
        std::memcpy(out + 2, &step_bits, 2);
        lo = bf16_bits_to_float(lo_bits);
        const float step = bf16_bits_to_float(step_bits);
        const float inv = step > 0.0f ? 1.0f / step : 0.0f;
        uint8_t* codes_out = out + 4;
        size_t i = 0;
#if defined(__clang__) || __GNUC__ >= 12
        for (; i + 64 <= len; i += 64) {
            v8i codes[8];
            for (int k = 0; k < 8; ++k) {
                v8f q;
                load8(x + i + 8 * k, q);
                q = (q - lo) * inv;
                q = q > 0.0f ? q : 0.0f;
                q = q < 15.0f ? q : 15.0f;
                codes[k] = __builtin_convertvector(q + 0.5f, v8i);  // round half up; each in [0, 15]
            }
            v8i packed[4];
            for (int m = 0; m < 4; ++m) {
                v8i even = __builtin_shufflevector(codes[2 * m], codes[2 * m + 1], 0, 2, 4, 6, 8, 10, 12, 14);
                v8i odd = __builtin_shufflevector(codes[2 * m], codes[2 * m + 1], 1, 3, 5, 7, 9, 11, 13, 15);
                packed[m] = even | (odd << 4);
            }
            store_low_bytes(packed, codes_out + i / 2);
            if constexpr (Adopt)
                for (int k = 0; k < 8; ++k) store8(lo + __builtin_convertvector(codes[k], v8f) * step, x + i + 8 * k);
        }
#endif
        for (; i < len; ++i) {
            float q = (static_cast<float>(x[i]) - lo) * inv;
            q = q > 0.0f ? q : 0.0f;  // the vector path's clamps, NaN (of a poisoned block) included
            q = q < 15.0f ? q : 15.0f;
            const unsigned code = static_cast<unsigned>(static_cast<int>(q + 0.5f));
            if (i & 1)
                codes_out[i >> 1] = static_cast<uint8_t>(codes_out[i >> 1] | (code << 4));
            else
                codes_out[i >> 1] = static_cast<uint8_t>(code);
            if constexpr (Adopt) x[i] = static_cast<T>(lo + static_cast<float>(code) * step);
        }
    }
}

template <typename T>
PCCL_KERNEL void encode_q4(const void* src, size_t n, uint8_t* wire) {
    encode_q4_blocks<T, false>(const_cast<T*>(static_cast<const T*>(src)), n, wire);  // read only
}

template <typename T>
PCCL_KERNEL void encode_adopt_q4(void* values, size_t n, uint8_t* wire) {
    encode_q4_blocks<T, true>(static_cast<T*>(values), n, wire);
}

// out = decoded (op) mine with Reduce, else out = decoded; eight lanes at a time where the combine is
// in float, with the scalar path's operations per element.
template <typename T, ReduceOp OP, bool Reduce>
__attribute__((always_inline)) inline void decode_q4_blocks(const uint8_t* wire, size_t n, const T* mine, T* out) {
    for (size_t b = 0; b < n; b += kQ4Block) {
        const uint8_t* in = wire + (b / kQ4Block) * kQ4BlockBytes;
        uint16_t lo_bits, step_bits;
        std::memcpy(&lo_bits, in, 2);
        std::memcpy(&step_bits, in + 2, 2);
        const float lo = bf16_bits_to_float(lo_bits), step = bf16_bits_to_float(step_bits);
        const uint8_t* codes = in + 4;
        const size_t len = std::min(kQ4Block, n - b);
        size_t i = 0;
        if constexpr (!Reduce || std::is_same_v<T, float>)
            for (; i + 8 <= len; i += 8) {
                v8f v;
                load8_nibbles(codes + i / 2, v);
                v = lo + v * step;
                if constexpr (Reduce) {
                    v8f m, r;
                    load8(mine + b + i, m);
                    combine8<OP>(v, m, r);
                    v = r;
                }
                store8(v, out + b + i);
            }
        for (; i < len; ++i) {
            const T v = static_cast<T>(lo + static_cast<float>(nibble(codes, i)) * step);
            if constexpr (Reduce)
                out[b + i] = combine<T, OP>(v, mine[b + i]);
            else
                out[b + i] = v;
        }
    }
}

template <typename T>
PCCL_KERNEL void decode_q4(const uint8_t* wire, size_t n, void* dst) {
    decode_q4_blocks<T, ReduceOp::kSum, false>(wire, n, nullptr, static_cast<T*>(dst));
}

template <typename T, ReduceOp OP>
PCCL_KERNEL void decode_reduce_q4(const uint8_t* wire, size_t n, const T* mine, T* out) {
    decode_q4_blocks<T, OP, true>(wire, n, mine, out);
}

template <typename T, ReduceOp OP, bool BF16>
PCCL_KERNEL void decode_reduce_16(const uint8_t* wire, size_t n, const T* mine, T* out) {
    size_t i = 0;
    if constexpr (std::is_same_v<T, float>)
        for (; i + 8 <= n; i += 8) {
            v8u h;
            v8f decoded, m, r;
            load8_u16(wire + 2 * i, h);
            half_to_float8<BF16>(h, decoded);
            load8(mine + i, m);
            combine8<OP>(decoded, m, r);
            store8(r, out + i);
        }
    for (; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, wire + 2 * i, 2);
        out[i] = combine<T, OP>(static_cast<T>(half_to_float<BF16>(h)), mine[i]);
    }
}

template <typename T, ReduceOp OP>
void decode_reduce_typed(Quant q, const uint8_t* wire, size_t n, const void* mine, void* out) {
    auto* m = static_cast<const T*>(mine);
    auto* o = static_cast<T*>(out);
    switch (q) {
        case Quant::kQ8: return decode_reduce_q8<T, OP>(wire, n, m, o);
        case Quant::kQ4: return decode_reduce_q4<T, OP>(wire, n, m, o);
        case Quant::kFp16: return decode_reduce_16<T, OP, false>(wire, n, m, o);
        case Quant::kBf16: return decode_reduce_16<T, OP, true>(wire, n, m, o);
        case Quant::kNone:
            // Not on the collectives' path (they reduce unquantized payloads in place), but total, so
            // that no caller gets silently untouched output.
            for (size_t i = 0; i < n; ++i) {
                T v;
                std::memcpy(&v, wire + i * sizeof(T), sizeof(T));
                o[i] = combine<T, OP>(v, m[i]);
            }
            return;
        case Quant::kCount: break;
    }
}

template <typename T>
void decode_reduce_op(Quant q, ReduceOp op, const uint8_t* wire, size_t n, const void* mine, void* out) {
    switch (op) {
        case ReduceOp::kSum:
        case ReduceOp::kAvg: return decode_reduce_typed<T, ReduceOp::kSum>(q, wire, n, mine, out);
        case ReduceOp::kProd: return decode_reduce_typed<T, ReduceOp::kProd>(q, wire, n, mine, out);
        case ReduceOp::kMin: return decode_reduce_typed<T, ReduceOp::kMin>(q, wire, n, mine, out);
        case ReduceOp::kMax: return decode_reduce_typed<T, ReduceOp::kMax>(q, wire, n, mine, out);
        case ReduceOp::kCount: break;
    }
}

}  // namespace

void decode_reduce(Quant q, DType t, ReduceOp op, const uint8_t* wire, size_t elems, const void* mine, void* out) {
    if (t == DType::kFloat64) return decode_reduce_op<double>(q, op, wire, elems, mine, out);
    return decode_reduce_op<float>(q, op, wire, elems, mine, out);
}

const char* quant_name(Quant q) {
    static const char* names[] = {"none", "fp16", "bf16", "q8", "q4"};
    auto i = static_cast<size_t>(q);
    return i < 5 ? names[i] : "?";
}

bool quant_supports(Quant q, DType t) {
    return q == Quant::kNone || t == DType::kFloat32 || t == DType::kFloat64;
}

size_t wire_bytes(Quant q, DType t, size_t elems) {
    switch (q) {
        case Quant::kNone: return elems * dtype_size(t);
        case Quant::kFp16:
        case Quant::kBf16: return elems * 2;
        case Quant::kQ8: return elems + ((elems + kQ8Block - 1) / kQ8Block) * 8;
        case Quant::kQ4: {
            const size_t rest = elems % kQ4Block;
            return (elems / kQ4Block) * kQ4BlockBytes + (rest ? 4 + (rest + 1) / 2 : 0);
        }
        case Quant::kCount: break;
    }
    return 0;
}

void encode(Quant q, DType t, const void* src, size_t elems, uint8_t* wire) {
    bool f64 = t == DType::kFloat64;
    switch (q) {
        case Quant::kNone: std::memcpy(wire, src, elems * dtype_size(t)); return;
        case Quant::kFp16: return f64 ? encode_16<double, false>(src, elems, wire) : encode_16<float, false>(src, elems, wire);
        case Quant::kBf16: return f64 ? encode_16<double, true>(src, elems, wire) : encode_16<float, true>(src, elems, wire);
        case Quant::kQ8: return f64 ? encode_q8<double>(src, elems, wire) : encode_q8<float>(src, elems, wire);
        case Quant::kQ4: return f64 ? encode_q4<double>(src, elems, wire) : encode_q4<float>(src, elems, wire);
        case Quant::kCount: break;
    }
}

void encode_adopt(Quant q, DType t, void* values, size_t elems, uint8_t* wire) {
    if (q == Quant::kQ8)
        return t == DType::kFloat64 ? encode_adopt_q8<double>(values, elems, wire) : encode_adopt_q8<float>(values, elems, wire);
    if (q == Quant::kQ4)
        return t == DType::kFloat64 ? encode_adopt_q4<double>(values, elems, wire) : encode_adopt_q4<float>(values, elems, wire);
    encode(q, t, values, elems, wire);
    decode(q, t, wire, elems, values);
}

void decode(Quant q, DType t, const uint8_t* wire, size_t elems, void* dst) {
    bool f64 = t == DType::kFloat64;
    switch (q) {
        case Quant::kNone: std::memcpy(dst, wire, elems * dtype_size(t)); return;
        case Quant::kFp16: return f64 ? decode_16<double, false>(wire, elems, dst) : decode_16<float, false>(wire, elems, dst);
        case Quant::kBf16: return f64 ? decode_16<double, true>(wire, elems, dst) : decode_16<float, true>(wire, elems, dst);
        case Quant::kQ8: return f64 ? decode_q8<double>(wire, elems, dst) : decode_q8<float>(wire, elems, dst);
        case Quant::kQ4: return f64 ? decode_q4<double>(wire, elems, dst) : decode_q4<float>(wire, elems, dst);
        case Quant::kCount: break;
    }
}

void quantize_roundtrip(Quant q, DType t, const void* src, size_t elems, void* dst) {
    const size_t esize = dtype_size(t);
    if (dst != src && elems) std::memmove(dst, src, elems * esize);
    if (q == Quant::kNone) return;
    // Spans of whole blocks, so the blocks are those of one encode() of the whole run.
    constexpr size_t kSpan = 16384;
    static_assert(kSpan % kQ8Block == 0 && kSpan % kQ4Block == 0);
    std::vector<uint8_t> wire(wire_bytes(q, t, std::min(kSpan, elems)));
    for (size_t at = 0; at < elems; at += kSpan)
        encode_adopt(q, t, static_cast<uint8_t*>(dst) + at * esize, std::min(kSpan, elems - at), wire.data());
}

}  // namespace pccl
