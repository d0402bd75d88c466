#include "transport/page_sender.hpp"

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>

#include <fcntl.h>
#include <sys/uio.h>
#include <unistd.h>

namespace pccl {

bool PageSender::enabled() {
    static const bool on = [] {
        const char* v = std::getenv("PCCL_ZERO_COPY_SEND");
        return v == nullptr || std::strcmp(v, "0") != 0;
    }();
    return on;
}

bool PageSender::open_pipe() {
    int fds[2];
    if (::pipe2(fds, O_NONBLOCK | O_CLOEXEC) != 0) return false;
    read_end_ = Fd(fds[0]);
    write_end_ = Fd(fds[1]);
    // A bigger pipe means fewer system calls per payload; the default (64 KiB) still works.
    ::fcntl(write_end_.get(), F_SETPIPE_SZ, 1 << 20);
    int size = ::fcntl(write_end_.get(), F_GETPIPE_SZ);
    capacity_ = size > 0 ? static_cast<size_t>(size) : (64u << 10);
    return true;
}

PageSender::Status PageSender::send(int sock, const uint8_t* data, size_t len, size_t* moved) {
    *moved = 0;
    if (!read_end_.valid()) {
        if (broken_) return Status::kUnsupported;
        if (!open_pipe()) {
            broken_ = true;
            return Status::kUnsupported;
        }
    }
    for (;;) {
        if (in_pipe_ == 0) {
            if (*moved == len) return Status::kDone;
            iovec v{const_cast<uint8_t*>(data + *moved), std::min(len - *moved, capacity_)};
            ssize_t n = ::vmsplice(write_end_.get(), &v, 1, SPLICE_F_NONBLOCK);
            if (n <= 0) return Status::kUnsupported;  // the pipe is empty, so this is not a full pipe
            in_pipe_ = static_cast<size_t>(n);
        }
        ssize_t m = ::splice(read_end_.get(), nullptr, sock, nullptr, in_pipe_, SPLICE_F_NONBLOCK | SPLICE_F_MOVE);
        if (m < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return Status::kWouldBlock;
            return Status::kFailed;
        }
        if (m == 0) {
            errno = EPIPE;
            return Status::kFailed;
        }
        in_pipe_ -= static_cast<size_t>(m);
        *moved += static_cast<size_t>(m);
    }
}

}  // namespace pccl
