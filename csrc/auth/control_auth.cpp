#include "auth/control_auth.hpp"

#include "common/error.hpp"
#include "protocol/messages.hpp"
#include "transport/tls.hpp"

namespace pccl {
namespace {

constexpr const char* kPeerLabel = "pccl/3 peer->master";
constexpr const char* kMasterLabel = "pccl/3 master->peer";

Mac control_proof(const char* label, const std::string& secret, const Nonce& np, const Nonce& nm, const uint8_t* join,
                  size_t join_len) {
    return hmac_sha256(secret, {label, as_view(np), as_view(nm), as_view(join, join_len)});
}

// Reads one control frame (length prefix, then body) and returns its type, leaving the body's
// fields in `body` for a Reader. Reads exactly one frame, so later frames stay on the socket.
MsgType read_frame(Link& link, std::vector<uint8_t>& body, TimePoint deadline, const std::string& master) {
    uint8_t len_bytes[4];
    auto timeout = [&] {
        return Error(ErrorCode::kTimeout, "the master at " + master + " did not answer the authentication handshake in time");
    };
    if (!link.recv_all(len_bytes, 4, deadline)) throw timeout();
    uint32_t len = len_bytes[0] | (len_bytes[1] << 8) | (len_bytes[2] << 16) | (static_cast<uint32_t>(len_bytes[3]) << 24);
    if (len == 0 || len > kMaxControlMessage) throw ProtocolError("control frame length " + std::to_string(len) + " out of range");
    body.resize(len);
    if (!link.recv_all(body.data(), len, deadline)) throw timeout();
    if (body[0] == 0 || body[0] >= static_cast<uint8_t>(MsgType::kCount))
        throw ProtocolError("invalid message type " + std::to_string(body[0]));
    return static_cast<MsgType>(body[0]);
}

[[noreturn]] void refused(Reader& r, const std::string& master) {
    throw Error(ErrorCode::kAuth, "the master at " + master + " refused this peer: " + decode_auth_refused(r));
}

}  // namespace

Mac control_peer_proof(const std::string& secret, const Nonce& np, const Nonce& nm, const uint8_t* join, size_t join_len) {
    return control_proof(kPeerLabel, secret, np, nm, join, join_len);
}

Mac control_master_proof(const std::string& secret, const Nonce& np, const Nonce& nm, const uint8_t* join,
                         size_t join_len) {
    return control_proof(kMasterLabel, secret, np, nm, join, join_len);
}

void authenticate_to_master(Link& link, const std::string& secret, const std::vector<uint8_t>& join_frame,
                            TimePoint deadline, const std::string& master) {
    try {
        AuthHello hello{static_cast<uint8_t>(!secret.empty()), random_nonce()};
        auto frame = encode_auth_hello(hello);
        if (!link.send_all(frame.data(), frame.size(), deadline))
            throw Error(ErrorCode::kTimeout, "sending the authentication handshake to " + master + " timed out");
        std::vector<uint8_t> body;
        MsgType type = read_frame(link, body, deadline, master);
        Reader r(body.data() + 1, body.size() - 1);
        if (type == MsgType::kAuthRefused) refused(r, master);
        if (type != MsgType::kAuthChallenge)
            throw ProtocolError(std::string("expected auth-challenge, got '") + msg_type_name(type) + "'");
        AuthChallenge ch = decode_auth_challenge(r);
        // The master refuses a mismatch itself (and logs it); this is the check against a master
        // that would not.
        if (ch.has_secret != hello.has_secret)
            throw Error(ErrorCode::kAuth, secret.empty() ? "the master at " + master + " requires the job secret: pass secret= (or set PCCL_SECRET) to the same value the master has"
                                                         : "this peer has a job secret but the master at " + master + " runs without one: start pccl-master with --secret-file (or PCCL_SECRET), or drop the peer's secret");
        // J: the join frame's body (type byte and fields), without its length prefix.
        const uint8_t* join = join_frame.data() + 4;
        const size_t join_len = join_frame.size() - 4;
        auto proof = encode_auth_mac(MsgType::kAuthProof, control_peer_proof(secret, hello.nonce, ch.nonce, join, join_len));
        proof.insert(proof.end(), join_frame.begin(), join_frame.end());
        if (!link.send_all(proof.data(), proof.size(), deadline))
            throw Error(ErrorCode::kTimeout, "sending the join request to " + master + " timed out");
        type = read_frame(link, body, deadline, master);
        Reader r2(body.data() + 1, body.size() - 1);
        if (type == MsgType::kAuthRefused) refused(r2, master);
        if (type != MsgType::kAuthOk) throw ProtocolError(std::string("expected auth-ok, got '") + msg_type_name(type) + "'");
        Mac got = decode_auth_mac(r2);
        Mac want = control_master_proof(secret, hello.nonce, ch.nonce, join, join_len);
        if (!mac_equal(got.data(), want.data(), want.size()))
            throw Error(ErrorCode::kAuth, "the master at " + master + " could not prove it knows the job secret: it is not the job's master, or its secret differs; check the address and the secret");
    } catch (const ProtocolError& e) {
        throw Error(ErrorCode::kAuth, "the master at " + master + " did not complete the authentication handshake (" +
                                          e.what() + "); is it a pccl_py master of the same version?");
    }
}

bool binds_beyond_loopback(const std::string& host) {
    return !(host == "localhost" || host == "::1" || host.rfind("127.", 0) == 0);
}

}  // namespace pccl
