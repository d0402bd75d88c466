// A collective running on its own thread, so Python can overlap it with other work. Its place in its
// tag's order is reserved at submission, so async ops on one tag keep the same order on every peer.
#pragma once
#include <atomic>
#include <exception>
#include <memory>
#include <thread>

#include "common/thread_name.hpp"
#include "peer/communicator.hpp"

namespace pccl {

class AsyncOp {
public:
    AsyncOp(Communicator& comm, const CollectiveSpec& spec) : comm_(comm) {
        comm.check_usable("all_reduce_async");
        uint64_t ticket = comm.reserve_turn(spec.tag);
        start([&comm, spec, ticket, this] { return comm.all_reduce_in_turn(spec, ticket, &agreed_); });
    }
    // A point-to-point op: validated, and its turn on its channel reserved, before this returns. It
    // agrees nothing about pending peers with the other members, so it leaves the flag alone.
    AsyncOp(Communicator& comm, const P2PSpec& spec) : comm_(comm) {
        Communicator::P2PTicket ticket = comm.prepare_p2p(spec);
        start([&comm, spec, ticket] { return comm.run_p2p(spec, ticket); });
    }
    ~AsyncOp() {
        if (thread_.joinable()) thread_.join();
    }
    AsyncOp(const AsyncOp&) = delete;
    AsyncOp& operator=(const AsyncOp&) = delete;

    bool done() const { return done_.load(); }
    // The op's agreed pending flag is adopted here, when the caller takes the outcome, not when the
    // op's thread finished: callers that wait for their ops in the same order then see the same flag
    // even when several ops finished in different orders on different peers.
    ReduceResult wait() {
        if (thread_.joinable()) thread_.join();
        if (!adopted_) comm_.adopt_agreed_pending(agreed_);
        adopted_ = true;
        if (error_) std::rethrow_exception(error_);
        return result_;
    }

private:
    template <class Run>
    void start(Run run) {
        thread_ = std::thread([this, run] {
            name_this_thread("pccl-async-op");
            try {
                result_ = run();
            } catch (...) {
                error_ = std::current_exception();
            }
            done_ = true;
        });
    }

    Communicator& comm_;
    std::optional<bool> agreed_;  // stays empty for a point-to-point op
    bool adopted_ = false;
    std::thread thread_;
    std::atomic<bool> done_{false};
    ReduceResult result_;
    std::exception_ptr error_;
};

}  // namespace pccl
