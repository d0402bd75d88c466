"""Helpers shared by the fault-injection tests (kill, freeze, master death, garbage, churn).

Cluster.join() cannot pass the Communicator's own `timeout` (its keyword is taken by join's deadline),
so these tests admit peers with the helpers below, which take the Communicator kwargs as a dict.
"""

from __future__ import annotations

import re
import time
from typing import Any, Callable, Optional

from harness import Cluster, Peer


def admit(cluster: Cluster, members: list[Peer], newcomers: list[Peer], comm: dict[str, Any],
          timeout: float = 30.0) -> list[Peer]:
    """Connects every newcomer (already spawned) and has the members admit them; returns the new members.

    With no members, the first newcomer founds the group.
    """
    members = list(members)
    newcomers = list(newcomers)
    deadline = time.time() + timeout
    if not members:
        first = newcomers.pop(0)
        r = first.call("connect", master=cluster.master.address, kwargs=comm, timeout=timeout)
        assert r["ok"], r
        first.peer_id = r["peer_id"]
        members = [first]
    for p in newcomers:
        p.send("connect", master=cluster.master.address, kwargs=comm)
    waiting = {p.index: p for p in newcomers}

    def collect(wait: float) -> None:
        # A connect() that returned: admitted by an earlier vote (its reply can lag the vote's on a
        # slow machine), or failed, which never becomes pending.
        for idx, p in list(waiting.items()):
            try:
                r = p.recv(timeout=wait)
            except TimeoutError:
                continue
            assert r["ok"], f"peer {idx} failed to join: {r}"
            p.peer_id = r["peer_id"]
            members.append(p)
            del waiting[idx]

    while waiting:
        assert time.time() < deadline, "peers were not admitted in time"
        while waiting and not members[0].call("pending", timeout=timeout)["pending"]:
            assert time.time() < deadline, "joining peers never became pending"
            collect(0)
            time.sleep(0.01)
        if not waiting:
            break
        for m in members:
            m.send("update_topology")
        for m in members:
            r = m.recv(timeout)
            assert r["ok"], r
        collect(0.5)
    return members


def join(cluster: Cluster, n: int, comm: dict[str, Any], timeout: float = 60.0) -> list[Peer]:
    """Spawns n peers, founds a group with them and returns them in rank order."""
    new = [cluster.spawn() for _ in range(n)]
    return cluster.ranked(admit(cluster, [], new, comm, timeout))


def wait_for(pred, timeout: float, interval: float = 0.05, what: str = "condition") -> Any:
    deadline = time.time() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.time() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s")
        time.sleep(interval)


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
    members = cluster.ranked(members)
    states = [m.call("state", timeout=10) for m in members]
    assert [s["rank"] for s in states] == list(range(world)), states
    assert all(s["world_size"] == world for s in states), states
    return members, spare
