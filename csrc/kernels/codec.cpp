#include "kernels/codec.hpp"

#include <cmath>
#include <algorithm>
#include <cstring>
#include <limits>
#include <type_traits>

#include "kernels/combine.hpp"
#include "kernels/half.hpp"

namespace pccl {
namespace {

template <typename T, typename Conv>
PCCL_KERNEL void encode_16(const void* src, size_t n, uint8_t* wire, Conv conv) {
    auto* s = static_cast<const T*>(src);
    for (size_t i = 0; i < n; ++i) {
        uint16_t h = conv(static_cast<float>(s[i]));
        std::memcpy(wire + 2 * i, &h, 2);
    }
}

template <typename T, typename Conv>
PCCL_KERNEL void decode_16(const uint8_t* wire, size_t n, void* dst, Conv conv) {
    auto* d = static_cast<T*>(dst);
    for (size_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, wire + 2 * i, 2);
        d[i] = static_cast<T>(conv(h));
    }
}

// GCC/Clang vector extensions: explicit 8-lane arithmetic that compiles to AVX2 in the avx2 clone and
// to pairs of SSE operations in the baseline one, with the same IEEE operations per lane either way.
typedef float v8f __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));
typedef uint8_t v8b __attribute__((vector_size(8)));

// An out-parameter rather than a return value: returning a 32-byte vector from a function compiled
// without AVX would change the calling convention.
template <typename T>
inline void load8(const T* p, v8f& out) {
    // Unaligned vector loads through an under-aligned vector type: a memcpy into `out` was lowered
    // to two 16-byte stores and a 32-byte reload, a store-forwarding stall on every load.
    typedef T v8t __attribute__((vector_size(8 * sizeof(T)), aligned(alignof(T)), may_alias));
    if constexpr (std::is_same_v<T, float>)
        out = *reinterpret_cast<const v8t*>(p);
    else
        out = __builtin_convertvector(*reinterpret_cast<const v8t*>(p), v8f);
}

template <typename T>
inline void store8(const v8f& v, T* p) {
    typedef T v8t __attribute__((vector_size(8 * sizeof(T)), aligned(alignof(T)), may_alias));
    if constexpr (std::is_same_v<T, float>)
        *reinterpret_cast<v8t*>(p) = v;
    else
        *reinterpret_cast<v8t*>(p) = __builtin_convertvector(v, v8t);
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

// Min-max 8-bit quantization. A block holding any NaN or infinity cannot be scaled; it is sent with a
// NaN step and decodes to NaN throughout, so non-finite values are never silently replaced. Min and
// max need no NaN care: a block with a NaN is poisoned whatever they return.
// With `adopt`, each element is then overwritten by the value its code decodes to (the same
// `lo + code * step` as decode_q8), while the block is still in L1.
// Always inlined: it must be compiled as part of each target clone of its callers.
template <typename T, bool Adopt>
__attribute__((always_inline)) inline void encode_q8_blocks(T* s, size_t n, uint8_t* wire) {
    for (size_t b = 0; b < n; b += kQ8Block) {
        const size_t len = std::min(kQ8Block, n - b);
        T* x = s + b;
        uint8_t* out = wire + (b / kQ8Block) * (kQ8Block + 8);
        float lo, hi, poison;  // poison becomes NaN if any element is NaN or infinite (x * 0)
        if (len == kQ8Block) {
            // Four independent accumulators each: one would chain every step on the last one's latency.
            v8f lo8[4], hi8[4], p8[4] = {};
            for (int k = 0; k < 4; ++k) {
                load8(x + 8 * k, lo8[k]);
                hi8[k] = lo8[k];
            }
            for (size_t i = 0; i < kQ8Block; i += 32)
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

template <typename T, ReduceOp OP, typename Conv>
PCCL_KERNEL void decode_reduce_16(const uint8_t* wire, size_t n, const T* mine, T* out, Conv conv) {
    for (size_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, wire + 2 * i, 2);
        out[i] = combine<T, OP>(static_cast<T>(conv(h)), mine[i]);
    }
}

template <typename T, ReduceOp OP>
void decode_reduce_typed(Quant q, const uint8_t* wire, size_t n, const void* mine, void* out) {
    auto* m = static_cast<const T*>(mine);
    auto* o = static_cast<T*>(out);
    switch (q) {
        case Quant::kQ8: return decode_reduce_q8<T, OP>(wire, n, m, o);
        case Quant::kFp16: return decode_reduce_16<T, OP>(wire, n, m, o, fp16_to_float);
        case Quant::kBf16: return decode_reduce_16<T, OP>(wire, n, m, o, bf16_to_float);
        default: break;
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
    static const char* names[] = {"none", "fp16", "bf16", "q8"};
    auto i = static_cast<size_t>(q);
    return i < 4 ? names[i] : "?";
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
        case Quant::kCount: break;
    }
    return 0;
}

void encode(Quant q, DType t, const void* src, size_t elems, uint8_t* wire) {
    bool f64 = t == DType::kFloat64;
    switch (q) {
        case Quant::kNone: std::memcpy(wire, src, elems * dtype_size(t)); return;
        case Quant::kFp16:
            return f64 ? encode_16<double>(src, elems, wire, float_to_fp16) : encode_16<float>(src, elems, wire, float_to_fp16);
        case Quant::kBf16:
            return f64 ? encode_16<double>(src, elems, wire, float_to_bf16) : encode_16<float>(src, elems, wire, float_to_bf16);
        case Quant::kQ8: return f64 ? encode_q8<double>(src, elems, wire) : encode_q8<float>(src, elems, wire);
        case Quant::kCount: break;
    }
}

void encode_adopt(Quant q, DType t, void* values, size_t elems, uint8_t* wire) {
    if (q == Quant::kQ8)
        return t == DType::kFloat64 ? encode_adopt_q8<double>(values, elems, wire) : encode_adopt_q8<float>(values, elems, wire);
    encode(q, t, values, elems, wire);
    decode(q, t, wire, elems, values);
}

void decode(Quant q, DType t, const uint8_t* wire, size_t elems, void* dst) {
    bool f64 = t == DType::kFloat64;
    switch (q) {
        case Quant::kNone: std::memcpy(dst, wire, elems * dtype_size(t)); return;
        case Quant::kFp16:
            return f64 ? decode_16<double>(wire, elems, dst, fp16_to_float) : decode_16<float>(wire, elems, dst, fp16_to_float);
        case Quant::kBf16:
            return f64 ? decode_16<double>(wire, elems, dst, bf16_to_float) : decode_16<float>(wire, elems, dst, bf16_to_float);
        case Quant::kQ8: return f64 ? decode_q8<double>(wire, elems, dst) : decode_q8<float>(wire, elems, dst);
        case Quant::kCount: break;
    }
}

}  // namespace pccl
