// Reusable scratch buffers for collectives. A fresh multi-megabyte allocation per op comes straight
// from the kernel, and faulting in and zeroing its pages cost more than the reduction itself; reusing
// blocks keeps them resident.
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>

namespace pccl {

// Idle blocks kept for reuse, bounded in count and bytes; `release` frees what falls out.
class BlockPool {
public:
    using Release = void (*)(uint8_t* block, size_t capacity);
    BlockPool(Release release, size_t max_blocks, size_t max_bytes)
        : release_(release), max_blocks_(max_blocks), max_bytes_(max_bytes) {}
    // An idle block of at least `bytes` (and not wastefully larger), or nullptr.
    uint8_t* take(size_t bytes, size_t* capacity);
    void give(uint8_t* block, size_t capacity);

private:
    Release release_;
    size_t max_blocks_, max_bytes_;
    std::mutex mutex_;
    std::multimap<size_t, uint8_t*> idle_;  // capacity -> block
    size_t idle_bytes_ = 0;
};

// Returns a block of at least `bytes` bytes (contents undefined) that goes back to a process-wide pool
// when the last reference drops. The pool keeps a bounded number of idle blocks.
std::shared_ptr<uint8_t[]> acquire_buffer(size_t bytes);

}  // namespace pccl
