"""Small value types of the public API: reduction operators, algorithms, and per-op results."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class ReduceOp(enum.IntEnum):
    """Element-wise reduction. AVG on integers truncates toward zero after summing."""

    SUM = 0
    AVG = 1
    PROD = 2
    MIN = 3
    MAX = 4


class Algorithm(enum.IntEnum):
    """All-reduce algorithm. AUTO picks STAR up to 64 KiB and RING above."""

    AUTO = 0
    RING = 1
    STAR = 2


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
    def from_core(cls, d: dict) -> "ReduceInfo":
        return cls(**d)
