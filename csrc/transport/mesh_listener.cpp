#include "transport/mesh_listener.hpp"

#include <poll.h>
#include <sys/socket.h>
#include <vector>

#include "common/log.hpp"
#include "common/thread_name.hpp"

namespace pccl {
namespace {
constexpr double kHandshakeSeconds = 5.0;
constexpr size_t kMaxParked = 4096;
constexpr size_t kMaxHandshaking = 1024;
// A legitimate parked connection is taken within a mesh build of its epoch, which starts milliseconds
// after it arrives; one that waits longer names an epoch that never came.
constexpr double kMaxParkedSeconds = 10.0;
}  // namespace

MeshListener::MeshListener(const std::string& host, uint16_t port) {
    listener_ = listen_tcp(host, port, &port_, 1024);
    set_nonblocking(listener_.get(), true);
    thread_ = std::thread([this] {
        name_this_thread("pccl-listen");
        loop();
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

void MeshListener::forget_before(uint64_t epoch) {
    std::lock_guard<std::mutex> lock(mutex_);
    min_epoch_ = std::max(min_epoch_, epoch);
    for (auto it = parked_.begin(); it != parked_.end();)
        it = std::get<0>(it->first) < epoch ? parked_.erase(it) : std::next(it);
}

Fd MeshListener::take(uint64_t epoch, uint64_t from, uint16_t index, TimePoint deadline) {
    std::unique_lock<std::mutex> lock(mutex_);
    Key key{epoch, from, index};
    cv_.wait_until(lock, deadline, [&] { return stop_ || parked_.count(key); });
    auto it = parked_.find(key);
    if (it == parked_.end()) return Fd();
    Fd fd = std::move(it->second.fd);
    parked_.erase(it);
    return fd;
}

void MeshListener::loop() {
    struct Pending {
        Fd fd;
        TimePoint deadline;
        Handshake hs{};
        size_t got = 0;
        std::string remote;
    };
    std::vector<Pending> pending;
    std::vector<pollfd> fds;
    bool waiting_for_identity = false;
    while (!stop_) {
        fds.clear();
        fds.push_back({listener_.get(), POLLIN, 0});
        for (auto& p : pending) fds.push_back({p.fd.get(), POLLIN, 0});
        ::poll(fds.data(), fds.size(), waiting_for_identity ? 5 : 100);
        if (fds[0].revents & POLLIN) {
            for (;;) {
                int fd = ::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
                if (fd < 0) break;
                if (pending.size() >= kMaxHandshaking) {
                    ::close(fd);
                    PCCL_WARN("listener", "too many connections in handshake; refusing one");
                    continue;
                }
                set_nodelay(fd);
                pending.push_back(Pending{Fd(fd), deadline_after(kHandshakeSeconds), {}, 0, peer_ip(fd)});
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
            auto& p = pending[i];
            std::string reject;
            bool done = false;
            ssize_t n = p.got == sizeof(Handshake) ? 1 : ::recv(p.fd.get(), reinterpret_cast<uint8_t*>(&p.hs) + p.got, sizeof(Handshake) - p.got, MSG_DONTWAIT);
            if (n == 0) reject = "closed during handshake";
            else if (n > 0 && p.got < sizeof(Handshake)) p.got += static_cast<size_t>(n);
            else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) reject = "error during handshake";
            if (reject.empty() && p.got == sizeof(Handshake)) {
                std::lock_guard<std::mutex> lock(mutex_);
                const Handshake& h = p.hs;
                // Members may dial a newcomer before it has read its own welcome: a complete handshake
                // waits (within its deadline) until this peer knows its id.
                if (h.magic != kHandshakeMagic) reject = "bad handshake magic (not a pccl_py peer)";
                else if (h.version != 1) reject = "unsupported protocol version";
                else if (peer_id_ == 0) waiting_for_identity = true;
                else if (h.group != group_) reject = "wrong peer group";
                else if (h.to_peer != peer_id_) reject = "handshake addressed to another peer";
                else if (h.conn_index >= 64) reject = "connection index out of range";
                else if (h.epoch < min_epoch_) reject = "stale epoch";
                else if (parked_.size() >= kMaxParked) reject = "too many parked connections";
                else {
                    set_nonblocking(p.fd.get(), false);
                    parked_[Key{uint64_t{h.epoch}, uint64_t{h.from_peer}, uint16_t{h.conn_index}}] = Parked{std::move(p.fd), Clock::now()};
                    cv_.notify_all();
                    done = true;
                }
            }
            if (reject.empty() && !done && now > p.deadline) reject = "no handshake within the deadline";
            if (!reject.empty()) PCCL_WARN("listener", "closing connection from %s: %s", p.remote.c_str(), reject.c_str());
            if (!reject.empty() || done) {
                pending.erase(pending.begin() + static_cast<long>(i));
            } else {
                ++i;
            }
        }
    }
}

Fd dial_mesh(const std::string& host, uint16_t port, const Handshake& hs, TimePoint deadline) {
    Fd fd = connect_tcp(host, port, deadline);
    if (!send_all(fd.get(), &hs, sizeof hs, deadline)) throw Error(ErrorCode::kTimeout, "handshake send timed out");
    return fd;
}

}  // namespace pccl
