// Writes the seed corpora of the fuzz targets (fuzz/corpus/<target>/seed-*) with the library's own
// encoders, so the seeds stay valid when a message changes: rerun bash fuzz/make_seeds.sh and commit.
// Each seed is a valid input in the layout its target reads (fuzz/input.hpp), so the fuzzer starts
// from the accepting paths and mutates outwards. Usage: make_seeds <corpus dir>
#include <sys/stat.h>

#include <cstdio>
#include <string>
#include <vector>

#include "auth/mesh_auth.hpp"
#include "collectives/collective.hpp"
#include "fuzz/input.hpp"
#include "kernels/codec.hpp"
#include "protocol/messages.hpp"

using namespace pccl;
using pccl_fuzz::Output;

namespace {

std::string g_root;

void write(const std::string& target, const std::string& name, const std::vector<uint8_t>& bytes) {
    const std::string dir = g_root + "/" + target;
    ::mkdir(g_root.c_str(), 0755);
    ::mkdir(dir.c_str(), 0755);
    const std::string path = dir + "/seed-" + name;
    FILE* f = std::fopen(path.c_str(), "wb");
    if (!f) {
        std::perror(path.c_str());
        std::exit(1);
    }
    std::fwrite(bytes.data(), 1, bytes.size(), f);
    std::fclose(f);
}

// A message target's input: the frame body after its type byte.
void message(const std::string& msg, const std::string& name, const std::vector<uint8_t>& frame) {
    write("fuzz_msg_" + msg, name, std::vector<uint8_t>(frame.begin() + 5, frame.end()));
}

MemberInfo member(uint64_t id, const char* host, uint16_t port, uint16_t k) { return MemberInfo{id, host, port, k}; }

void messages(std::vector<std::vector<uint8_t>>* all) {
    Hello h;
    h.group = 3;
    h.host = "10.0.0.7";
    h.port = 48000;
    h.connections = 4;
    auto add = [&](const std::string& msg, const std::string& name, std::vector<uint8_t> f) {
        message(msg, name, f);
        all->push_back(std::move(f));
    };
    add("hello", "basic", encode_hello(h));
    h.host = "";
    h.connections = 64;
    add("hello", "max-connections", encode_hello(h));
    add("welcome", "admitted", encode_welcome(Welcome{42, 1}));
    add("welcome", "pending", encode_welcome(Welcome{1ull << 62, 0}));
    add("vote", "basic", encode_vote(Vote{5, 30000}));
    add("vote_result", "admitted", encode_vote_result(VoteResult{0, 2, 1, ""}));
    add("vote_result", "timed-out", encode_vote_result(VoteResult{1, 0, 0, "member(s) 3 did not call it"}));
    add("pending", "three", encode_pending(3));
    add("failure", "link", encode_failure(Failure{9, FailureKind::kLinkBroken, 17}));
    add("failure", "mismatch", encode_failure(Failure{9, FailureKind::kMismatch, 0}));
    add("recover", "basic", encode_recover(Recover{12}));
    Status st;
    st.epoch = 12;
    st.ops = {OpReport{0, 4, OpProgress::kRunning, 0}, OpReport{1, (1ull << 63) | 5, OpProgress::kDataDone, 1}};
    st.tags = {TagReport{0, 3, 0}, TagReport{1, 9, 1}};
    add("status", "two-ops", encode_status(st));
    add("status", "empty", encode_status(Status{}));
    EpochMsg e;
    e.group = 3;
    e.epoch = 13;
    e.cause = EpochCause::kLost;
    e.members = {member(42, "10.0.0.7", 48000, 4), member(43, "10.0.0.8", 48001, 1)};
    e.decisions = {Decision{0, 4, 1, 0}, Decision{1, 7, 0, 1}};
    e.pending = 2;
    e.pair_tokens.resize(2);  // as member 43 gets it: its own place zero
    for (size_t i = 0; i < e.pair_tokens[0].size(); ++i) e.pair_tokens[0][i] = static_cast<uint8_t>(i * 7);
    add("epoch", "two-members", encode_epoch(e));
    Rejoin rj;
    rj.hello = h;
    rj.hello.host = "10.0.0.7";
    rj.peer_id = 42;
    rj.epoch = 13;
    rj.settled = 0;
    rj.members = e.members;
    rj.heard = {LastHeard{43, 1500, 1}};
    add("rejoin", "two-members", encode_rejoin(rj));
    rj.heard.clear();
    rj.members.resize(1);
    rj.settled = 1;
    add("rejoin", "alone", encode_rejoin(rj));
    add("evicted", "basic", encode_evicted(Evicted{"silent for longer than heartbeat_timeout"}));
    add("error", "basic", encode_error(ErrorMsg{"group 3 is rebuilding after a master restart"}));
    AuthHello ah;
    ah.has_secret = 1;
    for (auto& b : ah.nonce) b = 0xA5;
    add("auth_hello", "with-secret", encode_auth_hello(ah));
    AuthChallenge ac;
    ac.has_secret = 1;
    for (auto& b : ac.nonce) b = 0x5A;
    add("auth_challenge", "with-secret", encode_auth_challenge(ac));
    Mac mac{};
    for (size_t i = 0; i < mac.size(); ++i) mac[i] = static_cast<uint8_t>(i);
    add("auth_mac", "proof", encode_auth_mac(MsgType::kAuthProof, mac));
    add("auth_refused", "wrong-secret", encode_auth_refused("wrong job secret (its proof did not verify)"));
}

// fuzz_frame_assembler: reads of (u16 size - 1, bytes).
void frame_assembler(const std::vector<std::vector<uint8_t>>& frames) {
    std::vector<uint8_t> stream;
    for (const auto& f : frames) stream.insert(stream.end(), f.begin(), f.end());
    for (size_t cut : {size_t{7}, size_t{64}, size_t{4096}}) {
        Output o;
        for (size_t at = 0; at < stream.size(); at += cut) {
            size_t n = std::min(cut, stream.size() - at);
            o.put<uint16_t>(static_cast<uint16_t>(n - 1)).raw(stream.data() + at, n);
        }
        write("fuzz_frame_assembler", "all-messages-in-reads-of-" + std::to_string(cut), o.buf);
    }
}

// fuzz_mesh_handshake: listener state (the epoch's other members 43 and 44), then the dialer's 104 bytes.
void mesh_handshake() {
    const char* names[] = {"member", "wrong-proof", "before-welcome", "impostor", "not-a-member"};
    const uint8_t flags[] = {3, 1, 1, 5, 3};  // 1: keys known; 2: signed by the sender; 4: by another member
    for (int variant = 0; variant < 5; ++variant) {
        Handshake hs{kHandshakeMagic, kHandshakeVersion, 2, 3, 0, 13, variant == 4 ? 45u : 43u, 42};
        MeshAuthTail tail{};
        for (auto& b : tail.dial_nonce) b = 0x11;
        Output o;
        o.put<uint32_t>(3).put<uint64_t>(variant == 2 ? 0 : 42).put<uint64_t>(12);
        o.put<uint8_t>(flags[variant]).put<uint8_t>(2).put<uint64_t>(43).put<uint64_t>(44);
        Nonce nl{};
        for (auto& b : nl) b = 0x22;
        o.raw(nl.data(), nl.size()).raw(&hs, sizeof hs).raw(&tail, sizeof tail);
        write("fuzz_mesh_handshake", names[variant], o.buf);
    }
}

// fuzz_op_router: world, rank, ops, then actions (fuzz_op_router.cpp).
struct OpDef {
    uint8_t kind, dtype, op, quant;
    uint32_t count;
    uint8_t tag, peer_or_seq, key_n;
};

void put_op(Output& o, const OpDef& d) {
    o.put<uint8_t>(d.kind).put<uint8_t>(d.dtype).put<uint8_t>(d.op).put<uint8_t>(d.quant).put<uint32_t>(d.count);
    o.put<uint8_t>(d.tag).put<uint8_t>(d.peer_or_seq);
    if (d.kind >= 2) o.put<uint8_t>(d.key_n);
}

// A data frame built by the harness from op `op_index`: step, piece, length mode (and chunk).
void put_data(Output& o, uint8_t from, uint8_t op_index, uint8_t step, uint8_t piece, uint8_t length_mode,
              uint8_t chunk, size_t payload) {
    o.put<uint8_t>(2).put<uint8_t>(from).put<uint8_t>(static_cast<uint8_t>(op_index * 8 + 1));
    o.put<uint8_t>(0).put<uint8_t>(step).put<uint8_t>(piece).put<uint8_t>(length_mode);
    if (length_mode == 2) o.put<uint8_t>(chunk);
    o.put<uint8_t>(0xFF);  // no poke
    std::vector<uint8_t> bytes(payload);
    for (size_t i = 0; i < payload; ++i) bytes[i] = static_cast<uint8_t>(i * 31 + 7);
    o.raw(bytes.data(), bytes.size());
}

void put_done(Output& o, uint8_t from, uint8_t op_index, uint8_t flags) {
    o.put<uint8_t>(2).put<uint8_t>(from).put<uint8_t>(static_cast<uint8_t>(op_index * 8 + 1));
    o.put<uint8_t>(1).put<uint8_t>(0).put<uint8_t>(0).put<uint8_t>(0).put<uint8_t>(flags).put<uint8_t>(0xFF);
}

void op_router() {
    const uint8_t f32 = static_cast<uint8_t>(DType::kFloat32);
    {  // star, world 2, rank 0: rank 1's contribution arrives early, then the op starts.
        Output o;
        o.put<uint8_t>(0).put<uint8_t>(0).put<uint8_t>(0);  // world 2, rank 0, one op
        put_op(o, OpDef{1, f32, 0, 0, 1000, 0, 0, 0});
        put_data(o, 1, 0, 1, 0, 1, 0, 4000);
        put_done(o, 1, 0, 1);
        o.put<uint8_t>(0).put<uint8_t>(0);  // add
        o.put<uint8_t>(1).put<uint8_t>(0);  // remove
        write("fuzz_op_router", "star-early", o.buf);
    }
    {  // q4 ring, world 2, rank 0, 2.5 pieces per chunk: slot 0 is chunk 1 from rank 1. The last
       // frame's payload is left out: the harness zero-fills it (keeps the seed small).
        Output o;
        o.put<uint8_t>(0).put<uint8_t>(0).put<uint8_t>(0);
        const uint32_t count = 2 * (kPieceBytes / 4) * 5 / 2;
        put_op(o, OpDef{0, f32, 0, static_cast<uint8_t>(Quant::kQ4), count, 1, 2, 0});
        o.put<uint8_t>(0).put<uint8_t>(0);
        put_data(o, 1, 0, 0, 2, 2, 1, wire_bytes(Quant::kQ4, DType::kFloat32, kPieceBytes / 8));
        put_done(o, 1, 0, 0);
        put_data(o, 1, 0, 0, 0, 2, 1, 0);
        write("fuzz_op_router", "ring-pieces", o.buf);
    }
    {  // q8 ring, world 2, rank 1; and a point-to-point receive from rank 0.
        Output o;
        o.put<uint8_t>(0).put<uint8_t>(1).put<uint8_t>(1);
        put_op(o, OpDef{0, f32, 0, static_cast<uint8_t>(Quant::kQ8), 5000, 0, 1, 0});
        put_op(o, OpDef{3, f32, 0, 0, 300, 2, 0, 1});
        o.put<uint8_t>(0).put<uint8_t>(0);
        o.put<uint8_t>(0).put<uint8_t>(1);
        put_data(o, 0, 0, 0, 0, 2, 0, wire_bytes(Quant::kQ8, DType::kFloat32, 2500));
        put_data(o, 0, 1, 0, 0, 1, 0, 1200);
        put_done(o, 0, 1, 0);
        write("fuzz_op_router", "q8-ring-and-p2p", o.buf);
    }
}

// fuzz_control_auth: flags, then what the master sends.
void control_auth() {
    AuthChallenge ac;
    ac.has_secret = 1;
    auto ch = encode_auth_challenge(ac);
    Mac mac{};
    auto ok = encode_auth_mac(MsgType::kAuthOk, mac);
    std::vector<uint8_t> in{1};
    in.insert(in.end(), ch.begin(), ch.end());
    in.insert(in.end(), ok.begin(), ok.end());
    write("fuzz_control_auth", "challenge-then-ok", in);
    auto refused = encode_auth_refused("wrong job secret");
    std::vector<uint8_t> r{0};
    r.insert(r.end(), refused.begin(), refused.end());
    write("fuzz_control_auth", "refused", r);
}

// fuzz_master: flags (1: authenticate, 2: the harness's HELLO for group u8), then frames.
void master() {
    auto cat = [](std::vector<uint8_t> a, const std::vector<uint8_t>& b) {
        a.insert(a.end(), b.begin(), b.end());
        return a;
    };
    std::vector<uint8_t> member_msgs;
    member_msgs = cat(member_msgs, encode_empty(MsgType::kHeartbeat));
    member_msgs = cat(member_msgs, encode_vote(Vote{1, 1000}));
    Status st;
    st.epoch = 1;
    st.ops = {OpReport{0, 1, OpProgress::kDataDone, 0}};
    st.tags = {TagReport{0, 1, 0}};
    member_msgs = cat(member_msgs, encode_status(st));
    member_msgs = cat(member_msgs, encode_failure(Failure{1, FailureKind::kTimeout, 0}));
    member_msgs = cat(member_msgs, encode_empty(MsgType::kLeave));
    write("fuzz_master", "member-messages", cat({3, 1}, member_msgs));

    Hello h;
    h.group = 2;
    h.host = "127.0.0.1";
    h.port = 40001;
    Rejoin rj;
    rj.hello = h;
    rj.peer_id = 77;
    rj.epoch = 5;
    rj.members = {MemberInfo{77, "127.0.0.1", 40001, 1}, MemberInfo{78, "127.0.0.1", 40002, 1}};
    rj.heard = {LastHeard{78, 200, 0}};
    auto frame = encode_rejoin(rj);
    Output o;
    o.put<uint8_t>(1).put<uint16_t>(static_cast<uint16_t>(frame.size() - 4)).raw(frame.data() + 4, frame.size() - 4);
    o.raw(encode_empty(MsgType::kHeartbeat).data(), 5);
    write("fuzz_master", "rejoin", o.buf);

    AuthHello ah;
    ah.has_secret = 1;
    write("fuzz_master", "outsider", cat({0}, cat(encode_auth_hello(ah), encode_hello(h))));
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: %s <corpus dir>\n", argv[0]);
        return 2;
    }
    g_root = argv[1];
    std::vector<std::vector<uint8_t>> frames;
    messages(&frames);
    frame_assembler(frames);
    mesh_handshake();
    op_router();
    control_auth();
    master();
    return 0;
}
