#include "collectives/p2p.hpp"

namespace pccl {
namespace {

CollectiveSpec base_spec(const P2PSpec& s) {
    CollectiveSpec c;
    c.dtype = s.dtype;
    c.tag = s.tag;
    // Only a receiver needs a buffer of its own (where the message lands before it is published).
    c.count = s.send ? 0 : s.count;
    c.dst = s.send ? nullptr : s.dst;
    c.swap_pages = s.swap_pages && !s.send;
    return c;
}

}  // namespace

PointToPoint::PointToPoint(const P2PSpec& spec, uint64_t epoch, uint64_t key, int world, int rank, Mesh* mesh)
    : Collective(base_spec(spec), Algorithm::kP2P, epoch, key, world, rank, mesh), p2p_(spec) {
    // The element count and dtype are the descriptor: a receive of another size or dtype is a mismatch.
    desc_.count = spec.count;
    partner_ = spec.peer;
    awaits_receipt_ = spec.send;
    if (spec.send)
        init_slots({});
    else
        init_slots({spec.count});
}

std::pair<uint8_t*, size_t> PointToPoint::region(int from, uint32_t slot) {
    if (p2p_.send || from != p2p_.peer || slot != 0) return {nullptr, 0};
    return {work_.get(), p2p_.count};
}

void PointToPoint::data_phase() {
    if (p2p_.send) {
        // Consecutive pieces go to consecutive connections (send_piece), striping one message over all K.
        for (size_t j = 0; j < piece_count(p2p_.count); ++j) send_piece(p2p_.peer, 0, p2p_.src, j, p2p_.count);
        return;
    }
    // The I/O thread takes each piece as it lands and, with the last one, acknowledges at once.
    process_all_arrivals();
    // The sender's notice carries its descriptor: without it an empty receive could not tell a sender
    // of another size from a matching one.
    wait_partner_done();
}

void PointToPoint::publish() {
    if (!p2p_.send) Collective::publish();
}

}  // namespace pccl
