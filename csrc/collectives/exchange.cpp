#include "collectives/exchange.hpp"

#include <algorithm>

#include "common/error.hpp"

namespace pccl {
namespace {

CollectiveSpec byte_spec(uint32_t tag) {
    CollectiveSpec s;
    s.dtype = DType::kUInt8;
    s.tag = tag;
    return s;
}

}  // namespace

void validate_exchange(const ExchangeSpec& spec, int world, int rank) {
    std::vector<uint8_t> seen(spec.slots, 0);
    auto check = [&](const Transfer& t, const char* dir) {
        if (t.peer < 0 || t.peer >= world || t.peer == rank)
            throw Error(ErrorCode::kInvalidArgument, std::string("exchange: a ") + dir + " names rank " +
                                                         std::to_string(t.peer) + " in a world of " + std::to_string(world) +
                                                         " where this peer is rank " + std::to_string(rank));
        if (t.slot >= spec.slots || seen[t.slot]++)
            throw Error(ErrorCode::kInvalidArgument, "exchange: slot " + std::to_string(t.slot) +
                                                         " is out of range or used twice by this peer");
        if (t.bytes && !t.data) throw Error(ErrorCode::kInvalidArgument, "exchange: a transfer has no buffer");
    };
    for (const auto& t : spec.sends) check(t, "send");
    for (const auto& t : spec.recvs) check(t, "receive");
}

Exchange::Exchange(const ExchangeSpec& spec, uint64_t seq, int world, int rank, Mesh* mesh)
    : Collective(byte_spec(spec.tag), Algorithm::kExchange, spec.epoch, seq, world, rank, mesh), plan_(spec) {
    // The plan digest stands in for the element count: a member holding another plan is a mismatch.
    desc_.count = spec.digest;
    std::vector<size_t> elems(spec.slots, 0);
    recv_of_slot_.assign(spec.slots, -1);
    for (size_t i = 0; i < plan_.recvs.size(); ++i) {
        elems[plan_.recvs[i].slot] = plan_.recvs[i].bytes;
        recv_of_slot_[plan_.recvs[i].slot] = static_cast<int>(i);
    }
    init_slots(elems);
}

std::pair<uint8_t*, size_t> Exchange::region(int from, uint32_t slot) {
    if (slot >= recv_of_slot_.size() || recv_of_slot_[slot] < 0) return {nullptr, 0};
    const Transfer& t = plan_.recvs[static_cast<size_t>(recv_of_slot_[slot])];
    if (t.peer != from) return {nullptr, 0};
    return {t.data, t.bytes};
}

void Exchange::data_phase() {
    // Piece j of every send goes out before piece j+1 of any: all receivers progress together, and
    // consecutive pieces of one transfer spread over the K connections to its receiver.
    size_t rounds = 0;
    for (const auto& t : plan_.sends) rounds = std::max(rounds, piece_count(t.bytes));
    for (size_t j = 0; j < rounds; ++j)
        for (const auto& t : plan_.sends)
            if (j < piece_count(t.bytes)) send_piece(t.peer, t.slot, t.data, j, t.bytes);
    for (const auto& t : plan_.recvs)
        for (size_t j = 0; j < piece_count(t.bytes); ++j) wait_piece(t.slot, j);
}

}  // namespace pccl
