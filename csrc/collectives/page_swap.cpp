#include "collectives/page_swap.hpp"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <utility>

#include "collectives/buffer_pool.hpp"

#ifdef __linux__
#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>
#endif

namespace pccl {

#ifdef __linux__
namespace {

constexpr size_t kHuge = size_t{2} << 20;

size_t page_size() {
    static const size_t p = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    return p;
}

// struct procmap_query of linux/fs.h (Linux 6.11+), spelled out because build hosts may carry older
// headers. The layout is part of the kernel ABI; `size` lets the kernel tell versions apart.
struct ProcmapQuery {
    uint64_t size, query_flags, query_addr;
    uint64_t vma_start, vma_end, vma_flags, vma_page_size, vma_offset, inode;
    uint32_t dev_major, dev_minor, vma_name_size, build_id_size;
    uint64_t vma_name_addr, build_id_addr;
};
static_assert(sizeof(ProcmapQuery) == 104, "procmap_query ABI");
constexpr unsigned long kProcmapQuery = 0xC0686611;  // _IOWR('f', 17, struct procmap_query)
constexpr uint64_t kVmaRead = 1, kVmaWrite = 2, kVmaExec = 4, kVmaShared = 8;

struct Vma {
    uintptr_t start = 0, end = 0;
    bool private_anonymous = false;
};

// Asks the kernel which mapping covers addr: one ioctl on /proc/self/maps, no text to parse.
class MapQuery {
public:
    bool covering(uintptr_t addr, Vma* out) {
        std::lock_guard<std::mutex> lock(mutex_);
        if (unsupported_) return false;
        // A forked child would otherwise keep asking about its parent's address space.
        if (owner_ != getpid()) {
            if (fd_ >= 0) ::close(fd_);
            fd_ = ::open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
            owner_ = getpid();
            if (fd_ < 0) {
                unsupported_ = true;
                return false;
            }
        }
        char name[32];
        ProcmapQuery q{};
        q.size = sizeof q;
        q.query_addr = addr;
        q.vma_name_addr = reinterpret_cast<uintptr_t>(name);
        q.vma_name_size = sizeof name;
        if (::ioctl(fd_, kProcmapQuery, &q) != 0) {
            if (errno == ENOTTY || errno == EINVAL) unsupported_ = true;  // kernel older than 6.11
            return false;
        }
        out->start = q.vma_start;
        out->end = q.vma_end;
        // Unnamed or the brk heap; named anonymous mappings (stacks, driver memory) are left alone.
        bool plain_name = q.vma_name_size == 0 || std::strcmp(name, "[heap]") == 0;
        out->private_anonymous = (q.vma_flags & (kVmaRead | kVmaWrite | kVmaExec | kVmaShared)) == (kVmaRead | kVmaWrite) &&
                                 q.inode == 0 && q.dev_major == 0 && q.dev_minor == 0 &&
                                 q.vma_page_size == page_size() && plain_name;
        return true;
    }

private:
    std::mutex mutex_;
    int fd_ = -1;
    pid_t owner_ = 0;
    bool unsupported_ = false;
};

MapQuery& maps() {
    static MapQuery* m = new MapQuery();  // leaked: ops may run during static destruction
    return *m;
}

// The whole pages inside [d, d + bytes), as [first, last); first >= last when there are none.
std::pair<uintptr_t, uintptr_t> whole_pages(uintptr_t d, size_t bytes) {
    return {(d + page_size() - 1) / page_size() * page_size(), (d + bytes) / page_size() * page_size()};
}

// True when [from, from + len) is covered, without holes, by private anonymous read-write mappings.
bool swappable(uintptr_t from, size_t len) {
    for (uintptr_t at = from; at < from + len;) {
        Vma v;
        if (!maps().covering(at, &v) || v.start > at || !v.private_anonymous) return false;
        at = v.end;
    }
    return true;
}

// Moves the pages of [from, from + len) to [to, to + len); the source stays mapped, empty. mremap
// moves within one mapping at a time, and earlier swaps may have split a range into several; each
// must be private anonymous memory, or the move stops there. Returns the bytes moved: a prefix.
size_t move_pages(uintptr_t from, uintptr_t to, size_t len) {
    size_t done = 0;
    while (done < len) {
        Vma v;
        if (!maps().covering(from + done, &v) || v.start > from + done || !v.private_anonymous) break;
        size_t n = std::min<uintptr_t>(v.end, from + len) - (from + done);
        void* r = ::mremap(reinterpret_cast<void*>(from + done), n, n, MREMAP_MAYMOVE | MREMAP_FIXED | MREMAP_DONTUNMAP,
                           reinterpret_cast<void*>(to + done));
        if (r == MAP_FAILED) break;
        done += n;
    }
    return done;
}

void unmap_region(uint8_t* base, size_t capacity) { ::munmap(base, capacity); }

BlockPool& region_pool() {
    static BlockPool* p = new BlockPool(unmap_region, 8, size_t{8} << 30);  // leaked, as the heap pool
    return *p;
}

// Two halves, each able to hold `bytes` at any offset within a huge page.
size_t region_capacity(size_t bytes) { return 2 * ((bytes + 2 * kHuge - 1) / kHuge * kHuge); }

uint8_t* map_region(size_t capacity) {
    void* p = ::mmap(nullptr, capacity + kHuge, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return nullptr;
    uintptr_t raw = reinterpret_cast<uintptr_t>(p);
    uintptr_t base = (raw + kHuge - 1) / kHuge * kHuge;
    if (base > raw) ::munmap(p, base - raw);
    if (raw + kHuge > base) ::munmap(reinterpret_cast<void*>(base + capacity), raw + kHuge - base);
    // Like numpy's large arrays: huge pages keep the caller's TLB reach once these pages are theirs.
    ::madvise(reinterpret_cast<void*>(base), capacity, MADV_HUGEPAGE);
    return reinterpret_cast<uint8_t*>(base);
}

}  // namespace

SwapRegion::SwapRegion(uint8_t* base, size_t capacity, size_t offset)
    : base_(base), capacity_(capacity), work_(base + offset), spare_(base + capacity / 2 + offset) {}

SwapRegion::~SwapRegion() { region_pool().give(base_, capacity_); }

std::shared_ptr<SwapRegion> SwapRegion::acquire(const uint8_t* dst, size_t bytes) {
    uintptr_t d = reinterpret_cast<uintptr_t>(dst);
    auto [p0, p1] = whole_pages(d, bytes);
    if (bytes < kPageSwapMinBytes || p1 <= p0 || !swappable(p0, p1 - p0)) return nullptr;
    size_t want = region_capacity(bytes), capacity = 0;
    uint8_t* base = region_pool().take(want, &capacity);
    if (base == nullptr) {
        capacity = want;
        base = map_region(capacity);
        if (base == nullptr) return nullptr;
    }
    return std::shared_ptr<SwapRegion>(new SwapRegion(base, capacity, d % kHuge));
}

size_t SwapRegion::publish(uint8_t* dst, size_t bytes) {
    uintptr_t d = reinterpret_cast<uintptr_t>(dst);
    auto [p0, p1] = whole_pages(d, bytes);
    if (p1 <= p0) {
        std::memcpy(dst, work_, bytes);
        return 0;
    }
    size_t len = p1 - p0, lead = p0 - d;
    uintptr_t w = reinterpret_cast<uintptr_t>(work_) + lead, s = reinterpret_cast<uintptr_t>(spare_) + lead;
    std::memcpy(dst, work_, lead);
    std::memcpy(reinterpret_cast<void*>(p1), work_ + (p1 - d), d + bytes - p1);
    // 1. The caller's pages step aside into the spare half; this also re-checks, mapping by mapping,
    //    that they may. If that stops short, the work buffer is still whole: copy it all.
    if (move_pages(p0, s, len) < len) {
        std::memcpy(reinterpret_cast<void*>(p0), reinterpret_cast<void*>(w), len);
        return 0;
    }
    // 2. The result's pages take their place. Whatever did not move is still in the work buffer.
    size_t moved = move_pages(w, p0, len);
    if (moved < len) std::memcpy(reinterpret_cast<void*>(p0 + moved), reinterpret_cast<void*>(w + moved), len - moved);
    // 3. The caller's old pages become the work buffer's, so the next op does not fault in fresh ones.
    //    Failing here costs only those faults.
    move_pages(s, w, len);
    return moved;
}

#else  // not Linux: always copy

SwapRegion::SwapRegion(uint8_t* base, size_t capacity, size_t offset)
    : base_(base), capacity_(capacity), work_(base + offset), spare_(nullptr) {}
SwapRegion::~SwapRegion() = default;
std::shared_ptr<SwapRegion> SwapRegion::acquire(const uint8_t*, size_t) { return nullptr; }
size_t SwapRegion::publish(uint8_t* dst, size_t bytes) {
    std::memcpy(dst, work_, bytes);
    return 0;
}

#endif

}  // namespace pccl
