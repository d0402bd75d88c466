#include "collectives/ring.hpp"

#include "kernels/reduce.hpp"

namespace pccl {

// Slot s < n-1 is reduce-scatter step s and slot n-1+t is all-gather step t. Both land in the result
// buffer: a reduce-scatter chunk is received where its reduction will live and reduced in place, since
// each chunk passes through this peer once per phase.
RingAllReduce::RingAllReduce(const CollectiveSpec& spec, uint64_t epoch, uint64_t seq, int world, int rank, Mesh* mesh)
    : Collective(spec, Algorithm::kRing, epoch, seq, world, rank, mesh) {
    prev_ = mod(rank - 1);
    next_ = mod(rank + 1);
    std::vector<size_t> sizes;
    for (int s = 0; s < world - 1; ++s) sizes.push_back(chunk_bytes(mod(rank - s - 1)));
    for (int t = 0; t < world - 1; ++t) sizes.push_back(chunk_bytes(mod(rank - t)));
    init_slots(sizes);
}

std::pair<uint8_t*, size_t> RingAllReduce::region(int from, uint32_t slot) {
    if (from != prev_) return {nullptr, 0};
    uint32_t rs_steps = static_cast<uint32_t>(world_ - 1);
    if (slot < rs_steps) {
        int c = mod(rank_ - static_cast<int>(slot) - 1);
        return {work_.get() + chunk_offset(c), chunk_bytes(c)};
    }
    if (slot < 2 * rs_steps) {
        int c = mod(rank_ - static_cast<int>(slot - rs_steps));
        return {work_.get() + chunk_offset(c), chunk_bytes(c)};
    }
    return {nullptr, 0};
}

void RingAllReduce::data_phase() {
    const int n = world_;
    const uint32_t ag0 = static_cast<uint32_t>(n - 1);
    const bool avg = spec_.op == ReduceOp::kAvg;
    // Step 0 sends this peer's own chunk straight from the caller's input.
    {
        size_t len = chunk_bytes(rank_);
        const uint8_t* base = spec_.src + chunk_offset(rank_);
        for (size_t j = 0; j < piece_count(len); ++j) send_piece(next_, 0, base, j, len);
    }
    for (int s = 0; s < n - 1; ++s) {
        int c = mod(rank_ - s - 1);
        size_t off = chunk_offset(c), len = chunk_bytes(c);
        uint8_t* acc = work_.get() + off;
        for (size_t j = 0; j < piece_count(len); ++j) {
            wait_piece(static_cast<uint32_t>(s), j);
            size_t po = j * kPieceBytes, pl = piece_len(len, j);
            reduce(spec_.dtype, spec_.op, acc + po, acc + po, spec_.src + off + po, pl / esize_);
            if (s < n - 2) {
                send_piece(next_, static_cast<uint32_t>(s + 1), acc, j, len);
            } else {
                // This chunk is now fully reduced and owned by this peer: finalize, then start the
                // all-gather with it.
                if (avg) divide_by_world(spec_.dtype, acc + po, pl / esize_, static_cast<size_t>(n));
                send_piece(next_, ag0, acc, j, len);
            }
        }
    }
    for (int t = 0; t < n - 1; ++t) {
        int c = mod(rank_ - t);
        size_t len = chunk_bytes(c);
        uint8_t* base = work_.get() + chunk_offset(c);
        for (size_t j = 0; j < piece_count(len); ++j) {
            wait_piece(ag0 + static_cast<uint32_t>(t), j);
            if (t < n - 2) send_piece(next_, ag0 + static_cast<uint32_t>(t + 1), base, j, len);
        }
    }
}

}  // namespace pccl
