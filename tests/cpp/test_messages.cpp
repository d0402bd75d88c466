// Control messages: every encoder's frame splits back out of a byte stream and decodes to the same
// fields; hostile lengths and field values are refused with ProtocolError, never read past the end.
#include <gtest/gtest.h>

#include <cstring>
#include <random>

#include "common/error.hpp"
#include "protocol/messages.hpp"

namespace pccl {
namespace {

// Splits one encoded frame with a FrameAssembler, checks its type byte, and returns a reader over the
// rest (the body is kept alive in `body`).
Reader body_of(const std::vector<uint8_t>& frame, MsgType type, std::vector<uint8_t>& body) {
    FrameAssembler a;
    a.append(frame.data(), frame.size());
    EXPECT_TRUE(a.next(body));
    std::vector<uint8_t> none;
    EXPECT_FALSE(a.next(none));
    Reader r(body.data(), body.size());
    EXPECT_EQ(r.get_enum(static_cast<uint8_t>(MsgType::kCount), "type"), static_cast<uint8_t>(type));
    return r;
}

Hello a_hello() {
    Hello h;
    h.group = 7;
    h.heartbeat_timeout_ms = 2500;
    h.host = "10.0.0.5";
    h.port = 4242;
    h.connections = 4;
    return h;
}

TEST(Messages, HelloRoundTrip) {
    std::vector<uint8_t> body;
    Reader r = body_of(encode_hello(a_hello()), MsgType::kHello, body);
    Hello h = decode_hello(r);
    EXPECT_EQ(h.group, 7u);
    EXPECT_EQ(h.heartbeat_timeout_ms, 2500u);
    EXPECT_EQ(h.host, "10.0.0.5");
    EXPECT_EQ(h.port, 4242);
    EXPECT_EQ(h.connections, 4);
}

TEST(Messages, HelloFieldsOutOfRangeAreRefused) {
    for (auto mutate : std::vector<void (*)(Hello&)>{
             [](Hello& h) { h.port = 0; }, [](Hello& h) { h.connections = 0; },
             [](Hello& h) { h.connections = 65; }, [](Hello& h) { h.heartbeat_timeout_ms = 99; }}) {
        Hello h = a_hello();
        mutate(h);
        std::vector<uint8_t> body;
        Reader r = body_of(encode_hello(h), MsgType::kHello, body);
        EXPECT_THROW(decode_hello(r), ProtocolError);
    }
}

TEST(Messages, EpochRoundTrip) {
    EpochMsg m;
    m.group = 3;
    m.epoch = 99;
    m.cause = EpochCause::kLost;
    m.members = {{11, "a", 1000, 2}, {12, "b", 1001, 2}, {13, "c", 1002, 2}};
    m.decisions = {{5, 17, 1, 1}, {6, 2, 0, 0}};
    m.pending = 2;
    m.pair_tokens.resize(3);
    for (size_t i = 0; i < m.pair_tokens[1].size(); ++i) m.pair_tokens[1][i] = static_cast<uint8_t>(i * 7);
    std::vector<uint8_t> body;
    Reader r = body_of(encode_epoch(m), MsgType::kEpoch, body);
    EpochMsg d = decode_epoch(r);
    EXPECT_EQ(d.group, 3u);
    EXPECT_EQ(d.epoch, 99u);
    EXPECT_EQ(d.cause, EpochCause::kLost);
    ASSERT_EQ(d.members.size(), 3u);
    EXPECT_EQ(d.members[1].peer_id, 12u);
    EXPECT_EQ(d.members[2].host, "c");
    EXPECT_EQ(d.members[2].port, 1002);
    ASSERT_EQ(d.decisions.size(), 2u);
    EXPECT_EQ(d.decisions[0].seq, 17u);
    EXPECT_EQ(d.decisions[0].commit, 1);
    EXPECT_EQ(d.decisions[0].pending, 1);
    EXPECT_EQ(d.pending, 2u);
    EXPECT_EQ(d.pair_tokens, m.pair_tokens);
}

TEST(Messages, EpochNeedsOnePairTokenPerMember) {
    // One token per member, no more, no less: a peer indexes the tokens by rank.
    EpochMsg m;
    m.group = 1;
    m.epoch = 2;
    m.members = {{11, "a", 1000, 1}, {12, "b", 1001, 1}};
    for (size_t tokens : {0, 1, 3}) {
        m.pair_tokens.assign(tokens, {});
        std::vector<uint8_t> body;
        Reader r = body_of(encode_epoch(m), MsgType::kEpoch, body);
        EXPECT_THROW(decode_epoch(r), ProtocolError) << tokens << " tokens";
    }
    // A count over kMaxMembers, or more than the message holds, is refused before anything is allocated.
    m.pair_tokens.assign(2, {});
    auto frame = encode_epoch(m);
    std::vector<uint8_t> body(frame.begin() + 4, frame.end());
    const size_t at = body.size() - 2 * 32 - 4;  // the token count
    for (uint32_t count : {kMaxMembers + 1, 0xFFFFFFFFu, 3u}) {
        auto bad = body;
        std::memcpy(&bad[at], &count, 4);
        Reader r(bad.data(), bad.size());
        r.get<uint8_t>();
        EXPECT_THROW(decode_epoch(r), ProtocolError) << count;
    }
}

TEST(Messages, StatusAndRejoinRoundTrip) {
    Status s;
    s.epoch = 4;
    s.ops = {{1, 10, OpProgress::kDataDone, 1}, {2, 3, OpProgress::kRunning, 0}};
    s.tags = {{1, 9, 1}};
    std::vector<uint8_t> body;
    Reader r = body_of(encode_status(s), MsgType::kStatus, body);
    Status d = decode_status(r);
    EXPECT_EQ(d.epoch, 4u);
    ASSERT_EQ(d.ops.size(), 2u);
    EXPECT_EQ(d.ops[0].progress, OpProgress::kDataDone);
    EXPECT_EQ(d.ops[1].seq, 3u);
    ASSERT_EQ(d.tags.size(), 1u);
    EXPECT_EQ(d.tags[0].committed, 9u);

    Rejoin j;
    j.hello = a_hello();
    j.peer_id = 12;
    j.epoch = 8;
    j.settled = 0;
    j.members = {{11, "a", 1000, 4}, {12, "10.0.0.5", 4242, 4}};
    j.heard = {{11, 1500, 1}};
    std::vector<uint8_t> body2;
    Reader r2 = body_of(encode_rejoin(j), MsgType::kRejoin, body2);
    Rejoin dj = decode_rejoin(r2);
    EXPECT_EQ(dj.peer_id, 12u);
    EXPECT_EQ(dj.epoch, 8u);
    EXPECT_EQ(dj.settled, 0);
    ASSERT_EQ(dj.members.size(), 2u);
    ASSERT_EQ(dj.heard.size(), 1u);
    EXPECT_EQ(dj.heard[0].silent_ms, 1500u);
    EXPECT_EQ(dj.heard[0].lost, 1);
}

TEST(Messages, SmallMessagesRoundTrip) {
    std::vector<uint8_t> b1, b2, b3, b4;
    Reader r1 = body_of(encode_vote_result(VoteResult{0, 2, 1, "ok"}), MsgType::kVoteResult, b1);
    VoteResult v = decode_vote_result(r1);
    EXPECT_EQ(v.admitted, 2u);
    EXPECT_EQ(v.pending, 1u);
    EXPECT_EQ(v.message, "ok");
    Reader r2 = body_of(encode_failure(Failure{5, FailureKind::kTimeout, 77}), MsgType::kFailure, b2);
    Failure f = decode_failure(r2);
    EXPECT_EQ(f.kind, FailureKind::kTimeout);
    EXPECT_EQ(f.suspect, 77u);
    Reader r3 = body_of(encode_pending(12), MsgType::kPending, b3);
    EXPECT_EQ(decode_pending(r3), 12u);
    Reader r4 = body_of(encode_evicted(Evicted{"frozen"}), MsgType::kEvicted, b4);
    EXPECT_EQ(decode_evicted(r4).reason, "frozen");
}

TEST(Messages, TruncatedBodiesNeverDecode) {
    // Every strict prefix of a valid body must be refused: decoders check each read against the end.
    EpochMsg m;
    m.epoch = 1;
    m.members = {{1, "h", 1, 1}, {2, "i", 2, 1}};
    m.decisions = {{1, 1, 1, 0}};
    m.pair_tokens.resize(2);
    auto frame = encode_epoch(m);
    std::vector<uint8_t> body(frame.begin() + 4, frame.end());
    for (size_t cut = 1; cut < body.size(); ++cut) {
        Reader r(body.data(), cut);
        r.get<uint8_t>();
        EXPECT_THROW(decode_epoch(r), ProtocolError) << "prefix of " << cut << " bytes";
    }
}

TEST(Messages, TrailingBytesAreRefused) {
    auto frame = encode_pending(3);
    std::vector<uint8_t> body(frame.begin() + 4, frame.end());
    body.push_back(0);
    Reader r(body.data(), body.size());
    r.get<uint8_t>();
    EXPECT_THROW(decode_pending(r), ProtocolError);
}

TEST(FrameAssembler, SplitsFramesDeliveredOneByteAtATime) {
    std::vector<uint8_t> stream;
    std::vector<std::vector<uint8_t>> frames = {encode_pending(1), encode_evicted(Evicted{"x"}), encode_pending(2)};
    for (auto& f : frames) stream.insert(stream.end(), f.begin(), f.end());
    FrameAssembler a;
    std::vector<std::vector<uint8_t>> got;
    std::vector<uint8_t> body;
    for (uint8_t byte : stream) {
        a.append(&byte, 1);
        while (a.next(body)) got.push_back(body);
    }
    ASSERT_EQ(got.size(), frames.size());
    for (size_t i = 0; i < frames.size(); ++i)
        EXPECT_EQ(got[i], std::vector<uint8_t>(frames[i].begin() + 4, frames[i].end()));
}

TEST(FrameAssembler, RefusesZeroAndOversizedLengths) {
    for (uint32_t len : {0u, kMaxControlMessage + 1, 0xFFFFFFFFu}) {
        FrameAssembler a;
        uint8_t prefix[4] = {static_cast<uint8_t>(len), static_cast<uint8_t>(len >> 8), static_cast<uint8_t>(len >> 16),
                             static_cast<uint8_t>(len >> 24)};
        a.append(prefix, 4);
        std::vector<uint8_t> body;
        EXPECT_THROW(a.next(body), ProtocolError) << len;
    }
}

TEST(FrameAssembler, RandomSplitsGiveTheSameFrames) {
    std::mt19937 rng(5);
    std::vector<std::vector<uint8_t>> frames;
    for (int i = 0; i < 200; ++i) frames.push_back(encode_evicted(Evicted{std::string(rng() % 300, 'a' + i % 26)}));
    std::vector<uint8_t> stream;
    for (auto& f : frames) stream.insert(stream.end(), f.begin(), f.end());
    FrameAssembler a;
    size_t at = 0, n = 0;
    std::vector<uint8_t> body;
    while (at < stream.size()) {
        size_t chunk = std::min<size_t>(1 + rng() % 700, stream.size() - at);
        a.append(stream.data() + at, chunk);
        at += chunk;
        while (a.next(body)) {
            ASSERT_LT(n, frames.size());
            EXPECT_EQ(body, std::vector<uint8_t>(frames[n].begin() + 4, frames[n].end()));
            ++n;
        }
    }
    EXPECT_EQ(n, frames.size());
}

}  // namespace
}  // namespace pccl
