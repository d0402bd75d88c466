// The element-wise combine step shared by the reduction kernels and the fused decode-and-reduce
// kernels, so both give the same bits for the same inputs.
#pragma once
#include <cmath>
#include <type_traits>

#include "kernels/dtype.hpp"

namespace pccl {

// Signed integer overflow is undefined in C++; wrap through the unsigned type like numpy does.
template <typename T>
inline T wrap_add(T a, T b) {
    using U = std::make_unsigned_t<T>;
    return static_cast<T>(static_cast<U>(a) + static_cast<U>(b));
}
template <typename T>
inline T wrap_mul(T a, T b) {
    using U = std::make_unsigned_t<T>;
    using W = std::conditional_t<(sizeof(U) < sizeof(unsigned)), unsigned, U>;  // avoid int promotion UB
    return static_cast<T>(static_cast<U>(static_cast<W>(static_cast<U>(a)) * static_cast<W>(static_cast<U>(b))));
}

template <typename T, ReduceOp OP>
inline T combine(T a, T b) {
    if constexpr (std::is_floating_point_v<T>) {
        if constexpr (OP == ReduceOp::kSum || OP == ReduceOp::kAvg) return a + b;
        if constexpr (OP == ReduceOp::kProd) return a * b;
        // NaN propagates, as in numpy.minimum / numpy.maximum.
        if constexpr (OP == ReduceOp::kMin) return (a < b || std::isnan(a)) ? a : b;
        if constexpr (OP == ReduceOp::kMax) return (a > b || std::isnan(a)) ? a : b;
    } else {
        if constexpr (OP == ReduceOp::kSum || OP == ReduceOp::kAvg) return wrap_add(a, b);
        if constexpr (OP == ReduceOp::kProd) return wrap_mul(a, b);
        if constexpr (OP == ReduceOp::kMin) return a < b ? a : b;
        if constexpr (OP == ReduceOp::kMax) return a > b ? a : b;
    }
    return a;
}

}  // namespace pccl
