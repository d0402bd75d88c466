// Star all-reduce for small tensors: everyone sends to rank 0, which reduces in rank order and sends
// the result back. Two hops regardless of world size, and one reduction order for every peer.
#pragma once
#include "collectives/collective.hpp"

namespace pccl {

class StarAllReduce : public Collective {
public:
    StarAllReduce(const CollectiveSpec& spec, uint64_t epoch, uint64_t seq, int world, int rank, Mesh* mesh);

protected:
    void data_phase() override;
    std::pair<uint8_t*, size_t> region(int from, uint32_t slot) override;

private:
    size_t wire_total_ = 0;                // wire bytes of one whole contribution
    std::shared_ptr<uint8_t[]> scratch_;   // root, quantized: one decoded piece
};

}  // namespace pccl
