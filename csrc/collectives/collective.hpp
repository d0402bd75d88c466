// One op in flight on one peer: an all-reduce (ring.hpp, star.hpp) or one half of a point-to-point
// transfer (p2p.hpp). Each kind says which slots it fills, from whom, and what it does with them; this
// base owns what they share: the buffers, what has arrived, what is still being sent, the completion
// exchange and the op's fate (the master's decision after a failure). The I/O thread writes payloads
// straight into the regions this object names; the calling thread runs the kind's data phase over them. The caller's input and output are never written
// before the op commits, so an aborted op leaves them bitwise unchanged (invariant 2).
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "collectives/page_swap.hpp"
#include "common/clock.hpp"
#include "kernels/codec.hpp"
#include "kernels/dtype.hpp"
#include "protocol/frame.hpp"
#include "protocol/messages.hpp"
#include "transport/mesh.hpp"

namespace pccl {

// kP2P is not an all-reduce algorithm: it marks send/recv (collectives/p2p.hpp) on the wire. Code 3
// was the plan-wide exchange that shared-state sync used before send/recv; it is no longer sent.
enum class Algorithm : uint8_t { kAuto = 0, kRing = 1, kStar = 2, kP2P = 4 };

// Up to this size a star beats a ring: it needs two hops instead of 2(n-1), and bandwidth does not
// matter yet.
constexpr size_t kStarMaxBytes = 64u << 10;
// Ring chunks travel in pieces of this many (unquantized) bytes so that receiving, reducing and
// forwarding overlap. A multiple of every element size times the q8 and q4 blocks, so that every piece
// starts on a block boundary and has a fixed wire offset.
constexpr size_t kPieceBytes = 256u << 10;
static_assert((kPieceBytes / 8) % kQ8Block == 0 && (kPieceBytes / 8) % kQ4Block == 0);

Algorithm choose_algorithm(Algorithm requested, size_t bytes);

struct CollectiveSpec {
    const uint8_t* src = nullptr;
    uint8_t* dst = nullptr;
    size_t count = 0;
    DType dtype = DType::kFloat32;
    ReduceOp op = ReduceOp::kSum;
    Algorithm algorithm = Algorithm::kAuto;
    Quant quant = Quant::kNone;
    uint32_t tag = 0;
    bool swap_pages = true;  // publish a large result by swapping pages into dst where that is safe
};

// Thrown out of the data phase when the op can no longer finish on its own (failure, freeze, deadline).
struct Interrupted {};

class Collective : public SendCompletion, public std::enable_shared_from_this<Collective> {
public:
    Collective(const CollectiveSpec& spec, Algorithm algorithm, uint64_t epoch, uint64_t seq, int world, int rank,
               Mesh* mesh);
    ~Collective() override = default;

    // --- I/O thread side -------------------------------------------------------------------
    RecvTarget target_for(int from, const FrameHeader& h);  // validates; throws ProtocolError
    // A frame's payload has landed: records it and, once the op processes pieces on arrival, runs
    // process() for it on this thread.
    void on_frame(int from, const FrameHeader& h);
    void sent() override;
    // Marks the op failed (first reason wins) and wakes the op thread.
    void fail(FailureKind kind, const std::string& why, int suspect_rank);

    // --- op thread side ---------------------------------------------------------------------
    // Runs data phase and the completion exchange; returns when every member holds the result.
    // Throws Interrupted if the op failed, was frozen by a recovery, or passed its deadline.
    void execute(TimePoint deadline);
    // Copies the result to the caller's output. Only after a commit.
    virtual void publish();

    // --- admission flag ---------------------------------------------------------------------
    // The communicator's count of peers pending admission, read when this peer sends its completion
    // notices (set before execute(); may be null: the flag is then false).
    void set_pending_source(const std::atomic<uint32_t>* source) { pending_source_ = source; }
    // After a commit: whether any member saw peers pending when it finished its part. Every member
    // gets the same answer (it is the OR of everyone's notice, or the master's decision's copy of it).
    bool peers_pending();

    // --- recovery (control thread) ---------------------------------------------------------
    // Freezes the op: from now on only the master's decision can finish it. Returns its progress and
    // sets *pending_seen to the OR of the flags this peer holds so far (its own and the notices in).
    OpProgress freeze(bool* pending_seen);
    // pending: for a commit, the agreed flag the master computed from every member's report.
    void decide(bool commit, EpochCause cause, bool pending = false);
    // Waits for decide(); returns false on deadline.
    bool wait_decision(TimePoint deadline, bool* commit, EpochCause* cause);

    struct FailureInfo {
        bool failed = false;
        FailureKind kind = FailureKind::kLinkBroken;
        std::string why;
        int suspect = -1;
    };
    FailureInfo failure();

    const OpDescriptor& descriptor() const { return desc_; }
    uint32_t tag() const { return spec_.tag; }
    uint64_t seq() const { return seq_; }
    uint64_t epoch() const { return epoch_; }
    Algorithm algorithm() const { return algorithm_; }
    uint64_t tx_bytes() const { return tx_bytes_; }
    uint64_t swapped_bytes() const { return swapped_bytes_; }  // of the result, by publish()
    uint64_t rx_bytes() const { return rx_bytes_; }

protected:
    // Implemented by each algorithm.
    virtual void data_phase() = 0;
    // Where the wire bytes of slot `slot` from sender `from` land, and how many elements the slot
    // holds; {nullptr, 0} if that sender may not fill that slot.
    virtual std::pair<uint8_t*, size_t> region(int from, uint32_t slot) = 0;

    // Work on a piece right where it arrives, for algorithms whose pieces need no order among
    // themselves: the I/O thread that received the piece calls it, so a piece goes from the socket
    // through the kernel to the next peer with no thread hand-off and while it is still in cache.
    // Pieces of different slots may be processed concurrently (the caller works off early arrivals
    // while the I/O thread takes new ones); each touches only its own elements.
    virtual void process(uint32_t /*slot*/, size_t /*piece*/) {}

    // Geometry. A slot is a run of elements one sender fills; it travels as pieces of piece_elems_
    // elements, each encoded by the op's codec. Offsets and lengths on the wire are in wire bytes.
    void init_slots(const std::vector<size_t>& slot_elems);
    void send_piece(int to, uint32_t slot, const uint8_t* wire_base, size_t piece, size_t slot_elems);
    void wait_piece(uint32_t slot, size_t piece);
    // Two ways to drive process() over every piece of every slot; both return when all are done.
    // On arrival: from now on the I/O thread processes each piece as it lands; early ones are
    // processed here.
    void process_all_arrivals();
    // In order, on this thread: slot by slot, waiting for each piece.
    void process_in_order();
    size_t piece_count(size_t elems) const { return (elems + piece_elems_ - 1) / piece_elems_; }
    size_t piece_elems(size_t elems, size_t piece) const { return std::min(piece_elems_, elems - piece * piece_elems_); }
    size_t piece_first(size_t piece) const { return piece * piece_elems_; }
    size_t wire(size_t elems) const { return wire_bytes(spec_.quant, spec_.dtype, elems); }
    size_t chunk_first(int c) const;  // elements
    size_t chunk_elems(int c) const;
    uint8_t* elem_ptr(uint8_t* base, size_t first) const { return base + first * esize_; }
    const uint8_t* elem_ptr(const uint8_t* base, size_t first) const { return base + first * esize_; }
    bool quantized() const { return spec_.quant != Quant::kNone; }
    // Point-to-point ops (collectives/p2p.hpp) involve two members: completion notices go to and come
    // from partner_ only, so their completion never waits for the other members. A sender has no
    // result of its own: it counts as data-done (for the master's decision) only once its receiver
    // acknowledged (awaits_receipt_).
    int partner_ = -1;  // -1: every member (collectives)
    bool awaits_receipt_ = false;
    void wait_partner_done();  // until the partner's completion notice arrived

    CollectiveSpec spec_;
    Algorithm algorithm_;
    OpDescriptor desc_;
    uint64_t epoch_, seq_;
    int world_, rank_;
    Mesh* mesh_;
    size_t esize_, bytes_;
    size_t piece_elems_;
    std::shared_ptr<SwapRegion> swap_;    // set when the result can be published by swapping pages
    std::shared_ptr<uint8_t[]> work_;     // the result being built
    std::shared_ptr<uint8_t[]> staging_;  // received bytes awaiting reduction or decoding
    std::shared_ptr<uint8_t[]> encoded_;  // quantized bytes this peer sends

private:
    void check_interrupt();  // with mutex_ held
    void run_piece(uint32_t slot, size_t piece);
    // With mutex_ held: marks the data phase done; true if the caller is the one to send the notices.
    bool claim_done_notices();
    void send_done_notices();
    FrameHeader make_header(FrameType type, uint32_t slot, uint64_t offset, uint32_t length) const;

    std::mutex mutex_;
    std::condition_variable cv_;
    // Per slot and piece: absent; arrived (not yet processed); claimed by whoever processes it.
    enum class Piece : uint8_t { kAbsent, kArrived, kClaimed };
    std::vector<std::vector<Piece>> arrived_;
    size_t pieces_total_ = 0, pieces_processed_ = 0;
    bool processing_on_arrival_ = false;
    std::vector<size_t> slot_elems_;
    std::vector<uint8_t> done_from_;
    int dones_ = 0;
    int outstanding_ = 0;
    TimePoint deadline_;
    FailureInfo failure_;
    bool frozen_ = false;
    OpProgress progress_ = OpProgress::kRunning;
    bool committed_ = false;
    bool done_announced_ = false;  // the completion notices are queued
    const std::atomic<uint32_t>* pending_source_ = nullptr;
    bool own_pending_ = false;   // this peer's flag, fixed when it claims its completion notices
    bool pending_seen_ = false;  // own_pending_ OR every notice received; replaced by a commit decision
    enum class Decision : uint8_t { kNone, kCommit, kAbort };  // the master's, after a recovery
    Decision decision_ = Decision::kNone;
    EpochCause decision_cause_ = EpochCause::kLost;
    uint64_t tx_bytes_ = 0, rx_bytes_ = 0, swapped_bytes_ = 0;
};

std::shared_ptr<Collective> make_collective(const CollectiveSpec& spec, uint64_t epoch, uint64_t seq, int world,
                                            int rank, Mesh* mesh);

}  // namespace pccl
