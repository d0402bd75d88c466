#include "collectives/buffer_pool.hpp"

namespace pccl {

uint8_t* BlockPool::take(size_t bytes, size_t* capacity) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = idle_.lower_bound(bytes);
    // Do not hand a huge block to a tiny op; it would pin memory for nothing.
    if (it == idle_.end() || it->first > bytes * 2 + (1u << 20)) return nullptr;
    *capacity = it->first;
    uint8_t* p = it->second;
    idle_bytes_ -= it->first;
    idle_.erase(it);
    return p;
}

void BlockPool::give(uint8_t* block, size_t capacity) {
    std::lock_guard<std::mutex> lock(mutex_);
    idle_.emplace(capacity, block);
    idle_bytes_ += capacity;
    while (idle_.size() > max_blocks_ || idle_bytes_ > max_bytes_) {
        auto victim = idle_.begin();  // drop the smallest: large blocks are the costly ones to refault
        idle_bytes_ -= victim->first;
        release_(victim->second, victim->first);
        idle_.erase(victim);
    }
}

namespace {

BlockPool& heap_pool() {
    // Leaked on purpose: blocks may be returned during static destruction.
    static BlockPool* p = new BlockPool([](uint8_t* b, size_t) { delete[] b; }, 16, size_t{4} << 30);
    return *p;
}

}  // namespace

std::shared_ptr<uint8_t[]> acquire_buffer(size_t bytes) {
    if (bytes == 0) bytes = 1;
    size_t capacity = 0;
    uint8_t* p = heap_pool().take(bytes, &capacity);
    if (p == nullptr) {
        capacity = bytes;
        p = new uint8_t[capacity];
    }
    return std::shared_ptr<uint8_t[]>(p, [capacity](uint8_t* q) { heap_pool().give(q, capacity); });
}

}  // namespace pccl
