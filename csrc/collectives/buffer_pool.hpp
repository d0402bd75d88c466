// Reusable scratch buffers for collectives. A fresh multi-megabyte allocation per op comes straight
// from the kernel, and faulting in and zeroing its pages cost more than the reduction itself; reusing
// blocks keeps them resident.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>

namespace pccl {

// Returns a block of at least `bytes` bytes (contents undefined) that goes back to a process-wide pool
// when the last reference drops. The pool keeps a bounded number of idle blocks.
std::shared_ptr<uint8_t[]> acquire_buffer(size_t bytes);

}  // namespace pccl
