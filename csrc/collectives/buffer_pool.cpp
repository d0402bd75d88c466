#include "collectives/buffer_pool.hpp"

#include <map>
#include <mutex>

namespace pccl {
namespace {

constexpr size_t kMaxIdleBlocks = 16;
constexpr size_t kMaxIdleBytes = size_t{4} << 30;

struct Pool {
    std::mutex mutex;
    std::multimap<size_t, uint8_t*> idle;  // capacity -> block
    size_t idle_bytes = 0;

    uint8_t* take(size_t bytes, size_t* capacity) {
        std::lock_guard<std::mutex> lock(mutex);
        auto it = idle.lower_bound(bytes);
        // Do not hand a huge block to a tiny op; it would pin memory for nothing.
        if (it != idle.end() && it->first <= bytes * 2 + (1u << 20)) {
            *capacity = it->first;
            uint8_t* p = it->second;
            idle_bytes -= it->first;
            idle.erase(it);
            return p;
        }
        return nullptr;
    }

    void give(uint8_t* p, size_t capacity) {
        std::lock_guard<std::mutex> lock(mutex);
        idle.emplace(capacity, p);
        idle_bytes += capacity;
        while (idle.size() > kMaxIdleBlocks || idle_bytes > kMaxIdleBytes) {
            auto victim = idle.begin();  // drop the smallest: large blocks are the costly ones to refault
            idle_bytes -= victim->first;
            delete[] victim->second;
            idle.erase(victim);
        }
    }
};

Pool& pool() {
    static Pool* p = new Pool();  // leaked on purpose: blocks may be returned during static destruction
    return *p;
}

}  // namespace

std::shared_ptr<uint8_t[]> acquire_buffer(size_t bytes) {
    if (bytes == 0) bytes = 1;
    size_t capacity = 0;
    uint8_t* p = pool().take(bytes, &capacity);
    if (p == nullptr) {
        capacity = bytes;
        p = new uint8_t[capacity];
    }
    return std::shared_ptr<uint8_t[]>(p, [capacity](uint8_t* q) { pool().give(q, capacity); });
}

}  // namespace pccl
