// Publishing a large result by moving pages instead of copying bytes.
//
// A collective builds its result away from the caller's array so that a failed op leaves the input
// untouched (invariant 2), and copies it over once every survivor has agreed. On loopback that copy is
// about a seventh of the CPU an all-reduce burns. When the caller's array lives in private anonymous
// memory (numpy arrays and torch CPU tensors of this size come from malloc's mmap), the whole pages
// inside it can be exchanged with the work buffer's pages instead: three mremap calls that rewrite
// page tables and touch no data. Only the partial pages at either end are copied, because they may
// hold the caller's other objects. Anything else (shared or file-backed mappings, hugetlbfs, named
// mappings such as stacks, kernels without PROCMAP_QUERY or MREMAP_DONTUNMAP) keeps the copy.
//
// The swap hands the caller new physical pages at the same addresses. Memory registered with a device
// by address (cudaHostRegister, RDMA) or mlock()ed would silently stop being so; such callers turn the
// swap off (Communicator(swap_result_pages=False)).
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>

namespace pccl {

// Below this size the copy is cheap and mostly cache-resident, and the system calls would not pay.
constexpr size_t kPageSwapMinBytes = 4u << 20;

// A work buffer plus an equally large spare range, laid out so that the work buffer has the same
// offset within a 2 MiB huge page as the destination: then page-table entries (even whole huge-page
// entries) move one for one.
class SwapRegion {
public:
    // nullptr when dst[0, bytes) has no pages that could be swapped.
    static std::shared_ptr<SwapRegion> acquire(const uint8_t* dst, size_t bytes);
    ~SwapRegion();
    SwapRegion(const SwapRegion&) = delete;
    SwapRegion& operator=(const SwapRegion&) = delete;

    uint8_t* work() const { return work_; }
    // Makes dst[0, bytes) equal to work()[0, bytes); work() then holds dst's old contents. Falls back
    // to copying whatever it cannot swap. Returns the bytes that moved by swapping pages.
    size_t publish(uint8_t* dst, size_t bytes);

private:
    SwapRegion(uint8_t* base, size_t capacity, size_t offset);
    uint8_t* base_;
    size_t capacity_;
    uint8_t* work_;
    uint8_t* spare_;
};

}  // namespace pccl
