"""What one outer step did, as returned by ``step()``.

Why this exists: a training loop on the public internet needs to see what synchronisation costs
(bytes, wall time, how long the caller's thread stood still) and what the group went through
(retries, joins, losses) without instrumenting the library. The trap: ``comm_seconds`` and
``blocked_seconds`` are different things. In the synchronous variant they are about equal; the
asynchronous and streaming variants exist to make ``blocked_seconds`` small while ``comm_seconds``
stays what the network needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class OuterStepReport:
    """One outer step (or, for StreamingDiLoCo, one fragment's sync) on this peer.

    outer_step: the group's outer-step counter after this step.
    world_size: members that took part in the pseudo-gradient reduce that was applied.
    tx_bytes, rx_bytes: everything this peer sent and received for the step: the pseudo-gradient
        reduce and its control op (failed attempts that reported no counts excluded) and the
        shared-state sync (hash tables and any transferred entries).
    comm_seconds: wall time of the communication: from the start of the reduce to its end, plus
        admission and the shared-state sync.
    blocked_seconds: the part of that the caller's thread spent waiting inside step().
    retries: reduce attempts that were re-run among the survivors (a peer lost or evicted mid-op).
    joined: peers admitted at this step's boundary.
    lost: members that left or were lost while this step's reduce ran.
    contributors: members whose pseudo-gradient is in the average (a peer admitted while a reduce was
        about to start contributes nothing to that one).
    fragment: the fragment synced (StreamingDiLoCo), else None.
    """

    outer_step: int
    world_size: int
    tx_bytes: int
    rx_bytes: int
    comm_seconds: float
    blocked_seconds: float
    retries: int
    joined: int
    lost: int
    contributors: int = 0
    fragment: Optional[int] = None


__all__ = ["OuterStepReport"]
