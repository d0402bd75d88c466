#include "transport/mesh_listener.hpp"

#include <algorithm>
#include <cstring>
#include <map>
#include <poll.h>
#include <sys/socket.h>
#include <vector>

#include "common/failpoint.hpp"
#include "common/log.hpp"
#include "common/thread_name.hpp"
#include "transport/mesh_handshake.hpp"

namespace pccl {
namespace {
constexpr double kHandshakeSeconds = 5.0;
constexpr size_t kMaxParked = 4096;
constexpr size_t kMaxHandshaking = 1024;
// Handshakes in progress from one source address. Over it, that source's oldest is closed; over
// kMaxHandshaking, the oldest of the busiest source. A member's handshake completes in milliseconds,
// so a source that floods (or holds idle sockets: 1024 of them used to fill every slot, and no mesh
// could be built) churns its own connections and leaves the members' room. Legitimate bursts stay
// well under it: every member on one host dials `connections` (at most 64) sockets per epoch.
constexpr size_t kMaxHandshakingPerSource = 256;
// A legitimate parked connection is taken within a mesh build of its epoch, which starts milliseconds
// after it arrives; one that waits longer names an epoch that never came.
constexpr double kMaxParkedSeconds = 10.0;
constexpr size_t kHandshakeBytes = sizeof(Handshake) + sizeof(MeshAuthTail);
}  // namespace

MeshListener::MeshListener(const std::string& host, uint16_t port) {
    listener_ = listen_tcp(host, port, &port_, 1024);
    set_nonblocking(listener_.get(), true);
    thread_ = std::thread([this] {
        name_this_thread("pccl-listen");
        // The listener must outlive anything the loop throws (an allocation failure, say): the
        // connections in handshake are lost, the parked ones and the listening socket stay.
        while (!stop_) {
            try {
                loop();
            } catch (const std::exception& e) {
                PCCL_LOG(LogLevel::kError, "listener", "internal error: %s; serving on", e.what());
            } catch (...) {
                PCCL_LOG(LogLevel::kError, "listener", "unknown internal error; serving on");
            }
            if (!stop_) std::this_thread::sleep_for(std::chrono::milliseconds(10));
        }
    });
}

MeshListener::~MeshListener() { stop(); }

void MeshListener::stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
    std::lock_guard<std::mutex> lock(mutex_);
    parked_.clear();
    listener_.reset();
    cv_.notify_all();
}

void MeshListener::set_identity(uint32_t group, uint64_t peer_id) {
    std::lock_guard<std::mutex> lock(mutex_);
    group_ = group;
    peer_id_ = peer_id;
}

void MeshListener::set_epoch_keys(uint64_t epoch, std::map<uint64_t, Mac> keys) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (epoch >= min_epoch_) keys_[epoch] = std::move(keys);
}

void MeshListener::forget_before(uint64_t epoch) {
    std::lock_guard<std::mutex> lock(mutex_);
    min_epoch_ = std::max(min_epoch_, epoch);
    for (auto it = parked_.begin(); it != parked_.end();)
        it = std::get<0>(it->first) < epoch ? parked_.erase(it) : std::next(it);
    keys_.erase(keys_.begin(), keys_.lower_bound(epoch));
}

std::string MeshListener::verify(Parked& p, bool blocking) {
    if (p.verified) return {};
    // Copies: the packed fields may be misaligned.
    const uint64_t epoch = p.hs.epoch, from = p.hs.from_peer;
    auto keys = keys_.find(epoch);
    if (keys == keys_.end()) return "no mesh key for its epoch";
    // Only the member named as the sender holds its key with this peer: the slot is bound to it.
    const Mac* key = nullptr;
    switch (check_dial_proof(keys->second, p.hs, p.listener_nonce, p.tail, &key)) {
        case ProofCheck::kNotMember:
            return "mesh handshake from peer " + std::to_string(from) + ", not a member of epoch " + std::to_string(epoch);
        case ProofCheck::kWrongKey:
            return "mesh handshake without the key of its slot (it claims peer " + std::to_string(from) + " of epoch " +
                   std::to_string(epoch) + ")";
        case ProofCheck::kOk:
            break;
    }
    Mac mine = mesh_accept_proof(*key, p.hs, p.listener_nonce, p.tail.dial_nonce);
    bool sent = false;
    try {
        sent = blocking ? send_all(p.fd.get(), mine.data(), mine.size(), deadline_after(1.0))
                        : ::send(p.fd.get(), mine.data(), mine.size(), MSG_NOSIGNAL | MSG_DONTWAIT) ==
                              static_cast<ssize_t>(mine.size());
    } catch (const Error&) {
    }
    if (!sent) return "could not send the listener's proof";
    p.verified = true;
    return {};
}

// Connections parked for an epoch whose key is not known yet have proven nothing: when the parking is
// full, the oldest of them makes room (a verified one never does), so handshakes for future epochs
// from someone who guessed the group and this peer's id cannot keep the members' out.
// Precondition: mutex_ held.
bool MeshListener::evict_unverified_parked() {
    auto oldest = parked_.end();
    for (auto it = parked_.begin(); it != parked_.end(); ++it)
        if (!it->second.verified && (oldest == parked_.end() || it->second.since < oldest->second.since)) oldest = it;
    if (oldest == parked_.end()) return false;
    PCCL_WARN("listener", "parking full: closing the oldest unverified connection, from %s", oldest->second.remote.c_str());
    parked_.erase(oldest);
    return true;
}

Fd MeshListener::take(uint64_t epoch, uint64_t from, uint16_t index, TimePoint deadline) {
    std::unique_lock<std::mutex> lock(mutex_);
    Key key{epoch, from, index};
    for (;;) {
        cv_.wait_until(lock, deadline, [&] { return stop_ || parked_.count(key); });
        auto it = parked_.find(key);
        if (it == parked_.end()) return Fd();
        Parked p = std::move(it->second);
        parked_.erase(it);
        std::string why = verify(p, true);
        if (why.empty()) return std::move(p.fd);
        PCCL_WARN("listener", "closing connection from %s: %s", p.remote.c_str(), why.c_str());
    }
}

void MeshListener::loop() {
    struct Pending {
        Fd fd;
        TimePoint deadline;
        uint8_t buf[kHandshakeBytes];
        size_t got = 0;
        bool checked = false;  // the handshake's fields passed the checks
        Nonce nonce{};
        std::string remote;
    };
    std::vector<std::unique_ptr<Pending>> pending;  // in accept order: the oldest first
    std::vector<pollfd> fds;
    bool waiting_for_identity = false;
    LogBudget closed_log(100);  // a flood closes thousands of connections a second
    auto log_close = [&](const std::string& remote, const std::string& why) {
        if (closed_log.allow("listener", "closed connections"))
            PCCL_WARN("listener", "closing connection from %s: %s", remote.c_str(), why.c_str());
    };
    // Makes room for one more handshake from `source` (see kMaxHandshakingPerSource).
    auto make_room = [&](const std::string& source) {
        size_t same = 0;
        for (auto& q : pending) same += q->remote == source;
        std::string victim;
        if (same >= kMaxHandshakingPerSource) {
            victim = source;
        } else if (pending.size() >= kMaxHandshaking) {
            std::map<std::string, size_t> by_source;
            for (auto& q : pending) ++by_source[q->remote];
            victim = std::max_element(by_source.begin(), by_source.end(),
                                      [](const auto& a, const auto& b) { return a.second < b.second; })->first;
        }
        if (victim.empty()) return;
        for (auto it = pending.begin(); it != pending.end(); ++it)
            if ((*it)->remote == victim) {
                log_close(victim, "too many handshakes in progress from its address; the oldest is closed");
                pending.erase(it);
                return;
            }
    };
    while (!stop_) {
        fds.clear();
        fds.push_back({listener_.get(), POLLIN, 0});
        for (auto& p : pending) fds.push_back({p->fd.get(), POLLIN, 0});
        ::poll(fds.data(), fds.size(), waiting_for_identity ? 5 : 100);
        if (fds[0].revents & POLLIN) {
            for (int accepted = 0; accepted < 256; ++accepted) {  // a flood must not starve the handshakes
                int fd = ::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
                if (fd < 0) {
                    // Out of descriptors: the listener stays readable; free the oldest handshake
                    // rather than spin on it.
                    if ((errno == EMFILE || errno == ENFILE) && !pending.empty()) {
                        log_close(pending.front()->remote, "out of file descriptors; the oldest handshake is closed");
                        pending.erase(pending.begin());
                    }
                    break;
                }
                Fd owned(fd);
                set_nodelay(fd);
                auto p = std::make_unique<Pending>();
                p->fd = std::move(owned);
                p->deadline = deadline_after(kHandshakeSeconds);
                p->remote = peer_ip(fd);
                make_room(p->remote);
                try {
                    p->nonce = random_nonce();
                } catch (const Error& e) {
                    log_close(p->remote, e.what());
                    continue;
                }
                // The listener's challenge: 32 bytes always fit a fresh socket's send buffer.
                if (::send(fd, p->nonce.data(), p->nonce.size(), MSG_NOSIGNAL | MSG_DONTWAIT) != static_cast<ssize_t>(p->nonce.size())) {
                    const bool closed = errno == EPIPE || errno == ECONNRESET;
                    log_close(p->remote, closed ? "closed during handshake" : "could not send the handshake nonce");
                    continue;
                }
                pending.push_back(std::move(p));
            }
        }
        auto now = Clock::now();
        {
            std::lock_guard<std::mutex> lock(mutex_);
            for (auto it = parked_.begin(); it != parked_.end();) {
                if (std::chrono::duration<double>(now - it->second.since).count() > kMaxParkedSeconds) {
                    PCCL_WARN("listener", "closing a connection parked for epoch %llu that never started",
                              (unsigned long long)std::get<0>(it->first));
                    it = parked_.erase(it);
                } else {
                    ++it;
                }
            }
        }
        waiting_for_identity = false;
        for (size_t i = 0; i < pending.size();) {
            auto& p = *pending[i];
            std::string reject;
            bool done = false;
            ssize_t n = p.got == kHandshakeBytes ? 1 : ::recv(p.fd.get(), p.buf + p.got, kHandshakeBytes - p.got, MSG_DONTWAIT);
            // A dialer that closes at once may see our nonce arrive after its close and answer it
            // with a reset, so a reset here is the same event as an orderly close.
            if (n == 0 || (n < 0 && errno == ECONNRESET)) reject = "closed during handshake";
            else if (n > 0 && p.got < kHandshakeBytes) p.got += static_cast<size_t>(n);
            else if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) reject = "error during handshake";
            if (reject.empty() && p.got >= sizeof(Handshake)) {
                std::lock_guard<std::mutex> lock(mutex_);
                Handshake h;
                std::memcpy(&h, p.buf, sizeof h);
                // Members may dial a newcomer before it has read its own welcome: a handshake waits
                // (within its deadline) until this peer knows its id.
                const HandshakeCheck check = check_handshake_fields(h, group_, peer_id_, min_epoch_);
                if (check.reject) reject = check.reject;
                else if (check.wait_for_identity) waiting_for_identity = true;
                else if (p.got < kHandshakeBytes) {
                    // the fields are fine; wait for the proof
                } else if (parked_.size() >= kMaxParked && !evict_unverified_parked()) {
                    reject = "too many parked connections";
                } else {
                    failpoint::check(failpoint::Site::kMeshListener);
                    Parked park{std::move(p.fd), Clock::now(), false, h, p.nonce, {}, p.remote};
                    std::memcpy(&park.tail, p.buf + sizeof(Handshake), sizeof park.tail);
                    // Copies of the packed fields: binding a reference to a misaligned one is undefined.
                    const uint64_t epoch = h.epoch;
                    // Checked now when this epoch's keys are known (a wrong key is refused at once);
                    // otherwise when taken.
                    if (keys_.count(epoch)) reject = verify(park, false);
                    if (reject.empty()) {
                        set_nonblocking(park.fd.get(), false);
                        parked_.emplace(Key{epoch, uint64_t{h.from_peer}, uint16_t{h.conn_index}}, std::move(park));
                        cv_.notify_all();
                    }
                    done = true;
                }
            }
            if (reject.empty() && !done && now > p.deadline) reject = "no handshake within the deadline";
            if (!reject.empty()) log_close(p.remote, reject);
            if (!reject.empty() || done) {
                pending.erase(pending.begin() + static_cast<long>(i));
            } else {
                ++i;
            }
        }
    }
}

MeshDial dial_mesh(const std::string& host, uint16_t port, const Handshake& hs, const Mac& key, TimePoint deadline) {
    MeshDial d;
    d.fd = connect_tcp(host, port, deadline);
    Nonce listener_nonce;
    if (!recv_all(d.fd.get(), listener_nonce.data(), listener_nonce.size(), deadline))
        throw Error(ErrorCode::kTimeout, "the member's listener sent no handshake nonce in time");
    MeshAuthTail tail{random_nonce(), {}};
    tail.proof = mesh_dial_proof(key, hs, listener_nonce, tail.dial_nonce);
    d.expect = mesh_accept_proof(key, hs, listener_nonce, tail.dial_nonce);
    uint8_t out[kHandshakeBytes];
    std::memcpy(out, &hs, sizeof hs);
    std::memcpy(out + sizeof hs, &tail, sizeof tail);
    if (!send_all(d.fd.get(), out, sizeof out, deadline)) throw Error(ErrorCode::kTimeout, "handshake send timed out");
    return d;
}

Fd confirm_mesh_dial(MeshDial& d, TimePoint deadline) {
    Mac got;
    if (!recv_all(d.fd.get(), got.data(), got.size(), deadline))
        throw Error(ErrorCode::kTimeout, "the member did not confirm the mesh handshake in time");
    if (!mac_equal(got.data(), d.expect.data(), got.size()))
        throw Error(ErrorCode::kAuth, "the member's listener could not prove it holds our pair's mesh key for this epoch");
    return std::move(d.fd);
}

}  // namespace pccl
