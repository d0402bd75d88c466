"""Master restart: members with master_grace rejoin a master restarted at the same address.

The master is a real process killed with SIGKILL; the peers are worker processes. Afterwards the same
peers keep reducing and syncing shared state, with the same peer ids and the revision sequence going
on where it was.
"""

from __future__ import annotations

import signal
import time

from harness import Cluster, MasterProcess
from support import admit, assert_within, join, wait_until

GRACE = 12.0
CONNECT = dict(master_grace=GRACE, heartbeat_timeout=2.0, timeout=30.0)
KEYS = {"w": {"count": 10_000, "seed": 1}, "b": {"count": 100, "seed": 2}}


def _reduce(c, peers, **kw):
    replies = c.all_reduce(peers, dtype="float32", count=100_000, seed=kw.pop("seed", 3), **kw)
    for r in replies:
        assert r["ok"], r
        # Membership first: a member left out of the rebuilt group makes the others' sum differ from the
        # expected one, which is not a wrong result.
        assert r["world_size"] == len(peers), r
        assert r["correct"], r
    assert len({r["sha"] for r in replies}) == 1
    return replies


def _sync(peers, **kw):
    for p in peers:
        p.send("sync_state", **kw)
    replies = [p.recv(60) for p in peers]
    for r in replies:
        assert r["ok"], r
    assert len({str(r["hashes"]) for r in replies}) == 1
    return replies


def _restart(c: Cluster, port: int) -> None:
    c.master.kill()
    time.sleep(0.3)  # peers notice the closed connection and start retrying
    c.master = MasterProcess(port=port, log_path=c._log("master2.log"))


def test_kill_9_master_then_restart_same_peers_same_revisions():
    """After kill -9 and a restart of the master at the same address, the group continues with the same peers,
    ids and world size; shared state goes on at the next revision without moving bytes, and a newcomer is
    admitted and catches up."""
    with Cluster() as c:
        peers = join(c, 3, CONNECT)
        ids = sorted(p.call("state")["peer_id"] for p in peers)
        _reduce(c, peers)
        before = _sync(peers, keys=KEYS, revision=7, rebuild=True, steps=3, evolve=True)
        assert before[0]["revision"] == 9
        port = c.master.port
        _restart(c, port)
        # The group continues: same peers, same ids, the next revision.
        _reduce(c, peers, seed=4)
        after = _sync(peers, advance=True, evolve=True, steps=2)
        assert [r["revision"] for r in after] == [11, 11, 11]
        assert all(i["tx_bytes"] == 0 for r in after for i in r["infos"])  # nothing had to move
        states = [p.call("state") for p in peers]
        assert sorted(s["peer_id"] for s in states) == ids
        assert {s["world_size"] for s in states} == {3}
        # Membership changes work with the new master: a newcomer joins and catches up.
        everyone = admit(c, peers, [c.spawn()], CONNECT)
        assert len(everyone) == 4
        fresh = next(p for p in everyone if p not in peers)
        for p in everyone:
            if p is fresh:
                p.send("sync_state", keys={k: dict(v, seed=0) for k, v in KEYS.items()}, revision=0, rebuild=True)
            else:
                p.send("sync_state", advance=True, evolve=True)
        replies = [p.recv(60) for p in everyone]
        assert all(r["ok"] for r in replies), replies
        assert len({str(r["hashes"]) for r in replies}) == 1
        assert {r["revision"] for r in replies} == {12}


def test_while_the_master_is_away_reduces_run_and_master_calls_wait_out_the_grace():
    """While the master is down, all-reduces between peers still succeed; update_topology() raises
    MasterLostError naming master_grace once the grace, counted from the master's loss, has run out."""
    with Cluster() as c:
        peers = join(c, 2, CONNECT)
        t_kill = time.time()
        c.master.kill()
        time.sleep(0.3)
        _reduce(c, peers)  # peer-to-peer: no master needed
        for p in peers:
            p.send("update_topology")
        replies = [p.recv(GRACE + 30) for p in peers]
        for r in replies:
            assert not r["ok"] and r["error"] == "MasterLostError", r
            assert "master_grace" in r["message"]
            # The grace runs from the loss of the master, not from the call. (A CI run once saw both peers give
            # up 8.7 s late in the same millisecond, which points at the whole machine standing still rather
            # than at either peer: time the machine stood still is excused, no other.)
            assert GRACE - 0.5 <= r["t"] - t_kill, r["t"] - t_kill
            assert_within(t_kill, r["t"], GRACE + 5.0, "giving up on the master")


def test_peer_killed_while_the_master_is_away_is_resolved_by_the_restarted_master():
    """A peer killed while the master is down: the survivors' op waits for a decision and, once the master is
    back, fails with PeerLostError with the input unchanged; the survivors then reduce among themselves."""
    with Cluster() as c:
        peers = join(c, 3, CONNECT)
        port = c.master.port
        c.master.kill()
        time.sleep(0.3)
        victim = peers[1]
        victim.kill()
        survivors = [peers[0], peers[2]]
        for p in survivors:
            p.send("all_reduce", dtype="float32", count=1_000_000, seed=5, expect_from=[q.index for q in peers])
        time.sleep(1.0)  # the op fails on the broken link and waits for a decision
        c.master = MasterProcess(port=port, log_path=c._log("master2.log"))
        replies = [p.recv(GRACE + 30) for p in survivors]
        for r in replies:
            assert not r["ok"] and r["error"] == "PeerLostError", r
            assert r["input_unchanged"]
        _reduce(c, survivors, seed=6)


def test_newcomers_that_reach_the_restarted_master_first_yield_to_the_old_members(tmp_path):
    """A newcomer that reaches a restarted master before the old members forms a group alone; when the old
    members come back it gets EvictedError saying it is rejoining, and the old group resumes its shared state
    at the next revision."""
    with Cluster(log_dir=str(tmp_path)) as c:
        peers = join(c, 3, CONNECT)
        _sync(peers, keys=KEYS, revision=3, rebuild=True)
        port = c.master.port
        for p in peers:  # the old members are slow to come back
            p.kill(signal.SIGSTOP)
        c.master.kill()
        c.master = MasterProcess(port=port, log_path=c._log("master2.log"))
        newcomer = c.spawn()
        r = newcomer.call("connect", master=c.master.address, kwargs=CONNECT, timeout=30)
        assert r["ok"] and r["world_size"] == 1, r  # alone, it formed a group at the new master
        for p in peers:
            p.kill(signal.SIGCONT)
        r = wait_until(lambda: newcomer.call("all_reduce", dtype="float32", count=10, expect_from=[newcomer.index],
                                             timeout=60),
                       20, "the newcomer's all_reduce to fail", until=lambda r: not r["ok"], interval=0.2)
        assert not r["ok"] and r["error"] == "EvictedError" and "rejoining" in r["message"], r
        _reduce(c, peers)
        after = _sync(peers, advance=True)
        assert {r["revision"] for r in after} == {4}
