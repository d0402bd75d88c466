// The peer's half of the control-plane authentication (authenticate_to_master, auth/control_auth.cpp)
// under libFuzzer: everything a master (or an impostor at its address) can answer. The input is the
// byte stream "the master" sends, written into one end of a socketpair before the peer runs its half
// on the other end; the stream then ends (EOF). The peer reads frames with read_frame, decodes
// AUTH_CHALLENGE / AUTH_OK / AUTH_REFUSED and checks the master's proof. The fuzzer picks whether the
// peer has a secret.
// Checked beyond "no crash, no sanitizer report": the call never returns normally (nobody can forge
// the master's proof over the peer's fresh nonce), and fails only with pccl::Error of the codes the
// bindings document for connect(): kAuth (refused, or garbage), kIo (closed), kTimeout.
#include <sys/socket.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>

#include "auth/control_auth.hpp"
#include "common/clock.hpp"
#include "common/error.hpp"
#include "fuzz/input.hpp"
#include "protocol/messages.hpp"
#include "transport/tls.hpp"

using namespace pccl;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size < 1) return 0;
    const bool with_secret = data[0] & 1;
    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) return 0;
    // What does not fit the socket buffer (>= 200 KB) is dropped: a master that floods is the same case.
    size_t off = 1;
    while (off < size) {
        ssize_t n = ::send(sv[1], data + off, size - off, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n <= 0) break;
        off += static_cast<size_t>(n);
    }
    ::shutdown(sv[1], SHUT_WR);
    Hello hello;
    hello.host = "127.0.0.1";
    hello.port = 1234;
    Link link{Fd(sv[0])};  // plaintext: the exchange as a master without encryption runs it
    try {
        authenticate_to_master(link, with_secret ? "fuzz secret" : "", encode_hello(hello), deadline_after(2.0),
                               "fuzz-master");
        std::fprintf(stderr, "authenticated to a master that cannot know the peer's nonce\n");
        std::abort();
    } catch (const Error& e) {
        if (e.code() != ErrorCode::kAuth && e.code() != ErrorCode::kIo && e.code() != ErrorCode::kTimeout) {
            std::fprintf(stderr, "unexpected error code %d: %s\n", static_cast<int>(e.code()), e.what());
            std::abort();
        }
    }
    ::close(sv[1]);  // sv[0] is the link's
    return 0;
}
