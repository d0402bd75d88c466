// Ring all-reduce: reduce-scatter then all-gather around the member order, pipelined in pieces.
// Each chunk is reduced in one fixed order along the ring and then copied verbatim to everyone, so
// every peer ends with the same bits (invariant 3). With wire quantization each hop encodes once, and
// the owner of a reduced chunk adopts the decoded value of the bytes it distributes.
#pragma once
#include "collectives/collective.hpp"

namespace pccl {

class RingAllReduce : public Collective {
public:
    RingAllReduce(const CollectiveSpec& spec, uint64_t epoch, uint64_t seq, int world, int rank, Mesh* mesh);

protected:
    void data_phase() override;
    void process(uint32_t slot, size_t piece) override;
    std::pair<uint8_t*, size_t> region(int from, uint32_t slot) override;

private:
    int mod(int x) const { return ((x % world_) + world_) % world_; }
    void send_chunk_piece(int c, uint32_t slot, const uint8_t* plain, size_t j);
    int prev_, next_;
    std::vector<size_t> wire_offset_;  // quantized: where chunk c starts in wire bytes
    size_t wire_total_ = 0;
};

}  // namespace pccl
