// Content hash of shared-state entries. Peers compare these values to decide who is out of date, so
// the function is fixed forever: the same bytes give the same 64 bits on every CPU, compiler and
// endianness. It is not cryptographic; it guards against drift and transfer corruption, not attackers.
#pragma once
#include <cstddef>
#include <cstdint>

namespace pccl {

uint64_t content_hash(const void* data, size_t bytes, uint64_t seed = 0);

}  // namespace pccl
