// A peer: its control connection to the master, the membership epoch it is in, the mesh of that
// epoch, and the collectives running on it. The control thread owns every epoch transition
// (freeze -> report -> new membership -> new mesh); caller threads run collectives and only wait.
//
// The peer's state is four state machines, each under its own lock:
// - the membership (this class, mutex_ + cv_): the connection state (joining, member, terminal), the
//   epoch, its members and this peer's rank, its mesh and router, the ops in flight, and the per-tag
//   and per-channel bookkeeping of the epoch (sequence numbers, commits, failures owed). These stay
//   together because an epoch transition must change all of them in one step: on_epoch decides the
//   closing epoch's ops, owes the failures they imply against the commits counted so far and installs
//   the new members, router and sequence numbers, while run_once reads the members, rank, mesh and
//   router, numbers its op and registers it, and either must see all of the other's work or none.
// - turn-taking (TurnQueue, peer/turns.hpp): the order of the ops on one tag or channel;
// - the master's presence and the vote in flight with it (MasterPresence, peer/master_presence.hpp);
// - the agreed pending flag (PendingAgreement, peer/pending_agreement.hpp).
// send_mutex_ guards only writes to the master connection.
//
// Lock order (a lock may be taken while holding one above it, never one below it while holding it):
//   1. mutex_ (the membership)
//   2. the leaves: TurnQueue::mutex_, MasterPresence::mutex_, PendingAgreement::mutex_, and the locks
//      of the layers below that mutex_'s holders call into (an op's, the mesh's, the listener's; none
//      of them calls back into this class while holding its own lock)
// The leaves never call out while holding their lock, so no two leaves are ever held together; the
// communicator takes a leaf with mutex_ held only where the step must be atomic with the membership
// (a terminal state closes the turn queue and the master's presence with it; a lost master is marked
// away while its rejoin claim is built). send_mutex_ is taken with no other lock of this class held,
// and nothing is taken under it.
//
// Waits: cv_ wakes the waiters on the membership (connect, update_topology's wait for the new mesh,
// run_once's wait for a usable epoch, close's wait for the leave), each with a deadline, each also
// woken by a terminal state. The leaves' waits are woken by their own state and by their close(),
// which every terminal transition calls under mutex_ (set_terminal_locked), so no wait outlives the
// communicator's end.
#pragma once
#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "collectives/collective.hpp"
#include "collectives/p2p.hpp"
#include "peer/master_presence.hpp"
#include "peer/op_router.hpp"
#include "peer/pending_agreement.hpp"
#include "peer/turns.hpp"
#include "protocol/messages.hpp"
#include "transport/mesh.hpp"
#include "transport/mesh_listener.hpp"

namespace pccl {

struct CommConfig {
    std::string master_address;  // host:port
    uint32_t group = 0;
    int connections = 1;
    double timeout = 60.0;           // per collective, per master request
    double heartbeat_timeout = 5.0;  // silence after which a peer (or the master) counts as dead
    double join_timeout = 600.0;     // how long connect() waits for admission
    std::string listen_host = "0.0.0.0";
    uint16_t listen_port = 0;    // 0: any free port
    std::string advertise_host;  // empty: the address this peer uses to reach the master
    uint16_t advertise_port = 0; // 0: the listen port (set both to route peers through a relay or NAT)
    double master_grace = 0.0;   // how long a member waits for a restarted master (0: the loss is final)
    bool swap_result_pages = true;  // see collectives/page_swap.hpp
    std::string secret;          // the job secret (empty: none); see auth/control_auth.hpp
    bool encrypt = false;        // TLS on every connection (transport/tls.hpp); needs the secret
};

struct ReduceResult {
    int world_size = 0;
    int rank = -1;  // this peer's rank in the membership the op ran in
    uint64_t tx_bytes = 0;
    uint64_t rx_bytes = 0;
    uint64_t swapped_bytes = 0;  // of the result, published by swapping pages rather than copying
    Algorithm algorithm = Algorithm::kRing;
    uint64_t epoch = 0;
    int retries = 0;  // transparent re-runs after a graceful leave or a join
    bool peers_pending = false;  // agreed by every member at the op's end (see peers_pending())
};

class Communicator {
public:
    explicit Communicator(CommConfig config);
    ~Communicator();
    Communicator(const Communicator&) = delete;
    Communicator& operator=(const Communicator&) = delete;

    void connect();
    void update_topology();
    // Whether peers wait for admission, as agreed by every member at the same point of the op
    // sequence: the value carried by the outcome this peer's caller received last (an op's return or
    // error, an async op's wait(), update_topology(), connect()). A second call with no such outcome
    // in between returns the master's live count instead, so an idle polling loop still sees newcomers;
    // so does a member alone in its group. See docs/architecture.md, "Agreeing on pending peers".
    bool peers_pending();
    int world_size();
    int rank();
    uint64_t epoch();
    uint64_t peer_id();
    void close();
    // Validates state and arguments before any network traffic; throws Error.
    ReduceResult all_reduce(const CollectiveSpec& spec);
    // Reserves this op's place in its tag's order now (in the caller's thread), so async ops on one tag
    // run in submission order on every peer.
    uint64_t reserve_turn(uint32_t tag, uint64_t lane = 0);
    // agreed: set to the op's agreed pending flag once its outcome (result or error) is known, for
    // the caller to adopt when it hands that outcome over (adopt_agreed_pending()).
    ReduceResult all_reduce_in_turn(const CollectiveSpec& spec, uint64_t ticket, std::optional<bool>* agreed = nullptr);
    void adopt_agreed_pending(const std::optional<bool>& agreed);
    void check_usable(const char* what);  // what: the call, for the error message

    // Point-to-point send/recv (peer/p2p.cpp). spec.peer is a rank of the current epoch. prepare_p2p
    // validates the call and reserves its turn on its channel (peer, direction, tag) in the caller's
    // thread, so async ops on one channel keep submission order; run_p2p then runs it (on any thread).
    struct P2PTicket {
        uint64_t peer_id = 0, lane = 0, ticket = 0;
    };
    P2PTicket prepare_p2p(const P2PSpec& spec);
    ReduceResult run_p2p(const P2PSpec& spec, const P2PTicket& ticket);
    ReduceResult p2p(const P2PSpec& spec) { return run_p2p(spec, prepare_p2p(spec)); }

    // Fault injection for the protocol-hardening tests (tests/security/test_hostile.py): sends the master
    // a FAILURE report naming any suspect, as a malicious member could. Not part of the Python API.
    void send_failure_report(uint64_t epoch, uint8_t kind, uint64_t suspect);

private:
    enum class State { kIdle, kJoining, kMember, kEvicted, kMasterLost, kClosed };
    static bool is_terminal(int s) { return s >= static_cast<int>(State::kEvicted); }  // evicted, master lost, closed

    // control thread
    void control_loop();
    void handle_message(MsgType type, Reader& r);
    void on_epoch(const EpochMsg& m);
    void on_recover(const Recover& m);
    void build_mesh(uint64_t epoch, const std::vector<MemberInfo>& members, int my_rank);
    void enter_terminal(State state, const std::string& reason);
    // A non-library exception while handling a welcome, recover or epoch message: this peer leaves
    // (control_plane.cpp says why). Returns false for other messages, which are safe to lose.
    bool leave_after_lost_change(MsgType type, const char* what);
    // mutex_ held: state_ turns terminal (evicted, master lost, closed) for good; the other state
    // machines' waits end with it.
    void set_terminal_locked(State state, const std::string& reason);
    // The master connection is gone: rejoin a master at the same address within master_grace.
    // Returns false once the communicator is terminal.
    bool reconnect_master(const std::string& why, FrameAssembler& in);
    // Folds what a mesh of epoch_ heard from each member into heard_; mutex_ held.
    void absorb_heard(const Mesh& mesh);
    // heard_ as the rejoin claim reports it, for the other members of `members`; mutex_ held.
    std::vector<LastHeard> last_heard(const std::vector<MemberInfo>& members);
    // Starts TLS on a fresh master connection when encrypting (transport/tls.hpp), runs the
    // authentication exchange and sends the join under it (auth/control_auth.hpp); throws
    // Error(kAuth) on a refusal either way.
    void authenticate(Link& link, const std::vector<uint8_t>& join_frame, double seconds);

    // shared helpers
    void send_to_master(const std::vector<uint8_t>& frame);
    void report_failure(uint64_t epoch, FailureKind kind, int suspect_rank);
    [[noreturn]] void throw_state_error(const char* what);  // mutex_ held
    // What run_once needs to know about one collective call, whatever its kind.
    struct OpCall {
        uint32_t tag = 0;
        const char* name = "all_reduce";
        uint64_t planned_epoch = 0;  // nonzero: only valid in this epoch, never re-run transparently
        std::function<std::shared_ptr<Collective>(uint64_t epoch, uint64_t seq, int world, int rank, Mesh* mesh)> make;
        std::function<void()> alone;  // the whole op when this peer is the only member
        std::optional<bool>* agreed = nullptr;  // receives the op's agreed pending flag, if it gets one
        // Point-to-point ops (peer/p2p.cpp) run in their channel's turn (lane != 0), number their ops
        // per channel (next_seq, mutex_ held; may throw an owed failure), count their commits per
        // channel (on_commit, mutex_ held) and decide themselves whether an aborted op is re-run
        // (aborted: returns to re-run, throws otherwise). They never set `agreed`.
        uint64_t lane = 0;
        std::function<uint64_t()> next_seq;
        std::function<void(const Collective&)> on_commit;
        std::function<void(EpochCause cause, const std::string& why)> aborted;
    };
    ReduceResult run_in_turn(const OpCall& call, uint64_t ticket);
    ReduceResult run_once(const OpCall& call, bool* retry);
    [[noreturn]] void throw_aborted(const char* name, EpochCause cause, const std::string& where, const std::string& why);

    CommConfig config_;
    std::string master_host_;
    uint16_t master_port_ = 0;
    Link master_;  // written under send_mutex_ (the control thread reads it)
    std::mutex send_mutex_;
    std::unique_ptr<MeshListener> listener_;
    std::thread control_;
    std::atomic<bool> stop_{false};
    std::atomic<bool> leaving_{false};

    // The other state machines (see the top of this file); each has its own lock, a leaf below mutex_.
    TurnQueue turns_;
    MasterPresence presence_;
    PendingAgreement agreement_;

    // The membership: every member below is guarded by mutex_ unless its comment says otherwise.
    std::mutex mutex_;
    std::condition_variable cv_;
    State state_ = State::kIdle;
    std::string terminal_reason_;
    bool left_on_error_ = false;  // kEvicted by leave_after_lost_change, not by the master: terminal_reason_ says all
    uint64_t peer_id_ = 0;
    uint64_t epoch_ = 0;
    std::vector<MemberInfo> members_;
    int rank_ = -1;
    bool ready_ = false;  // mesh of epoch_ is built
    std::shared_ptr<Mesh> mesh_;
    std::shared_ptr<OpRouter> router_;
    std::set<std::shared_ptr<Collective>> inflight_;
    std::map<uint32_t, uint64_t> next_seq_;
    std::map<uint32_t, uint64_t> committed_;
    // Ops that failed on other members before this peer started them: this peer's next op on the tag
    // is that op, so it fails the same way without running (every member sees one outcome per op).
    struct OwedFailure {
        EpochCause cause;
        bool pending;  // the flag of the epoch that decided it, which the others adopted with the error
    };
    std::map<uint32_t, std::deque<OwedFailure>> owed_failures_;
    std::map<uint32_t, bool> committed_pending_;  // per tag: the agreed flag of its last committed op
    // The master's live count (PENDING messages). Atomic, under no lock: ops read it when they send
    // their completion notices, peers_pending() when nothing was agreed since it last answered.
    std::atomic<uint32_t> pending_{0};
    // When this peer last heard from each other member of epoch_ (by peer id) over their data links, and
    // whether a link to it closed or failed. Starts at the moment the epoch's membership arrives (the
    // master vouched for every member then) and takes in each mesh as it is retired or when the master
    // is lost; a restarted master uses it to hold a missing member to the heartbeat deadline that began
    // when it went quiet (Rejoin::heard).
    struct Heard {
        TimePoint at;
        bool lost = false;
    };
    std::map<uint64_t, Heard> heard_;
    Hello hello_;  // written by connect() before the control thread starts, read under mutex_
    uint64_t failure_reported_epoch_ = 0;
    // Control thread only: [rank] the key of the current epoch's mesh connections with that member
    // (auth/mesh_auth.hpp; nothing at this peer's own rank).
    std::vector<Mac> mesh_keys_;
    // Point-to-point channels of the current epoch, by (tag, p2p_stream(key)): ops issued, ops committed.
    std::map<std::pair<uint32_t, uint64_t>, uint64_t> p2p_next_, p2p_done_;
    // By (tag, lane): ops that failed on the partner before this peer started them (see owed_failures_).
    std::map<std::pair<uint32_t, uint64_t>, std::deque<EpochCause>> p2p_owed_;
    void p2p_on_epoch(const EpochMsg& m, const std::set<std::pair<uint32_t, uint64_t>>& mine);  // mutex_ held
};

}  // namespace pccl
