// The master: admits peers, keeps each peer group's membership and epoch, evicts dead or silent peers,
// and, when an epoch ends, collects every survivor's view of its in-flight ops and decides their
// outcome so all survivors agree (invariant 2). It is never on the data path: a steady-state
// all-reduce does not talk to it.
#pragma once
#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "auth/crypto.hpp"
#include "common/log.hpp"
#include "protocol/messages.hpp"
#include "transport/socket.hpp"
#include "transport/tls.hpp"

namespace pccl {

// What one master spends at most on connections that have not joined yet, and how big a group may
// grow. Without them a flood of idle or trickling connections (slowloris) held every slot and the
// master's memory grew with whatever anyone sent it. docs/security.md lists the defaults and why.
struct MasterLimits {
    // From accept to a completed join (authentication plus HELLO/REJOIN), absolute: a peer that
    // trickles a byte at a time is closed at this deadline all the same.
    double handshake_timeout = 5.0;
    // Connections that have not joined yet, in total and per source address. Over the per-source cap,
    // that source's oldest connection is closed; over the total, the oldest of the source holding the
    // most. A legitimate handshake takes milliseconds, so a flood churns only its own connections.
    uint32_t max_unauthenticated = 512;
    uint32_t max_unauthenticated_per_source = 64;
    // Bytes that connections which have not joined yet may hold in partial frames, in total. Their
    // authentication messages are capped at kMaxPreAuthFrame each; only the join message (a REJOIN
    // lists the whole membership) may be large, up to kMaxControlMessage.
    uint64_t max_preauth_bytes = 16u << 20;
    // Peers waiting for admission to one group, and members plus pending peers of one group (at most
    // kMaxMembers: an EPOCH naming more could not be decoded by the members).
    uint32_t max_pending_per_group = 1024;
    uint32_t max_group_size = kMaxMembers;
};

// The authentication messages before the join (AUTH_HELLO, AUTH_PROOF) are under 64 bytes.
constexpr uint32_t kMaxPreAuthFrame = 256;

// "1,2,3" (or "-" for none), for log lines about memberships (master.cpp).
std::string ids_to_string(const std::vector<uint64_t>& ids);

class Master {
public:
    // secret: the job secret every peer must prove it knows (empty: none; see auth/control_auth.hpp).
    // encrypt: every connection runs TLS keyed by the secret (transport/tls.hpp); needs a secret.
    // Throws Error(kInvalidArgument) for limits out of range.
    Master(std::string host, uint16_t port, std::string secret = {}, bool encrypt = false, MasterLimits limits = {});
    ~Master();
    void start();  // binds, then serves on a background thread
    void stop();
    uint16_t port() const { return port_; }
    const std::string& host() const { return host_; }

private:
    // kHeld: a REJOIN the master neither takes nor refuses yet (it waits for another claimant to
    // corroborate it, see on_rejoin); such a peer belongs to no membership.
    enum class PeerState { kHandshake, kPending, kMember, kHeld };
    struct Peer {
        uint64_t id = 0;
        Fd fd;
        std::string remote;
        PeerState state = PeerState::kHandshake;
        Hello hello;
        FrameAssembler in;
        std::vector<uint8_t> out;
        TimePoint last_seen;
        TimePoint accepted;  // the handshake deadline runs from here (MasterLimits::handshake_timeout)
        bool dead = false;
        // The authentication exchange (kHandshake only): which message comes next, the two nonces,
        // and the peer's proof, checked against the HELLO or REJOIN that follows it.
        enum class Auth { kHello, kProof, kJoin } auth = Auth::kHello;
        Nonce peer_nonce{}, master_nonce{};
        Mac proof{};
        // Encryption: the connection's TLS session (encrypting masters only), and whether its first
        // byte was checked for the other mode (screen_first_byte).
        std::unique_ptr<TlsSession> tls;
        bool screened = false;
        TimePoint held_until;  // kHeld only: refused then unless corroborated
    };
    struct HeldClaim {
        Rejoin claim;
        TimePoint arrived;  // its last-heard evidence is dated from here
    };
    struct Group {
        uint32_t id = 0;
        uint64_t epoch = 0;
        std::vector<uint64_t> members;  // ring order
        std::vector<uint64_t> pending;
        std::set<uint64_t> voters;
        TimePoint vote_deadline;
        double vote_timeout = 0;
        bool recovering = false;
        EpochCause cause = EpochCause::kJoin;
        std::set<uint64_t> awaiting;
        std::map<uint64_t, Status> statuses;
        std::vector<uint64_t> admitting;
        // This recovery carries out an admission that a vote decided. The voters are answered when it
        // ends, even if a loss during it changed the epoch's cause.
        bool vote_admission = false;
        TimePoint recovery_deadline;
        // After a master restart: members rejoin with what they knew, until all are back or the
        // deadline passes (see on_rejoin).
        bool rebuilding = false;
        std::map<uint64_t, Rejoin> claims;
        TimePoint rebuild_deadline;  // the window's hard end: the first claim's heartbeat timeout
        TimePoint rebuild_floor;     // it stays open at least this long, for live members to redial
        // Every member a claim lists, with the moment the claims' evidence makes it due: heartbeat_timeout
        // after the latest any claimant heard from it. Members whose link some claimant saw close are
        // due at once (rebuild_lost). The window closes once each of them is back or due (check_rebuild).
        std::map<uint64_t, TimePoint> rebuild_due;
        std::set<uint64_t> rebuild_lost;
        bool failure_while_rebuilding = false;
        EpochCause rebuild_cause = EpochCause::kLost;
        std::vector<uint64_t> claim_order;  // claimants in arrival order (finish_rebuild's tie-break)
        // Its membership came out of a rebuild (members of an earlier master), not from HELLOs here:
        // no REJOIN can displace it (on_rejoin).
        bool rebuilt = false;
        // Claims for this group while newcomers run it, waiting for a second claimant (on_rejoin).
        std::map<uint64_t, HeldClaim> held;
        // Links reported broken in recent epochs between members that both looked alive to the master:
        // (reporter, suspect) -> the epoch of the report. See on_failure.
        std::map<std::pair<uint64_t, uint64_t>, uint64_t> broken_links;
    };

    void bind_if_needed();
    void serve();
    void accept_new();
    void read_from(Peer& p);
    void flush(Peer& p);
    void send(Peer& p, const std::vector<uint8_t>& frame);
    void handle(Peer& p, MsgType type, Reader& r);
    void drop(Peer& p, const std::string& reason, bool graceful);
    void evict(Peer& p, const std::string& reason);
    // master_auth.cpp: the authentication exchange of a connection in kHandshake, then its join.
    void on_handshake(Peer& p, MsgType type, Reader& r);
    void refuse_auth(Peer& p, const std::string& why);
    // A new connection's first byte tells a TLS client from a plaintext peer; one in the wrong mode
    // is told so in the mode it speaks, logged and dropped. False when it was dropped.
    bool screen_first_byte(Peer& p);
    // A failed read or write on p's connection: logged (a TLS handshake failure is an authentication
    // refusal) and dropped.
    void drop_broken(Peer& p, const char* what);
    void warn_if_exposed() const;
    // master_limits.cpp: the resource limits (MasterLimits) and the serving loop's last line of defence.
    void admit_connection(std::unique_ptr<Peer> p);
    void out_of_descriptors();
    Peer* oldest_unjoined(const std::string* source);
    void check_preauth_budget();
    void handshake_deadlines(TimePoint now);
    bool group_has_room(Peer& p, const Hello& h);
    void collect_idle_groups();
    void serve_guarded();
    void log_closed_before_join(const Peer& p, const std::string& reason);
    void on_hello(Peer& p, const Hello& h);
    void on_rejoin(Peer& p, const Rejoin& m);
    void take_claim(Group& g, Peer& p, const Rejoin& m, TimePoint arrived, bool check);
    void hold_claim(Group& g, Peer& p, const Rejoin& m);
    void check_rebuild(Group& g);
    void finish_rebuild(Group& g);
    void rekey(Peer& p, uint64_t id);
    void on_failure(Peer& p, const Failure& f);
    void start_recovery(Group& g, EpochCause cause, const std::vector<uint64_t>& removed);
    void check_recovery(Group& g);
    void finish_recovery(Group& g);
    void check_vote(Group& g);
    void broadcast_pending(Group& g);
    void timers();
    Peer* find(uint64_t id);
    Group& group(uint32_t id);
    void remove_member(Group& g, uint64_t id);

    std::string host_;
    uint16_t requested_port_;
    std::string secret_;
    bool encrypt_ = false;
    TlsKey tls_key_{};
    MasterLimits limits_;
    uint16_t port_ = 0;
    Fd listener_;
    std::atomic<bool> stop_{false};
    std::thread thread_;
    // Peer ids are handed out at hello; until then a connection is keyed by an id from a separate
    // range, so a member rejoining a restarted master can take back its old id. Ids start at the
    // master's start time in microseconds, so a restarted master never hands out an id that the
    // previous one gave to a peer that is still coming back.
    uint64_t next_peer_id_ = 1;
    uint64_t next_conn_id_ = uint64_t{1} << 62;
    std::map<uint64_t, std::unique_ptr<Peer>> peers_;  // keyed by peer id (connection id before hello)
    std::map<uint32_t, Group> groups_;
    TimePoint last_heartbeat_;
    TimePoint last_group_sweep_;
    // A flood closes thousands of connections a second; their lines are capped (see LogBudget).
    LogBudget closed_log_{100};
    TimePoint started_ = Clock::now();
    // The highest peer id a REJOIN may claim: ids a master hands out count up from its start time in
    // microseconds, so an earlier master's are below this one's first id (a day of clock skew allowed).
    // It keeps next_peer_id_, which claims push up, far below the connection ids.
    uint64_t max_claimable_id_ = 0;
};

}  // namespace pccl
