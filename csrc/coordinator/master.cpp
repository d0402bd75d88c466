#include "coordinator/master.hpp"

#include <algorithm>
#include <chrono>
#include <cerrno>
#include <cstring>
#include <functional>
#include <poll.h>
#include <sys/socket.h>
#include <utility>

#include "auth/mesh_auth.hpp"
#include "common/failpoint.hpp"
#include "common/log.hpp"
#include "common/thread_name.hpp"
#include "protocol/p2p_key.hpp"

namespace pccl {
namespace {
constexpr double kHeartbeatEvery = 0.25;
constexpr size_t kMaxOutBuffer = 16u << 20;
// A day of microseconds: how far a claimed peer id may exceed this master's first id (clock skew between
// the old master's machine and this one's).
constexpr uint64_t kClaimableIdSkew = 86400ull * 1000 * 1000;
// How many epochs a link reported broken between two members that both looked alive to the master is
// remembered (on_failure).
constexpr uint64_t kBrokenLinkMemory = 8;


// A member whose data is not needed for an op cannot exist: decide COMMIT only when every survivor
// has the complete result (it committed the op, or finished the data phase), else ABORT everywhere.
// A commit carries the OR of the pending flags the survivors saw for the op: one that committed it
// before the recovery saw every member's, so the OR is what it already told its caller.
std::vector<Decision> decide(const std::map<uint64_t, Status>& statuses) {
    std::set<std::pair<uint32_t, uint64_t>> keys;
    for (auto& [_, st] : statuses)
        for (auto& op : st.ops) keys.insert({op.tag, op.seq});
    std::vector<Decision> out;
    for (auto& [tag, seq] : keys) {
        if (is_p2p_key(seq)) {
            // A point-to-point op concerns its two parties only (the others never report it): it commits
            // iff a party reports it complete. Only its receiver does so on its own (it holds all the
            // data); a sender reports it complete only after the receiver's acknowledgement. It carries
            // no pending flag (see Collective::claim_done_notices()).
            bool commit = false;
            for (auto& [_, st] : statuses)
                for (auto& op : st.ops)
                    if (op.tag == tag && op.seq == seq && op.progress == OpProgress::kDataDone) commit = true;
            out.push_back(Decision{tag, seq, static_cast<uint8_t>(commit), 0});
            continue;
        }
        bool commit = true, pending = false;
        for (auto& [_, st] : statuses) {
            bool ok = false;
            for (auto& t : st.tags)
                if (t.tag == tag && t.committed > seq) {
                    ok = true;
                    if (t.committed == seq + 1) pending = pending || t.pending;
                }
            for (auto& op : st.ops)
                if (op.tag == tag && op.seq == seq) {
                    pending = pending || op.pending;
                    if (op.progress == OpProgress::kDataDone) ok = true;
                }
            if (!ok) commit = false;
        }
        out.push_back(Decision{tag, seq, static_cast<uint8_t>(commit), static_cast<uint8_t>(commit && pending)});
    }
    return out;
}
}  // namespace

std::string ids_to_string(const std::vector<uint64_t>& ids) {
    std::string s;
    for (auto id : ids) {
        if (!s.empty()) s += ',';
        s += std::to_string(id);
    }
    return s.empty() ? "-" : s;
}

Master::Master(std::string host, uint16_t port, std::string secret, bool encrypt, MasterLimits limits)
    : host_(std::move(host)), requested_port_(port), secret_(std::move(secret)), encrypt_(encrypt), limits_(limits) {
    if (encrypt_ && secret_.empty())
        throw Error(ErrorCode::kInvalidArgument,
                    "encryption='tls' needs the job secret (secret=, --secret-file or PCCL_SECRET): the TLS "
                    "handshakes are authenticated with a key derived from it");
    if (encrypt_) tls_key_ = control_tls_key(secret_);
    auto bad = [](const std::string& what) { throw Error(ErrorCode::kInvalidArgument, "Master: " + what); };
    if (!(limits_.handshake_timeout >= 0.1 && limits_.handshake_timeout <= 3600))
        bad("handshake_timeout must be within [0.1, 3600] seconds");
    if (limits_.max_unauthenticated < 1) bad("max_unauthenticated must be at least 1");
    if (limits_.max_unauthenticated_per_source < 1) bad("max_unauthenticated_per_source must be at least 1");
    if (limits_.max_preauth_bytes < kMaxControlMessage + 4)
        bad("max_preauth_bytes must be at least " + std::to_string(kMaxControlMessage + 4) + " (one join message)");
    if (limits_.max_pending_per_group < 1) bad("max_pending_per_group must be at least 1");
    if (limits_.max_group_size < 1 || limits_.max_group_size > kMaxMembers)
        bad("max_group_size must be within [1, " + std::to_string(kMaxMembers) + "] (what an epoch message can carry)");
    // Ids count up from the start time in microseconds: a master started later begins above every id
    // an earlier one can have handed out (that would take more than one join per microsecond).
    auto now = std::chrono::system_clock::now().time_since_epoch();
    next_peer_id_ = static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::microseconds>(now).count());
    max_claimable_id_ = next_peer_id_ + kClaimableIdSkew;
}

Master::~Master() { stop(); }

void Master::bind_if_needed() {
    if (!listener_.valid()) {
        listener_ = listen_tcp(host_, requested_port_, &port_, 1024);
        set_nonblocking(listener_.get(), true);
        PCCL_INFO("master", "listening on %s:%u", host_.c_str(), port_);
        warn_if_exposed();
    }
}

void Master::start() {
    bind_if_needed();
    thread_ = std::thread([this] {
        name_this_thread("pccl-master");
        serve_guarded();
    });
}

void Master::stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
    peers_.clear();
    listener_.reset();
}

Master::Peer* Master::find(uint64_t id) {
    auto it = peers_.find(id);
    return (it == peers_.end() || it->second->dead) ? nullptr : it->second.get();
}

Master::Group& Master::group(uint32_t id) {
    auto& g = groups_[id];
    g.id = id;
    return g;
}

void Master::serve() {
    std::vector<pollfd> fds;
    std::vector<uint64_t> ids;
    while (!stop_) {
        fds.clear();
        ids.clear();
        fds.push_back({listener_.get(), POLLIN, 0});
        ids.push_back(0);
        for (auto& [id, p] : peers_) {
            short ev = POLLIN;
            if (!p->out.empty() || (p->tls && p->tls->wants_write())) ev |= POLLOUT;
            fds.push_back({p->fd.get(), ev, 0});
            ids.push_back(id);
        }
        int n = ::poll(fds.data(), fds.size(), 20);
        if (n < 0 && errno != EINTR) break;
        if (fds[0].revents & POLLIN) accept_new();
        for (size_t i = 1; i < fds.size(); ++i) {
            Peer* p = find(ids[i]);
            if (p == nullptr || fds[i].revents == 0) continue;
            if (fds[i].revents & POLLOUT) flush(*p);
            const bool tls_wants_out = p->tls && p->tls->wants_write() && (fds[i].revents & POLLOUT);
            if (!p->dead && ((fds[i].revents & (POLLIN | POLLHUP | POLLERR)) || tls_wants_out)) read_from(*p);
        }
        timers();
        for (auto it = peers_.begin(); it != peers_.end();)
            it = it->second->dead ? peers_.erase(it) : std::next(it);
        if (seconds_since(last_group_sweep_) >= 1.0) {
            last_group_sweep_ = Clock::now();
            collect_idle_groups();
        }
    }
}

void Master::accept_new() {
    for (int i = 0; i < 256; ++i) {  // a flood's backlog must not starve the members' messages
        int fd = ::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (fd < 0) {
            if (errno == EMFILE || errno == ENFILE) out_of_descriptors();
            return;
        }
        Fd owned(fd);
        set_nodelay(fd);
        auto p = std::make_unique<Peer>();
        // Skips ids in use: a REJOIN may claim one from this range (found by fuzz_master: the entry of
        // a member was replaced, and the group's next recovery dereferenced the missing peer).
        while (peers_.count(next_conn_id_)) ++next_conn_id_;
        p->id = next_conn_id_++;
        p->fd = std::move(owned);
        p->remote = peer_ip(fd);
        p->last_seen = p->accepted = Clock::now();
        p->in.set_max_frame(kMaxPreAuthFrame);
        if (encrypt_) {
            try {
                p->tls = std::make_unique<TlsSession>(fd, TlsSession::Role::kServer, tls_key_);
            } catch (const Error& e) {
                PCCL_WARN("master", "closing a connection from %s: %s", p->remote.c_str(), e.what());
                continue;
            }
        }
        admit_connection(std::move(p));
    }
}

void Master::read_from(Peer& p) {
    if (!p.screened && !screen_first_byte(p)) return;
    uint8_t buf[65536];
    std::vector<uint8_t> body;
    // Frames are taken after every chunk: a length prefix over the connection's cap is refused as soon
    // as it arrives, so a connection buffers at most its cap plus one chunk.
    for (bool more = true; more && !p.dead;) {
        ssize_t n = p.tls ? p.tls->read(buf, sizeof buf) : ::recv(p.fd.get(), buf, sizeof buf, MSG_DONTWAIT);
        if (n == 0) {
            drop(p, "connection closed", false);
            return;
        }
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) break;
            drop_broken(p, "recv");
            return;
        }
        p.in.append(buf, static_cast<size_t>(n));
        // TLS returns a record at a time and may hold more than the socket shows: it reads to EAGAIN.
        more = p.tls || static_cast<size_t>(n) == sizeof buf;
        p.last_seen = Clock::now();
        try {
            while (!p.dead && p.in.next(body)) {
                Reader r(body.data(), body.size());
                auto type = static_cast<MsgType>(r.get_enum(static_cast<uint8_t>(MsgType::kCount), "message type"));
                failpoint::check(failpoint::Site::kMasterLoop);
                handle(p, type, r);
            }
        } catch (const ProtocolError& e) {
            if (p.state != PeerState::kHandshake || closed_log_.allow("master", "connections closed before joining"))
                PCCL_WARN("master", "closing connection %llu from %s: %s", (unsigned long long)p.id, p.remote.c_str(), e.what());
            if (p.state != PeerState::kHandshake) send(p, encode_error(ErrorMsg{std::string("protocol violation: ") + e.what()}));
            flush(p);
            drop(p, std::string("protocol violation: ") + e.what(), false);
            return;
        } catch (const std::exception& e) {
            // Not the peer's fault as far as anyone can tell (out of memory, say): this connection goes,
            // the master keeps serving the others.
            PCCL_WARN("master", "internal error handling a message of connection %llu from %s: %s; closing it",
                      (unsigned long long)p.id, p.remote.c_str(), e.what());
            drop(p, std::string("internal error at the master: ") + e.what(), false);
            return;
        } catch (...) {
            PCCL_WARN("master", "unknown internal error handling a message of connection %llu from %s; closing it",
                      (unsigned long long)p.id, p.remote.c_str());
            drop(p, "unknown internal error at the master", false);
            return;
        }
    }
    if (!p.dead && p.state == PeerState::kHandshake && p.in.buffered() > kMaxPreAuthFrame) check_preauth_budget();
}

void Master::flush(Peer& p) {
    while (!p.out.empty()) {
        ssize_t n = p.tls ? p.tls->write(p.out.data(), p.out.size())
                          : ::send(p.fd.get(), p.out.data(), p.out.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n <= 0) return;
        p.out.erase(p.out.begin(), p.out.begin() + n);
    }
}

void Master::send(Peer& p, const std::vector<uint8_t>& frame) {
    if (p.dead) return;
    p.out.insert(p.out.end(), frame.begin(), frame.end());
    flush(p);
    if (p.out.size() > kMaxOutBuffer) drop(p, "not reading its control messages", false);
}

void Master::handle(Peer& p, MsgType type, Reader& r) {
    auto unexpected = [&] {
        throw ProtocolError(std::string("message '") + msg_type_name(type) + "' is not allowed in this state");
    };
    if (p.state == PeerState::kHandshake) return on_handshake(p, type, r);
    Group& g = group(p.hello.group);
    switch (type) {
        case MsgType::kHeartbeat:
            r.expect_end();
            return;
        case MsgType::kLeave:
            r.expect_end();
            drop(p, "left gracefully", true);
            return;
        case MsgType::kVote: {
            auto v = decode_vote(r);
            if (p.state != PeerState::kMember) unexpected();
            if (g.voters.empty()) {
                g.vote_timeout = v.timeout_ms / 1000.0;
                g.vote_deadline = deadline_after(g.vote_timeout);
            }
            g.voters.insert(p.id);
            check_vote(g);
            return;
        }
        case MsgType::kFailure: {
            auto f = decode_failure(r);
            if (p.state != PeerState::kMember) unexpected();
            on_failure(p, f);
            return;
        }
        case MsgType::kStatus: {
            auto st = decode_status(r);
            if (p.state != PeerState::kMember) unexpected();
            // A status for an epoch that is not being closed is stale (it crossed a newer decision).
            if (g.recovering && st.epoch == g.epoch && g.awaiting.erase(p.id)) {
                g.statuses[p.id] = std::move(st);
                check_recovery(g);
            }
            return;
        }
        default:
            unexpected();
    }
}

void Master::rekey(Peer& p, uint64_t id) {
    auto it = peers_.find(p.id);
    auto owner = std::move(it->second);
    peers_.erase(it);
    p.id = id;
    peers_[id] = std::move(owner);
}

void Master::on_hello(Peer& p, const Hello& h) {
    if (!group_has_room(p, h)) return;
    p.hello = h;
    if (p.hello.host.empty() || p.hello.host == "0.0.0.0") p.hello.host = p.remote;
    while (find(next_peer_id_)) ++next_peer_id_;
    rekey(p, next_peer_id_++);
    Group& g = group(h.group);
    if (g.members.empty() && !g.recovering && !g.rebuilding) {
        g.rebuilt = false;  // a new group formed by newcomers
        p.state = PeerState::kMember;
        g.members.push_back(p.id);
        g.epoch += 1;
        send(p, encode_welcome(Welcome{p.id, 1}));
        PCCL_INFO("master", "peer %llu (%s:%u) joined group %u as its first member; epoch %llu",
                  (unsigned long long)p.id, p.hello.host.c_str(), h.port, h.group, (unsigned long long)g.epoch);
        // Its own place's token only (all zero): no pair yet.
        EpochMsg m{g.id, g.epoch, EpochCause::kJoin, {MemberInfo{p.id, p.hello.host, h.port, h.connections}},
                   {}, 0, std::vector<std::array<uint8_t, 32>>(1)};
        send(p, encode_epoch(m));
        return;
    }
    p.state = PeerState::kPending;
    g.pending.push_back(p.id);
    send(p, encode_welcome(Welcome{p.id, 0}));
    PCCL_INFO("master", "peer %llu (%s:%u) is pending admission to group %u (%zu pending)", (unsigned long long)p.id,
              p.hello.host.c_str(), h.port, h.group, g.pending.size());
    broadcast_pending(g);
}

void Master::broadcast_pending(Group& g) {
    auto frame = encode_pending(static_cast<uint32_t>(g.pending.size()));
    for (auto id : g.members)
        if (Peer* m = find(id)) send(*m, frame);
}

void Master::remove_member(Group& g, uint64_t id) {
    g.members.erase(std::remove(g.members.begin(), g.members.end(), id), g.members.end());
    g.pending.erase(std::remove(g.pending.begin(), g.pending.end(), id), g.pending.end());
    g.admitting.erase(std::remove(g.admitting.begin(), g.admitting.end(), id), g.admitting.end());
    g.voters.erase(id);
    g.awaiting.erase(id);
    g.statuses.erase(id);
    // A claim goes with its claimant: once it is gone its id is free, and a peer that takes the id later
    // (in another group, say) must not be counted back for this one (found by fuzz_master: that peer's
    // loss then left a member without a peer here, and the next recovery crashed the master).
    g.claims.erase(id);
}

void Master::drop(Peer& p, const std::string& reason, bool graceful) {
    if (p.dead) return;
    p.dead = true;
    flush(p);
    p.tls.reset();
    p.fd.reset();
    if (p.state == PeerState::kHandshake) return log_closed_before_join(p, reason);
    if (p.state == PeerState::kHeld) {
        group(p.hello.group).held.erase(p.id);
        PCCL_INFO("master", "held rejoin of peer %llu to group %u ended: %s", (unsigned long long)p.id, p.hello.group, reason.c_str());
        return;
    }
    Group& g = group(p.hello.group);
    bool was_member = std::find(g.members.begin(), g.members.end(), p.id) != g.members.end();
    bool was_pending = std::find(g.pending.begin(), g.pending.end(), p.id) != g.pending.end();
    remove_member(g, p.id);
    PCCL_INFO("master", "peer %llu %s group %u: %s", (unsigned long long)p.id, graceful ? "left" : "lost from",
              g.id, reason.c_str());
    if (was_member) start_recovery(g, graceful ? EpochCause::kLeft : EpochCause::kLost, {});
    else if (was_pending) broadcast_pending(g);
    else if (g.recovering) check_recovery(g);
}

void Master::evict(Peer& p, const std::string& reason) {
    if (p.dead) return;
    PCCL_INFO("master", "evicting peer %llu: %s", (unsigned long long)p.id, reason.c_str());
    send(p, encode_evicted(Evicted{reason}));
    drop(p, "evicted: " + reason, false);
}

// One member's word is not enough to evict another (docs/security.md, "Hostile members"): a member may lie. A link reported broken
// (or silent) evicts its suspect at once only when the master's own view agrees: the suspect's master
// connection has been silent for half its heartbeat timeout (a frozen or cut-off peer; one that died
// has already been dropped when its connection closed, so kill -9 recovery does not wait on this).
// Otherwise both ends look alive: the epoch ends without evicting anyone (the mesh is rebuilt, which
// heals a transient fault), and the report is remembered for kBrokenLinkMemory epochs. If the same
// link is reported broken again, or a second member reports the same suspect, the fault is real:
// a suspect that two members report is evicted; a link only its two ends report is resolved by
// evicting both ends, so that neither can choose who goes (a liar takes itself out with its victim).
// Only the first report of an epoch acts (it ends the epoch); later ones of that epoch are stale.
void Master::on_failure(Peer& p, const Failure& f) {
    Group& g = group(p.hello.group);
    if (g.rebuilding) {  // acted on once the group is rebuilt
        g.failure_while_rebuilding = true;
        g.rebuild_cause = f.kind == FailureKind::kMismatch  ? EpochCause::kMismatch
                          : f.kind == FailureKind::kTimeout ? EpochCause::kTimeout
                                                            : EpochCause::kLost;
        return;
    }
    if (g.recovering || f.epoch != g.epoch) return;  // already being handled, or about an older epoch
    if (std::find(g.members.begin(), g.members.end(), p.id) == g.members.end()) return;  // not in this epoch
    EpochCause cause = f.kind == FailureKind::kMismatch  ? EpochCause::kMismatch
                       : f.kind == FailureKind::kTimeout ? EpochCause::kTimeout
                                                         : EpochCause::kLost;
    PCCL_INFO("master", "peer %llu reports a failure in epoch %llu of group %u (%s, suspect %llu)",
              (unsigned long long)p.id, (unsigned long long)f.epoch, g.id, epoch_cause_name(cause),
              (unsigned long long)f.suspect);
    Peer* s = nullptr;
    if (f.kind == FailureKind::kLinkBroken && f.suspect != 0 && f.suspect != p.id &&
        std::find(g.members.begin(), g.members.end(), f.suspect) != g.members.end())
        s = find(f.suspect);
    if (s == nullptr || s->state != PeerState::kMember) return start_recovery(g, cause, {});
    const double silent = seconds_since(s->last_seen);
    if (silent >= s->hello.heartbeat_timeout_ms / 2000.0) {
        char why[200];
        std::snprintf(why, sizeof why, "peer %llu found its link to this peer closed or silent during an operation, and the "
                      "master has not heard from it for %.1f s either", (unsigned long long)p.id, silent);
        evict(*s, why);
        return;  // drop() already started the recovery
    }
    for (auto it = g.broken_links.begin(); it != g.broken_links.end();)
        it = it->second + kBrokenLinkMemory < g.epoch ? g.broken_links.erase(it) : std::next(it);
    bool again = false;
    std::set<uint64_t> accusers{p.id};
    for (const auto& [link, epoch] : g.broken_links) {
        if (link.second == s->id) accusers.insert(link.first);
        again = again || link == std::make_pair(p.id, s->id) || link == std::make_pair(s->id, p.id);
    }
    g.broken_links[{p.id, s->id}] = g.epoch;
    const uint64_t reporter = p.id, suspect = s->id;
    if (accusers.size() >= 2) {
        std::string who = ids_to_string(std::vector<uint64_t>(accusers.begin(), accusers.end()));
        PCCL_WARN("master", "peers %s of group %u all report their links to peer %llu broken while it looks alive to the "
                  "master; evicting it", who.c_str(), g.id, (unsigned long long)suspect);
        evict(*s, "peers " + who + " found their links to this peer broken during operations");
        return;
    }
    if (again) {
        PCCL_WARN("master", "the link between peers %llu and %llu of group %u broke again while both look alive to the "
                  "master; evicting both (neither one's word decides who goes)", (unsigned long long)reporter,
                  (unsigned long long)suspect, g.id);
        const std::string why = "the link between peers " + std::to_string(reporter) + " and " + std::to_string(suspect) +
                                " broke again while both were alive; both ends are removed; connect again";
        std::vector<uint64_t> both{reporter, suspect};
        start_recovery(g, EpochCause::kLost, both);  // removes both first, then starts one recovery
        for (auto id : both)
            if (Peer* q = find(id)) evict(*q, why);
        return;
    }
    PCCL_INFO("master", "peer %llu of group %u looks alive to the master: starting a new epoch without evicting it",
              (unsigned long long)suspect, g.id);
    start_recovery(g, cause, {});
}

void Master::start_recovery(Group& g, EpochCause cause, const std::vector<uint64_t>& removed) {
    for (auto id : removed) remove_member(g, id);
    if (g.recovering) {
        if (static_cast<int>(cause) > static_cast<int>(g.cause) && cause != EpochCause::kJoin) g.cause = cause;
        check_recovery(g);
        return;
    }
    if (g.members.empty()) {
        // Nobody is left to vote: admit whoever is waiting.
        if (!g.pending.empty()) {
            g.recovering = true;
            g.epoch += 1;
            g.cause = EpochCause::kJoin;
            g.admitting = g.pending;
            g.pending.clear();
            finish_recovery(g);
        }
        return;
    }
    g.recovering = true;
    g.epoch += 1;
    g.cause = cause;
    g.statuses.clear();
    g.awaiting = std::set<uint64_t>(g.members.begin(), g.members.end());
    double wait = 1.0;
    for (auto id : g.members)
        if (Peer* m = find(id)) wait = std::max(wait, m->hello.heartbeat_timeout_ms / 1000.0);
    g.recovery_deadline = deadline_after(wait);
    auto frame = encode_recover(Recover{g.epoch});
    for (auto id : g.members)
        if (Peer* m = find(id)) send(*m, frame);
    check_recovery(g);
}

void Master::check_recovery(Group& g) {
    if (!g.recovering || !g.awaiting.empty()) return;
    finish_recovery(g);
}

void Master::finish_recovery(Group& g) {
    auto decisions = decide(g.statuses);
    for (auto id : g.admitting) {
        if (Peer* p = find(id)) {
            p->state = PeerState::kMember;
            g.members.push_back(id);
        }
    }
    uint32_t admitted = static_cast<uint32_t>(g.admitting.size());
    g.admitting.clear();
    g.statuses.clear();
    g.recovering = false;
    // Whatever the epoch's cause turned out to be, an admission that a vote asked for ends that vote.
    const bool vote_ended = std::exchange(g.vote_admission, false);
    if (g.members.empty()) return;
    const uint32_t still_pending = static_cast<uint32_t>(g.pending.size());
    EpochMsg m{g.id, g.epoch, g.cause, {}, decisions, still_pending, {}};  // pair tokens: per member, below
    for (auto id : g.members) {
        Peer* p = find(id);
        m.members.push_back(MemberInfo{id, p->hello.host, p->hello.port, p->hello.connections});
    }
    PCCL_INFO("master", "group %u epoch %llu (%s): members [%s], %zu op decision(s)", g.id,
              (unsigned long long)g.epoch, epoch_cause_name(g.cause), ids_to_string(g.members).c_str(), decisions.size());
    // Each member gets its own EPOCH: the same membership and decisions, and the tokens of its own
    // mesh pairs only (auth/mesh_auth.hpp), derived under a key drawn for this epoch and never sent.
    const Nonce epoch_key = random_nonce();
    for (auto id : g.members)
        if (Peer* p = find(id)) {
            m.pair_tokens = mesh_pair_tokens(epoch_key, id, g.members);
            send(*p, encode_epoch(m));
        }
    if (vote_ended) {
        // The pending count goes out first: a member handles frames in order, so once its
        // update_topology() returns, are_peers_pending() no longer counts the peers just admitted
        // (otherwise a caller could vote again at once, for nobody, and strand the next newcomer).
        broadcast_pending(g);
        auto result = encode_vote_result(VoteResult{0, admitted, still_pending, ""});
        for (auto id : g.voters)
            if (Peer* p = find(id)) send(*p, result);
        g.voters.clear();
    }
    check_vote(g);
}

void Master::check_vote(Group& g) {
    if (g.voters.empty() || g.recovering || g.rebuilding) return;
    for (auto id : g.members)
        if (!g.voters.count(id)) return;
    if (!g.pending.empty()) {
        g.admitting = g.pending;
        g.pending.clear();
        g.vote_admission = true;
        start_recovery(g, EpochCause::kJoin, {});
        return;
    }
    auto result = encode_vote_result(VoteResult{0, 0, 0, ""});
    for (auto id : g.voters)
        if (Peer* p = find(id)) send(*p, result);
    g.voters.clear();
}

void Master::timers() {
    auto now = Clock::now();
    bool beat = seconds_since(last_heartbeat_) >= kHeartbeatEvery;
    if (beat) last_heartbeat_ = now;
    auto heartbeat = encode_empty(MsgType::kHeartbeat);
    handshake_deadlines(now);
    for (auto& [id, p] : peers_) {
        if (p->dead) continue;
        if (p->state == PeerState::kHandshake) continue;  // handshake_deadlines()
        double silent = std::chrono::duration<double>(now - p->last_seen).count();
        if (p->state == PeerState::kHeld) {
            if (now > p->held_until)
                evict(*p, "the master restarted and peer group " + std::to_string(p->hello.group) +
                              " could not take this peer back (newcomers run the group and no other member of this peer's "
                              "claimed membership rejoined to confirm the claim); connect again");
            continue;
        }
        double limit = p->hello.heartbeat_timeout_ms / 1000.0;
        if (silent > limit) {
            char why[128];
            std::snprintf(why, sizeof why, "no heartbeat for %.1f s (frozen or unreachable)", silent);
            evict(*p, why);
            continue;
        }
        if (beat) send(*p, heartbeat);
    }
    for (auto& [gid, g] : groups_) {
        check_rebuild(g);
        if (g.recovering && now > g.recovery_deadline) {
            // Members that did not report their op state in time are frozen or cut off.
            std::vector<uint64_t> silent(g.awaiting.begin(), g.awaiting.end());
            for (auto id : silent)
                if (Peer* p = find(id)) evict(*p, "did not answer a recovery request in time");
            g.awaiting.clear();
            check_recovery(g);
        }
        if (!g.voters.empty() && !g.recovering && now > g.vote_deadline) {
            std::vector<uint64_t> missing;
            for (auto id : g.members)
                if (!g.voters.count(id)) missing.push_back(id);
            char msg[512];
            std::snprintf(msg, sizeof msg,
                          "update_topology() timed out after %.1f s: member(s) %s did not call it; pending peers stay "
                          "pending, call update_topology() again on every member",
                          g.vote_timeout, ids_to_string(missing).c_str());
            auto result = encode_vote_result(VoteResult{1, 0, 0, msg});
            for (auto id : g.voters)
                if (Peer* p = find(id)) send(*p, result);
            g.voters.clear();
        }
    }
}

}  // namespace pccl
