#include "collectives/star.hpp"

#include "collectives/buffer_pool.hpp"
#include "kernels/reduce.hpp"

namespace pccl {

// At the root, slot k (1 <= k < n) holds rank k's contribution; elsewhere slot 0 is the result.
StarAllReduce::StarAllReduce(const CollectiveSpec& spec, uint64_t epoch, uint64_t seq, int world, int rank, Mesh* mesh)
    : Collective(spec, Algorithm::kStar, epoch, seq, world, rank, mesh) {
    if (rank == 0) {
        staging_ = acquire_buffer(bytes_ * static_cast<size_t>(world - 1));
        std::vector<size_t> sizes(static_cast<size_t>(world), bytes_);
        sizes[0] = 0;
        init_slots(sizes);
    } else {
        init_slots({bytes_});
    }
}

std::pair<uint8_t*, size_t> StarAllReduce::region(int from, uint32_t slot) {
    if (rank_ == 0) {
        if (from <= 0 || from >= world_ || slot != static_cast<uint32_t>(from)) return {nullptr, 0};
        return {staging_.get() + static_cast<size_t>(from - 1) * bytes_, bytes_};
    }
    if (from != 0 || slot != 0) return {nullptr, 0};
    return {work_.get(), bytes_};
}

void StarAllReduce::data_phase() {
    if (rank_ != 0) {
        for (size_t j = 0; j < piece_count(bytes_); ++j) send_piece(0, static_cast<uint32_t>(rank_), spec_.src, j, bytes_);
        for (size_t j = 0; j < piece_count(bytes_); ++j) wait_piece(0, j);
        return;
    }
    for (size_t j = 0; j < piece_count(bytes_); ++j) {
        size_t po = j * kPieceBytes, pl = piece_len(bytes_, j), n = pl / esize_;
        const uint8_t* acc = spec_.src + po;
        for (int k = 1; k < world_; ++k) {
            wait_piece(static_cast<uint32_t>(k), j);
            reduce(spec_.dtype, spec_.op, work_.get() + po, acc, staging_.get() + static_cast<size_t>(k - 1) * bytes_ + po, n);
            acc = work_.get() + po;
        }
        if (spec_.op == ReduceOp::kAvg) divide_by_world(spec_.dtype, work_.get() + po, n, static_cast<size_t>(world_));
        for (int k = 1; k < world_; ++k) send_piece(k, 0, work_.get(), j, bytes_);
    }
}

}  // namespace pccl
