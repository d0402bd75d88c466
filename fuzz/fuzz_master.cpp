// The master's side of the control plane under libFuzzer: its frame assembler, the authentication
// state machine (coordinator/master_auth.cpp) and, once a connection authenticated, every message a
// peer can send (coordinator/master.cpp, Master::handle). One real Master (secret "fuzz secret") runs
// on a loopback port for the whole run, on its own thread, as pccl-master runs it. Each input is one
// connection:
//   u8 flags   bit 0: authenticate first (the harness plays the peer's half of the exchange with the
//                     right secret, so the fuzzer's bytes reach the post-authentication handlers);
//              bit 1: the join is a valid HELLO for group (u8 % 4) that the harness encodes;
//                     otherwise the join body J (type byte and fields) is u16 length + bytes;
//   the rest   sent as is, then the connection is half-closed and drained until the master closes it.
// Without bit 0 the whole input after the flags is sent raw (what an outsider can do).
// Checked: no crash, no sanitizer report on the master's thread, and the master still closes every
// connection that ends (a master that stopped serving would leave the harness waiting: it aborts).
#include <sys/socket.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <vector>

#include "auth/control_auth.hpp"
#include "common/log.hpp"
#include "coordinator/master.hpp"
#include "fuzz/input.hpp"
#include "protocol/messages.hpp"
#include "transport/socket.hpp"

using namespace pccl;

namespace {

const std::string kSecret = "fuzz secret";
Master* g_master = nullptr;

bool send_bytes(int fd, const uint8_t* p, size_t n) {
    try {
        return send_all(fd, p, n, deadline_after(2.0));
    } catch (const Error&) {
        return false;  // the master closed the connection: the rest is not read by anyone
    }
}

// One frame from the master, as the peer reads it (length prefix, then the body).
bool read_frame(int fd, std::vector<uint8_t>& body) {
    try {
        uint8_t len_bytes[4];
        if (!recv_all(fd, len_bytes, 4, deadline_after(2.0))) return false;
        uint32_t len = len_bytes[0] | (len_bytes[1] << 8) | (len_bytes[2] << 16) | (uint32_t{len_bytes[3]} << 24);
        if (len == 0 || len > kMaxControlMessage) return false;
        body.resize(len);
        return recv_all(fd, body.data(), len, deadline_after(2.0));
    } catch (const Error&) {
        return false;
    }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    set_log_level(std::getenv("PCCL_FUZZ_VERBOSE") ? LogLevel::kInfo : LogLevel::kOff);
    g_master = new Master("127.0.0.1", 0, kSecret);  // lives for the whole run
    g_master->start();
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    pccl_fuzz::Input in(data, size);
    const uint8_t flags = in.take<uint8_t>();
    Fd fd = connect_tcp("127.0.0.1", g_master->port(), deadline_after(5.0));
    bool open = true;
    if (flags & 1) {
        AuthHello hello{1, random_nonce()};
        auto frame = encode_auth_hello(hello);
        std::vector<uint8_t> body;
        open = send_bytes(fd.get(), frame.data(), frame.size()) && read_frame(fd.get(), body) &&
               body[0] == static_cast<uint8_t>(MsgType::kAuthChallenge);
        if (open) {
            Reader r(body.data() + 1, body.size() - 1);
            AuthChallenge ch = decode_auth_challenge(r);
            std::vector<uint8_t> join;  // the join frame, length prefix included
            if (flags & 2) {
                Hello h;
                h.group = in.take<uint8_t>() % 4;
                h.host = "127.0.0.1";
                h.port = 40000;
                join = encode_hello(h);
            } else {
                std::vector<uint8_t> j = in.bytes(in.take<uint16_t>());
                pccl_fuzz::Output o;
                o.put<uint32_t>(static_cast<uint32_t>(j.size())).raw(j.data(), j.size());
                join = o.buf;
            }
            Mac proof = control_peer_proof(kSecret, hello.nonce, ch.nonce, join.data() + 4, join.size() - 4);
            auto out = encode_auth_mac(MsgType::kAuthProof, proof);
            out.insert(out.end(), join.begin(), join.end());
            open = send_bytes(fd.get(), out.data(), out.size());
        }
    }
    if (open) {
        std::vector<uint8_t> rest = in.bytes(in.remaining());
        send_bytes(fd.get(), rest.data(), rest.size());
    }
    // Half-close and drain: the master closes the connection once it has read the end of it.
    ::shutdown(fd.get(), SHUT_WR);
    const TimePoint deadline = deadline_after(10.0);
    uint8_t sink[4096];
    for (;;) {
        try {
            if (!recv_all(fd.get(), sink, 1, deadline)) {
                std::fprintf(stderr, "the master did not close a connection that ended 10 s ago\n");
                std::abort();
            }
            while (::recv(fd.get(), sink, sizeof sink, MSG_DONTWAIT) > 0) {
            }
        } catch (const Error&) {
            break;  // closed (or reset): the master is done with it
        }
    }
    return 0;
}
