// One control-message decoder (protocol/messages.cpp) under libFuzzer, chosen at compile time by
// PCCL_FUZZ_MESSAGE (fuzz/CMakeLists.txt builds one binary per decoder, so each gets its own corpus
// and coverage figures). The input is a frame body after its type byte: exactly what the master and
// the peer hand to a decoder. Properties checked beyond "no crash, no sanitizer report":
//   - a decoder either throws ProtocolError or returns; nothing else escapes;
//   - what it accepts re-encodes to the very bytes it read (the encoding is canonical), so a decoder
//     can never accept bytes and silently mean something else (the trap: a field read but not kept,
//     or kept but not range-checked, shows up here as a mismatch).
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "protocol/messages.hpp"

using namespace pccl;

namespace {

// Encoders return a whole frame: u32 length, type, fields. The fields are what the decoder read.
void expect_round_trip(const std::vector<uint8_t>& frame, MsgType type, const uint8_t* data, size_t size) {
    if (frame.size() != 5 + size || frame[4] != static_cast<uint8_t>(type) ||
        (size && std::memcmp(frame.data() + 5, data, size) != 0)) {
        std::fprintf(stderr, "decoder accepted %zu bytes that re-encode to %zu other bytes\n", size, frame.size() - 5);
        std::abort();
    }
}

#define CASE(name, type, decode, encode_expr)        \
    if (std::strcmp(PCCL_FUZZ_MESSAGE, name) == 0) { \
        auto m = decode(r);                          \
        expect_round_trip(encode_expr, type, data, size); \
        return;                                      \
    }

void run(Reader& r, const uint8_t* data, size_t size) {
    CASE("hello", MsgType::kHello, decode_hello, encode_hello(m))
    CASE("welcome", MsgType::kWelcome, decode_welcome, encode_welcome(m))
    CASE("vote", MsgType::kVote, decode_vote, encode_vote(m))
    CASE("vote_result", MsgType::kVoteResult, decode_vote_result, encode_vote_result(m))
    CASE("pending", MsgType::kPending, decode_pending, encode_pending(m))
    CASE("failure", MsgType::kFailure, decode_failure, encode_failure(m))
    CASE("recover", MsgType::kRecover, decode_recover, encode_recover(m))
    CASE("status", MsgType::kStatus, decode_status, encode_status(m))
    CASE("epoch", MsgType::kEpoch, decode_epoch, encode_epoch(m))
    CASE("rejoin", MsgType::kRejoin, decode_rejoin, encode_rejoin(m))
    CASE("evicted", MsgType::kEvicted, decode_evicted, encode_evicted(m))
    CASE("error", MsgType::kError, decode_error, encode_error(m))
    CASE("auth_hello", MsgType::kAuthHello, decode_auth_hello, encode_auth_hello(m))
    CASE("auth_challenge", MsgType::kAuthChallenge, decode_auth_challenge, encode_auth_challenge(m))
    CASE("auth_mac", MsgType::kAuthProof, decode_auth_mac, encode_auth_mac(MsgType::kAuthProof, m))
    CASE("auth_refused", MsgType::kAuthRefused, decode_auth_refused, encode_auth_refused(m))
    std::fprintf(stderr, "unknown PCCL_FUZZ_MESSAGE %s\n", PCCL_FUZZ_MESSAGE);
    std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    Reader r(data, size);
    try {
        run(r, data, size);
    } catch (const ProtocolError&) {
        // refused with a reason: what every caller turns into "close this connection"
    }
    return 0;
}
