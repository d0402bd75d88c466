// Element-wise reduction kernels. dst = a (op) b, where a is the value accumulated so far along the
// fixed reduction order and b the local contribution; dst may alias a or b.
#pragma once
#include <cstddef>

#include "kernels/dtype.hpp"

namespace pccl {

// AVG reduces as SUM; divide_by_world() is then applied once by the owner of each reduced chunk.
void reduce(DType dtype, ReduceOp op, void* dst, const void* a, const void* b, size_t count);
// Integers use truncating division (the C++ rule); floats divide in their own precision
// (16-bit floats via float, rounded once).
void divide_by_world(DType dtype, void* data, size_t count, size_t world);

}  // namespace pccl
