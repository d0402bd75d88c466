// The data-frame router (peer/op_router.hpp) and the collectives' frame validation behind it
// (Collective::target_for/on_frame for ring, star and point-to-point ops) under libFuzzer: what a
// member's mesh connection delivers once its handshake passed. The harness plays the mesh's I/O
// thread (transport/mesh.cpp, Mesh::handle_read) exactly: validate_frame_header, keepalives skipped,
// on_header, the payload written into the target it names (h.length bytes, or discarded), on_frame;
// a thrown Error ends the connection through on_failure. The fuzzer picks this peer's rank and
// world, up to four ops (algorithm, dtype, op, quantization, count, tag, seq or point-to-point key),
// when each op starts and finishes (OpRouter::add/remove) and the frames. The ops' data phases never
// run, so no frame is sent and no mesh is needed.
// Checked beyond "no crash, no sanitizer report" (a payload written past the region a target names
// is a heap overflow here): only pccl::Error escapes.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <vector>

#include "collectives/collective.hpp"
#include "collectives/p2p.hpp"
#include "common/log.hpp"
#include "fuzz/input.hpp"
#include "kernels/codec.hpp"
#include "peer/op_router.hpp"
#include "protocol/p2p_key.hpp"

using namespace pccl;

namespace {

constexpr uint64_t kEpoch = 7;

struct OpSlot {
    std::shared_ptr<Collective> op;
    bool added = false, removed = false;
};

std::shared_ptr<Collective> make_op(pccl_fuzz::Input& in, int world, int rank) {
    const uint8_t kind = in.take<uint8_t>() % 4;  // ring, star, p2p send, p2p receive
    DType dtype = static_cast<DType>(in.take<uint8_t>() % static_cast<uint8_t>(DType::kCount));
    const auto op = static_cast<ReduceOp>(in.take<uint8_t>() % static_cast<uint8_t>(ReduceOp::kCount));
    auto quant = static_cast<Quant>(in.take<uint8_t>() % static_cast<uint8_t>(Quant::kCount));
    // Up to 6 pieces of float32 (a piece is 256 KiB unquantized): ring chunks of several pieces at
    // world 2, at a few MiB of buffers per op at most.
    const size_t count = in.take<uint32_t>() % (6 * kPieceBytes / 4 + 1);
    const uint32_t tag = in.take<uint8_t>() % 4;
    if (dtype != DType::kFloat32 && dtype != DType::kFloat64) quant = Quant::kNone;  // as the API allows
    if (kind >= 2) {
        P2PSpec s;
        s.send = kind == 2;
        s.peer = static_cast<int>(in.below(static_cast<size_t>(world)));
        if (s.peer == rank) s.peer = (rank + 1) % world;
        s.count = count;
        s.dtype = dtype;
        s.tag = tag;
        s.swap_pages = false;
        const int src = s.send ? rank : s.peer, dst = s.send ? s.peer : rank;
        const uint64_t key = p2p_key(src, dst, in.take<uint8_t>() % 4);
        return std::make_shared<PointToPoint>(s, kEpoch, key, world, rank, nullptr);
    }
    CollectiveSpec spec;
    spec.count = count;
    spec.dtype = dtype;
    spec.op = op;
    spec.quant = quant;
    spec.tag = tag;
    spec.algorithm = kind == 0 ? Algorithm::kRing : Algorithm::kStar;
    spec.swap_pages = false;
    return make_collective(spec, kEpoch, in.take<uint8_t>() % 4, world, rank, nullptr);
}

// A frame header: raw bytes, or (mostly) built from one of the ops so that the deeper checks run.
// Every field is taken in its own statement: the layout must not depend on evaluation order
// (make_seeds.cpp writes inputs for it).
FrameHeader make_header(pccl_fuzz::Input& in, int world, const std::vector<OpSlot>& ops) {
    FrameHeader h{};
    const uint8_t mode = in.take<uint8_t>();
    if (mode % 8 == 0 || ops.empty()) {
        in.fill(reinterpret_cast<uint8_t*>(&h), sizeof h);
        return h;
    }
    const Collective& op = *ops[mode / 8 % ops.size()].op;
    const OpDescriptor& d = op.descriptor();
    h.magic = kFrameMagic;
    h.type = static_cast<uint8_t>(1 + in.take<uint8_t>() % 3);
    h.dtype = d.dtype;
    h.op = d.op;
    h.algorithm = d.algorithm;
    h.quant = d.quant;
    h.count = d.count;
    h.epoch = kEpoch;
    h.tag = op.tag();
    h.seq = op.seq();
    h.step = in.take<uint8_t>();
    // Offsets and lengths a piece can have (collective.hpp: pieces of kPieceBytes unquantized bytes).
    const auto q = static_cast<Quant>(d.quant);
    const auto t = static_cast<DType>(d.dtype);
    const size_t piece_elems = kPieceBytes / dtype_size(t);
    const size_t stride = wire_bytes(q, t, piece_elems);
    const size_t piece = in.take<uint8_t>() % 4;
    h.offset = piece * stride;
    const uint8_t length_mode = in.take<uint8_t>() % 5;
    const size_t world_u = static_cast<size_t>(world);
    size_t elems = 0;  // of the slot the length is meant for
    if (length_mode == 0) elems = piece_elems;
    if (length_mode == 1) elems = d.count;
    if (length_mode == 2) {  // a ring chunk
        const size_t c = in.take<uint8_t>() % world_u;
        elems = d.count / world_u + (c < d.count % world_u ? 1 : 0);
    }
    if (length_mode <= 2) {  // the piece's share of that slot
        const size_t first = piece * piece_elems;
        elems = elems > first ? std::min(piece_elems, elems - first) : 0;
    }
    uint64_t length = wire_bytes(q, t, elems);
    if (length_mode == 3) length = in.take<uint32_t>() % (stride + 2);
    if (length_mode == 4) length = in.take<uint32_t>();
    h.length = h.type == 1 ? static_cast<uint32_t>(length) : 0;
    h.flags = h.type == 2 ? in.take<uint8_t>() % 2 : 0;
    // One more byte can still change any one byte of the header.
    const uint8_t poke = in.take<uint8_t>();
    if (poke < sizeof h) reinterpret_cast<uint8_t*>(&h)[poke] ^= in.take<uint8_t>();
    return h;
}

}  // namespace

static bool verbose = false;

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    // PCCL_FUZZ_VERBOSE=1 prints why each refused frame was refused (to check a seed reaches deep).
    verbose = std::getenv("PCCL_FUZZ_VERBOSE") != nullptr;
    set_log_level(verbose ? LogLevel::kWarn : LogLevel::kOff);  // descriptor mismatches log a line each
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    pccl_fuzz::Input in(data, size);
    const int world = 2 + static_cast<int>(in.below(4));
    const int rank = static_cast<int>(in.below(static_cast<size_t>(world)));
    std::vector<OpSlot> ops(1 + in.below(4));
    for (auto& s : ops) s.op = make_op(in, world, rank);

    bool link_failed = false;
    auto router = std::make_shared<OpRouter>([&](int, const std::string&) { link_failed = true; });
    std::vector<uint8_t> discard(1 << 16);
    try {
        while (in.remaining() > 0 && !link_failed) {
            const uint8_t action = in.take<uint8_t>() % 4;
            if (action == 0) {  // the caller starts an op
                auto& s = ops[in.below(ops.size())];
                if (!s.added) router->add(s.op);
                s.added = true;
                continue;
            }
            if (action == 1) {  // the caller's op finished (or was aborted)
                auto& s = ops[in.below(ops.size())];
                if (s.added && !s.removed) router->remove(s.op.get());
                s.removed = s.added;
                continue;
            }
            // A frame from another member, as Mesh::handle_read delivers it.
            int from = static_cast<int>(in.below(static_cast<size_t>(world)));
            if (from == rank) from = (rank + 1) % world;
            FrameHeader h = make_header(in, world, ops);
            try {
                validate_frame_header(h, kEpoch);
                if (h.type == static_cast<uint8_t>(FrameType::kKeepalive)) continue;
                RecvTarget t = router->on_header(from, h);
                // The payload: the mesh reads it straight into t.dst; the fuzzer's bytes, zero-padded.
                for (size_t got = 0; got < h.length;) {
                    size_t want = h.length - got;
                    uint8_t* dst = t.dst ? t.dst + got : discard.data();
                    if (!t.dst) want = std::min(want, discard.size());
                    in.fill(dst, want);
                    got += want;
                }
                router->on_frame(from, h, t);
            } catch (const Error& e) {
                if (verbose) std::fprintf(stderr, "frame from rank %d refused: %s\n", from, e.what());
                router->on_failure(from, std::string("protocol violation: ") + e.what());
            }
        }
    } catch (const Error& e) {
        std::fprintf(stderr, "op start/finish threw: %s\n", e.what());
        std::abort();
    }
    return 0;
}
