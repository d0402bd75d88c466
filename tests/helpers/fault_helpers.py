"""Helpers shared by the fault-injection tests (kill, freeze, master death, garbage, churn): reading
the master's log, collecting the survivors' replies after a kill, refilling a group to its size.

Admission and waiting are support.admit()/join() and support.wait_until(), as everywhere else.
"""

from __future__ import annotations

import re
import time
from typing import Any, Callable, Optional

from harness import Cluster, Peer
from support import admit


def read_text(path: Optional[str]) -> str:
    try:
        with open(path, "r", errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""


def listen_port_from_master_log(log_text: str, peer_id: int) -> Optional[int]:
    """The master logs 'peer N (host:port) ...' when N says hello; port is its mesh listener."""
    m = re.search(rf"peer {peer_id} \(([^)]*):(\d+)\)", log_text)
    return int(m.group(2)) if m else None


def settle_survivors(survivors: list[Peer], deadline: float,
                     retry: Callable[[Peer, dict], bool]) -> tuple[dict[int, dict], dict[int, dict]]:
    """Collects every survivor's first and final reply after a kill.

    retry(survivor, first_reply) re-sends whatever failed and returns True, or returns False when
    nothing needs another go. Retries go out as soon as a reply arrives, because another survivor that
    already committed the op in flight may be waiting in its next op for exactly that retry. Fails the
    test if no survivor replies before the deadline.
    """
    first: dict[int, dict] = {}
    final: dict[int, dict] = {}
    while len(final) < len(survivors):
        progressed = False
        for s in survivors:
            if s.index in final:
                continue
            try:
                r = s.recv(timeout=0.02)
            except TimeoutError:
                continue
            progressed = True
            if s.index not in first:
                first[s.index] = r
                if retry(s, r):
                    continue
            final[s.index] = r
        if not progressed:
            assert time.time() < deadline, f"survivors hung: first replies {first}, final {final}"
    return first, final


def refill(cluster: Cluster, members: list[Peer], spare: Peer, comm: dict[str, Any],
           world: int) -> tuple[list[Peer], Peer]:
    """Admits spares until the group has `world` members again (a fresh spare is spawned for each one
    used, so its start-up overlaps the next round). Returns the members in rank order, checked, and
    the next spare."""
    while len(members) < world:
        used, spare = spare, cluster.spawn()
        members = admit(cluster, members, [used], comm)
    states = [m.call("state", timeout=10) for m in members]
    assert [s["rank"] for s in states] == list(range(world)), states
    assert all(s["world_size"] == world for s in states), states
    return members, spare
