// Turn-taking: the ops that share one order, a (tag, lane), run one at a time and in the order their
// callers submitted them. The members number a tag's collectives by the order in which they start them,
// so async ops on one tag must start in submission order on every peer; a point-to-point channel (a
// lane: partner and direction) keeps its ops in order the same way. A caller reserves a ticket when it
// submits the op (in its own thread, so submission order is the caller's order), the op waits until its
// ticket is served, and releasing the turn serves the next ticket.
//
// A class of its own, apart from the membership state (Communicator::mutex_): taking, waiting for and
// releasing a turn never read the membership, and with its own condition variable a release wakes only
// the ops waiting for a turn, not every waiter of the communicator (and an epoch change wakes none of
// them).
//
// Lock: mutex_ is a leaf. No method calls out of this class while holding it, so every method may be
// called with any other lock of the peer held (the Communicator calls close() with its mutex_ held,
// so that the turn waiters learn of a terminal state in the same step as the membership does).
#pragma once
#include <condition_variable>
#include <cstdint>
#include <map>
#include <mutex>
#include <utility>

namespace pccl {

class TurnQueue {
public:
    using Key = std::pair<uint32_t, uint64_t>;  // (tag, lane): lane 0 for a tag's collectives

    // The next ticket of `key`: the op holding it runs after every op reserved before it.
    uint64_t reserve(Key key);
    // Waits until `ticket` is served and returns true: the caller holds the turn and must release()
    // it. Returns false once close() was called, at once if it already was: the caller then does not
    // hold the turn and must not release it. No deadline of its own: each op ahead of this one is
    // bounded by its own deadlines (Communicator::run_once) and releases its turn however it ends, and
    // close() ends every wait; a deadline here could only cut short an op whose turn was coming.
    bool wait(Key key, uint64_t ticket);
    // Ends the turn of the op being served on `key`: the next ticket runs.
    void release(Key key);
    // The communicator is terminal (evicted, master lost, closed) for good: every wait returns false.
    // Turns still held are released as before; the ops queued behind them need not wait for that.
    void close();
    bool closed() const;
    // How many keys have tickets reserved and not yet released (for tests: idle keys are forgotten, so
    // the channels of departed partners do not accumulate).
    size_t busy_keys() const;

private:
    struct Turns {
        uint64_t next = 0;     // the ticket reserve() hands out next
        uint64_t serving = 0;  // the ticket whose op may run
    };
    mutable std::mutex mutex_;
    std::condition_variable cv_;
    std::map<Key, Turns> turns_;  // only keys with a ticket outstanding (next > serving)
    bool closed_ = false;
};

}  // namespace pccl
