#include "collectives/star.hpp"

#include "collectives/buffer_pool.hpp"
#include "kernels/reduce.hpp"

namespace pccl {

// At the root, slot k (1 <= k < n) holds rank k's contribution; elsewhere slot 0 is the result.
// Unquantized, contributions land in staging and the result lands in the result buffer directly;
// quantized, everything arrives encoded in staging and is decoded piece by piece.
StarAllReduce::StarAllReduce(const CollectiveSpec& spec, uint64_t epoch, uint64_t seq, int world, int rank, Mesh* mesh)
    : Collective(spec, Algorithm::kStar, epoch, seq, world, rank, mesh) {
    wire_total_ = wire(spec.count);
    if (rank == 0) {
        staging_ = acquire_buffer(wire_total_ * static_cast<size_t>(world - 1));
        std::vector<size_t> slots(static_cast<size_t>(world), spec.count);
        slots[0] = 0;
        init_slots(slots);
        if (quantized()) scratch_ = acquire_buffer(piece_elems_ * esize_);
    } else {
        init_slots({spec.count});
        if (quantized()) staging_ = acquire_buffer(wire_total_);
    }
    if (quantized()) encoded_ = acquire_buffer(wire_total_);
}

std::pair<uint8_t*, size_t> StarAllReduce::region(int from, uint32_t slot) {
    if (rank_ == 0) {
        if (from <= 0 || from >= world_ || slot != static_cast<uint32_t>(from)) return {nullptr, 0};
        return {staging_.get() + static_cast<size_t>(from - 1) * wire_total_, spec_.count};
    }
    if (from != 0 || slot != 0) return {nullptr, 0};
    return {quantized() ? staging_.get() : work_.get(), spec_.count};
}

void StarAllReduce::data_phase() {
    const size_t count = spec_.count;
    if (rank_ != 0) {
        const uint8_t* out = spec_.src;
        if (quantized()) {
            encode(spec_.quant, spec_.dtype, spec_.src, count, encoded_.get());
            out = encoded_.get();
        }
        for (size_t j = 0; j < piece_count(count); ++j) send_piece(0, static_cast<uint32_t>(rank_), out, j, count);
        for (size_t j = 0; j < piece_count(count); ++j) {
            wait_piece(0, j);
            if (quantized()) {
                size_t first = piece_first(j);
                decode(spec_.quant, spec_.dtype, staging_.get() + wire(first), piece_elems(count, j),
                       elem_ptr(work_.get(), first));
            }
        }
        return;
    }
    for (size_t j = 0; j < piece_count(count); ++j) {
        size_t first = piece_first(j), len = piece_elems(count, j);
        uint8_t* acc = elem_ptr(work_.get(), first);
        const uint8_t* prev = elem_ptr(spec_.src, first);
        for (int k = 1; k < world_; ++k) {
            wait_piece(static_cast<uint32_t>(k), j);
            const uint8_t* contribution = staging_.get() + static_cast<size_t>(k - 1) * wire_total_;
            if (quantized()) {
                decode(spec_.quant, spec_.dtype, contribution + wire(first), len, scratch_.get());
                contribution = scratch_.get();
            } else {
                contribution = elem_ptr(contribution, first);
            }
            reduce(spec_.dtype, spec_.op, acc, prev, contribution, len);
            prev = acc;
        }
        if (spec_.op == ReduceOp::kAvg) divide_by_world(spec_.dtype, acc, len, static_cast<size_t>(world_));
        const uint8_t* out = work_.get();
        if (quantized()) {
            // The root adopts the decoded value of exactly the bytes it sends.
            encode_adopt(spec_.quant, spec_.dtype, acc, len, encoded_.get() + wire(first));
            out = encoded_.get();
        }
        for (int k = 1; k < world_; ++k) send_piece(k, 0, out, j, count);
    }
}

}  // namespace pccl
