// One half of a point-to-point transfer: a send of one buffer to one member, or the receive of it.
// It rides the collective machinery (frames, routing, deadline, freeze and the master's decision), but
// only its two parties take part: its key names the channel (sender, receiver, tag) and the op's number
// on it (protocol/p2p_key.hpp), its completion notices travel between the two parties only, and the
// master commits it iff its receiver held all of it. The receiver builds the message in an op-owned
// buffer and publishes it (page swap or copy) only on commit, so a failed receive leaves the caller's
// buffer unchanged; the sender lends its pages to the kernel and must not modify them until it returns.
#pragma once
#include "collectives/collective.hpp"

namespace pccl {

struct P2PSpec {
    bool send = true;
    int peer = -1;  // the other party's rank in the op's epoch
    const uint8_t* src = nullptr;  // send: the message
    uint8_t* dst = nullptr;        // receive: where it is published
    size_t count = 0;
    DType dtype = DType::kFloat32;
    uint32_t tag = 0;
    bool swap_pages = true;
    // Nonzero: the op was planned for this membership epoch (shared-state sync): it fails with
    // PeerLostError in any other epoch and is never re-run transparently.
    uint64_t planned_epoch = 0;
};

class PointToPoint : public Collective {
public:
    // key: protocol/p2p_key.hpp, for this op's channel in `epoch`.
    PointToPoint(const P2PSpec& spec, uint64_t epoch, uint64_t key, int world, int rank, Mesh* mesh);
    void publish() override;

protected:
    void data_phase() override;
    std::pair<uint8_t*, size_t> region(int from, uint32_t slot) override;

private:
    P2PSpec p2p_;
};

}  // namespace pccl
