// The Communicator's control plane: the control thread's loop over the master connection, riding
// out a master restart, and every epoch transition (recover -> report -> new membership -> new mesh).
// The caller-facing half (joining, voting, running collectives) is in communicator.cpp.
#include "peer/communicator.hpp"

#include <algorithm>
#include <cstring>
#include <poll.h>
#include <thread>
#include <sys/socket.h>

#include "auth/mesh_auth.hpp"
#include "common/failpoint.hpp"
#include "common/log.hpp"
#include "protocol/p2p_key.hpp"

namespace pccl {

void Communicator::send_to_master(const std::vector<uint8_t>& frame) {
    bool ok = false;
    {
        std::lock_guard<std::mutex> lock(send_mutex_);
        try {
            ok = master_.valid() && master_.send_all(frame.data(), frame.size(), deadline_after(2.0));
        } catch (const Error&) {
            ok = false;
        }
    }
    // A failed send is not reported here: the control thread sees the connection close after reading
    // whatever the master sent last (an eviction notice, say), and reports that.
    if (!ok) PCCL_DEBUG("peer", "sending to the master failed");
}

void Communicator::report_failure(uint64_t epoch, FailureKind kind, int suspect_rank) {
    uint64_t suspect = 0;
    {
        std::lock_guard<std::mutex> lock(mutex_);
        if (failure_reported_epoch_ >= epoch || state_ != State::kMember) return;
        failure_reported_epoch_ = epoch;
        if (epoch_ == epoch && suspect_rank >= 0 && suspect_rank < static_cast<int>(members_.size()))
            suspect = members_[suspect_rank].peer_id;
    }
    send_to_master(encode_failure(Failure{epoch, kind, suspect}));
}

void Communicator::send_failure_report(uint64_t epoch, uint8_t kind, uint64_t suspect) {
    if (kind >= static_cast<uint8_t>(FailureKind::kCount)) throw Error(ErrorCode::kInvalidArgument, "failure kind out of range");
    send_to_master(encode_failure(Failure{epoch, static_cast<FailureKind>(kind), suspect}));
}

void Communicator::enter_terminal(State state, const std::string& reason) {
    std::set<std::shared_ptr<Collective>> ops;
    std::shared_ptr<Mesh> mesh;
    std::shared_ptr<OpRouter> router;
    {
        std::lock_guard<std::mutex> lock(mutex_);
        if (is_terminal(static_cast<int>(state_))) return;
        set_terminal_locked(state, reason);
        ops = inflight_;
        if (state != State::kMasterLost) {
            // An evicted peer's mesh is dead weight; with only the master gone, running ops may finish.
            ready_ = false;
            mesh = std::move(mesh_);
            router = router_;
        }
        cv_.notify_all();
    }
    if (state == State::kEvicted) PCCL_WARN("peer", "evicted: %s", reason.c_str());
    else PCCL_WARN("peer", "master lost: %s", reason.c_str());
    if (router) router->fail_all(FailureKind::kLinkBroken, reason, -1);
    for (auto& op : ops) op->decide(false, EpochCause::kLost);
    if (mesh) mesh->shutdown();
}

namespace {

// Reads what is available on the master connection into `in`. Returns false when the connection
// closed or failed (why says how). Only the control thread reads; writers hold send_mutex_, and an
// encrypted link serialises the two itself.
bool read_master(Link& link, FrameAssembler& in, std::string* why) {
    uint8_t buf[65536];
    for (;;) {
        ssize_t n = link.recv_some(buf, sizeof buf);
        if (n > 0) {
            in.append(buf, static_cast<size_t>(n));
            // TLS returns a record at a time and may hold more than the socket shows: read to EAGAIN.
            if (static_cast<size_t>(n) < sizeof buf && !link.encrypted()) return true;
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return true;
        *why = n < 0 ? std::string("connection to the master failed: ") + std::strerror(errno)
                     : "the master closed the connection";
        return false;
    }
}

MsgType next_type(Reader& r) {
    return static_cast<MsgType>(r.get_enum(static_cast<uint8_t>(MsgType::kCount), "message type"));
}

}  // namespace

void Communicator::control_loop() {
    const double hb = config_.heartbeat_timeout;
    const double beat_every = std::max(0.05, hb / 4);
    auto last_rx = Clock::now();
    auto last_tx = Clock::now();
    FrameAssembler in;
    std::vector<uint8_t> body;
    while (!stop_) {
        pollfd p{master_.get(), POLLIN, 0};
        ::poll(&p, 1, 50);
        bool closed = false;
        std::string why;
        if (p.revents) {
            closed = !read_master(master_, in, &why);
            last_rx = Clock::now();
        }
        MsgType handling = MsgType::kCount;  // the message being handled when an exception escapes
        try {
            while (in.next(body)) {
                Reader r(body.data(), body.size());
                MsgType type = next_type(r);
                handling = type;
                failpoint::check(failpoint::Site::kControlLoop, msg_type_name(type));
                if (type == MsgType::kEpoch) failpoint::check(failpoint::Site::kControlEpoch, msg_type_name(type));
                if (type == MsgType::kRecover) failpoint::check(failpoint::Site::kControlRecover, msg_type_name(type));
                handle_message(type, r);
                handling = MsgType::kCount;
            }
        } catch (const Error& e) {  // a bad message from the master
            PCCL_WARN("peer", "invalid message from the master: %s", e.what());
            enter_terminal(State::kMasterLost, std::string("the master sent an invalid message: ") + e.what());
            return;
        } catch (const std::exception& e) {
            // Not the master's fault (out of memory, say): the message is lost. A lost welcome,
            // recover or epoch ends this peer's membership (leave_after_lost_change says why); any other
            // is survived and the thread serves on, since ending the peer would turn one failed
            // allocation into an eviction: most messages are heartbeats (4 a second), one of many, and
            // a lost vote result fails update_topology() at its vote timeout.
            // (tests/faults/test_failpoints.py covers a lost heartbeat, welcome, first epoch, a
            // running member's epoch change and a recover request after a kill.)
            if (leave_after_lost_change(handling, e.what())) return;
            PCCL_LOG(LogLevel::kError, "peer", "internal error handling a message from the master: %s; serving on",
                     e.what());
        } catch (...) {
            if (leave_after_lost_change(handling, "unknown exception")) return;
            PCCL_LOG(LogLevel::kError, "peer", "unknown internal error handling a message from the master; serving on");
        }
        if (closed && leaving_) {
            std::lock_guard<std::mutex> lock(mutex_);
            if (!is_terminal(static_cast<int>(state_))) set_terminal_locked(State::kClosed, "closed");
            terminal_reason_ = "closed";
            cv_.notify_all();
            return;
        }
        {
            std::lock_guard<std::mutex> lock(mutex_);
            if (is_terminal(static_cast<int>(state_))) return;
        }
        if (!closed && seconds_since(last_rx) > hb) {
            closed = true;
            why = "no message from the master for " + fmt_seconds(seconds_since(last_rx));
        }
        if (closed) {
            if (!reconnect_master(why, in)) return;
            last_rx = last_tx = Clock::now();
            continue;
        }
        if (seconds_since(last_tx) >= beat_every) {
            send_to_master(encode_empty(MsgType::kHeartbeat));
            last_tx = Clock::now();
        }
    }
}

// A welcome, recover or epoch message whose handling failed with a non-library exception (out of
// memory, say) may be lost or half applied, and with it a membership change and the master's decisions
// on this peer's ops. Serving on from there is what the control thread did before, and it went wrong
// (measured with the control_epoch failpoint, tests/faults/test_failpoints.py): a running member
// stayed at the old epoch until the others' mesh builds timed out on it (half a heartbeat timeout) and
// reported its links broken, which the master remembers, so a second lost change evicted it together
// with an innocent newcomer, named as a broken link; a newcomer that lost its first epoch was then
// sent a recover request it refused, and connect() raised MasterLostError("the master sent an invalid
// message") while the members stalled a whole heartbeat timeout more until the master evicted it. It
// cannot get back in step on its own either: the master does not send an epoch's decisions again, and
// without them its in-flight ops and the failures it owes could disagree with the others'. So it leaves
// now, with an EvictedError naming the cause on every call, and closes its master connection so that
// the master drops it at once instead of at its heartbeat timeout: the others' next epoch forms without
// it as soon as their mesh build gives up on it (half a heartbeat timeout), and no broken link is
// recorded against anyone. Called on the control thread; returns true when it left (the loop ends).
bool Communicator::leave_after_lost_change(MsgType type, const char* what) {
    if (type != MsgType::kWelcome && type != MsgType::kRecover && type != MsgType::kEpoch) return false;
    bool joining;
    {
        std::lock_guard<std::mutex> lock(mutex_);
        if (is_terminal(static_cast<int>(state_))) return true;
        joining = state_ == State::kJoining;
        left_on_error_ = true;
    }
    const std::string msg = std::string("the master's ") + msg_type_name(type) + " message";
    const std::string group = "peer group " + std::to_string(config_.group);
    const std::string why =
        joining ? "this peer was not admitted to " + group + ": an internal error (" + what + ") while handling " + msg +
                      " lost the admission, and the members go on without it; close() this communicator and connect "
                      "a new one to try again (the members admit it at their next update_topology())"
                : "this peer left " + group + ": an internal error (" + what + ") while handling " + msg +
                      " lost a membership change, so it no longer knows the membership or the master's decisions on "
                      "its operations; the others go on without it. Create a new Communicator to rejoin as a new peer";
    PCCL_LOG(LogLevel::kError, "peer", "internal error handling %s: %s; leaving the group", msg.c_str(), what);
    enter_terminal(State::kEvicted, why);
    std::lock_guard<std::mutex> lock(send_mutex_);
    master_.reset();  // the master drops this peer now (only the control thread reads master_)
    return true;
}

void Communicator::absorb_heard(const Mesh& mesh) {
    auto links = mesh.heard();
    for (size_t r = 0; r < links.size() && r < members_.size(); ++r) {
        if (!links[r].linked) continue;
        Heard& h = heard_[members_[r].peer_id];
        h.at = std::max(h.at, links[r].last_rx);
        h.lost = h.lost || links[r].lost;
    }
}

std::vector<LastHeard> Communicator::last_heard(const std::vector<MemberInfo>& members) {
    std::vector<LastHeard> out;
    const auto now = Clock::now();
    for (const auto& mi : members) {
        auto it = heard_.find(mi.peer_id);
        if (mi.peer_id == peer_id_ || it == heard_.end()) continue;
        auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(now - it->second.at).count();
        ms = std::clamp<int64_t>(ms, 0, UINT32_MAX);
        out.push_back(LastHeard{mi.peer_id, static_cast<uint32_t>(ms), static_cast<uint8_t>(it->second.lost ? 1 : 0)});
    }
    return out;
}

bool Communicator::reconnect_master(const std::string& why, FrameAssembler& in) {
    Rejoin claim;
    {
        std::lock_guard<std::mutex> lock(mutex_);
        if (config_.master_grace > 0 && state_ == State::kMember) {
            presence_.away();  // with the claim, under mutex_: the master is away from this epoch on
            // heard: filled in at each send
            claim = Rejoin{hello_, peer_id_, epoch_, static_cast<uint8_t>(ready_ ? 1 : 0), members_, {}};
        }
    }
    if (!claim.peer_id) {
        enter_terminal(State::kMasterLost, why);
        return false;
    }
    PCCL_WARN("peer", "master lost (%s); waiting up to %s for it to come back", why.c_str(),
              fmt_seconds(config_.master_grace).c_str());
    {
        std::lock_guard<std::mutex> lock(send_mutex_);
        master_.reset();
    }
    const auto give_up = deadline_after(config_.master_grace);
    std::vector<uint8_t> body;
    while (!stop_ && Clock::now() < give_up) {
        Link fd;
        try {
            fd = Link(connect_tcp(master_host_, master_port_, std::min(give_up, deadline_after(1.0))));
        } catch (const Error&) {
            std::this_thread::sleep_for(std::chrono::milliseconds(100));
            continue;
        }
        {
            // Measured now, not when the master was lost: the master dates each silence from the
            // claim's arrival.
            std::lock_guard<std::mutex> lock(mutex_);
            if (mesh_) absorb_heard(*mesh_);
            claim.heard = last_heard(claim.members);
        }
        // Authenticated before it becomes master_: no other thread may write to it before the rejoin,
        // which the authentication exchange carries.
        try {
            authenticate(fd, encode_rejoin(claim), std::min(config_.heartbeat_timeout + 1.0, config_.master_grace));
        } catch (const Error& e) {
            if (e.code() == ErrorCode::kAuth) {
                enter_terminal(State::kMasterLost, why + "; the restarted master refused this peer: " + e.what());
                return false;
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(100));
            continue;
        }
        {
            std::lock_guard<std::mutex> lock(send_mutex_);
            master_ = std::move(fd);
        }
        in = FrameAssembler{};
        // The answer is a welcome (taken back) or an eviction; anything after the welcome stays in
        // `in` for the control loop.
        const auto answer_by = std::min(give_up, deadline_after(config_.heartbeat_timeout + 1.0));
        std::string lost;
        try {
            while (!stop_ && Clock::now() < answer_by && lost.empty()) {
                pollfd p{master_.get(), POLLIN, 0};
                ::poll(&p, 1, 50);
                if (p.revents && !read_master(master_, in, &lost)) break;
                while (in.next(body)) {
                    Reader r(body.data(), body.size());
                    MsgType type = next_type(r);
                    if (type == MsgType::kHeartbeat) continue;
                    if (type != MsgType::kWelcome) {
                        handle_message(type, r);  // an eviction or a refusal: terminal
                        return false;
                    }
                    auto w = decode_welcome(r);
                    if (w.peer_id != claim.peer_id || !w.admitted) throw ProtocolError("the restarted master answered the rejoin with another identity");
                    PCCL_WARN("peer", "rejoined the restarted master as peer %llu", (unsigned long long)w.peer_id);
                    std::shared_ptr<Collective> failed;
                    {
                        std::lock_guard<std::mutex> lock(mutex_);
                        for (auto& op : inflight_)
                            if (op->failure().failed) failed = op;
                        failure_reported_epoch_ = 0;  // reports sent to the dead master are lost
                    }
                    // The master is back: a caller waiting to vote goes on, and the vote in flight, if
                    // any, goes to the new master (the old one's answer is lost with it).
                    std::optional<Vote> vote = presence_.back();
                    if (vote) send_to_master(encode_vote(*vote));
                    if (failed) {
                        auto f = failed->failure();
                        report_failure(failed->epoch(), f.kind, f.suspect);
                    }
                    return true;
                }
            }
        } catch (const std::exception& e) {
            enter_terminal(State::kMasterLost, std::string("the restarted master sent an invalid message: ") + e.what());
            return false;
        }
        {
            std::lock_guard<std::mutex> lock(send_mutex_);
            master_.reset();
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    enter_terminal(State::kMasterLost, why + "; no master came back at " + config_.master_address + " within master_grace (" +
                                           fmt_seconds(config_.master_grace) + ")");
    return false;
}

void Communicator::handle_message(MsgType type, Reader& r) {
    switch (type) {
        case MsgType::kHeartbeat:
            r.expect_end();
            return;
        case MsgType::kWelcome: {
            auto w = decode_welcome(r);
            std::lock_guard<std::mutex> lock(mutex_);
            if (peer_id_ != 0) throw ProtocolError("second welcome");
            peer_id_ = w.peer_id;
            listener_->set_identity(config_.group, w.peer_id);
            return;
        }
        case MsgType::kPending: {
            uint32_t n = decode_pending(r);
            std::lock_guard<std::mutex> lock(mutex_);
            pending_ = n;
            return;
        }
        case MsgType::kVoteResult: {
            presence_.vote_answered(decode_vote_result(r));
            return;
        }
        case MsgType::kRecover:
            on_recover(decode_recover(r));
            return;
        case MsgType::kEpoch:
            on_epoch(decode_epoch(r));
            return;
        case MsgType::kEvicted: {
            auto e = decode_evicted(r);
            enter_terminal(State::kEvicted, e.reason);
            return;
        }
        case MsgType::kError: {
            auto e = decode_error(r);
            enter_terminal(State::kMasterLost, "the master refused this peer: " + e.message);
            return;
        }
        default:
            throw ProtocolError(std::string("unexpected message '") + msg_type_name(type) + "' from the master");
    }
}

void Communicator::on_recover(const Recover& m) {
    std::shared_ptr<Mesh> mesh;
    std::vector<std::shared_ptr<Collective>> ops;
    std::map<uint32_t, uint64_t> committed;
    std::map<uint32_t, bool> committed_pending;
    std::vector<OpReport> p2p_reports;
    {
        std::lock_guard<std::mutex> lock(mutex_);
        if (state_ != State::kMember) throw ProtocolError("recover request while not a member");
        if (m.epoch <= epoch_) throw ProtocolError("recover request for an old epoch");
        ready_ = false;
        if (mesh_) absorb_heard(*mesh_);  // the last this peer hears from the others until the next epoch
        mesh = std::move(mesh_);
        // Only the closing epoch's ops. An op of an earlier epoch was decided by that epoch's EPOCH
        // and merely waits for its caller's thread to take it out of inflight_; reported again, its
        // (tag, seq) would name an op of this epoch, and the decision on it would abort that op on
        // some members and owe a failure to others (seen under heavy load: every member then raised
        // the next epoch's cause on a tag whose ops were all alike).
        for (auto& op : inflight_)
            if (op->epoch() == epoch_) ops.push_back(op);
        committed = committed_;
        committed_pending = committed_pending_;
        // The last op received on each point-to-point channel: its sender may still wait for the
        // acknowledgement, and the master commits a point-to-point op on its receiver's word only.
        for (auto& [key, n] : p2p_done_)
            if (n > 0 && p2p_dst(key.second) == rank_ && p2p_reports.size() < kMaxReportedOps / 2)
                p2p_reports.push_back(OpReport{key.first, key.second | (n - 1), OpProgress::kDataDone});
    }
    // Stop the data plane first: after this no frame can change any op's progress.
    if (mesh) mesh->shutdown();
    Status st;
    st.epoch = m.epoch;
    st.ops = p2p_reports;
    for (auto& op : ops) {
        bool seen = false;
        OpProgress progress = op->freeze(&seen);
        st.ops.push_back(OpReport{op->tag(), op->seq(), progress, static_cast<uint8_t>(seen)});
    }
    for (auto& [tag, n] : committed) st.tags.push_back(TagReport{tag, n, static_cast<uint8_t>(committed_pending[tag])});
    send_to_master(encode_status(st));
}

void Communicator::on_epoch(const EpochMsg& m) {
    std::shared_ptr<Mesh> old_mesh;
    int my_rank = -1;
    std::vector<MemberInfo> members;
    {
        std::lock_guard<std::mutex> lock(mutex_);
        if (m.group != config_.group) throw ProtocolError("epoch for another peer group");
        if (m.epoch <= epoch_) throw ProtocolError("epoch number went backwards");
        for (size_t i = 0; i < m.members.size(); ++i)
            if (m.members[i].peer_id == peer_id_) my_rank = static_cast<int>(i);
        old_mesh = std::move(mesh_);
        ready_ = false;
        std::map<uint32_t, uint64_t> done = committed_;  // ops of each tag finished here, decisions included
        std::set<std::pair<uint32_t, uint64_t>> mine;
        for (auto& op : inflight_) {
            if (op->epoch() != epoch_) continue;  // decided with its own epoch (see on_recover)
            bool commit = false, pending = m.pending > 0;
            for (auto& d : m.decisions)
                if (d.tag == op->tag() && d.seq == op->seq()) {
                    commit = d.commit != 0;
                    if (commit) pending = d.pending != 0;
                }
            op->decide(commit, m.cause, pending);
            mine.insert({op->tag(), op->seq()});
            if (commit && !is_p2p_key(op->seq())) done[op->tag()] = std::max(done[op->tag()], op->seq() + 1);
        }
        if (m.cause != EpochCause::kJoin && m.cause != EpochCause::kLeft) {
            for (auto& d : m.decisions)
                if (!d.commit && !mine.count({d.tag, d.seq}) && done[d.tag] == d.seq)
                    owed_failures_[d.tag].push_back(OwedFailure{m.cause, m.pending > 0});
        }
        p2p_on_epoch(m, mine);
        if (my_rank >= 0) {
            if (state_ == State::kJoining) {
                // The voters' update_topology() returns this same count (VoteResult::pending).
                agreement_.adopt(m.pending > 0);
            }
            p2p_next_.clear();
            p2p_done_.clear();
            epoch_ = m.epoch;
            members_ = m.members;
            rank_ = my_rank;
            state_ = State::kMember;
            next_seq_.clear();
            committed_.clear();
            committed_pending_.clear();
            uint64_t epoch = m.epoch;
            router_ = std::make_shared<OpRouter>([this, epoch](int from, const std::string&) {
                report_failure(epoch, FailureKind::kLinkBroken, from);
            });
            members = members_;
        }
    }
    if (old_mesh) old_mesh->shutdown();
    if (my_rank < 0) {
        enter_terminal(State::kEvicted, "not part of the new membership");
        return;
    }
    PCCL_DEBUG("peer", "epoch %llu (%s): rank %d of %zu", (unsigned long long)m.epoch, epoch_cause_name(m.cause),
               my_rank, members.size());
    listener_->forget_before(m.epoch);
    // The keys of this peer's own pairs (the decoder checked there is one token per member).
    const uint64_t me = members[static_cast<size_t>(my_rank)].peer_id;
    mesh_keys_.assign(members.size(), Mac{});
    std::map<uint64_t, Mac> by_peer;
    for (size_t k = 0; k < members.size(); ++k) {
        if (static_cast<int>(k) == my_rank) continue;
        mesh_keys_[k] = mesh_pair_key(config_.secret, m.pair_tokens[k], config_.group, m.epoch, me, members[k].peer_id);
        by_peer.emplace(members[k].peer_id, mesh_keys_[k]);
    }
    listener_->set_epoch_keys(m.epoch, std::move(by_peer));
    build_mesh(m.epoch, members, my_rank);
}

void Communicator::build_mesh(uint64_t epoch, const std::vector<MemberInfo>& members, int my_rank) {
    const int n = static_cast<int>(members.size());
    const uint64_t me = members[my_rank].peer_id;
    // Bounded well inside the heartbeat timeout, because the control thread is not heartbeating while
    // it builds.
    auto deadline = deadline_after(std::max(0.5, config_.heartbeat_timeout / 2));
    send_to_master(encode_empty(MsgType::kHeartbeat));
    {
        // The master just vouched for every member of this epoch; from now on silence counts afresh.
        std::lock_guard<std::mutex> lock(mutex_);
        const auto now = Clock::now();
        heard_.clear();
        for (const auto& mi : members)
            if (mi.peer_id != me) heard_[mi.peer_id] = Heard{now, false};
    }
    std::vector<std::vector<Fd>> conns(static_cast<size_t>(n));
    std::vector<std::pair<int, MeshDial>> dialed;  // confirmed once every connection is made (mesh_listener.hpp)
    int suspect = -1;
    try {
        for (int j = my_rank + 1; j < n; ++j) {
            suspect = j;
            int k = std::min<int>(config_.connections, members[j].connections);
            for (int i = 0; i < k; ++i) {
                Handshake hs{kHandshakeMagic, kHandshakeVersion, static_cast<uint16_t>(i), config_.group, 0, epoch, me, members[j].peer_id};
                dialed.emplace_back(j, dial_mesh(members[j].host, members[j].port, hs, mesh_keys_[static_cast<size_t>(j)], deadline));
            }
        }
        for (int j = 0; j < my_rank; ++j) {
            suspect = j;
            int k = std::min<int>(config_.connections, members[j].connections);
            for (int i = 0; i < k; ++i) {
                Fd fd = listener_->take(epoch, members[j].peer_id, static_cast<uint16_t>(i), deadline);
                if (!fd.valid()) throw Error(ErrorCode::kTimeout, "member did not connect in time");
                conns[j].push_back(std::move(fd));
            }
        }
        for (auto& [j, d] : dialed) {
            suspect = j;
            conns[j].push_back(confirm_mesh_dial(d, deadline));
        }
    } catch (const Error& e) {
        PCCL_WARN("peer", "building the mesh of epoch %llu failed at rank %d: %s", (unsigned long long)epoch, suspect, e.what());
        report_failure(epoch, FailureKind::kLinkBroken, suspect);
        return;
    }
    std::shared_ptr<OpRouter> router;
    {
        std::lock_guard<std::mutex> lock(mutex_);
        if (epoch_ != epoch || state_ != State::kMember) return;
        router = router_;
    }
    std::shared_ptr<Mesh> mesh;
    try {
        std::unique_ptr<MeshTls> tls;
        if (config_.encrypt) {
            tls = std::make_unique<MeshTls>();
            tls->keys.assign(static_cast<size_t>(n), TlsKey{});
            for (int j = 0; j < n; ++j)
                if (j != my_rank) tls->keys[static_cast<size_t>(j)] = mesh_tls_key(mesh_keys_[static_cast<size_t>(j)]);
            tls->dialed.assign(static_cast<size_t>(n), false);
            for (int j = my_rank + 1; j < n; ++j) tls->dialed[static_cast<size_t>(j)] = true;
        }
        mesh = std::make_shared<Mesh>(epoch, std::move(conns), router, config_.heartbeat_timeout, tls.get());
    } catch (const Error& e) {
        PCCL_WARN("peer", "building the mesh of epoch %llu failed: %s", (unsigned long long)epoch, e.what());
        report_failure(epoch, FailureKind::kLinkBroken, -1);
        return;
    }
    mesh->start();
    std::lock_guard<std::mutex> lock(mutex_);
    if (epoch_ != epoch || state_ != State::kMember) return;  // mesh destructor stops it
    mesh_ = std::move(mesh);
    ready_ = true;
    cv_.notify_all();
}

}  // namespace pccl
