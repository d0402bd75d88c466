#include "peer/communicator.hpp"

#include <algorithm>
#include <cstring>
#include <poll.h>
#include <thread>
#include <sys/socket.h>

#include "auth/control_auth.hpp"
#include "common/log.hpp"
#include "common/thread_name.hpp"

namespace pccl {
Communicator::Communicator(CommConfig config) : config_(std::move(config)) {
    auto hp = parse_host_port(config_.master_address);
    master_host_ = hp.host;
    master_port_ = hp.port;
    if (config_.encrypt && config_.secret.empty())
        throw Error(ErrorCode::kInvalidArgument,
                    "encryption='tls' needs the job secret (secret= or PCCL_SECRET): the TLS handshakes are "
                    "authenticated with a key derived from it; give the master and every peer the same secret");
}

Communicator::~Communicator() {
    try {
        close();
    } catch (...) {
    }
}

// ---------------------------------------------------------------------------------------------
// public API

void Communicator::connect() {
    {
        std::lock_guard<std::mutex> lock(mutex_);
        if (state_ != State::kIdle) {
            if (state_ == State::kJoining || state_ == State::kMember)
                throw Error(ErrorCode::kInvalidArgument, "connect() was already called on this communicator");
            throw_state_error("connect");
        }
    }
    listener_ = std::make_unique<MeshListener>(config_.listen_host, config_.listen_port);
    try {
        master_ = Link(connect_tcp(master_host_, master_port_, deadline_after(std::min(config_.timeout, 30.0))));
    } catch (const Error& e) {
        listener_->stop();
        throw Error(ErrorCode::kMasterLost, "cannot reach the master at " + config_.master_address + " (" + e.what() +
                                                "); check that pccl-master is running there and the address is right");
    }
    Hello& h = hello_;
    h.group = config_.group;
    h.heartbeat_timeout_ms = static_cast<uint32_t>(config_.heartbeat_timeout * 1000);
    h.host = config_.advertise_host.empty() ? local_ip(master_.get()) : config_.advertise_host;
    h.port = config_.advertise_port ? config_.advertise_port : listener_->port();
    h.connections = static_cast<uint16_t>(config_.connections);
    try {
        authenticate(master_, encode_hello(h), std::min(config_.timeout, 30.0));
    } catch (const Error& e) {
        listener_->stop();
        master_.reset();
        if (e.code() != ErrorCode::kIo) throw;
        throw Error(ErrorCode::kMasterLost, "the master at " + config_.master_address + " closed the connection during the "
                                            "authentication handshake (" + e.what() + "); is it a pccl_py master of this version?");
    }
    {
        std::lock_guard<std::mutex> lock(mutex_);
        state_ = State::kJoining;
    }
    control_ = std::thread([this] {
        name_this_thread("pccl-control");
        // Whatever escapes the loop (an allocation failure, say) ends this peer's membership with a
        // clear error on every call, like a lost master; it must not end the process, nor leave calls
        // waiting for their timeout.
        std::string why;
        try {
            control_loop();
        } catch (const std::exception& e) {
            why = std::string("internal error in the control thread: ") + e.what();
        } catch (...) {
            why = "unknown internal error in the control thread";
        }
        if (!why.empty()) {
            try {
                PCCL_LOG(LogLevel::kError, "peer", "%s", why.c_str());
                enter_terminal(State::kMasterLost, why + "; close() this communicator and connect a new one");
            } catch (...) {
            }
        }
    });

    std::unique_lock<std::mutex> lock(mutex_);
    bool ok = cv_.wait_until(lock, deadline_after(config_.join_timeout), [&] {
        return (state_ == State::kMember && ready_) || is_terminal(static_cast<int>(state_));
    });
    if (is_terminal(static_cast<int>(state_))) throw_state_error("connect");
    if (!ok)
        throw Error(ErrorCode::kTimeout, "not admitted within join_timeout (" + fmt_seconds(config_.join_timeout) +
                                             "): the members of peer group " + std::to_string(config_.group) +
                                             " have not called update_topology(); close() and try again later");
}

void Communicator::authenticate(Link& link, const std::vector<uint8_t>& join_frame, double seconds) {
    if (config_.secret.empty() && binds_beyond_loopback(config_.listen_host)) {
        static std::atomic<bool> warned{false};  // once per process: every peer of a test would repeat it
        if (!warned.exchange(true))
            PCCL_WARN("peer", "*** SECURITY WARNING: this peer listens on %s without a job secret; anyone who can reach "
                              "its port or the master's can join or disturb the group. Set the same secret on the "
                              "master and every peer (secret= or PCCL_SECRET). ***", config_.listen_host.c_str());
    }
    const auto deadline = deadline_after(seconds);
    if (config_.encrypt) link.start_tls(control_tls_key(config_.secret), deadline, "the master at " + config_.master_address);
    authenticate_to_master(link, config_.secret, join_frame, deadline, config_.master_address);
}

void Communicator::check_usable(const char* what) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (state_ != State::kMember) throw_state_error(what);
}

void Communicator::update_topology() {
    check_usable("update_topology");
    // A vote sent while the master is away would be lost with the dead connection: wait (bounded by
    // master_grace) for a restarted master first. Going on after the wait is safe either way: a vote in
    // flight is sent again to a master that comes back (reconnect_master), and a terminal state ends
    // the wait for its answer below.
    presence_.wait_present(deadline_after(config_.master_grace + 1.0));
    Vote vote;
    {
        // The epoch as it is after the wait: a master that came back may have moved it on.
        std::lock_guard<std::mutex> lock(mutex_);
        vote = Vote{epoch_, static_cast<uint32_t>(config_.timeout * 1000)};
    }
    presence_.start_vote(vote);
    // However this call ends, its vote must not be re-sent to a restarted master later.
    struct EndVote {
        MasterPresence& presence;
        ~EndVote() { presence.end_vote(); }
    } end_vote{presence_};
    send_to_master(encode_vote(vote));
    auto deadline = deadline_after(config_.timeout + config_.heartbeat_timeout + 1.0 + config_.master_grace);
    std::optional<VoteResult> result = presence_.wait_vote_result(deadline);
    std::unique_lock<std::mutex> lock(mutex_);
    if (is_terminal(static_cast<int>(state_))) throw_state_error("update_topology");
    if (!result) throw Error(ErrorCode::kTimeout, "update_topology(): the master did not answer in time");
    if (result->timed_out) throw Error(ErrorCode::kTimeout, result->message);
    bool ok = cv_.wait_until(lock, deadline_after(config_.timeout),
                             [&] { return ready_ || is_terminal(static_cast<int>(state_)); });
    if (is_terminal(static_cast<int>(state_))) throw_state_error("update_topology");
    if (!ok) throw Error(ErrorCode::kTimeout, "update_topology(): the new membership did not become usable in time");
    // Every voter gets the same result, and a newcomer admitted by it gets the same count in its epoch.
    agreement_.adopt(result->pending > 0);
}

bool Communicator::peers_pending() {
    std::lock_guard<std::mutex> lock(mutex_);
    if (state_ != State::kMember) throw_state_error("are_peers_pending");
    return agreement_.answer(members_.size() == 1, pending_.load());
}

void Communicator::adopt_agreed_pending(const std::optional<bool>& agreed) {
    if (!agreed) return;  // the op never ran (bad arguments, wrong state): nothing was agreed
    agreement_.adopt(*agreed);
}

int Communicator::world_size() {
    std::lock_guard<std::mutex> lock(mutex_);
    return state_ == State::kMember ? static_cast<int>(members_.size()) : 0;
}

int Communicator::rank() {
    std::lock_guard<std::mutex> lock(mutex_);
    return state_ == State::kMember ? rank_ : -1;
}

uint64_t Communicator::epoch() {
    std::lock_guard<std::mutex> lock(mutex_);
    return epoch_;
}

uint64_t Communicator::peer_id() {
    std::lock_guard<std::mutex> lock(mutex_);
    return peer_id_;
}

void Communicator::close() {
    State prev;
    {
        std::lock_guard<std::mutex> lock(mutex_);
        prev = state_;
        if (prev == State::kClosed && !control_.joinable() && !listener_) return;
    }
    if ((prev == State::kJoining || prev == State::kMember) && master_.valid()) {
        // Leave through the master first, and only then drop the mesh: the master must learn that this
        // was a graceful leave before any member sees our connections close.
        leaving_ = true;
        send_to_master(encode_empty(MsgType::kLeave));
        std::unique_lock<std::mutex> lock(mutex_);
        cv_.wait_until(lock, deadline_after(2.0), [&] { return is_terminal(static_cast<int>(state_)); });
    }
    stop_ = true;
    if (control_.joinable()) control_.join();
    std::shared_ptr<Mesh> mesh;
    std::set<std::shared_ptr<Collective>> ops;
    {
        std::lock_guard<std::mutex> lock(mutex_);
        if (state_ != State::kEvicted && state_ != State::kMasterLost) set_terminal_locked(State::kClosed, "closed");
        ready_ = false;
        mesh = std::move(mesh_);
        ops = inflight_;
        cv_.notify_all();
    }
    // Ops still running in other threads stop now and raise ClosedError (they see the closed state).
    for (auto& op : ops) {
        op->fail(FailureKind::kLinkBroken, "the communicator was closed", -1);
        op->decide(false, EpochCause::kLost);
    }
    if (mesh) mesh->shutdown();
    if (listener_) listener_->stop();
    master_.reset();
    std::lock_guard<std::mutex> lock(mutex_);
    state_ = State::kClosed;  // the leaves were closed above, with the first terminal state
    if (terminal_reason_.empty()) terminal_reason_ = "closed";
}

void Communicator::set_terminal_locked(State state, const std::string& reason) {
    state_ = state;
    terminal_reason_ = reason;
    // Terminal is for good: the turn and vote waits end now, in the same step as the membership's
    // (their callers then find the terminal state under mutex_ and raise it). cv_'s waiters are
    // notified by the caller, which may change more of the membership first.
    turns_.close();
    presence_.close();
}

void Communicator::throw_state_error(const char* what) {
    switch (state_) {
        case State::kIdle:
            throw Error(ErrorCode::kInvalidArgument, std::string(what) + ": the communicator is not connected; call connect() first");
        case State::kJoining:
            throw Error(ErrorCode::kInvalidArgument, std::string(what) + ": this peer has not been admitted yet; wait for connect() to return");
        case State::kMember:
            throw Error(ErrorCode::kInvalidArgument, std::string(what) + ": unexpected state");
        case State::kEvicted:
            if (left_on_error_) throw Error(ErrorCode::kEvicted, std::string(what) + ": " + terminal_reason_);
            throw Error(ErrorCode::kEvicted, std::string(what) + ": this peer was evicted by the master (" + terminal_reason_ +
                                                 "); the others continue without it. Create a new Communicator to rejoin as a new peer");
        case State::kMasterLost:
            throw Error(ErrorCode::kMasterLost, std::string(what) + ": the master is unreachable (" + terminal_reason_ +
                                                    "); no membership change or failure can be resolved. Restart the master and create a new Communicator");
        case State::kClosed:
            throw Error(ErrorCode::kClosed, std::string(what) + ": the communicator is closed; create a new Communicator to rejoin");
    }
    throw Error(ErrorCode::kInvalidArgument, "bad state");
}

uint64_t Communicator::reserve_turn(uint32_t tag, uint64_t lane) { return turns_.reserve({tag, lane}); }

// Adopts an op's agreed pending flag when its outcome, result or error, leaves for the caller.
struct AdoptOnReturn {
    Communicator* comm;
    std::optional<bool> agreed;
    ~AdoptOnReturn() { comm->adopt_agreed_pending(agreed); }
};

ReduceResult Communicator::all_reduce(const CollectiveSpec& spec) {
    check_usable("all_reduce");
    AdoptOnReturn adopt{this, {}};
    return all_reduce_in_turn(spec, reserve_turn(spec.tag), &adopt.agreed);
}

ReduceResult Communicator::all_reduce_in_turn(const CollectiveSpec& requested, uint64_t ticket, std::optional<bool>* agreed) {
    CollectiveSpec spec = requested;
    spec.swap_pages = spec.swap_pages && config_.swap_result_pages;
    OpCall call;
    call.tag = spec.tag;
    call.agreed = agreed;
    call.make = [spec](uint64_t epoch, uint64_t seq, int world, int rank, Mesh* mesh) {
        return make_collective(spec, epoch, seq, world, rank, mesh);
    };
    call.alone = [spec] {
        // Alone: the reduction of one contribution is the contribution (AVG divides by 1).
        size_t bytes = spec.count * dtype_size(spec.dtype);
        if (bytes && spec.dst != spec.src) std::memcpy(spec.dst, spec.src, bytes);
    };
    ReduceResult r = run_in_turn(call, ticket);
    r.algorithm = choose_algorithm(spec.algorithm, spec.count * dtype_size(spec.dtype));
    return r;
}

ReduceResult Communicator::run_in_turn(const OpCall& call, uint64_t ticket) {
    // Ops on one tag (or channel) run one at a time, in the order they were submitted. Every earlier
    // op is bounded by its own deadline, so this wait is bounded too; a terminal state ends it at once.
    const TurnQueue::Key key{call.tag, call.lane};
    if (!turns_.wait(key, ticket)) {
        std::lock_guard<std::mutex> lock(mutex_);
        throw_state_error(call.name);  // the queue closes only once the state is terminal
    }
    struct TurnGuard {
        TurnQueue& turns;
        TurnQueue::Key key;
        ~TurnGuard() { turns.release(key); }
    } guard{turns_, key};
    for (int attempt = 0;; ++attempt) {
        bool retry = false;
        ReduceResult r = run_once(call, &retry);
        if (!retry) {
            r.retries = attempt;
            return r;
        }
        if (attempt >= 100)
            throw Error(ErrorCode::kPeerLost, std::string(call.name) + " was interrupted by 100 consecutive membership changes; giving up");
    }
}

ReduceResult Communicator::run_once(const OpCall& call, bool* retry) {
    const auto deadline = deadline_after(config_.timeout);
    const uint32_t tag = call.tag;
    std::shared_ptr<Collective> op;
    std::shared_ptr<Mesh> mesh;
    std::shared_ptr<OpRouter> router;
    ReduceResult result;
    {
        std::unique_lock<std::mutex> lock(mutex_);
        bool ok = cv_.wait_until(lock, deadline, [&] { return ready_ || is_terminal(static_cast<int>(state_)); });
        if (state_ != State::kMember) throw_state_error(call.name);
        if (!ok)
            throw Error(ErrorCode::kTimeout, std::string(call.name) + ": no usable membership within the timeout (" +
                                                 fmt_seconds(config_.timeout) + "); the group is still recovering from a failure");
        // Checked only once the membership is settled: a call that waited through a recovery may be
        // the very op that recovery aborted on the others.
        auto owed = call.next_seq ? owed_failures_.end() : owed_failures_.find(tag);
        if (owed != owed_failures_.end() && !owed->second.empty()) {
            OwedFailure failure = owed->second.front();
            owed->second.pop_front();
            if (call.agreed) *call.agreed = failure.pending;
            lock.unlock();
            throw_aborted(call.name, failure.cause, " (tag " + std::to_string(tag) + ")",
                          "it failed on the other members before this peer called it");
        }
        if (call.planned_epoch && call.planned_epoch != epoch_)
            throw Error(ErrorCode::kPeerLost, std::string(call.name) + ": the membership changed (epoch " +
                                                  std::to_string(call.planned_epoch) + " -> " + std::to_string(epoch_) +
                                                  ") after this operation was planned; plan it again with the survivors");
        result.world_size = static_cast<int>(members_.size());
        result.rank = rank_;
        result.epoch = epoch_;
        uint64_t seq = call.next_seq ? call.next_seq() : next_seq_[tag]++;
        if (members_.size() == 1) {
            call.alone();
            committed_[tag] = seq + 1;
            result.peers_pending = committed_pending_[tag] = pending_.load() > 0;
            if (call.agreed) *call.agreed = result.peers_pending;
            return result;
        }
        mesh = mesh_;
        router = router_;
        op = call.make(epoch_, seq, static_cast<int>(members_.size()), rank_, mesh.get());
        op->set_pending_source(&pending_);
        inflight_.insert(op);
    }
    // Routing hands over early frames (possibly large copies), so it happens outside mutex_. An
    // eviction between the insert above and this point failed only the ops already routed; the
    // state check after routing catches it, and one after it finds this op routed.
    router->add(op);
    {
        std::lock_guard<std::mutex> lock(mutex_);
        if (state_ == State::kEvicted || state_ == State::kClosed)
            op->fail(FailureKind::kLinkBroken, terminal_reason_, -1);
    }
    result.algorithm = op->algorithm();
    auto finish = [&] {
        router->remove(op.get());
        std::lock_guard<std::mutex> lock(mutex_);
        inflight_.erase(op);
    };
    auto succeed = [&] {
        op->publish();
        finish();
        std::lock_guard<std::mutex> lock(mutex_);
        result.peers_pending = op->peers_pending();
        if (call.agreed) *call.agreed = result.peers_pending;
        if (epoch_ == op->epoch()) {
            if (call.on_commit) {
                call.on_commit(*op);
            } else if (op->seq() + 1 >= committed_[tag]) {
                committed_[tag] = op->seq() + 1;
                committed_pending_[tag] = result.peers_pending;
            }
        }
        result.tx_bytes = op->tx_bytes();
        result.rx_bytes = op->rx_bytes();
        result.swapped_bytes = op->swapped_bytes();
        return result;
    };
    auto abandon = [&] {
        // No decision will come: make sure the I/O thread no longer reads the caller's buffers.
        mesh->shutdown();
        finish();
        std::lock_guard<std::mutex> lock(mutex_);
        if (state_ != State::kMember) throw_state_error(call.name);
    };
    auto abandon_if_terminal = [&] {
        bool terminal;
        {
            std::lock_guard<std::mutex> lock(mutex_);
            terminal = is_terminal(static_cast<int>(state_));
        }
        if (terminal) abandon();
    };

    try {
        op->execute(deadline);
        return succeed();
    } catch (const Interrupted&) {
    }
    abandon_if_terminal();
    auto f = op->failure();
    if (f.failed) report_failure(op->epoch(), f.kind, f.suspect);
    bool commit = false;
    EpochCause cause = EpochCause::kLost;
    double wait = 2 * config_.heartbeat_timeout + 2.0 + config_.master_grace;
    if (!op->wait_decision(deadline_after(wait), &commit, &cause)) {
        abandon();
        throw Error(ErrorCode::kMasterLost, std::string(call.name) + " failed (" + f.why +
                                                ") and the master did not resolve it within " + fmt_seconds(wait) +
                                                "; your buffers are unchanged");
    }
    if (commit) return succeed();
    abandon_if_terminal();
    finish();
    if (call.aborted) {
        call.aborted(cause, f.why);  // throws unless the op is to be re-run
        *retry = true;
        return result;
    }
    // Aborted by the master's decision: every member adopts the pending count of the epoch that
    // carried it (a transparent re-run instead gets the flag of the run that completes).
    if (call.agreed) *call.agreed = op->peers_pending();
    if ((cause == EpochCause::kJoin || cause == EpochCause::kLeft) && !call.planned_epoch) {
        *retry = true;  // nobody failed: re-run among the new membership, invisibly to the caller
        return result;
    }
    throw_aborted(call.name, cause, " (tag " + std::to_string(tag) + ", epoch " + std::to_string(op->epoch()) + ")", f.why);
}

void Communicator::throw_aborted(const char* name, EpochCause cause, const std::string& where, const std::string& why) {
    const std::string n(name);
    switch (cause) {
        case EpochCause::kTimeout:
            throw Error(ErrorCode::kTimeout, n + " timed out" + where + (why.empty() ? "" : ": " + why) +
                                                 "; it was aborted on every peer and your buffers are unchanged; call it again to retry");
        case EpochCause::kMismatch:
            throw Error(ErrorCode::kMismatch, n + " aborted on every peer" + where +
                                                  ": peers passed different count, dtype, op or algorithm for the same tag; "
                                                  "make every peer issue identical collectives in the same order");
        case EpochCause::kJoin:
        case EpochCause::kLeft:
            throw Error(ErrorCode::kPeerLost, n + " was interrupted by a membership change" + where +
                                                  "; it was aborted on every peer and your buffers are unchanged; plan it again");
        default:
            throw Error(ErrorCode::kPeerLost, "a peer was lost during " + n + where +
                                                  "; the op was aborted on every surviving peer and your buffers are unchanged; "
                                                  "call " + n + " again to retry with the survivors");
    }
}

}  // namespace pccl
