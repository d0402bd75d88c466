#include "protocol/messages.hpp"

#include <set>

namespace pccl {
namespace {

Writer begin(MsgType type) {
    Writer w;
    w.put<uint32_t>(0);  // length, patched by finish()
    w.put<uint8_t>(static_cast<uint8_t>(type));
    return w;
}

std::vector<uint8_t> finish(Writer& w) {
    auto& b = w.bytes();
    uint32_t len = static_cast<uint32_t>(b.size() - 4);
    for (int i = 0; i < 4; ++i) b[i] = static_cast<uint8_t>(len >> (8 * i));
    return std::move(b);
}

}  // namespace

namespace {

void put_hello_fields(Writer& w, const Hello& m) {
    w.put<uint32_t>(kProtocolMagic);
    w.put<uint16_t>(kProtocolVersion);
    w.put<uint32_t>(m.group);
    w.put<uint32_t>(m.heartbeat_timeout_ms);
    w.put_string(m.host);
    w.put<uint16_t>(m.port);
    w.put<uint16_t>(m.connections);
}

void put_member(Writer& w, const MemberInfo& mi) {
    w.put<uint64_t>(mi.peer_id);
    w.put_string(mi.host);
    w.put<uint16_t>(mi.port);
    w.put<uint16_t>(mi.connections);
}

void expect_unique_members(const std::vector<MemberInfo>& members, const char* what) {
    std::set<uint64_t> seen;
    for (const auto& mi : members)
        if (!seen.insert(mi.peer_id).second) throw ProtocolError(std::string(what) + " lists a peer id twice");
}

void expect_epoch(uint64_t epoch, const char* what) {
    if (epoch == 0 || epoch > kMaxEpoch) throw ProtocolError(std::string(what) + " epoch out of range (1 .. 2^62)");
}

MemberInfo get_member(Reader& r) {
    MemberInfo mi;
    mi.peer_id = r.get<uint64_t>();
    mi.host = r.get_string(kMaxHostLength);
    mi.port = r.get<uint16_t>();
    mi.connections = r.get<uint16_t>();
    if (mi.peer_id == 0 || mi.peer_id > kMaxPeerId || mi.port == 0 || mi.connections < 1 || mi.connections > 64)
        throw ProtocolError("invalid member entry");
    return mi;
}

Hello get_hello_fields(Reader& r) {
    if (r.get<uint32_t>() != kProtocolMagic) throw ProtocolError("bad magic in hello (not a pccl_py peer)");
    auto version = r.get<uint16_t>();
    if (version != kProtocolVersion)
        throw ProtocolError("protocol version " + std::to_string(version) + " is not supported (this master speaks " +
                            std::to_string(kProtocolVersion) + ")");
    Hello m;
    m.group = r.get<uint32_t>();
    m.heartbeat_timeout_ms = r.get<uint32_t>();
    if (m.heartbeat_timeout_ms < 100 || m.heartbeat_timeout_ms > 3600 * 1000)
        throw ProtocolError("heartbeat timeout out of range");
    m.host = r.get_string(kMaxHostLength);
    m.port = r.get<uint16_t>();
    m.connections = r.get<uint16_t>();
    if (m.port == 0) throw ProtocolError("listen port 0 in hello");
    if (m.connections < 1 || m.connections > 64) throw ProtocolError("connections per peer out of range [1, 64]");
    return m;
}

}  // namespace

std::vector<uint8_t> encode_hello(const Hello& m) {
    Writer w = begin(MsgType::kHello);
    put_hello_fields(w, m);
    return finish(w);
}

Hello decode_hello(Reader& r) {
    Hello m = get_hello_fields(r);
    r.expect_end();
    return m;
}

std::vector<uint8_t> encode_rejoin(const Rejoin& m) {
    Writer w = begin(MsgType::kRejoin);
    put_hello_fields(w, m.hello);
    w.put<uint64_t>(m.peer_id);
    w.put<uint64_t>(m.epoch);
    w.put<uint8_t>(m.settled);
    w.put<uint32_t>(static_cast<uint32_t>(m.members.size()));
    for (const auto& mi : m.members) put_member(w, mi);
    w.put<uint32_t>(static_cast<uint32_t>(m.heard.size()));
    for (const auto& h : m.heard) {
        w.put<uint64_t>(h.peer_id);
        w.put<uint32_t>(h.silent_ms);
        w.put<uint8_t>(h.lost);
    }
    return finish(w);
}

Rejoin decode_rejoin(Reader& r) {
    Rejoin m;
    m.hello = get_hello_fields(r);
    m.peer_id = r.get<uint64_t>();
    m.epoch = r.get<uint64_t>();
    m.settled = r.get_enum(2, "settled flag");
    uint32_t n = r.get_count(kMaxMembers, "member");
    bool found = false;
    for (uint32_t i = 0; i < n; ++i) {
        m.members.push_back(get_member(r));
        found = found || m.members.back().peer_id == m.peer_id;
    }
    if (m.peer_id == 0 || m.peer_id > kMaxPeerId || !found)
        throw ProtocolError("rejoin without a valid peer id (1 .. 2^62-1) in its own membership");
    if (m.epoch == 0 || m.epoch > kMaxClaimedEpoch) throw ProtocolError("rejoin claims an epoch out of range (1 .. 2^61)");
    expect_unique_members(m.members, "rejoin");
    std::set<uint64_t> others;  // whom it may report on: the other members of its claim, once each
    for (const auto& mi : m.members)
        if (mi.peer_id != m.peer_id) others.insert(mi.peer_id);
    uint32_t k = r.get_count(static_cast<uint32_t>(others.size()), "last-heard");
    for (uint32_t i = 0; i < k; ++i) {
        LastHeard h;
        h.peer_id = r.get<uint64_t>();
        h.silent_ms = r.get<uint32_t>();
        h.lost = r.get_enum(2, "link-lost flag");
        if (!others.erase(h.peer_id))
            throw ProtocolError("rejoin reports what it last heard from a peer that is not another member of its claim, "
                                "or reports one twice");
        m.heard.push_back(h);
    }
    r.expect_end();
    return m;
}

std::vector<uint8_t> encode_welcome(const Welcome& m) {
    Writer w = begin(MsgType::kWelcome);
    w.put<uint64_t>(m.peer_id);
    w.put<uint8_t>(m.admitted);
    return finish(w);
}

Welcome decode_welcome(Reader& r) {
    Welcome m;
    m.peer_id = r.get<uint64_t>();
    m.admitted = r.get_enum(2, "admitted flag");
    if (m.peer_id == 0 || m.peer_id > kMaxPeerId) throw ProtocolError("peer id out of range in welcome");
    r.expect_end();
    return m;
}

std::vector<uint8_t> encode_empty(MsgType type) {
    Writer w = begin(type);
    return finish(w);
}

std::vector<uint8_t> encode_vote(const Vote& m) {
    Writer w = begin(MsgType::kVote);
    w.put<uint64_t>(m.epoch);
    w.put<uint32_t>(m.timeout_ms);
    return finish(w);
}

Vote decode_vote(Reader& r) {
    Vote m;
    m.epoch = r.get<uint64_t>();
    m.timeout_ms = r.get<uint32_t>();
    if (m.epoch > kMaxEpoch) throw ProtocolError("vote epoch out of range");
    if (m.timeout_ms == 0 || m.timeout_ms > 24u * 3600 * 1000) throw ProtocolError("vote timeout out of range");
    r.expect_end();
    return m;
}

std::vector<uint8_t> encode_vote_result(const VoteResult& m) {
    Writer w = begin(MsgType::kVoteResult);
    w.put<uint8_t>(m.timed_out);
    w.put<uint32_t>(m.admitted);
    w.put<uint32_t>(m.pending);
    w.put_string(m.message);
    return finish(w);
}

VoteResult decode_vote_result(Reader& r) {
    VoteResult m;
    m.timed_out = r.get_enum(2, "timed-out flag");
    m.admitted = r.get_count(kMaxMembers, "admitted");
    m.pending = r.get_count(kMaxPending, "pending");
    m.message = r.get_string(kMaxTextLength);
    r.expect_end();
    return m;
}

std::vector<uint8_t> encode_pending(uint32_t count) {
    Writer w = begin(MsgType::kPending);
    w.put<uint32_t>(count);
    return finish(w);
}

uint32_t decode_pending(Reader& r) {
    uint32_t n = r.get_count(kMaxPending, "pending");
    r.expect_end();
    return n;
}

std::vector<uint8_t> encode_failure(const Failure& m) {
    Writer w = begin(MsgType::kFailure);
    w.put<uint64_t>(m.epoch);
    w.put<uint8_t>(static_cast<uint8_t>(m.kind));
    w.put<uint64_t>(m.suspect);
    return finish(w);
}

Failure decode_failure(Reader& r) {
    Failure m;
    m.epoch = r.get<uint64_t>();
    m.kind = static_cast<FailureKind>(r.get_enum(static_cast<uint8_t>(FailureKind::kCount), "failure kind"));
    m.suspect = r.get<uint64_t>();
    expect_epoch(m.epoch, "failure");
    if (m.suspect > kMaxPeerId) throw ProtocolError("failure names a suspect peer id out of range");
    r.expect_end();
    return m;
}

std::vector<uint8_t> encode_recover(const Recover& m) {
    Writer w = begin(MsgType::kRecover);
    w.put<uint64_t>(m.epoch);
    return finish(w);
}

Recover decode_recover(Reader& r) {
    Recover m;
    m.epoch = r.get<uint64_t>();
    expect_epoch(m.epoch, "recover");
    r.expect_end();
    return m;
}

std::vector<uint8_t> encode_status(const Status& m) {
    Writer w = begin(MsgType::kStatus);
    w.put<uint64_t>(m.epoch);
    w.put<uint32_t>(static_cast<uint32_t>(m.ops.size()));
    for (auto& op : m.ops) {
        w.put<uint32_t>(op.tag);
        w.put<uint64_t>(op.seq);
        w.put<uint8_t>(static_cast<uint8_t>(op.progress));
        w.put<uint8_t>(op.pending);
    }
    w.put<uint32_t>(static_cast<uint32_t>(m.tags.size()));
    for (auto& t : m.tags) {
        w.put<uint32_t>(t.tag);
        w.put<uint64_t>(t.committed);
        w.put<uint8_t>(t.pending);
    }
    return finish(w);
}

Status decode_status(Reader& r) {
    Status m;
    m.epoch = r.get<uint64_t>();
    expect_epoch(m.epoch, "status");
    uint32_t n = r.get_count(kMaxReportedOps, "reported op", 14);
    m.ops.resize(n);
    for (auto& op : m.ops) {
        op.tag = r.get<uint32_t>();
        op.seq = r.get<uint64_t>();
        op.progress = static_cast<OpProgress>(r.get_enum(static_cast<uint8_t>(OpProgress::kCount), "op progress"));
        op.pending = r.get_enum(2, "pending flag");
    }
    uint32_t t = r.get_count(kMaxReportedOps, "reported tag", 13);
    m.tags.resize(t);
    for (auto& tr : m.tags) {
        tr.tag = r.get<uint32_t>();
        tr.committed = r.get<uint64_t>();
        tr.pending = r.get_enum(2, "pending flag");
    }
    r.expect_end();
    return m;
}

std::vector<uint8_t> encode_epoch(const EpochMsg& m) {
    Writer w = begin(MsgType::kEpoch);
    w.put<uint32_t>(m.group);
    w.put<uint64_t>(m.epoch);
    w.put<uint8_t>(static_cast<uint8_t>(m.cause));
    w.put<uint32_t>(static_cast<uint32_t>(m.members.size()));
    for (auto& mi : m.members) put_member(w, mi);
    w.put<uint32_t>(static_cast<uint32_t>(m.decisions.size()));
    for (auto& d : m.decisions) {
        w.put<uint32_t>(d.tag);
        w.put<uint64_t>(d.seq);
        w.put<uint8_t>(d.commit);
        w.put<uint8_t>(d.pending);
    }
    w.put<uint32_t>(m.pending);
    w.put<uint32_t>(static_cast<uint32_t>(m.pair_tokens.size()));
    for (auto& t : m.pair_tokens) w.put_bytes(t.data(), t.size());
    return finish(w);
}

EpochMsg decode_epoch(Reader& r) {
    EpochMsg m;
    m.group = r.get<uint32_t>();
    m.epoch = r.get<uint64_t>();
    m.cause = static_cast<EpochCause>(r.get_enum(static_cast<uint8_t>(EpochCause::kCount), "epoch cause"));
    uint32_t n = r.get_count(kMaxMembers, "member");
    expect_epoch(m.epoch, "epoch message");
    if (n == 0) throw ProtocolError("epoch with no members");
    for (uint32_t i = 0; i < n; ++i) m.members.push_back(get_member(r));
    expect_unique_members(m.members, "epoch message");
    uint32_t d = r.get_count(kMaxReportedOps, "decision", 14);
    m.decisions.resize(d);
    for (auto& dec : m.decisions) {
        dec.tag = r.get<uint32_t>();
        dec.seq = r.get<uint64_t>();
        dec.commit = r.get_enum(2, "commit flag");
        dec.pending = r.get_enum(2, "pending flag");
    }
    m.pending = r.get_count(kMaxPending, "pending");
    const uint32_t t = r.get_count(kMaxMembers, "mesh pair token", 32);
    if (t != n) throw ProtocolError("epoch message: " + std::to_string(t) + " mesh pair tokens for " + std::to_string(n) + " members");
    m.pair_tokens.resize(t);
    for (auto& tok : m.pair_tokens) r.get_bytes(tok.data(), tok.size());
    r.expect_end();
    return m;
}

std::vector<uint8_t> encode_evicted(const Evicted& m) {
    Writer w = begin(MsgType::kEvicted);
    w.put_string(m.reason);
    return finish(w);
}

Evicted decode_evicted(Reader& r) {
    Evicted m;
    m.reason = r.get_string(kMaxTextLength);
    r.expect_end();
    return m;
}

std::vector<uint8_t> encode_error(const ErrorMsg& m) {
    Writer w = begin(MsgType::kError);
    w.put_string(m.message);
    return finish(w);
}

ErrorMsg decode_error(Reader& r) {
    ErrorMsg m;
    m.message = r.get_string(kMaxTextLength);
    r.expect_end();
    return m;
}

std::vector<uint8_t> encode_auth_hello(const AuthHello& m) {
    Writer w = begin(MsgType::kAuthHello);
    w.put<uint32_t>(kProtocolMagic);
    w.put<uint16_t>(kProtocolVersion);
    w.put<uint8_t>(m.has_secret);
    w.put_bytes(m.nonce.data(), m.nonce.size());
    return finish(w);
}

AuthHello decode_auth_hello(Reader& r) {
    if (r.get<uint32_t>() != kProtocolMagic) throw ProtocolError("bad magic in auth-hello (not a pccl_py peer)");
    auto version = r.get<uint16_t>();
    if (version != kProtocolVersion)
        throw ProtocolError("protocol version " + std::to_string(version) + " is not supported (this master speaks " +
                            std::to_string(kProtocolVersion) + ")");
    AuthHello m;
    m.has_secret = r.get_enum(2, "has-secret flag");
    r.get_bytes(m.nonce.data(), m.nonce.size());
    r.expect_end();
    return m;
}

std::vector<uint8_t> encode_auth_challenge(const AuthChallenge& m) {
    Writer w = begin(MsgType::kAuthChallenge);
    w.put<uint8_t>(m.has_secret);
    w.put_bytes(m.nonce.data(), m.nonce.size());
    return finish(w);
}

AuthChallenge decode_auth_challenge(Reader& r) {
    AuthChallenge m;
    m.has_secret = r.get_enum(2, "has-secret flag");
    r.get_bytes(m.nonce.data(), m.nonce.size());
    r.expect_end();
    return m;
}

std::vector<uint8_t> encode_auth_mac(MsgType type, const std::array<uint8_t, 32>& mac) {
    Writer w = begin(type);
    w.put_bytes(mac.data(), mac.size());
    return finish(w);
}

std::array<uint8_t, 32> decode_auth_mac(Reader& r) {
    std::array<uint8_t, 32> mac{};
    r.get_bytes(mac.data(), mac.size());
    r.expect_end();
    return mac;
}

std::vector<uint8_t> encode_auth_refused(const std::string& reason) {
    Writer w = begin(MsgType::kAuthRefused);
    w.put_string(reason);
    return finish(w);
}

std::string decode_auth_refused(Reader& r) {
    auto s = r.get_string(kMaxTextLength);
    r.expect_end();
    return s;
}

const char* msg_type_name(MsgType t) {
    static const char* names[] = {"?",       "hello",  "welcome", "heartbeat", "vote",    "vote-result", "pending",
                                  "failure", "recover", "status", "epoch",     "leave",   "evicted",     "error",
                                  "rejoin",  "auth-hello", "auth-challenge", "auth-proof", "auth-ok", "auth-refused"};
    auto i = static_cast<size_t>(t);
    return i < sizeof(names) / sizeof(names[0]) ? names[i] : "?";
}

const char* epoch_cause_name(EpochCause c) {
    static const char* names[] = {"join", "left", "lost", "timeout", "mismatch"};
    auto i = static_cast<size_t>(c);
    return i < 5 ? names[i] : "?";
}

bool FrameAssembler::next(std::vector<uint8_t>& body) {
    size_t avail = buf_.size() - consumed_;
    if (avail < 4) return false;
    const uint8_t* p = buf_.data() + consumed_;
    uint32_t len = p[0] | (p[1] << 8) | (p[2] << 16) | (static_cast<uint32_t>(p[3]) << 24);
    if (len == 0 || len > max_frame_)
        throw ProtocolError("control frame length " + std::to_string(len) + " outside [1, " + std::to_string(max_frame_) +
                            "]");
    if (avail < 4 + static_cast<size_t>(len)) return false;
    body.assign(p + 4, p + 4 + len);
    consumed_ += 4 + len;
    if (consumed_ == buf_.size()) {
        buf_.clear();
        consumed_ = 0;
    } else if (consumed_ > (1u << 16)) {
        buf_.erase(buf_.begin(), buf_.begin() + static_cast<long>(consumed_));
        consumed_ = 0;
    }
    return true;
}

}  // namespace pccl
