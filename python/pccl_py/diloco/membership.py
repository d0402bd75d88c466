"""Admission and the shared state: the only places where DiLoCo's membership changes.

Why this exists: a newcomer must start from exactly the group's global parameters, outer momentum
and counters, and the members must take it in at the same point of their op sequence. Both happen at
an outer-step boundary: the members vote (``update_topology``) when the reduce's control op says a
peer is waiting, then every member, and the newcomer from its constructor, runs one shared-state
sync. In steady state that sync moves only hashes and proves the peers still agree bit for bit.

The traps:
- Deciding to vote from a view that members do not share stalls the group for a whole op timeout (one
  sees the newcomer and votes, another starts its next op). ``are_peers_pending()`` is agreed only at
  the same point of the caller's op sequence, and here the reduces finish on a background thread, so
  the decision comes from the reduced control op instead, which every member reads identically.
- A newcomer's fresh parameters must never win the shared-state election. Every fresh communicator
  starts at revision 1; a group that has synced once expects at least revision 2, so a newcomer is
  always "behind" and receives, whatever the group's size.
"""

from __future__ import annotations

import logging
import time
from typing import Dict, Optional

import numpy as np
import torch

from ..communicator import Communicator, internals
from ..errors import InvalidArgumentError, PeerLostError, TimeoutError
from ..ops import ReduceOp
from ..shared_state import SharedState, SyncInfo
from ..tags import DILOCO_CONTROL_TAG

log = logging.getLogger("pccl_py.diloco")

_SYNC_ATTEMPTS = 16


def admit_until(comm: Communicator, world_size: int, timeout: float = 600.0) -> int:
    """Founders only: admit waiting peers until the group has `world_size` members.

    Every peer started together for the first run calls this after ``connect()`` and before creating
    its DiLoCo, so that all of them begin from one shared initialisation. Members vote only when a
    reduced flag says someone is pending, and stop when the (reduced) world size is reached, so all of
    them stop at the same op. A peer that joins a group already training must not call it: the
    members are not running this loop any more, and the two sides would wait for each other until
    the op timeout. Returns the world size reached.

    Raises TimeoutError if the group is not complete after `timeout` seconds.
    """
    if not isinstance(world_size, int) or isinstance(world_size, bool) or world_size < 1:
        raise InvalidArgumentError(f"world_size must be a positive int, not {world_size!r}")
    deadline = time.monotonic() + timeout
    flag = np.zeros(1, dtype=np.int64)
    while True:
        if time.monotonic() > deadline:
            raise TimeoutError(f"admit_until: the group has {comm.world_size} of the {world_size} members asked for "
                               f"after {timeout:.0f} s; start the missing peers or lower world_size")
        flag[0] = 1 if comm.are_peers_pending() else 0
        try:
            info = internals(comm).all_reduce(flag, op=ReduceOp.MAX, tag=DILOCO_CONTROL_TAG)
        except PeerLostError:
            continue
        if flag[0]:
            try:
                comm.update_topology()
            except (PeerLostError, TimeoutError) as exc:
                log.info("admit_until: vote failed (%s); trying again", exc)
        elif info.world_size >= world_size:
            return info.world_size
        else:
            time.sleep(0.02)


class GroupState:
    """The shared state of a DiLoCo run: global parameters, outer momentum, and the counters
    (outer step, inner step), synced once per outer step."""

    def __init__(self, comm: Communicator, entries: Dict[str, torch.Tensor], counters: torch.Tensor) -> None:
        entries = dict(entries)
        entries["counters"] = counters
        self._comm = comm
        # Revision of this peer's last successful sync: 0 on a fresh communicator, so the first sync
        # uses revision 1; a communicator that synced before (a DiLoCo created again) continues.
        self._synced = comm.state_revision or 0
        self.state = SharedState(entries, revision=self._synced + 1)

    def sync(self) -> SyncInfo:
        """One sync, re-run if the membership changes under it. Every member calls it at the same
        point; a newcomer's first call receives the group's content."""
        last: Optional[BaseException] = None
        for _ in range(_SYNC_ATTEMPTS):
            self.state.revision = self._synced + 1
            try:
                info = self._comm.sync_shared_state(self.state)
            except (PeerLostError, TimeoutError) as exc:
                last = exc
                log.info("shared-state sync: %s; running it again", exc)
                continue
            self._synced = info.revision
            return info
        raise PeerLostError(f"the shared-state sync failed {_SYNC_ATTEMPTS} times in a row (last: {last})")

    def admit(self, pending: bool) -> int:
        """Votes when the reduced control op said a peer is waiting; returns how many joined."""
        if not pending:
            return 0
        before = self._comm.world_size
        try:
            self._comm.update_topology()
        except (PeerLostError, TimeoutError) as exc:
            # Nobody was admitted, or the vote went through on the others: either way the sync that
            # follows runs among whoever is a member, and a waiting peer is voted on next time.
            log.info("admission vote failed (%s); pending peers wait for the next outer step", exc)
        return max(0, self._comm.world_size - before)


__all__ = ["admit_until", "GroupState"]
