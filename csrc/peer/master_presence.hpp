// Whether this peer's master is there, and the one request to it that must outlive a master restart:
// the vote of an update_topology() call. With master_grace > 0 the control thread rides out a lost master
// connection by rejoining a master restarted at the same address (control_plane.cpp,
// reconnect_master). Meanwhile the master is *away*: a new vote waits for it to come back (sent now, it
// would be lost with the dead connection), and a vote already sent to the dead master is sent again
// to the restarted one, whose answer the caller is still waiting for.
//
// A class of its own, apart from the membership state (Communicator::mutex_): the master's comings and
// goings and the vote's answer are one state machine (present -> away -> back; vote started ->
// answered -> ended) whose waits, in update_topology(), need none of the membership, and with its own
// condition variable an epoch change or a released turn no longer wakes them.
//
// Lock: mutex_ is a leaf. No method calls out of this class while holding it, so every method may be
// called with any other lock of the peer held (the Communicator calls away() and close() with its
// mutex_ held, so that a terminal state or a lost master is seen here in the same step as in the
// membership).
#pragma once
#include <condition_variable>
#include <mutex>
#include <optional>

#include "common/clock.hpp"
#include "protocol/messages.hpp"

namespace pccl {

class MasterPresence {
public:
    // The control thread: the master connection is gone and a restarted master is awaited.
    void away();
    // The control thread: a restarted master took this peer back. Returns the vote in flight, if any,
    // to send to it again: its answer was lost with the old master.
    std::optional<Vote> back();
    bool is_away() const;

    // A caller about to vote: waits while the master is away, until `deadline` or close(). Returns
    // whether the master is there (a caller that goes on regardless finds out through its vote's wait).
    bool wait_present(TimePoint deadline);
    // A caller's vote is in flight: any earlier answer is forgotten, and `vote` is kept to be sent again
    // to a restarted master until end_vote().
    void start_vote(const Vote& vote);
    // The control thread: the master's answer to the vote in flight.
    void vote_answered(const VoteResult& result);
    // A caller: waits for the answer until `deadline` or close(); the answer, if one came.
    std::optional<VoteResult> wait_vote_result(TimePoint deadline);
    // A caller: its vote is over, however it ended; it must not be sent to a restarted master later.
    void end_vote();

    // The communicator is terminal for good: every wait returns at once.
    void close();

private:
    mutable std::mutex mutex_;
    std::condition_variable cv_;
    bool away_ = false;
    bool closed_ = false;
    std::optional<Vote> outstanding_;  // sent, no answer yet: sent again to a restarted master
    std::optional<VoteResult> result_;
};

}  // namespace pccl
