#include "peer/pending_agreement.hpp"

namespace pccl {

void PendingAgreement::adopt(bool agreed) {
    std::lock_guard<std::mutex> lock(mutex_);
    agreed_ = agreed;
    fresh_ = true;
}

bool PendingAgreement::answer(bool alone, uint32_t live) {
    std::lock_guard<std::mutex> lock(mutex_);
    // Alone, nobody can disagree; polled with no op in between, nobody is inside an op to be stranded
    // by a vote (and the agreed value could never change).
    if (alone || !fresh_) return live > 0;
    fresh_ = false;
    return agreed_;
}

}  // namespace pccl
