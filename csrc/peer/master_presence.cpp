#include "peer/master_presence.hpp"

namespace pccl {

void MasterPresence::away() {
    std::lock_guard<std::mutex> lock(mutex_);
    away_ = true;  // nobody waits for the master to leave: no notification
}

std::optional<Vote> MasterPresence::back() {
    std::optional<Vote> vote;
    {
        std::lock_guard<std::mutex> lock(mutex_);
        away_ = false;
        vote = outstanding_;
    }
    cv_.notify_all();
    return vote;
}

bool MasterPresence::is_away() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return away_;
}

bool MasterPresence::wait_present(TimePoint deadline) {
    std::unique_lock<std::mutex> lock(mutex_);
    cv_.wait_until(lock, deadline, [&] { return !away_ || closed_; });
    return !away_ && !closed_;
}

void MasterPresence::start_vote(const Vote& vote) {
    std::lock_guard<std::mutex> lock(mutex_);
    result_.reset();
    outstanding_ = vote;
}

void MasterPresence::vote_answered(const VoteResult& result) {
    {
        std::lock_guard<std::mutex> lock(mutex_);
        result_ = result;
        outstanding_.reset();
    }
    cv_.notify_all();
}

std::optional<VoteResult> MasterPresence::wait_vote_result(TimePoint deadline) {
    std::unique_lock<std::mutex> lock(mutex_);
    cv_.wait_until(lock, deadline, [&] { return result_.has_value() || closed_; });
    return result_;
}

void MasterPresence::end_vote() {
    std::lock_guard<std::mutex> lock(mutex_);
    outstanding_.reset();
}

void MasterPresence::close() {
    {
        std::lock_guard<std::mutex> lock(mutex_);
        closed_ = true;
    }
    cv_.notify_all();
}

}  // namespace pccl
