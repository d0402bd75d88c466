// The master's rebuild after a restart: REJOIN claims, the rebuild window and the membership chosen
// when it closes. Kept apart from master.cpp (connections, messages, recoveries, votes): this is the one
// place where a master that knows nothing takes the members' word for what the group was, so it is where
// hostile claims are weighed (docs/security.md, "Hostile members").
//
// Precondition for every function here: called on the master's thread (the only one touching peers_
// and groups_).
#include <algorithm>
#include <chrono>
#include <functional>
#include <set>
#include <string>
#include <vector>

#include "common/log.hpp"
#include "coordinator/master.hpp"

namespace pccl {
namespace {

// How long a restarted master's rebuild window stays open at least, whatever the claims say about the
// missing members: a live member redials every 100 ms, so it is back within a few tries of the first
// one. (A member that is not back by then and that the claims show silent for its heartbeat timeout
// is left out: waiting for it longer would re-arm a detection that began before the restart.)
constexpr double kRedialWindow = 0.5;
// How long after its own start a master lets old members displace newcomers that formed a group at it
// before they came back (on_rejoin). Live members redial every 100 ms through their master_grace; this
// covers members that were frozen or slow for a while, and after it a running group cannot be taken over
// by claims at all.
constexpr double kRejoinWindow = 30.0;
}  // namespace

namespace {
// Two claims are connected when one lists the other's claimant: they describe the same group history.
bool lists(const Rejoin& c, uint64_t id) {
    return std::any_of(c.members.begin(), c.members.end(), [&](const MemberInfo& mi) { return mi.peer_id == id; });
}
}  // namespace

// A restarted master knows nothing; the members tell it. The first rejoin of a group opens a window
// (that member's heartbeat timeout) for the other members to come back. When all have, and
// they agree on the epoch, the group simply continues: its mesh never depended on the master. Any
// gap (a member that did not return, a member that was mid-recovery, disagreeing claims) is closed
// by an ordinary recovery into a new epoch, which also settles every in-flight op.
//
// A claim is only a claim (docs/security.md, "Hostile members"): whoever holds the secret (anyone, without one) can send any
// REJOIN. So a group that runs with live members is never handed over on one: a claim that lists one
// of them is refused (the group went on without the claimant), a group that was itself rebuilt from
// claims is never displaced, and newcomers that formed a group at this master before the old members
// came back yield only while the master is young (kRejoinWindow) and only to two claimants whose
// claims are connected (one lists the other); a lone claim is held until a second one comes or its
// heartbeat timeout passes, then refused. finish_rebuild() keeps claims from taking over each other.
void Master::on_rejoin(Peer& p, const Rejoin& m) {
    Group& g = group(m.hello.group);
    auto refuse = [&](const std::string& why) {
        send(p, encode_evicted(Evicted{"the master restarted and peer group " + std::to_string(g.id) +
                                       " could not take this peer back (" + why + ")"}));
        drop(p, "rejoin of peer " + std::to_string(m.peer_id) + " to group " + std::to_string(g.id) + " refused: " + why,
             false);
    };
    for (const auto& mi : m.members)
        if (mi.peer_id > max_claimable_id_)
            return refuse("it names peer id " + std::to_string(mi.peer_id) + ", above any id an earlier master can have handed out");
    if (find(m.peer_id)) return refuse("its peer id is taken");
    if (!g.rebuilding) {
        if (!g.members.empty() || !g.pending.empty()) {
            for (const auto& mi : m.members)
                if (std::find(g.members.begin(), g.members.end(), mi.peer_id) != g.members.end())
                    return refuse("the group already runs without it");
            if (g.rebuilt || seconds_since(started_) > kRejoinWindow)
                return refuse("the group runs with other members and this claim lists none of them");
            // Newcomers reached the restarted master before the old members did and formed a group of
            // their own. The old members hold the state; the newcomers hold nothing yet and join again,
            // but only once a second claimant corroborates: one REJOIN evicts nobody.
            uint64_t partner = 0;
            for (const auto& [id, h] : g.held)
                if (find(id) && (lists(h.claim, m.peer_id) || lists(m, id))) partner = id;
            if (!partner) return hold_claim(g, p, m);
            std::vector<uint64_t> newcomers = g.members;
            newcomers.insert(newcomers.end(), g.pending.begin(), g.pending.end());
            std::map<uint64_t, HeldClaim> held = std::move(g.held);
            uint32_t id = g.id;
            g = Group{};
            g.id = id;
            for (auto nid : newcomers)
                if (Peer* q = find(nid)) {
                    send(*q, encode_evicted(Evicted{"the master restarted and the previous members of peer group " +
                                                    std::to_string(id) + " are rejoining; connect again"}));
                    drop(*q, "displaced by the rejoining members of group " + std::to_string(id), false);
                }
            g.held = std::move(held);
        }
        g.rebuilding = true;
        g.claims.clear();
        g.claim_order.clear();
        g.rebuild_due.clear();
        g.rebuild_lost.clear();
        g.failure_while_rebuilding = false;
        // Live members redial every 100 ms, so they are back within moments of the first; one that is
        // not back within its heartbeat timeout would count as dead anywhere else too. The window is
        // not extended by later claims: every second of it stalls the group. It closes earlier once
        // every missing member is due by what the claims report (check_rebuild).
        // The floor holds however short the first claim's heartbeat timeout: until it, any claim may be
        // a stranger's that got in first, and the members' claims are what finish_rebuild weighs it against.
        g.rebuild_floor = deadline_after(kRedialWindow);
        g.rebuild_deadline = std::max(g.rebuild_floor, deadline_after(m.hello.heartbeat_timeout_ms / 1000.0));
        // Claims held while newcomers ran the group come in first, in the order they arrived.
        std::vector<std::pair<uint64_t, HeldClaim>> held(g.held.begin(), g.held.end());
        g.held.clear();
        std::sort(held.begin(), held.end(), [](const auto& a, const auto& b) { return a.second.arrived < b.second.arrived; });
        for (auto& [hid, h] : held)
            if (Peer* q = find(hid)) take_claim(g, *q, h.claim, h.arrived, false);
    }
    take_claim(g, p, m, Clock::now(), true);
}

// Precondition: g.rebuilding; m.peer_id is free or already p's (a held claim).
void Master::take_claim(Group& g, Peer& p, const Rejoin& m, TimePoint arrived, bool check) {
    for (const auto& mi : m.members) next_peer_id_ = std::max(next_peer_id_, mi.peer_id + 1);
    p.hello = m.hello;
    if (p.hello.host.empty() || p.hello.host == "0.0.0.0") p.hello.host = p.remote;
    if (p.id != m.peer_id) rekey(p, m.peer_id);
    p.state = PeerState::kMember;
    g.claims[m.peer_id] = m;
    g.claim_order.push_back(m.peer_id);
    send(p, encode_welcome(Welcome{m.peer_id, 1}));
    PCCL_INFO("master", "peer %llu rejoined group %u (epoch %llu, %zu of %zu members back)", (unsigned long long)m.peer_id,
              g.id, (unsigned long long)m.epoch, g.claims.size(), m.members.size());
    // What this member last heard from the others dates their silence. A member goes quiet once, and
    // its heartbeat deadline runs from then, master restart or not: the old master would have evicted
    // it at that time, and the new one must not wait a fresh heartbeat_timeout for it. Any claimant that
    // heard from it more recently keeps it in (the latest evidence wins), except that a closed link is
    // final: a claimant that was itself frozen reads what a dead member sent before it died as news.
    // Either way a live member is back within the redial floor, which no evidence shortens.
    const auto hb = std::chrono::milliseconds(m.hello.heartbeat_timeout_ms);
    // A claim with a shorter heartbeat timeout than the window's shortens it (never lengthens it): the
    // first claim may be a stranger's that asks for an hour.
    g.rebuild_deadline = std::min(g.rebuild_deadline, std::max(g.rebuild_floor, arrived + hb));
    std::set<uint64_t> reported;
    for (const auto& h : m.heard) {
        const TimePoint due = arrived - std::chrono::milliseconds(h.silent_ms) + hb;
        auto [it, fresh] = g.rebuild_due.emplace(h.peer_id, due);
        if (!fresh) it->second = std::max(it->second, due);
        if (h.lost) g.rebuild_lost.insert(h.peer_id);
        reported.insert(h.peer_id);
    }
    for (const auto& mi : m.members)  // no evidence on it here: it may take the whole window
        if (mi.peer_id != m.peer_id && !reported.count(mi.peer_id)) g.rebuild_due[mi.peer_id] = g.rebuild_deadline;
    g.rebuild_due.emplace(m.peer_id, arrived);
    if (check) check_rebuild(g);
}

// A claim for a group that newcomers run at this young master, with no other claimant yet: it waits
// (no answer) until a claimant connected to it comes (on_rejoin) or its heartbeat timeout passes
// (timers() refuses it then).
void Master::hold_claim(Group& g, Peer& p, const Rejoin& m) {
    p.hello = m.hello;
    if (p.hello.host.empty() || p.hello.host == "0.0.0.0") p.hello.host = p.remote;
    rekey(p, m.peer_id);
    p.state = PeerState::kHeld;
    p.held_until = std::min(deadline_after(m.hello.heartbeat_timeout_ms / 1000.0),
                            started_ + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(kRejoinWindow)));
    g.held[m.peer_id] = HeldClaim{m, Clock::now()};
    PCCL_INFO("master", "holding the rejoin of peer %llu to group %u: newcomers run the group; it is taken back only if "
              "another member of its claim rejoins too", (unsigned long long)m.peer_id, g.id);
}

// Closes the rebuild window as soon as waiting longer cannot change its outcome: after the redial floor,
// every member a claim lists is back or every one still missing is due by the claims' evidence; or the
// window's hard end has come. Never before the floor, even when every listed member is back: the claims
// in hand may all be a stranger's (a REJOIN that lists only itself is "complete"), and the live members
// redial within the floor (docs/security.md, "Hostile members").
void Master::check_rebuild(Group& g) {
    if (!g.rebuilding) return;
    const auto now = Clock::now();
    bool all_back = true, waiting = false;
    for (const auto& [id, due] : g.rebuild_due) {
        if (g.claims.count(id)) continue;
        all_back = false;
        waiting = waiting || (due > now && !g.rebuild_lost.count(id));
    }
    if (now > g.rebuild_deadline || ((all_back || !waiting) && now >= g.rebuild_floor)) finish_rebuild(g);
}

void Master::finish_rebuild(Group& g) {
    g.rebuilding = false;
    g.rebuild_due.clear();
    const std::set<uint64_t> lost_links = std::move(g.rebuild_lost);
    g.rebuild_lost.clear();
    std::vector<uint64_t> ids;  // live claimants, in arrival order
    for (auto id : g.claim_order)
        if (g.claims.count(id) && find(id) && std::find(ids.begin(), ids.end(), id) == ids.end()) ids.push_back(id);
    g.claim_order.clear();
    if (ids.empty()) {
        g.claims.clear();
        return;
    }
    auto listed = [&](uint64_t by, uint64_t id) { return lists(g.claims.at(by), id); };
    // 1. Claims that share no member describe different histories (or a forged one). The largest set of
    // connected claims wins (ties: the one with the earliest claim); the others' claimants are refused,
    // so a stranger's claim can never exclude the members.
    std::vector<size_t> comp(ids.size());
    for (size_t i = 0; i < ids.size(); ++i) comp[i] = i;
    std::function<size_t(size_t)> root = [&](size_t i) { return comp[i] == i ? i : comp[i] = root(comp[i]); };
    for (size_t i = 0; i < ids.size(); ++i)
        for (size_t j = i + 1; j < ids.size(); ++j)
            if (listed(ids[i], ids[j]) || listed(ids[j], ids[i])) comp[root(j)] = root(i);
    std::map<size_t, size_t> size;
    for (size_t i = 0; i < ids.size(); ++i) ++size[root(i)];
    size_t best = root(0);
    for (size_t i = 0; i < ids.size(); ++i)  // arrival order: the first of equal sizes stays
        if (size[root(i)] > size[best]) best = root(i);
    std::vector<uint64_t> winners, strangers;
    for (size_t i = 0; i < ids.size(); ++i) (root(i) == best ? winners : strangers).push_back(ids[i]);
    // 2. A claimant is stale when most of the members its own claim lists (among those back) claim a
    // later epoch without it: the old master had already let the group go on without it (evicted while
    // frozen, say). Taking it back would put a peer whose op sequence stopped epochs ago next to members
    // that went on; seen in a 30-minute pccl-stress run, two such peers taken back held every later op
    // of the group until its timeout, over and over. It joins again as a new peer instead. A majority,
    // not one claim: one member claiming a later epoch without the others cannot exclude them.
    std::vector<uint64_t> kept, stale;
    for (auto x : winners) {
        int fellows = 0, went_on = 0;
        for (auto y : winners) {
            if (y == x || !listed(x, y)) continue;
            ++fellows;
            if (g.claims.at(y).epoch > g.claims.at(x).epoch && !listed(y, x)) ++went_on;
        }
        (2 * went_on > fellows ? stale : kept).push_back(x);
    }
    // 3. The most recent kept claim is the reference; members it lists come first, in its ring order,
    // then any other kept claimant (a gap the new epoch settles).
    const Rejoin* ref = &g.claims.at(kept.front());
    for (auto id : kept)
        if (g.claims.at(id).epoch > ref->epoch) ref = &g.claims.at(id);
    const uint64_t ref_epoch = ref->epoch;  // ref points into g.claims, cleared below
    bool consistent = true;
    g.epoch = ref_epoch;
    g.members.clear();
    for (const auto& mi : ref->members)
        if (std::find(kept.begin(), kept.end(), mi.peer_id) != kept.end()) g.members.push_back(mi.peer_id);
        else consistent = false;
    for (auto id : kept)
        if (std::find(g.members.begin(), g.members.end(), id) == g.members.end()) {
            g.members.push_back(id);
            consistent = false;
        }
    for (auto id : kept) {
        const Rejoin& c = g.claims.at(id);
        consistent = consistent && c.epoch == ref_epoch && c.settled && c.members.size() == ref->members.size();
    }
    // A claimant saw its link to a member that is back close or fail (members frozen past their heartbeat
    // timeout while the master was away): that mesh is broken, and the failure report it sent then was
    // lost with the old master. Continuing on it would stall the next op until its timeout (seen under
    // the sanitizer build, whose slowness stretched such a freeze); a new epoch builds a new mesh.
    for (auto id : g.members) consistent = consistent && !lost_links.count(id);
    std::map<uint64_t, uint64_t> claimed;
    for (auto id : stale) claimed[id] = g.claims.at(id).epoch;
    g.claims.clear();
    g.rebuilt = true;
    PCCL_INFO("master", "group %u rebuilt at epoch %llu with members [%s]%s", g.id, (unsigned long long)g.epoch,
              ids_to_string(g.members).c_str(), consistent ? "" : "; starting a new epoch to settle the gaps");
    for (auto id : stale)
        if (Peer* p = find(id))
            evict(*p, "the master restarted and peer group " + std::to_string(g.id) + " had already gone on without this peer "
                      "(it claims epoch " + std::to_string(claimed[id]) + ", the group was at epoch " +
                      std::to_string(ref_epoch) + " without it); connect again");
    for (auto id : strangers)
        if (Peer* p = find(id))
            evict(*p, "the master restarted and the other claims for peer group " + std::to_string(g.id) +
                      " share no member with this peer's claim; connect again");
    if (!consistent || g.failure_while_rebuilding) {
        start_recovery(g, consistent ? g.rebuild_cause : EpochCause::kLost, {});
        return;
    }
    broadcast_pending(g);
    check_vote(g);
}


}  // namespace pccl
