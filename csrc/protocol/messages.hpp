// Messages between a peer and the master (the control plane). Each message is one length-prefixed
// frame: u32 body length, then a u8 type and the fields. decode_* validate every field and the
// master/peer state machines check that the type is allowed in the current state.
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "protocol/wire.hpp"

namespace pccl {

constexpr uint32_t kProtocolMagic = 0x4C434350;  // "PCCL"
// 2: pending flags in votes, reports, decisions and epochs; last-heard evidence in rejoins.
// 3: every control connection opens with the AUTH_* exchange; EPOCH carries the epoch's mesh token (shared).
// 4: EPOCH carries the recipient's own mesh pair tokens (one per member) instead of one shared token.
constexpr uint16_t kProtocolVersion = 4;
constexpr uint32_t kMaxControlMessage = 1 << 20;
constexpr uint32_t kMaxMembers = 4096;
constexpr uint32_t kMaxReportedOps = 65536;
constexpr uint32_t kMaxPending = kMaxMembers * 16;  // peers waiting for admission, as counted in messages
constexpr size_t kMaxHostLength = 255;
constexpr size_t kMaxTextLength = 1024;
// Peer ids are in [1, kMaxPeerId]; the master keys connections that have not joined yet by ids above it,
// so no id read off the wire can name such a connection (docs/protocol.md, "Ranges").
constexpr uint64_t kMaxPeerId = (uint64_t{1} << 62) - 1;
// Epochs count membership changes from 1. No message carries one above kMaxEpoch, and a restarted master
// adopts a claimed epoch only up to kMaxClaimedEpoch, so the +1 of every later epoch never wraps (a claim
// of 2^64-1 used to wrap the group's epoch to 0).
constexpr uint64_t kMaxEpoch = uint64_t{1} << 62;
constexpr uint64_t kMaxClaimedEpoch = uint64_t{1} << 61;

enum class MsgType : uint8_t {
    kHello = 1,       // peer -> master: join request
    kWelcome,         // master -> peer: your id; admitted or pending
    kHeartbeat,       // both directions
    kVote,            // peer -> master: update_topology()
    kVoteResult,      // master -> peer: the vote ended (admitted N, or timed out)
    kPending,         // master -> member: number of peers waiting to join
    kFailure,         // peer -> master: an op failed (suspect, cause)
    kRecover,         // master -> member: freeze in-flight ops and report their state
    kStatus,          // member -> master: state of in-flight ops
    kEpoch,           // master -> member: new membership plus the outcome of every frozen op
    kLeave,           // peer -> master: graceful leave
    kEvicted,         // master -> peer: you are no longer a member
    kError,           // master -> peer: request refused
    kRejoin,          // peer -> restarted master: "I was member X of group G in epoch E with these members"
    // The authentication exchange that opens every control connection (auth/control_auth.hpp):
    kAuthHello,       // peer -> master: version, whether it has a secret, its nonce
    kAuthChallenge,   // master -> peer: whether it has a secret, its nonce
    kAuthProof,       // peer -> master: HMAC over both nonces and the HELLO/REJOIN that follows it
    kAuthOk,          // master -> peer: the master's HMAC over the same, in the other direction
    kAuthRefused,     // master -> peer: why the connection is refused (then the master closes it)
    kCount
};

// Why an epoch changed; it decides how an aborted op surfaces (an error, or a transparent retry).
enum class EpochCause : uint8_t { kJoin = 0, kLeft, kLost, kTimeout, kMismatch, kCount };

enum class FailureKind : uint8_t { kLinkBroken = 0, kTimeout, kMismatch, kCount };

// Progress of one in-flight op as seen by one member when it was frozen.
enum class OpProgress : uint8_t { kRunning = 0, kDataDone = 1, kCount };

struct Hello {
    uint32_t group = 0;
    uint32_t heartbeat_timeout_ms = 5000;
    std::string host;  // where other peers reach this peer's listener
    uint16_t port = 0;
    uint16_t connections = 1;
};

struct Welcome {
    uint64_t peer_id = 0;
    uint8_t admitted = 0;
};

struct Vote {
    uint64_t epoch = 0;
    uint32_t timeout_ms = 0;
};

struct VoteResult {
    uint8_t timed_out = 0;
    uint32_t admitted = 0;
    uint32_t pending = 0;  // peers still pending once this vote is settled (the voters' agreed flag)
    std::string message;
};

struct Failure {
    uint64_t epoch = 0;
    FailureKind kind = FailureKind::kLinkBroken;
    uint64_t suspect = 0;  // 0: nobody in particular
};

struct Recover {
    uint64_t epoch = 0;  // the epoch being closed
};

struct OpReport {
    uint32_t tag = 0;
    uint64_t seq = 0;
    OpProgress progress = OpProgress::kRunning;
    uint8_t pending = 0;  // a completion notice of this op (or this peer's own) said peers were pending
};

struct TagReport {
    uint32_t tag = 0;
    uint64_t committed = 0;  // ops of this tag committed in the closed epoch
    uint8_t pending = 0;     // the agreed pending flag of the last of them
};

struct Status {
    uint64_t epoch = 0;
    std::vector<OpReport> ops;
    std::vector<TagReport> tags;
};

struct MemberInfo {
    uint64_t peer_id = 0;
    std::string host;
    uint16_t port = 0;
    uint16_t connections = 1;
};

struct Decision {
    uint32_t tag = 0;
    uint64_t seq = 0;
    uint8_t commit = 0;
    uint8_t pending = 0;  // for a commit: the op's agreed pending flag (OR of what the members saw)
};

struct EpochMsg {
    uint32_t group = 0;
    uint64_t epoch = 0;
    EpochCause cause = EpochCause::kJoin;
    std::vector<MemberInfo> members;
    std::vector<Decision> decisions;
    uint32_t pending = 0;  // peers pending once this epoch starts: a newcomer's and an aborted op's flag
    // The recipient's mesh pair tokens (auth/mesh_auth.hpp): pair_tokens[k] is its token with
    // members[k], all zero at its own place. Each member gets its own EPOCH, with its own tokens only,
    // so a member never learns the key of a connection between two others. The decoder requires one
    // per member: at most kMaxMembers * 32 = 128 KiB, beside the members' entries, which the master
    // keeps under half of kMaxControlMessage (docs/security.md, "Resource limits").
    std::vector<std::array<uint8_t, 32>> pair_tokens;
};

// What a rejoining member last heard from another member of its claimed epoch over their data links.
// A restarted master knows nothing of who went silent when; this is what lets it hold a missing
// member to the heartbeat deadline that began when that member went quiet, instead of starting a
// new one (docs/operations.md, "Overlapping faults").
struct LastHeard {
    uint64_t peer_id = 0;
    uint32_t silent_ms = 0;  // since the last byte received from it (saturates at ~49 days)
    uint8_t lost = 0;        // 1: a link to it closed or failed (more than silence)
};

// Sent to a master that restarted: what this member knew, so the master can rebuild the group.
struct Rejoin {
    Hello hello;
    uint64_t peer_id = 0;
    uint64_t epoch = 0;
    uint8_t settled = 1;  // 0: the peer was between epochs (mid-recovery) when the master died
    std::vector<MemberInfo> members;  // ring order of that epoch; contains peer_id
    std::vector<LastHeard> heard;     // other members only, each at most once
};

struct AuthHello {
    uint8_t has_secret = 0;
    std::array<uint8_t, 32> nonce{};
};

struct AuthChallenge {
    uint8_t has_secret = 0;
    std::array<uint8_t, 32> nonce{};
};

struct Evicted {
    std::string reason;
};

struct ErrorMsg {
    std::string message;
};

// Encoders return a complete frame (length prefix included).
std::vector<uint8_t> encode_hello(const Hello& m);
std::vector<uint8_t> encode_welcome(const Welcome& m);
std::vector<uint8_t> encode_empty(MsgType type);  // heartbeat, leave
std::vector<uint8_t> encode_vote(const Vote& m);
std::vector<uint8_t> encode_vote_result(const VoteResult& m);
std::vector<uint8_t> encode_pending(uint32_t count);
std::vector<uint8_t> encode_failure(const Failure& m);
std::vector<uint8_t> encode_recover(const Recover& m);
std::vector<uint8_t> encode_status(const Status& m);
std::vector<uint8_t> encode_epoch(const EpochMsg& m);
std::vector<uint8_t> encode_rejoin(const Rejoin& m);
std::vector<uint8_t> encode_evicted(const Evicted& m);
std::vector<uint8_t> encode_error(const ErrorMsg& m);
std::vector<uint8_t> encode_auth_hello(const AuthHello& m);
std::vector<uint8_t> encode_auth_challenge(const AuthChallenge& m);
std::vector<uint8_t> encode_auth_mac(MsgType type, const std::array<uint8_t, 32>& mac);  // proof, ok
std::vector<uint8_t> encode_auth_refused(const std::string& reason);

// Decoders take the body (after the length prefix, starting at the type byte has been consumed).
Hello decode_hello(Reader& r);
Welcome decode_welcome(Reader& r);
Vote decode_vote(Reader& r);
VoteResult decode_vote_result(Reader& r);
uint32_t decode_pending(Reader& r);
Failure decode_failure(Reader& r);
Recover decode_recover(Reader& r);
Status decode_status(Reader& r);
EpochMsg decode_epoch(Reader& r);
Rejoin decode_rejoin(Reader& r);
Evicted decode_evicted(Reader& r);
ErrorMsg decode_error(Reader& r);
AuthHello decode_auth_hello(Reader& r);
AuthChallenge decode_auth_challenge(Reader& r);
std::array<uint8_t, 32> decode_auth_mac(Reader& r);
std::string decode_auth_refused(Reader& r);

const char* msg_type_name(MsgType t);
const char* epoch_cause_name(EpochCause c);

// Splits a byte stream into control frames. Used by both sides on non-blocking sockets.
class FrameAssembler {
public:
    void append(const uint8_t* data, size_t len) { buf_.insert(buf_.end(), data, data + len); }
    // Returns true and fills body when a complete frame is buffered; throws ProtocolError on a bad length
    // (checked as soon as a length prefix is buffered, before its body arrives).
    bool next(std::vector<uint8_t>& body);
    // The largest frame body accepted from now on (at most kMaxControlMessage). The master lowers it
    // for connections that have not authenticated yet, whose messages are tiny.
    void set_max_frame(uint32_t max) { max_frame_ = max < kMaxControlMessage ? max : kMaxControlMessage; }
    // Bytes held (a partial frame, or frames not taken yet): what this connection costs in memory.
    size_t buffered() const { return buf_.size() - consumed_; }

private:
    std::vector<uint8_t> buf_;
    size_t consumed_ = 0;
    uint32_t max_frame_ = kMaxControlMessage;
};

}  // namespace pccl
