// Element types and reduction operators, numbered as on the wire and in the bindings.
#pragma once
#include <cstddef>
#include <cstdint>

// Hot loops are compiled twice, for AVX2 and for the baseline ISA, and the loader picks one at run
// time (GCC/Clang function multi-versioning). Both versions do the same IEEE operations per element
// (FMA contraction is off), so peers on different CPUs still get identical bits.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define PCCL_KERNEL __attribute__((target_clones("avx2", "default")))
#else
#define PCCL_KERNEL
#endif

namespace pccl {

enum class DType : uint8_t {
    kInt8 = 0, kUInt8, kInt16, kUInt16, kInt32, kUInt32, kInt64, kUInt64,
    kFloat16, kBFloat16, kFloat32, kFloat64, kCount
};

enum class ReduceOp : uint8_t { kSum = 0, kAvg, kProd, kMin, kMax, kCount };

inline size_t dtype_size(DType t) {
    static const size_t sizes[] = {1, 1, 2, 2, 4, 4, 8, 8, 2, 2, 4, 8};
    return sizes[static_cast<size_t>(t)];
}

const char* dtype_name(DType t);
const char* reduce_op_name(ReduceOp op);

}  // namespace pccl
