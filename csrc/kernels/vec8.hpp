// Eight-lane vectors (GCC/Clang vector extensions) shared by the kernels. Each compiles to AVX2 in the
// avx2 clone of a PCCL_KERNEL and to pairs of SSE operations in the baseline one, with the same IEEE
// operation per lane either way, so vectorising a kernel changes its speed, not its bits.
//
// Helpers are always inlined and pass vectors by reference: a 32-byte vector passed to or returned from
// a function compiled without AVX would use a different calling convention than the AVX2 clone's.
#pragma once
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "kernels/dtype.hpp"

namespace pccl {

typedef float v8f __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));
typedef uint32_t v8u __attribute__((vector_size(32)));
typedef uint16_t v8h __attribute__((vector_size(16)));
typedef uint8_t v8b __attribute__((vector_size(8)));

#define PCCL_VEC_INLINE __attribute__((always_inline)) inline

// Eight elements of T (float or double) as floats; doubles round to float like static_cast<float>.
template <typename T>
PCCL_VEC_INLINE void load8(const T* p, v8f& out) {
    // Unaligned vector loads through an under-aligned vector type: a memcpy into `out` was lowered
    // to two 16-byte stores and a 32-byte reload, a store-forwarding stall on every load.
    typedef T v8t __attribute__((vector_size(8 * sizeof(T)), aligned(alignof(T)), may_alias));
    if constexpr (std::is_same_v<T, float>)
        out = *reinterpret_cast<const v8t*>(p);
    else
        out = __builtin_convertvector(*reinterpret_cast<const v8t*>(p), v8f);
}

template <typename T>
PCCL_VEC_INLINE void store8(const v8f& v, T* p) {
    typedef T v8t __attribute__((vector_size(8 * sizeof(T)), aligned(alignof(T)), may_alias));
    if constexpr (std::is_same_v<T, float>)
        *reinterpret_cast<v8t*>(p) = v;
    else
        *reinterpret_cast<v8t*>(p) = __builtin_convertvector(v, v8t);
}

// Eight 16-bit values from unaligned memory, zero-extended to 32-bit lanes.
PCCL_VEC_INLINE void load8_u16(const void* p, v8u& out) {
    v8h h;
    std::memcpy(&h, p, sizeof h);
    out = __builtin_convertvector(h, v8u);
}

// The low 16 bits of each lane, in order, to unaligned memory. A byte shuffle: GCC's generic
// narrowing conversion extracts lanes one by one on AVX2.
PCCL_VEC_INLINE void store8_low_u16(const v8u& v, void* p) {
#if defined(__clang__) || __GNUC__ >= 12
    typedef uint8_t v32b __attribute__((vector_size(32)));
    typedef uint8_t v16b __attribute__((vector_size(16)));
    v16b lo = __builtin_shufflevector((v32b)v, (v32b)v, 0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29);
    std::memcpy(p, &lo, sizeof lo);
#else
    v8h h = __builtin_convertvector(v, v8h);
    std::memcpy(p, &h, sizeof h);
#endif
}

// The element-wise combine of combine.hpp for float lanes: same results, NaN rules included.
template <ReduceOp OP>
PCCL_VEC_INLINE void combine8(const v8f& a, const v8f& b, v8f& out) {
    if constexpr (OP == ReduceOp::kSum || OP == ReduceOp::kAvg) out = a + b;
    else if constexpr (OP == ReduceOp::kProd) out = a * b;
    else if constexpr (OP == ReduceOp::kMin) out = (a < b) | (a != a) ? a : b;
    else if constexpr (OP == ReduceOp::kMax) out = (a > b) | (a != a) ? a : b;
    else out = a;
}

}  // namespace pccl
