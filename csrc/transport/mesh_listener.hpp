// Accepts peer-to-peer connections, authenticates and validates their handshake (auth/mesh_auth.hpp),
// and parks them until the epoch they belong to is being built. A connection that sends garbage,
// nothing, or a handshake without the key of the slot it claims (only the member named as its
// sender and this peer hold it) is closed with a logged reason; it can never reach the data path.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <tuple>

#include "auth/mesh_auth.hpp"
#include "protocol/frame.hpp"
#include "transport/socket.hpp"

namespace pccl {

class MeshListener {
public:
    MeshListener(const std::string& host, uint16_t port);
    ~MeshListener();
    uint16_t port() const { return port_; }
    // Connections are accepted only once this peer knows who it is.
    void set_identity(uint32_t group, uint64_t peer_id);
    // The keys of `epoch`'s mesh handshakes, by the other member's id (mesh_pair_key): a handshake
    // from member F is checked against F's key only. Set before that epoch's mesh is built;
    // handshakes of an epoch whose keys are not known yet are parked and checked when taken.
    void set_epoch_keys(uint64_t epoch, std::map<uint64_t, Mac> keys);
    // Waits for an authenticated connection (epoch, from, index); returns an invalid Fd at the deadline.
    Fd take(uint64_t epoch, uint64_t from, uint16_t index, TimePoint deadline);
    // Drops parked connections (and keys) of epochs before `epoch`.
    void forget_before(uint64_t epoch);
    void stop();

private:
    void loop();
    using Key = std::tuple<uint64_t, uint64_t, uint16_t>;
    struct Parked {
        Fd fd;
        TimePoint since;
        bool verified = false;  // its proof checked out and the listener's proof was sent
        Handshake hs{};
        Nonce listener_nonce{};
        MeshAuthTail tail{};
        std::string remote;
    };
    // Checks a parked connection's proof against its epoch's key and answers with this side's proof.
    // Precondition: mutex_ held. Returns an empty string, or why the connection must be closed.
    std::string verify(Parked& p, bool blocking);
    bool evict_unverified_parked();
    Fd listener_;
    uint16_t port_ = 0;
    std::atomic<bool> stop_{false};
    std::thread thread_;
    std::mutex mutex_;
    std::condition_variable cv_;
    std::multimap<Key, Parked> parked_;  // several candidates per slot: an impostor cannot displace the member
    std::map<uint64_t, std::map<uint64_t, Mac>> keys_;  // by epoch, then by the other member's id
    uint32_t group_ = 0;
    uint64_t peer_id_ = 0;
    uint64_t min_epoch_ = 0;
};

// A dialed connection whose handshake is sent but whose listener has not proven itself yet.
struct MeshDial {
    Fd fd;
    Mac expect;  // the listener's proof
};

// Connects to a member's listener and sends the authenticated handshake (key: the pair's
// mesh_pair_key).
MeshDial dial_mesh(const std::string& host, uint16_t port, const Handshake& hs, const Mac& key, TimePoint deadline);
// Reads and checks the listener's proof; throws Error(kAuth) when it is wrong, kTimeout at the deadline.
// Separate from dial_mesh so a peer dials all its connections before it waits for any answer (the
// listener answers only once its own peer takes the connection, after that peer's own dials).
Fd confirm_mesh_dial(MeshDial& d, TimePoint deadline);

}  // namespace pccl
