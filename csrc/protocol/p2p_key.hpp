// The identity of a point-to-point op on the wire and in the master's decisions. A send/recv pair
// involves two members only, so numbering it in its tag's op sequence (which every member advances)
// would desynchronise the others; instead each channel (sender rank, receiver rank, tag) numbers its
// own ops within the epoch, and that number is packed with the two ranks into the 64-bit `seq` field.
// Bit 63 marks such keys, so they never collide with a collective's seq (a plain count), and the
// router, the STATUS report and the EPOCH decisions carry them unchanged.
#pragma once
#include <cstdint>

namespace pccl {

constexpr uint64_t kP2PKeyBit = uint64_t{1} << 63;
constexpr int kP2PRankBits = 12;   // kMaxMembers = 4096 ranks
constexpr int kP2PCountBits = 39;  // 5.5e11 ops per channel and epoch
constexpr uint64_t kP2PCountMask = (uint64_t{1} << kP2PCountBits) - 1;
constexpr uint64_t kP2PRankMask = (uint64_t{1} << kP2PRankBits) - 1;

inline bool is_p2p_key(uint64_t seq) { return (seq & kP2PKeyBit) != 0; }
// The channel part of a key (0 for a collective's seq): ops of one stream retire in order.
inline uint64_t p2p_stream(uint64_t seq) { return is_p2p_key(seq) ? (seq & ~kP2PCountMask) : 0; }
inline uint64_t p2p_key(int src, int dst, uint64_t n) {
    return kP2PKeyBit | (static_cast<uint64_t>(src) << (kP2PCountBits + kP2PRankBits)) |
           (static_cast<uint64_t>(dst) << kP2PCountBits) | (n & kP2PCountMask);
}
inline int p2p_src(uint64_t key) { return static_cast<int>((key >> (kP2PCountBits + kP2PRankBits)) & kP2PRankMask); }
inline int p2p_dst(uint64_t key) { return static_cast<int>((key >> kP2PCountBits) & kP2PRankMask); }
inline uint64_t p2p_number(uint64_t key) { return key & kP2PCountMask; }

}  // namespace pccl
