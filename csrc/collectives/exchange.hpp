// Point-to-point exchange: every member passes its part of one plan that all members computed from
// the same inputs (which byte ranges go from whom to whom). It is what shared-state sync moves dirty
// tensors with, and what broadcast and gather build on. It rides the collective machinery, so it
// carries the same identity, deadline, failure and agree-before-publish guarantees as an all-reduce.
#pragma once
#include <vector>

#include "collectives/collective.hpp"

namespace pccl {

// One directed transfer of the plan, as seen by one end: the other member's rank, the plan-wide slot
// number both ends agree on, and this end's bytes (the source when sending, the target when receiving).
struct Transfer {
    int peer = -1;
    uint32_t slot = 0;
    uint8_t* data = nullptr;
    size_t bytes = 0;
};

struct ExchangeSpec {
    uint32_t tag = 0;
    uint64_t epoch = 0;   // the membership the plan was made for; another epoch fails the call
    uint64_t digest = 0;  // identical on every member iff they hold the same plan
    uint32_t slots = 0;   // slots in the whole plan
    std::vector<Transfer> sends, recvs;
};

class Exchange : public Collective {
public:
    Exchange(const ExchangeSpec& spec, uint64_t seq, int world, int rank, Mesh* mesh);
    void publish() override {}  // receives land in the caller's target buffers directly

protected:
    void data_phase() override;
    std::pair<uint8_t*, size_t> region(int from, uint32_t slot) override;

private:
    ExchangeSpec plan_;
    std::vector<int> recv_of_slot_;  // slot -> index into plan_.recvs, or -1
};

// Checks a plan part against the membership; throws InvalidArgument naming the bad transfer.
void validate_exchange(const ExchangeSpec& spec, int world, int rank);

}  // namespace pccl
