// Thin, deadline-aware wrappers over POSIX TCP sockets. Every socket gets TCP_NODELAY: the protocol is
// request/response on small messages, where Nagle plus delayed ACK costs ~40 ms per exchange.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>

#include "common/clock.hpp"

namespace pccl {

// Owns one file descriptor.
class Fd {
public:
    Fd() = default;
    explicit Fd(int fd) : fd_(fd) {}
    Fd(const Fd&) = delete;
    Fd& operator=(const Fd&) = delete;
    Fd(Fd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
    Fd& operator=(Fd&& o) noexcept {
        if (this != &o) {
            reset();
            fd_ = std::exchange(o.fd_, -1);
        }
        return *this;
    }
    ~Fd() { reset(); }
    int get() const { return fd_; }
    bool valid() const { return fd_ >= 0; }
    void reset();
    // Wakes any thread blocked on this socket without releasing the descriptor number.
    void shutdown_both() const;

private:
    int fd_ = -1;
};

struct HostPort {
    std::string host;
    uint16_t port = 0;
};

// Parses "host:port" (IPv4 or a name); throws Error(kInvalidArgument) with a usable message.
HostPort parse_host_port(const std::string& address);

Fd listen_tcp(const std::string& host, uint16_t port, uint16_t* bound_port, int backlog = 128);
Fd connect_tcp(const std::string& host, uint16_t port, TimePoint deadline);
// Accepts one connection, waiting at most until the deadline; returns an invalid Fd on timeout.
Fd accept_tcp(int listen_fd, TimePoint deadline);

void set_nodelay(int fd);
void set_nonblocking(int fd, bool on);
std::string local_ip(int fd);
std::string peer_ip(int fd);
// True when the connected peer is a process on this machine: its address is a loopback address or the
// address of this end.
bool peer_on_this_host(int fd);

// Blocking send with a deadline: false on timeout, Error(kIo) on error.
bool send_all(int fd, const void* data, size_t len, TimePoint deadline);
// Blocking receive of exactly len bytes with a deadline: false on timeout, Error(kIo) on error or when
// the other end closes first.
bool recv_all(int fd, void* data, size_t len, TimePoint deadline);

}  // namespace pccl
