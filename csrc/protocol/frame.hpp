// Peer-to-peer wire format: a handshake that binds a connection to (group, epoch, from, to, index)
// and is authenticated by the key of that pair of members in that epoch (auth/mesh_auth.hpp), then a stream of fixed-size frame headers, each optionally followed by payload bytes.
#pragma once
#include <cstdint>
#include <cstring>

#include "common/error.hpp"

namespace pccl {

constexpr uint32_t kFrameMagic = 0x46434350;      // "PCCF"
constexpr uint32_t kHandshakeMagic = 0x48434350;  // "PCCH"
// 2: followed by the dialer's nonce and proof. (The proofs use the pair's key since control protocol
// 4; the version here stays: two members of one epoch joined the same master, so they speak the same
// control protocol, and a master refuses a peer of another one at its first message.)
constexpr uint16_t kHandshakeVersion = 2;
constexpr uint32_t kMaxFramePayload = 4u << 20;

enum class FrameType : uint8_t { kData = 1, kDone = 2, kKeepalive = 3 };

// A completion notice's sender saw peers pending admission when it finished its part. Every member
// receives every other member's notice before it commits, so all of them agree on the OR of these
// flags: that is what are_peers_pending() returns after the op (see Communicator::peers_pending()).
constexpr uint8_t kDonePeersPending = 1;

// The descriptor of a collective, repeated in every frame so a receiver can detect a peer that called
// a different collective under the same (tag, seq).
struct OpDescriptor {
    uint8_t dtype = 0;
    uint8_t op = 0;
    uint8_t algorithm = 0;
    uint8_t quant = 0;
    uint64_t count = 0;
    bool operator==(const OpDescriptor&) const = default;
};

#pragma pack(push, 1)
struct FrameHeader {
    uint32_t magic;
    uint8_t type;
    uint8_t dtype;
    uint8_t op;
    uint8_t algorithm;
    uint64_t epoch;
    uint32_t tag;
    uint32_t step;
    uint64_t seq;
    uint64_t count;
    uint64_t offset;  // byte offset inside the region this step writes
    uint32_t length;  // payload bytes after the header
    uint8_t quant;
    uint8_t flags;  // completion notices only: kDonePeersPending
    uint8_t reserved[2];

    OpDescriptor descriptor() const { return OpDescriptor{dtype, op, algorithm, quant, count}; }
};

struct Handshake {
    uint32_t magic;
    uint16_t version;
    uint16_t conn_index;
    uint32_t group;
    uint32_t reserved;
    uint64_t epoch;
    uint64_t from_peer;
    uint64_t to_peer;
};
#pragma pack(pop)

static_assert(sizeof(FrameHeader) == 56);
static_assert(sizeof(Handshake) == 40);

// Structural checks that need no op context; op-specific checks happen at routing time.
inline void validate_frame_header(const FrameHeader& h, uint64_t epoch) {
    if (h.magic != kFrameMagic) throw ProtocolError("bad frame magic");
    if (h.type < 1 || h.type > 3) throw ProtocolError("unknown frame type " + std::to_string(h.type));
    if (h.epoch != epoch)
        throw ProtocolError("frame for epoch " + std::to_string(h.epoch) + " on a connection of epoch " + std::to_string(epoch));
    if (h.length > kMaxFramePayload) throw ProtocolError("frame payload of " + std::to_string(h.length) + " bytes exceeds the cap");
    if (h.type != static_cast<uint8_t>(FrameType::kData) && h.length != 0) throw ProtocolError("control frame with payload");
    if (h.reserved[0] != 0 || h.reserved[1] != 0) throw ProtocolError("nonzero reserved bytes in a frame header");
    if (h.flags != 0 && (h.type != static_cast<uint8_t>(FrameType::kDone) || h.flags != kDonePeersPending))
        throw ProtocolError("unknown frame flags " + std::to_string(h.flags));
}

}  // namespace pccl
