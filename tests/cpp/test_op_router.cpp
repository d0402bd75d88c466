// The data-frame router (peer/op_router.hpp): a frame reaches the op it names, frames for ops not
// started here are held (within caps) and handed over when the op starts, frames for finished ops are
// refused, and a link failure fails every op. Ops are real collectives whose data phase never runs, so
// no mesh is needed: the test plays the mesh's I/O thread (on_header, payload into the target, on_frame).
#include <gtest/gtest.h>

#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "collectives/collective.hpp"
#include "collectives/p2p.hpp"
#include "common/error.hpp"
#include "common/log.hpp"
#include "peer/op_router.hpp"
#include "protocol/p2p_key.hpp"

namespace pccl {
namespace {

constexpr uint64_t kEpoch = 3;
constexpr int kWorld = 2;
constexpr int kRank = 1;   // this peer
constexpr int kPeer = 0;   // the member frames come from
constexpr size_t kCount = 4;  // float32 elements of each op

// A receive of kCount floats from kPeer: its one slot is a single piece of 16 bytes.
std::shared_ptr<Collective> a_receive(uint64_t n = 0) {
    P2PSpec s;
    s.send = false;
    s.peer = kPeer;
    s.count = kCount;
    s.dtype = DType::kFloat32;
    s.tag = 5;
    s.swap_pages = false;
    return std::make_shared<PointToPoint>(s, kEpoch, p2p_key(kPeer, kRank, n), kWorld, kRank, nullptr);
}

// A ring all-reduce of kCount floats on tag 0 with sequence number `seq`.
std::shared_ptr<Collective> a_ring(uint64_t seq) {
    CollectiveSpec spec;
    spec.count = kCount;
    spec.dtype = DType::kFloat32;
    spec.op = ReduceOp::kSum;
    spec.algorithm = Algorithm::kRing;
    spec.tag = 0;
    spec.swap_pages = false;
    return make_collective(spec, kEpoch, seq, kWorld, kRank, nullptr);
}

FrameHeader header_for(const Collective& op, FrameType type, uint32_t length) {
    const OpDescriptor& d = op.descriptor();
    FrameHeader h{};
    h.magic = kFrameMagic;
    h.type = static_cast<uint8_t>(type);
    h.dtype = d.dtype;
    h.op = d.op;
    h.algorithm = d.algorithm;
    h.quant = d.quant;
    h.count = d.count;
    h.epoch = kEpoch;
    h.tag = op.tag();
    h.seq = op.seq();
    h.step = 0;
    h.offset = 0;
    h.length = type == FrameType::kData ? length : 0;
    return h;
}

FrameHeader data_frame(const Collective& op) { return header_for(op, FrameType::kData, kCount * sizeof(float)); }

// What Mesh::handle_read does with one validated frame: asks for a target, writes the payload there
// (or drops it), then reports the frame complete.
RecvTarget deliver(OpRouter& router, const FrameHeader& h) {
    validate_frame_header(h, kEpoch);
    RecvTarget t = router.on_header(kPeer, h);
    if (t.dst != nullptr && h.length > 0) std::memset(t.dst, 0x5a, h.length);
    router.on_frame(kPeer, h, t);
    return t;
}

struct RouterTest : ::testing::Test {
    void SetUp() override { set_log_level(LogLevel::kOff); }  // descriptor mismatches log a warning
    std::vector<std::string> failures;
    OpRouter router{[this](int from, const std::string& why) { failures.push_back(std::to_string(from) + ": " + why); }};
};

TEST_F(RouterTest, AFrameReachesTheRunningOpItNames) {
    auto op = a_receive();
    auto other = a_receive(1);
    router.add(op);
    router.add(other);
    RecvTarget t = deliver(router, data_frame(*op));
    EXPECT_NE(t.dst, nullptr);
    EXPECT_EQ(op->rx_bytes(), kCount * sizeof(float));
    EXPECT_EQ(other->rx_bytes(), 0u);
    EXPECT_FALSE(op->failure().failed);
}

TEST_F(RouterTest, FramesForAnOpNotStartedAreHeldAndHandedOverWhenItStarts) {
    auto op = a_receive();
    RecvTarget t = deliver(router, data_frame(*op));
    EXPECT_NE(t.dst, nullptr);  // a buffer of the router's own, kept alive by the target
    EXPECT_NE(t.keep, nullptr);
    EXPECT_EQ(op->rx_bytes(), 0u);
    router.add(op);
    EXPECT_EQ(op->rx_bytes(), kCount * sizeof(float));
    EXPECT_FALSE(op->failure().failed);
}

TEST_F(RouterTest, AFrameForAFinishedOpIsAProtocolViolation) {
    auto op = a_ring(0);
    router.add(op);
    router.remove(op.get());
    EXPECT_THROW(deliver(router, header_for(*op, FrameType::kDone, 0)), ProtocolError);
    // A later op of the same tag is still routed.
    auto next = a_ring(1);
    router.add(next);
    EXPECT_NO_THROW(deliver(router, header_for(*next, FrameType::kDone, 0)));
}

TEST_F(RouterTest, HeldFramesAreCappedZeroLengthOnesIncluded) {
    auto op = a_ring(7);  // never started here
    const FrameHeader done = header_for(*op, FrameType::kDone, 0);
    for (size_t i = 0; i < kMaxEarlyFrames; ++i) deliver(router, done);
    EXPECT_THROW(deliver(router, done), ProtocolError);
}

TEST_F(RouterTest, HeldFramesOfASeqThatWillNeverRunAreDroppedWhenALaterOneFinishes) {
    auto skipped = a_ring(0);  // this peer never runs seq 0 of tag 0 (it joined after it, say)
    const FrameHeader done = header_for(*skipped, FrameType::kDone, 0);
    for (size_t i = 0; i < kMaxEarlyFrames; ++i) deliver(router, done);
    EXPECT_THROW(deliver(router, done), ProtocolError);  // full
    auto later = a_ring(1);
    router.add(later);
    router.remove(later.get());  // seq 0 can no longer start: its frames go, and so does the charge
    auto next = a_ring(2);
    EXPECT_NO_THROW(deliver(router, header_for(*next, FrameType::kDone, 0)));
}

TEST_F(RouterTest, AFrameThatDescribesAnotherCollectiveFailsTheOpAsAMismatch) {
    auto op = a_receive();
    router.add(op);
    FrameHeader h = data_frame(*op);
    h.count = kCount + 1;  // the sender called recv with another size
    h.length = (kCount + 1) * sizeof(float);
    RecvTarget t = deliver(router, h);
    EXPECT_EQ(t.dst, nullptr);  // discarded
    EXPECT_EQ(op->rx_bytes(), 0u);
    ASSERT_TRUE(op->failure().failed);
    EXPECT_EQ(op->failure().kind, FailureKind::kMismatch);
}

TEST_F(RouterTest, APieceTwiceOrOutsideItsSlotIsAProtocolViolation) {
    auto op = a_receive();
    router.add(op);
    deliver(router, data_frame(*op));
    EXPECT_THROW(deliver(router, data_frame(*op)), ProtocolError);  // duplicate piece
    FrameHeader h = data_frame(*op);
    h.offset = 16;  // no second piece in a 16-byte slot
    EXPECT_THROW(deliver(router, h), ProtocolError);
}

TEST_F(RouterTest, ALinkFailureFailsEveryRunningOpAndTellsTheCommunicator) {
    auto a = a_receive();
    auto b = a_ring(0);
    router.add(a);
    router.add(b);
    router.on_failure(kPeer, "connection reset");
    for (const auto& op : {a, b}) {
        ASSERT_TRUE(op->failure().failed);
        EXPECT_EQ(op->failure().kind, FailureKind::kLinkBroken);
        EXPECT_EQ(op->failure().suspect, kPeer);
    }
    ASSERT_EQ(failures.size(), 1u);
    EXPECT_NE(failures[0].find("connection reset"), std::string::npos);
}

}  // namespace
}  // namespace pccl
