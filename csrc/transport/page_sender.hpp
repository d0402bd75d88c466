// Sends a payload into a TCP socket by page reference instead of by copy.
//
// send() copies every byte into kernel socket buffers; on loopback that copy is a quarter of an
// all-reduce's CPU. vmsplice() instead lends the payload's pages to a pipe and splice() passes them on
// to the socket, so the only copy left is the receiver's (or, on a real NIC, the NIC's DMA).
//
// The price is a lifetime rule: the kernel reads the pages until the receiver has taken the bytes,
// which can be long after the send "completed". Only payloads whose memory stays unmodified until the
// receiving peer has acknowledged them may go this way. Collectives satisfy it: nothing they send is
// written again before every member has reported, in the completion exchange, that it received
// everything; and a failed op's bytes are never used by anyone.
//
// Lending is not always cheaper: see worth_lending().
#pragma once
#include <cstddef>
#include <cstdint>

#include "transport/socket.hpp"

namespace pccl {

class PageSender {
public:
    // Payloads smaller than this are copied: below it the system calls and per-page work cost more than
    // the copy. Measured with two peers on two CPUs, 16 MiB ops: q8's 66 KiB pieces took 6.0-6.4 ms per
    // op lent and 5.1-5.4 ms copied; float32's 256 KiB pieces 6.3-6.5 ms lent and 8.1-8.2 ms copied.
    static constexpr size_t kMinBytes = 128u << 10;

    // Whether payloads on a connection should be lent. PCCL_ZERO_COPY_SEND=0 in the environment: never;
    // =1: always. Unset: always, except to a peer on this host when this host runs more members of the
    // group than this process may use CPUs; there the copy is cheaper (page_sender.cpp says why).
    static bool worth_lending(bool peer_on_this_host, int members_on_this_host);

    enum class Status {
        kDone,         // everything handed to the socket
        kWouldBlock,   // the socket is full: call again with the rest when it is writable
        kUnsupported,  // the kernel refused to lend these pages; none are pending: copy the rest
        kFailed,       // the socket failed (errno is set)
    };

    // Hands [data, data + len) to `sock`, continuing where the previous call for this payload stopped.
    // `data` is always the first byte not yet in the socket; the pipe may already hold some of them.
    // *moved receives the number of bytes that reached the socket during this call.
    Status send(int sock, const uint8_t* data, size_t len, size_t* moved);

private:
    bool open_pipe();
    Fd read_end_, write_end_;
    size_t capacity_ = 0;
    size_t in_pipe_ = 0;  // bytes lent to the pipe, not yet in the socket
    bool broken_ = false;
};

}  // namespace pccl
