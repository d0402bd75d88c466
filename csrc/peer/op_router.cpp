#include "peer/op_router.hpp"

#include <cstring>

#include "collectives/buffer_pool.hpp"
#include "protocol/p2p_key.hpp"

namespace pccl {
namespace {
constexpr int kEarlyRoute = 1;
}  // namespace

void OpRouter::deliver(Collective& op, const Early& e) {
    try {
        RecvTarget t = op.target_for(e.from, e.header);
        if (t.dst && e.header.length) std::memcpy(t.dst, e.payload.get(), e.header.length);
        op.on_frame(e.from, e.header);
    } catch (const Error& err) {
        op.fail(FailureKind::kLinkBroken, std::string("protocol violation from a peer: ") + err.what(), e.from);
    } catch (const std::exception& err) {  // not the peer's fault as far as anyone can tell: the op fails, clearly
        op.fail(FailureKind::kLinkBroken, std::string("internal error handing over an early frame: ") + err.what(), e.from);
    }
}

// Precondition: mutex_ held.
void OpRouter::release_early(const FrameHeader& h) {
    early_bytes_ -= h.length + kEarlyFrameCharge;
    early_frames_ -= 1;
}

void OpRouter::add(const std::shared_ptr<Collective>& op) {
    std::lock_guard<std::mutex> lock(mutex_);
    Key key{op->tag(), op->seq()};
    ops_[key] = op;
    auto it = early_.find(key);
    if (it == early_.end()) return;
    for (auto& e : it->second) {
        release_early(e.header);
        deliver(*op, e);
    }
    early_.erase(it);
}

void OpRouter::remove(const Collective* op) {
    std::lock_guard<std::mutex> lock(mutex_);
    Key key{op->tag(), op->seq()};
    auto it = ops_.find(key);
    if (it != ops_.end() && it->second.get() == op) ops_.erase(it);
    auto& r = retired_[{key.first, p2p_stream(key.second)}];
    r = std::max(r, key.second + 1);
    // A tag's collectives start in order, so frames still held for a seq below this one belong to an op
    // this peer never runs: nothing can take them. (Point-to-point ops of a channel may start out of
    // order; theirs stay until the epoch ends.)
    if (p2p_stream(key.second) != 0) return;
    for (auto e = early_.lower_bound(Key{key.first, 0}); e != early_.end() && e->first.first == key.first;) {
        if (p2p_stream(e->first.second) == 0 && e->first.second < r && !ops_.count(e->first)) {
            for (auto& f : e->second) release_early(f.header);
            e = early_.erase(e);
        } else {
            ++e;
        }
    }
}

void OpRouter::fail_all(FailureKind kind, const std::string& why, int suspect) {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto& [_, op] : ops_) op->fail(kind, why, suspect);
}

RecvTarget OpRouter::on_header(int from, const FrameHeader& h) {
    std::shared_ptr<Collective> op;
    {
        std::lock_guard<std::mutex> lock(mutex_);
        // Copies: the header is packed, and binding a reference to a misaligned field is undefined.
        const uint32_t tag = h.tag;
        auto it = ops_.find(Key{tag, uint64_t{h.seq}});
        if (it != ops_.end()) {
            op = it->second;
        } else {
            auto r = retired_.find({tag, p2p_stream(uint64_t{h.seq})});
            if (r != retired_.end() && h.seq < r->second)
                throw ProtocolError("frame for an operation that already finished (tag " + std::to_string(h.tag) +
                                    ", seq " + std::to_string(h.seq) + ")");
            if (early_bytes_ + h.length + kEarlyFrameCharge > kMaxEarlyBytes)
                throw ProtocolError("peer is too far ahead: more than 2 GiB of frames for operations not started here");
            if (early_frames_ + 1 > kMaxEarlyFrames)
                throw ProtocolError("peer is too far ahead: more than " + std::to_string(kMaxEarlyFrames) +
                                    " frames held for operations not started here");
            early_bytes_ += h.length + kEarlyFrameCharge;
            early_frames_ += 1;
            // Pooled and not zeroed: with peers a millisecond apart every op meets a few early
            // pieces, and fresh zeroed blocks of this size cost page faults and unmaps each time.
            std::shared_ptr<uint8_t[]> buf = acquire_buffer(h.length);
            return RecvTarget{buf.get(), buf, kEarlyRoute};
        }
    }
    return op->target_for(from, h);
}

void OpRouter::on_frame(int from, const FrameHeader& h, RecvTarget& target) {
    std::unique_lock<std::mutex> lock(mutex_);
    Key key{uint32_t{h.tag}, uint64_t{h.seq}};  // copies of the packed fields (see on_header())
    auto it = ops_.find(key);
    if (target.route != kEarlyRoute) {
        if (it == ops_.end()) return;
        // The op may reduce and forward the piece right here: not under the routing lock, which
        // the callers of other ops need to start and finish theirs.
        std::shared_ptr<Collective> op = it->second;
        lock.unlock();
        op->on_frame(from, h);
        return;
    }
    Early e{from, h, std::shared_ptr<uint8_t[]>(target.keep, static_cast<uint8_t*>(target.keep.get()))};
    if (it != ops_.end()) {
        release_early(h);
        deliver(*it->second, e);
        return;
    }
    early_[key].push_back(std::move(e));
}

void OpRouter::on_failure(int from, const std::string& reason) {
    fail_all(FailureKind::kLinkBroken, "connection to rank " + std::to_string(from) + " failed: " + reason, from);
    hook_(from, reason);
}

}  // namespace pccl
