#include "peer/turns.hpp"

namespace pccl {

uint64_t TurnQueue::reserve(Key key) {
    std::lock_guard<std::mutex> lock(mutex_);
    return turns_[key].next++;
}

bool TurnQueue::wait(Key key, uint64_t ticket) {
    std::unique_lock<std::mutex> lock(mutex_);
    // A key is only forgotten once every ticket reserved on it was released, so the ticket of a
    // waiting op always finds its entry (operator[] never creates one here that reserve() did not).
    cv_.wait(lock, [&] { return closed_ || turns_[key].serving == ticket; });
    return turns_[key].serving == ticket && !closed_;
}

void TurnQueue::release(Key key) {
    {
        std::lock_guard<std::mutex> lock(mutex_);
        auto it = turns_.find(key);
        if (it == turns_.end()) return;  // not reserved: nothing to release
        if (++it->second.serving >= it->second.next) turns_.erase(it);  // idle: starts again at ticket 0
    }
    // Every waiter on every key shares cv_: the one whose ticket is now served must be among those woken.
    cv_.notify_all();
}

void TurnQueue::close() {
    {
        std::lock_guard<std::mutex> lock(mutex_);
        closed_ = true;
    }
    cv_.notify_all();
}

bool TurnQueue::closed() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return closed_;
}

size_t TurnQueue::busy_keys() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return turns_.size();
}

}  // namespace pccl
