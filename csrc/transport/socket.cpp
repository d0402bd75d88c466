#include "transport/socket.hpp"

#include <arpa/inet.h>
#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/error.hpp"

namespace pccl {

void Fd::reset() {
    if (fd_ >= 0) {
        ::close(fd_);
        fd_ = -1;
    }
}

void Fd::shutdown_both() const {
    if (fd_ >= 0) ::shutdown(fd_, SHUT_RDWR);
}

HostPort parse_host_port(const std::string& address) {
    auto colon = address.rfind(':');
    if (colon == std::string::npos || colon == 0 || colon + 1 == address.size())
        throw Error(ErrorCode::kInvalidArgument,
                    "address '" + address + "' is not of the form host:port (for example 127.0.0.1:48148)");
    HostPort hp;
    hp.host = address.substr(0, colon);
    std::string port = address.substr(colon + 1);
    char* end = nullptr;
    long value = std::strtol(port.c_str(), &end, 10);
    if (*end != '\0' || value <= 0 || value > 65535)
        throw Error(ErrorCode::kInvalidArgument,
                    "port '" + port + "' in address '" + address + "' is not a number between 1 and 65535");
    hp.port = static_cast<uint16_t>(value);
    return hp;
}

static sockaddr_in resolve(const std::string& host, uint16_t port) {
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    if (host.empty() || host == "0.0.0.0") {
        addr.sin_addr.s_addr = htonl(INADDR_ANY);
        return addr;
    }
    if (inet_pton(AF_INET, host.c_str(), &addr.sin_addr) == 1) return addr;
    addrinfo hints{};
    hints.ai_family = AF_INET;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* res = nullptr;
    if (getaddrinfo(host.c_str(), nullptr, &hints, &res) != 0 || res == nullptr)
        throw Error(ErrorCode::kInvalidArgument, "cannot resolve host '" + host + "' to an IPv4 address");
    addr.sin_addr = reinterpret_cast<sockaddr_in*>(res->ai_addr)->sin_addr;
    freeaddrinfo(res);
    return addr;
}

static Error io_error(const std::string& what) {
    return Error(ErrorCode::kIo, what + ": " + std::strerror(errno));
}

void set_nodelay(int fd) {
    int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

void set_nonblocking(int fd, bool on) {
    int flags = fcntl(fd, F_GETFL, 0);
    fcntl(fd, F_SETFL, on ? (flags | O_NONBLOCK) : (flags & ~O_NONBLOCK));
}

Fd listen_tcp(const std::string& host, uint16_t port, uint16_t* bound_port, int backlog) {
    sockaddr_in addr = resolve(host, port);
    Fd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!fd.valid()) throw io_error("socket()");
    int one = 1;
    ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0)
        throw Error(ErrorCode::kInvalidArgument, "cannot listen on " + host + ":" + std::to_string(port) + ": " +
                                                     std::strerror(errno) + " (is the port already in use?)");
    if (::listen(fd.get(), backlog) != 0) throw io_error("listen()");
    if (bound_port != nullptr) {
        socklen_t len = sizeof addr;
        ::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&addr), &len);
        *bound_port = ntohs(addr.sin_port);
    }
    return fd;
}

Fd connect_tcp(const std::string& host, uint16_t port, TimePoint deadline) {
    sockaddr_in addr = resolve(host, port);
    Fd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!fd.valid()) throw io_error("socket()");
    set_nonblocking(fd.get(), true);
    int rc = ::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr);
    if (rc != 0 && errno != EINPROGRESS)
        throw Error(ErrorCode::kIo, "connect to " + host + ":" + std::to_string(port) + " failed: " + std::strerror(errno));
    if (rc != 0) {
        pollfd p{fd.get(), POLLOUT, 0};
        int n = ::poll(&p, 1, millis_until(deadline));
        if (n == 0) throw Error(ErrorCode::kTimeout, "connect to " + host + ":" + std::to_string(port) + " timed out");
        int err = 0;
        socklen_t len = sizeof err;
        ::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &len);
        if (n < 0 || err != 0)
            throw Error(ErrorCode::kIo, "connect to " + host + ":" + std::to_string(port) + " failed: " + std::strerror(err ? err : errno));
    }
    set_nonblocking(fd.get(), false);
    set_nodelay(fd.get());
    return fd;
}

Fd accept_tcp(int listen_fd, TimePoint deadline) {
    pollfd p{listen_fd, POLLIN, 0};
    int n = ::poll(&p, 1, millis_until(deadline));
    if (n <= 0) return Fd();
    if (p.revents & (POLLERR | POLLHUP | POLLNVAL)) return Fd();
    int fd = ::accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) return Fd();
    set_nodelay(fd);
    return Fd(fd);
}

static std::string addr_string(int fd, bool local) {
    sockaddr_in addr{};
    socklen_t len = sizeof addr;
    int rc = local ? ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len)
                   : ::getpeername(fd, reinterpret_cast<sockaddr*>(&addr), &len);
    if (rc != 0) return "";
    char buf[INET_ADDRSTRLEN] = {0};
    inet_ntop(AF_INET, &addr.sin_addr, buf, sizeof buf);
    return buf;
}

std::string local_ip(int fd) { return addr_string(fd, true); }
std::string peer_ip(int fd) { return addr_string(fd, false); }

bool peer_on_this_host(int fd) {
    std::string peer = peer_ip(fd);
    return !peer.empty() && (peer.rfind("127.", 0) == 0 || peer == local_ip(fd));
}

bool send_all(int fd, const void* data, size_t len, TimePoint deadline) {
    auto* p = static_cast<const uint8_t*>(data);
    while (len > 0) {
        ssize_t n = ::send(fd, p, len, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) {
            p += n;
            len -= static_cast<size_t>(n);
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            pollfd pf{fd, POLLOUT, 0};
            int r = ::poll(&pf, 1, millis_until(deadline));
            if (r == 0) return false;
            continue;
        }
        throw io_error("send");
    }
    return true;
}

bool recv_all(int fd, void* data, size_t len, TimePoint deadline) {
    auto* p = static_cast<uint8_t*>(data);
    while (len > 0) {
        ssize_t n = ::recv(fd, p, len, MSG_DONTWAIT);
        if (n > 0) {
            p += n;
            len -= static_cast<size_t>(n);
            continue;
        }
        if (n == 0) throw Error(ErrorCode::kIo, "the connection was closed by the other end");
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            pollfd pf{fd, POLLIN, 0};
            int r = ::poll(&pf, 1, millis_until(deadline));
            if (r == 0) return false;
            continue;
        }
        throw io_error("recv");
    }
    return true;
}

}  // namespace pccl
