// Routes incoming frames of one epoch's mesh to the collective they belong to, by (tag, seq). Frames
// that arrive before the local caller has started that collective (a peer is ahead) are held, up to a
// cap, and handed over when it starts.
#pragma once
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "collectives/collective.hpp"
#include "transport/mesh.hpp"

namespace pccl {

// What frames for ops not started here may hold, per epoch's mesh: bytes (payloads plus a charge per
// entry, so zero-length completion notices count too) and entries. A peer over either is a protocol
// violation (its link fails, and with it the op). A legitimate peer is at most a few ops ahead, each
// with a bounded number of pieces; the caps only bite on a member that sends frames for ops nobody
// runs.
constexpr size_t kMaxEarlyBytes = size_t{2} << 30;
constexpr size_t kMaxEarlyFrames = size_t{1} << 16;
constexpr size_t kEarlyFrameCharge = 128;  // about what one entry costs: header, map node, buffer handle

class OpRouter : public MeshHandler {
public:
    using FailureHook = std::function<void(int from, const std::string& reason)>;
    explicit OpRouter(FailureHook hook) : hook_(std::move(hook)) {}

    void add(const std::shared_ptr<Collective>& op);
    void remove(const Collective* op);
    void fail_all(FailureKind kind, const std::string& why, int suspect);

    RecvTarget on_header(int from, const FrameHeader& h) override;
    void on_frame(int from, const FrameHeader& h, RecvTarget& target) override;
    void on_failure(int from, const std::string& reason) override;

private:
    using Key = std::pair<uint32_t, uint64_t>;
    struct Early {
        int from;
        FrameHeader header;
        std::shared_ptr<uint8_t[]> payload;
    };
    static void deliver(Collective& op, const Early& e);

    FailureHook hook_;
    std::mutex mutex_;
    std::map<Key, std::shared_ptr<Collective>> ops_;
    std::map<Key, std::vector<Early>> early_;
    // Per (tag, stream): every seq below this is finished. The stream is 0 for a tag's collectives and
    // the channel of a point-to-point key (protocol/p2p_key.hpp), whose ops finish in their own order.
    std::map<std::pair<uint32_t, uint64_t>, uint64_t> retired_;
    size_t early_bytes_ = 0;   // payloads plus kEarlyFrameCharge per held frame
    size_t early_frames_ = 0;  // frames held, including those whose payload is still arriving
    void release_early(const FrameHeader& h);
};

}  // namespace pccl
