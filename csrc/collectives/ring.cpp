#include "collectives/ring.hpp"

#include "collectives/buffer_pool.hpp"
#include "kernels/reduce.hpp"

namespace pccl {

// Slot s < n-1 is reduce-scatter step s (chunk r-s-1 arrives) and slot n-1+t is all-gather step t
// (chunk r-t arrives). Unquantized, both land in the result buffer: a chunk is received where its
// reduction will live and reduced in place, since each chunk passes through this peer once per phase.
// Quantized, they land in staging (reduce-scatter and all-gather halves apart) and are decoded from there.
RingAllReduce::RingAllReduce(const CollectiveSpec& spec, uint64_t epoch, uint64_t seq, int world, int rank, Mesh* mesh)
    : Collective(spec, Algorithm::kRing, epoch, seq, world, rank, mesh) {
    prev_ = mod(rank - 1);
    next_ = mod(rank + 1);
    std::vector<size_t> slots;
    for (int s = 0; s < world - 1; ++s) slots.push_back(chunk_elems(mod(rank - s - 1)));
    for (int t = 0; t < world - 1; ++t) slots.push_back(chunk_elems(mod(rank - t)));
    init_slots(slots);
    if (quantized()) {
        size_t total = 0;
        for (int c = 0; c < world; ++c) {
            wire_offset_.push_back(total);
            total += wire(chunk_elems(c));
        }
        wire_total_ = total;
        staging_ = acquire_buffer(2 * total);
        encoded_ = acquire_buffer(total);
    }
}

std::pair<uint8_t*, size_t> RingAllReduce::region(int from, uint32_t slot) {
    if (from != prev_) return {nullptr, 0};
    uint32_t rs_steps = static_cast<uint32_t>(world_ - 1);
    bool all_gather = slot >= rs_steps;
    if (slot >= 2 * rs_steps) return {nullptr, 0};
    int c = all_gather ? mod(rank_ - static_cast<int>(slot - rs_steps)) : mod(rank_ - static_cast<int>(slot) - 1);
    if (!quantized()) return {elem_ptr(work_.get(), chunk_first(c)), chunk_elems(c)};
    return {staging_.get() + (all_gather ? wire_total_ : 0) + wire_offset_[c], chunk_elems(c)};
}

// Sends piece j of chunk c as slot `slot`: the encoded bytes when quantized (encoding them here, once),
// else straight from `plain`.
void RingAllReduce::send_chunk_piece(int c, uint32_t slot, const uint8_t* plain, size_t j) {
    size_t elems = chunk_elems(c);
    if (!quantized()) {
        send_piece(next_, slot, plain, j, elems);
        return;
    }
    uint8_t* enc = encoded_.get() + wire_offset_[c];
    size_t first = piece_first(j);
    encode(spec_.quant, spec_.dtype, elem_ptr(plain, first), piece_elems(elems, j), enc + wire(first));
    send_piece(next_, slot, enc, j, elems);
}

// The caller's thread sends this peer's own chunk. Unquantized, every received piece is then reduced
// and forwarded by the I/O thread that received it (see Collective::process()). Quantized pieces
// cost several times more to decode and encode than to add: on the I/O thread that work would
// serialize with the kernel's receive copies (measured: q8 at n = 3 went from 21 to 28 ms per
// 16 MiB op), so the caller's thread does it, concurrently with receiving.
void RingAllReduce::data_phase() {
    size_t elems = chunk_elems(rank_);
    const uint8_t* base = elem_ptr(spec_.src, chunk_first(rank_));
    for (size_t j = 0; j < piece_count(elems); ++j) send_chunk_piece(rank_, 0, base, j);
    if (quantized())
        process_in_order();
    else
        process_all_arrivals();
}

void RingAllReduce::process(uint32_t slot, size_t j) {
    const int n = world_;
    const uint32_t ag0 = static_cast<uint32_t>(n - 1);
    if (slot < ag0) {
        // Reduce-scatter step s: chunk c arrives holding the sum of the s+1 peers before this one.
        int s = static_cast<int>(slot);
        int c = mod(rank_ - s - 1);
        size_t elems = chunk_elems(c);
        uint8_t* acc = elem_ptr(work_.get(), chunk_first(c));
        const uint8_t* mine = elem_ptr(spec_.src, chunk_first(c));
        size_t first = piece_first(j), len = piece_elems(elems, j);
        if (quantized())
            decode_reduce(spec_.quant, spec_.dtype, spec_.op, staging_.get() + wire_offset_[c] + wire(first), len,
                          elem_ptr(mine, first), elem_ptr(acc, first));
        else
            reduce(spec_.dtype, spec_.op, elem_ptr(acc, first), elem_ptr(acc, first), elem_ptr(mine, first), len);
        if (s < n - 2) {
            send_chunk_piece(c, slot + 1, acc, j);
            return;
        }
        // This chunk is now fully reduced and owned by this peer: finalize it, and when quantized
        // keep the decoded value of what everyone else will receive, then start the all-gather.
        if (spec_.op == ReduceOp::kAvg) divide_by_world(spec_.dtype, elem_ptr(acc, first), len, static_cast<size_t>(n));
        if (!quantized()) {
            send_chunk_piece(c, ag0, acc, j);
            return;
        }
        uint8_t* enc = encoded_.get() + wire_offset_[c];
        encode_adopt(spec_.quant, spec_.dtype, elem_ptr(acc, first), len, enc + wire(first));
        send_piece(next_, ag0, enc, j, elems);
        return;
    }
    // All-gather step t: the final value of chunk c arrives; pass it on unless the next peer owns it.
    int t = static_cast<int>(slot - ag0);
    int c = mod(rank_ - t);
    size_t elems = chunk_elems(c);
    if (quantized()) {
        const uint8_t* received = staging_.get() + wire_total_ + wire_offset_[c];
        size_t first = piece_first(j);
        decode(spec_.quant, spec_.dtype, received + wire(first), piece_elems(elems, j),
               elem_ptr(work_.get(), chunk_first(c) + first));
        // Forward the received bytes untouched: re-encoding could drift.
        if (t < n - 2) send_piece(next_, slot + 1, received, j, elems);
    } else if (t < n - 2) {
        send_piece(next_, slot + 1, elem_ptr(work_.get(), chunk_first(c)), j, elems);
    }
}

}  // namespace pccl
