// Ring all-reduce: reduce-scatter then all-gather around the member order, pipelined in pieces.
// Each chunk is reduced in one fixed order along the ring and then copied verbatim to everyone, so
// every peer ends with the same bits (invariant 3).
#pragma once
#include "collectives/collective.hpp"

namespace pccl {

class RingAllReduce : public Collective {
public:
    RingAllReduce(const CollectiveSpec& spec, uint64_t epoch, uint64_t seq, int world, int rank, Mesh* mesh);

protected:
    void data_phase() override;
    std::pair<uint8_t*, size_t> region(int from, uint32_t slot) override;

private:
    int mod(int x) const { return ((x % world_) + world_) % world_; }
    int prev_, next_;
};

}  // namespace pccl
