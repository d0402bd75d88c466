// Accepts peer-to-peer connections, reads and validates their handshake, and parks them until the
// epoch they belong to is being built. A connection that sends garbage or nothing is closed with a
// logged reason; it can never reach the data path.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <tuple>

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
    // Waits for the connection (epoch, from, index); returns an invalid Fd at the deadline.
    Fd take(uint64_t epoch, uint64_t from, uint16_t index, TimePoint deadline);
    // Drops parked connections of epochs before `epoch`.
    void forget_before(uint64_t epoch);
    void stop();

private:
    void loop();
    using Key = std::tuple<uint64_t, uint64_t, uint16_t>;
    Fd listener_;
    uint16_t port_ = 0;
    std::atomic<bool> stop_{false};
    std::thread thread_;
    std::mutex mutex_;
    std::condition_variable cv_;
    struct Parked {
        Fd fd;
        TimePoint since;
    };
    std::map<Key, Parked> parked_;
    uint32_t group_ = 0;
    uint64_t peer_id_ = 0;
    uint64_t min_epoch_ = 0;
};

// Connects to a member's listener and sends the handshake.
Fd dial_mesh(const std::string& host, uint16_t port, const Handshake& hs, TimePoint deadline);

}  // namespace pccl
