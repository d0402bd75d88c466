#include "kernels/reduce.hpp"

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "kernels/combine.hpp"
#include "kernels/half.hpp"

namespace pccl {
namespace {

template <typename T, ReduceOp OP>
PCCL_KERNEL void reduce_plain(void* dst, const void* a, const void* b, size_t n) {
    auto* d = static_cast<T*>(dst);
    auto* x = static_cast<const T*>(a);
    auto* y = static_cast<const T*>(b);
    for (size_t i = 0; i < n; ++i) d[i] = combine<T, OP>(x[i], y[i]);
}

template <bool BF16, ReduceOp OP>
PCCL_KERNEL void reduce_half(void* dst, const void* a, const void* b, size_t n) {
    auto* d = static_cast<uint16_t*>(dst);
    auto* x = static_cast<const uint16_t*>(a);
    auto* y = static_cast<const uint16_t*>(b);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        v8u hx, hy, hr;
        v8f fa, fb, r;
        load8_u16(x + i, hx);
        load8_u16(y + i, hy);
        half_to_float8<BF16>(hx, fa);
        half_to_float8<BF16>(hy, fb);
        combine8<OP>(fa, fb, r);
        float_to_half8<BF16>(r, hr);
        store8_low_u16(hr, d + i);
    }
    for (; i < n; ++i)
        d[i] = float_to_half<BF16>(combine<float, OP>(half_to_float<BF16>(x[i]), half_to_float<BF16>(y[i])));
}

template <ReduceOp OP>
void reduce_typed(DType dtype, void* dst, const void* a, const void* b, size_t n) {
    switch (dtype) {
        case DType::kInt8: return reduce_plain<int8_t, OP>(dst, a, b, n);
        case DType::kUInt8: return reduce_plain<uint8_t, OP>(dst, a, b, n);
        case DType::kInt16: return reduce_plain<int16_t, OP>(dst, a, b, n);
        case DType::kUInt16: return reduce_plain<uint16_t, OP>(dst, a, b, n);
        case DType::kInt32: return reduce_plain<int32_t, OP>(dst, a, b, n);
        case DType::kUInt32: return reduce_plain<uint32_t, OP>(dst, a, b, n);
        case DType::kInt64: return reduce_plain<int64_t, OP>(dst, a, b, n);
        case DType::kUInt64: return reduce_plain<uint64_t, OP>(dst, a, b, n);
        case DType::kFloat16: return reduce_half<false, OP>(dst, a, b, n);
        case DType::kBFloat16: return reduce_half<true, OP>(dst, a, b, n);
        case DType::kFloat32: return reduce_plain<float, OP>(dst, a, b, n);
        case DType::kFloat64: return reduce_plain<double, OP>(dst, a, b, n);
        case DType::kCount: break;
    }
}

template <typename T>
PCCL_KERNEL void divide_plain(void* data, size_t n, size_t world) {
    auto* p = static_cast<T*>(data);
    if constexpr (std::is_floating_point_v<T>) {
        T w = static_cast<T>(world);
        for (size_t i = 0; i < n; ++i) p[i] = p[i] / w;
    } else {
        using W = std::conditional_t<std::is_signed_v<T>, int64_t, uint64_t>;
        W w = static_cast<W>(world);
        for (size_t i = 0; i < n; ++i) p[i] = static_cast<T>(static_cast<W>(p[i]) / w);
    }
}

template <bool BF16>
PCCL_KERNEL void divide_half(void* data, size_t n, size_t world) {
    auto* p = static_cast<uint16_t*>(data);
    float w = static_cast<float>(world);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        v8u h;
        v8f f;
        load8_u16(p + i, h);
        half_to_float8<BF16>(h, f);
        f = f / w;
        float_to_half8<BF16>(f, h);
        store8_low_u16(h, p + i);
    }
    for (; i < n; ++i) p[i] = float_to_half<BF16>(half_to_float<BF16>(p[i]) / w);
}

}  // namespace

void reduce(DType dtype, ReduceOp op, void* dst, const void* a, const void* b, size_t count) {
    switch (op) {
        case ReduceOp::kSum:
        case ReduceOp::kAvg: return reduce_typed<ReduceOp::kSum>(dtype, dst, a, b, count);
        case ReduceOp::kProd: return reduce_typed<ReduceOp::kProd>(dtype, dst, a, b, count);
        case ReduceOp::kMin: return reduce_typed<ReduceOp::kMin>(dtype, dst, a, b, count);
        case ReduceOp::kMax: return reduce_typed<ReduceOp::kMax>(dtype, dst, a, b, count);
        case ReduceOp::kCount: break;
    }
}

void divide_by_world(DType dtype, void* data, size_t count, size_t world) {
    switch (dtype) {
        case DType::kInt8: return divide_plain<int8_t>(data, count, world);
        case DType::kUInt8: return divide_plain<uint8_t>(data, count, world);
        case DType::kInt16: return divide_plain<int16_t>(data, count, world);
        case DType::kUInt16: return divide_plain<uint16_t>(data, count, world);
        case DType::kInt32: return divide_plain<int32_t>(data, count, world);
        case DType::kUInt32: return divide_plain<uint32_t>(data, count, world);
        case DType::kInt64: return divide_plain<int64_t>(data, count, world);
        case DType::kUInt64: return divide_plain<uint64_t>(data, count, world);
        case DType::kFloat16: return divide_half<false>(data, count, world);
        case DType::kBFloat16: return divide_half<true>(data, count, world);
        case DType::kFloat32: return divide_plain<float>(data, count, world);
        case DType::kFloat64: return divide_plain<double>(data, count, world);
        case DType::kCount: break;
    }
}

const char* dtype_name(DType t) {
    static const char* names[] = {"int8",  "uint8",  "int16",   "uint16",   "int32",   "uint32",
                                  "int64", "uint64", "float16", "bfloat16", "float32", "float64"};
    auto i = static_cast<size_t>(t);
    return i < 12 ? names[i] : "?";
}

const char* reduce_op_name(ReduceOp op) {
    static const char* names[] = {"SUM", "AVG", "PROD", "MIN", "MAX"};
    auto i = static_cast<size_t>(op);
    return i < 5 ? names[i] : "?";
}

}  // namespace pccl
