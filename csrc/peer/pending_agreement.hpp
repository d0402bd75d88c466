// The answer of peers_pending(): whether peers wait for admission, as agreed by every member at the
// same point of the op sequence (docs/architecture.md, "Agreeing on pending peers"). Each outcome the
// caller receives (an op's return or error, an async op's wait(), update_topology(), connect()) carries
// the flag every member agreed on for it, and the caller's next peers_pending() returns that flag once;
// asked again with no outcome in between, or alone in its group, it answers from the master's live
// count instead, so an idle polling loop still sees newcomers.
//
// A class of its own: the rule (adopt, answer once, fall back to the live count) is pure logic, and
// adopting a flag happens at every op's return, in the caller's thread, where taking the membership
// lock (Communicator::mutex_) would only contend with the control thread for nothing.
//
// Lock: mutex_ is a leaf. No method calls out of this class while holding it, so every method may be
// called with any other lock of the peer held (the Communicator adopts a newcomer's first flag with
// its mutex_ held, as part of applying the epoch that admits it).
#pragma once
#include <cstdint>
#include <mutex>

namespace pccl {

class PendingAgreement {
public:
    // An outcome with its agreed flag reaches the caller.
    void adopt(bool agreed);
    // peers_pending()'s answer: the last adopted flag if it was not returned yet, else (and always when
    // `alone`: nobody can disagree) whether the master's live count of pending peers is nonzero.
    bool answer(bool alone, uint32_t live);

private:
    std::mutex mutex_;
    bool agreed_ = false;
    bool fresh_ = false;  // agreed_ was adopted since answer() last returned it
};

}  // namespace pccl
