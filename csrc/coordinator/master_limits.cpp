// The master's resource limits (MasterLimits) and its serving loop's last line of defence. Kept apart
// from master.cpp: nothing here decides membership; it only bounds what connections that have not
// joined yet can cost (slots, memory, time) and how large a group may grow, and it keeps the serving
// thread alive through an exception that escaped a handler.
//
// Precondition for every function here: called on the master's thread (the only one touching peers_
// and groups_).
#include <algorithm>
#include <cerrno>
#include <cstring>
#include <map>
#include <set>
#include <thread>

#include "common/log.hpp"
#include "coordinator/master.hpp"

namespace pccl {

Master::Peer* Master::oldest_unjoined(const std::string* source) {
    Peer* oldest = nullptr;
    for (auto& [id, q] : peers_)
        if (!q->dead && q->state == PeerState::kHandshake && (!source || q->remote == *source) &&
            (!oldest || q->accepted < oldest->accepted))
            oldest = q.get();
    return oldest;
}

// Closing the oldest connection of the busiest source makes room: a legitimate handshake completes in
// milliseconds, so what is oldest is what trickles or idles, and a source that floods churns its own
// connections, not those of other addresses.
void Master::admit_connection(std::unique_ptr<Peer> p) {
    size_t total = 0, same = 0;
    std::map<std::string, size_t> by_source;
    for (auto& [id, q] : peers_) {
        if (q->dead || q->state != PeerState::kHandshake) continue;
        ++total;
        ++by_source[q->remote];
        if (q->remote == p->remote) ++same;
    }
    if (same >= limits_.max_unauthenticated_per_source) {
        if (Peer* old = oldest_unjoined(&p->remote)) {
            drop(*old, "its source address has " + std::to_string(same) + " connections that have not joined (the limit, "
                       "max_unauthenticated_per_source); the oldest is closed", false);
            --total;
        }
    }
    if (total >= limits_.max_unauthenticated) {
        auto busiest = std::max_element(by_source.begin(), by_source.end(),
                                        [](const auto& a, const auto& b) { return a.second < b.second; });
        if (busiest != by_source.end())
            if (Peer* old = oldest_unjoined(&busiest->first))
                drop(*old, std::to_string(total) + " connections have not joined (the limit, max_unauthenticated); the "
                           "oldest of the busiest source is closed", false);
    }
    uint64_t id = p->id;
    peers_[id] = std::move(p);
}

// accept() failed for want of file descriptors: the listener stays readable, and polling it again
// at once would spin. Freeing the oldest connection that has not joined lets the next accept work.
void Master::out_of_descriptors() {
    if (closed_log_.allow("master", "connections closed before joining"))
        PCCL_WARN("master", "out of file descriptors accepting a connection (raise ulimit -n, or lower max_unauthenticated)");
    if (Peer* old = oldest_unjoined(nullptr)) drop(*old, "the master ran out of file descriptors", false);
}

// Only a connection past its proof may send a large frame (the join message); the sum of what all
// such connections hold is capped, and the one holding the most goes first.
void Master::check_preauth_budget() {
    for (;;) {
        uint64_t sum = 0;
        Peer* largest = nullptr;
        for (auto& [id, q] : peers_) {
            if (q->dead || q->state != PeerState::kHandshake) continue;
            sum += q->in.buffered();
            if (!largest || q->in.buffered() > largest->in.buffered()) largest = q.get();
        }
        if (sum <= limits_.max_preauth_bytes || !largest) return;
        drop(*largest, "connections that have not joined hold " + std::to_string(sum) +
                           " bytes of partial messages (over max_preauth_bytes); the largest is closed", false);
    }
}

void Master::handshake_deadlines(TimePoint now) {
    const auto limit = std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(limits_.handshake_timeout));
    for (auto& [id, p] : peers_)
        if (!p->dead && p->state == PeerState::kHandshake && now - p->accepted > limit)
            drop(*p, "no completed handshake within " + fmt_seconds(limits_.handshake_timeout) + " of connecting", false);
}

// Precondition: p authenticated (the master's proof is sent) and not joined yet.
bool Master::group_has_room(Peer& p, const Hello& h) {
    auto it = groups_.find(h.group);
    if (it == groups_.end()) return true;
    const Group& g = it->second;
    const size_t size = g.members.size() + g.pending.size() + g.admitting.size();
    // Each member costs its EPOCH entry (id, host, port, connections); half of a control message is
    // kept for the entries, so the epoch message stays decodable (the rest is for the recipient's mesh
    // pair tokens, 32 bytes per member: at most 128 KiB, and the op decisions).
    size_t entries = 14 + std::max(h.host.size(), p.remote.size());
    for (const auto* ids : {&g.members, &g.pending, &g.admitting})
        for (uint64_t id : *ids)
            if (const Peer* q = find(id)) entries += 14 + q->hello.host.size();
    std::string why;
    if (entries > kMaxControlMessage / 2)
        why = "peer group " + std::to_string(h.group) + " cannot take another member: its membership would not fit "
              "in an epoch message (" + std::to_string(entries) + " bytes of member entries; shorter advertised host "
              "names leave room for more)";
    else if (size >= limits_.max_group_size)
        why = "peer group " + std::to_string(h.group) + " is full: it has " + std::to_string(size) +
              " members and pending peers, the master's limit (pccl-master --max-group-size) is " +
              std::to_string(limits_.max_group_size);
    else if (g.pending.size() >= limits_.max_pending_per_group)
        why = "peer group " + std::to_string(h.group) + " already has " + std::to_string(g.pending.size()) +
              " peers waiting for admission, the master's limit (pccl-master --max-pending) is " +
              std::to_string(limits_.max_pending_per_group) + "; the members admit them with update_topology(), try again later";
    if (why.empty()) return true;
    PCCL_WARN("master", "refused connection %llu from %s: %s", (unsigned long long)p.id, p.remote.c_str(), why.c_str());
    send(p, encode_error(ErrorMsg{why}));
    drop(p, "refused: " + why, false);
    return false;
}

// A group nobody belongs to is forgotten: otherwise every HELLO naming a new group id left an entry
// behind for good. A peer naming it later starts it afresh, as after a master restart.
void Master::collect_idle_groups() {
    std::set<uint32_t> used;
    for (auto& [id, p] : peers_)
        if (!p->dead && p->state != PeerState::kHandshake) used.insert(p->hello.group);
    for (auto it = groups_.begin(); it != groups_.end();) {
        const Group& g = it->second;
        const bool idle = !used.count(it->first) && g.members.empty() && g.pending.empty() && g.admitting.empty() &&
                          g.claims.empty() && !g.rebuilding && !g.recovering;
        if (idle) PCCL_DEBUG("master", "forgetting idle group %u (epoch %llu)", it->first, (unsigned long long)g.epoch);
        it = idle ? groups_.erase(it) : std::next(it);
    }
}

void Master::log_closed_before_join(const Peer& p, const std::string& reason) {
    if (closed_log_.allow("master", "connections closed before joining"))
        PCCL_INFO("master", "connection %llu from %s closed before joining: %s", (unsigned long long)p.id, p.remote.c_str(),
                  reason.c_str());
}

// The serving thread must outlive anything a handler throws (an allocation failure, say): it logs the
// error and serves on. Per-connection handlers already close the one connection at fault
// (read_from()); this catches the rest.
void Master::serve_guarded() {
    while (!stop_) {
        try {
            serve();
            if (stop_) return;
            PCCL_WARN("master", "serving loop ended unexpectedly (poll: %s); restarting it", std::strerror(errno));
        } catch (const std::exception& e) {
            PCCL_LOG(LogLevel::kError, "master", "internal error in the serving loop: %s; serving on", e.what());
        } catch (...) {
            PCCL_LOG(LogLevel::kError, "master", "unknown internal error in the serving loop; serving on");
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
}

}  // namespace pccl
