"""Small value types of the public API: reduction operators, algorithms, element types, wire formats,
and per-op results.

The enums are the C++ core's own (csrc/kernels/dtype.hpp, codec.hpp, collectives/collective.hpp),
exported by the bindings as ``enum.IntEnum`` classes: their values are the codes the core uses, so
nothing here repeats a number. The trap this avoids: a second, hand-copied table drifting from the
core's. ReduceInfo is built from the core's result struct in exactly one place, ``ReduceInfo.from_core``.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._core import Algorithm, DataType, Quantization, ReduceOp, ReduceResult


@dataclass(frozen=True)
class ReduceInfo:
    """What one all-reduce did on this peer."""

    world_size: int
    tx_bytes: int
    rx_bytes: int
    algorithm: str
    epoch: int
    retries: int  # transparent re-runs caused by a graceful leave or a join mid-op
    rank: int = -1  # this peer's rank in the membership the op ran in
    swapped_bytes: int = 0  # of the result, published by swapping memory pages instead of copying
    # Whether peers wait for admission, as every member agreed at the end of this op: the value
    # are_peers_pending() returns after it (see Communicator.are_peers_pending).
    peers_pending: bool = False

    @classmethod
    def from_core(cls, r: ReduceResult) -> "ReduceInfo":
        """The one conversion from the core's result (a bound struct) to the public dataclass."""
        return cls(world_size=r.world_size, tx_bytes=r.tx_bytes, rx_bytes=r.rx_bytes, algorithm=r.algorithm,
                   epoch=r.epoch, retries=r.retries, rank=r.rank, swapped_bytes=r.swapped_bytes,
                   peers_pending=r.peers_pending)


__all__ = ["Algorithm", "DataType", "Quantization", "ReduceInfo", "ReduceOp"]
