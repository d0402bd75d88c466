// Point-to-point send/recv on the Communicator. Each op belongs to a channel: (partner, direction,
// tag). Its place on the channel is reserved in the caller's thread (async ops keep submission order),
// and it runs through the same run_in_turn/run_once path as every collective (deadline, failure
// report, the master's decision, publish on commit), with four differences supplied as OpCall hooks:
// - it is numbered per channel, not per tag (protocol/p2p_key.hpp), so the other members' sequences
//   are untouched;
// - the partner is named by peer id, so an op re-run after a membership change goes to the same peer
//   under its new rank;
// - an op aborted by a membership change that both parties survived (a join, a leave or a loss of
//   some third member) is re-run transparently; if the partner is gone it raises PeerLostError; a
//   timeout or mismatch raises on both parties;
// - failures owed to this peer (the partner's op failed before this peer started its half) are kept
//   per channel.
#include <algorithm>

#include "common/log.hpp"
#include "peer/communicator.hpp"
#include "protocol/p2p_key.hpp"

namespace pccl {
namespace {

const char* p2p_name(const P2PSpec& s) { return s.send ? "send" : "recv"; }

uint64_t p2p_lane(uint64_t peer_id, bool send) { return (peer_id << 1) | (send ? 1u : 0u); }

}  // namespace

Communicator::P2PTicket Communicator::prepare_p2p(const P2PSpec& spec) {
    const std::string what = p2p_name(spec);
    P2PTicket t;
    {
        std::lock_guard<std::mutex> lock(mutex_);
        if (state_ != State::kMember) throw_state_error(what.c_str());
        if (spec.planned_epoch && spec.planned_epoch != epoch_)
            throw Error(ErrorCode::kPeerLost, what + ": the membership changed (epoch " + std::to_string(spec.planned_epoch) +
                                                  " -> " + std::to_string(epoch_) + ") after this transfer was planned");
        const int world = static_cast<int>(members_.size());
        const char* role = spec.send ? "dst" : "src";
        if (spec.peer < 0 || spec.peer >= world)
            throw Error(ErrorCode::kInvalidArgument,
                        what + ": " + role + "=" + std::to_string(spec.peer) + " is not a rank of the group, which has " +
                            std::to_string(world) + " member(s) (ranks 0.." + std::to_string(world - 1) + ")");
        if (spec.peer == rank_)
            throw Error(ErrorCode::kInvalidArgument, what + ": " + role + "=" + std::to_string(spec.peer) +
                                                         " is this peer's own rank; a peer cannot " + what +
                                                         (spec.send ? " to" : " from") + " itself");
        if (spec.count && !(spec.send ? static_cast<const void*>(spec.src) : static_cast<const void*>(spec.dst)))
            throw Error(ErrorCode::kInvalidArgument, what + ": no buffer");
        t.peer_id = members_[static_cast<size_t>(spec.peer)].peer_id;
    }
    t.lane = p2p_lane(t.peer_id, spec.send);
    t.ticket = reserve_turn(spec.tag, t.lane);
    return t;
}

ReduceResult Communicator::run_p2p(const P2PSpec& requested, const P2PTicket& t) {
    P2PSpec spec = requested;
    spec.swap_pages = spec.swap_pages && config_.swap_result_pages;
    const std::string what = p2p_name(spec);
    const std::string where = " (tag " + std::to_string(spec.tag) + ", " + (spec.send ? "to" : "from") + " rank " +
                              std::to_string(spec.peer) + " when called)";
    auto peer_rank = std::make_shared<int>(-1);  // the partner's rank in the epoch the op runs in
    OpCall call;
    call.tag = spec.tag;
    call.name = spec.send ? "send" : "recv";
    call.lane = t.lane;
    call.planned_epoch = spec.planned_epoch;
    call.next_seq = [this, spec, t, peer_rank, what, where]() -> uint64_t {
        int r = -1;
        for (size_t i = 0; i < members_.size(); ++i)
            if (members_[i].peer_id == t.peer_id) r = static_cast<int>(i);
        if (r < 0)
            throw Error(ErrorCode::kPeerLost, what + where + ": that peer is no longer a member of the group (it left "
                                                             "or was lost); nothing was transferred");
        auto owed = p2p_owed_.find({spec.tag, t.lane});
        if (owed != p2p_owed_.end() && !owed->second.empty()) {
            EpochCause cause = owed->second.front();
            owed->second.pop_front();
            throw_aborted(what.c_str(), cause, where, "it failed on the other party before this peer called it");
        }
        *peer_rank = r;
        const int src = spec.send ? rank_ : r, dst = spec.send ? r : rank_;
        uint64_t n = p2p_next_[{spec.tag, p2p_stream(p2p_key(src, dst, 0))}]++;
        if (n > kP2PCountMask)
            throw Error(ErrorCode::kInvalidArgument, what + where + ": more than 2^39 ops on one channel in one epoch");
        return p2p_key(src, dst, n);
    };
    call.make = [spec, peer_rank](uint64_t epoch, uint64_t key, int world, int rank, Mesh* mesh)
        -> std::shared_ptr<Collective> {
        P2PSpec s = spec;
        s.peer = *peer_rank;
        return std::make_shared<PointToPoint>(s, epoch, key, world, rank, mesh);
    };
    call.alone = [] {};  // unreachable: next_seq finds no partner in a group of one
    call.on_commit = [this, spec](const Collective& op) {
        p2p_done_[{spec.tag, p2p_stream(op.seq())}] = p2p_number(op.seq()) + 1;
    };
    call.aborted = [this, spec, t, what, where](EpochCause cause, const std::string& why) {
        bool partner_alive = false;
        {
            std::lock_guard<std::mutex> lock(mutex_);
            for (auto& m : members_) partner_alive = partner_alive || m.peer_id == t.peer_id;
        }
        if (!partner_alive)
            throw Error(ErrorCode::kPeerLost, what + where + " failed: that peer " +
                                                  (cause == EpochCause::kLeft ? "left the group or was lost" : "was lost") +
                                                  " before the transfer completed (" + why +
                                                  "); it was aborted on both sides and your buffer is unchanged");
        if (!spec.planned_epoch && (cause == EpochCause::kJoin || cause == EpochCause::kLeft || cause == EpochCause::kLost))
            return;
        if (cause == EpochCause::kMismatch)
            throw Error(ErrorCode::kMismatch,
                        what + where + " aborted on both sides: the send and the recv disagree on dtype or element count "
                                       "(this side: " + std::to_string(spec.count) + " x " + dtype_name(spec.dtype) +
                                       ")" + (why.empty() ? "" : "; " + why) + ". Pass matching buffers on both sides");
        throw_aborted(what.c_str(), cause, where, why);
    };
    ReduceResult r = run_in_turn(call, t.ticket);
    r.algorithm = Algorithm::kP2P;
    return r;
}

// With the closing epoch's members_ and rank_ (mutex_ held): the partner's half of a channel's op
// was aborted before this peer started its own. If the partner re-runs it (a membership change both
// survived), nothing is owed: this peer's next op on the channel meets the re-run. Otherwise that
// next op fails the same way, so both parties see one outcome and a retry on both sides lines up.
void Communicator::p2p_on_epoch(const EpochMsg& m, const std::set<std::pair<uint32_t, uint64_t>>& mine) {
    if (m.cause == EpochCause::kJoin || m.cause == EpochCause::kLeft || m.cause == EpochCause::kLost) return;
    // Ops finished here per channel, counting those this very decision commits (their callers have
    // not counted them yet).
    auto done = p2p_done_;
    for (auto& d : m.decisions)
        if (is_p2p_key(d.seq) && d.commit && mine.count({d.tag, d.seq})) {
            auto& n = done[{d.tag, p2p_stream(d.seq)}];
            n = std::max(n, p2p_number(d.seq) + 1);
        }
    for (auto& d : m.decisions) {
        if (!is_p2p_key(d.seq) || d.commit || mine.count({d.tag, d.seq})) continue;
        const int src = p2p_src(d.seq), dst = p2p_dst(d.seq);
        if (src != rank_ && dst != rank_) continue;
        const int other = src == rank_ ? dst : src;
        if (other < 0 || other >= static_cast<int>(members_.size())) continue;
        const uint64_t partner = members_[static_cast<size_t>(other)].peer_id;
        bool alive = false;
        for (auto& mi : m.members) alive = alive || mi.peer_id == partner;
        if (!alive) continue;
        auto n = done.find({d.tag, p2p_stream(d.seq)});
        if ((n == done.end() ? 0 : n->second) != p2p_number(d.seq)) continue;
        p2p_owed_[{d.tag, p2p_lane(partner, src == rank_)}].push_back(m.cause);
    }
}

}  // namespace pccl
