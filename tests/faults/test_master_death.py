"""kill -9 of the master. Every peer's blocking call raises MasterLostError within its
timeout - while idle, inside update_topology(), inside connect() (a joining peer), and inside
all_reduce (an op already running on the mesh may still complete; the next one raises). Nothing hangs.
"""

from __future__ import annotations

import time

from support import assert_within, join, wait_until

TIMEOUT = 5.0
HB = 2.0
COMM = dict(heartbeat_timeout=HB, timeout=TIMEOUT)
# The bound is the configured timeout. A dead master's sockets close, so idle peers learn of it at
# once; but an op that one peer started just after the master died, before its control thread noticed,
# waits for members that have already stopped, and raises when its own timeout (counted from its start,
# a moment after the kill) expires - hence the 1 s of slack.
BOUND = TIMEOUT + 1.0  # beyond any stall of the whole machine


def _assert_master_lost(r: dict, t_kill: float, what: str) -> None:
    assert not r["ok"], f"{what} succeeded after the master died: {r}"
    assert r["error"] == "MasterLostError", f"{what}: {r}"
    assert "master" in r["message"].lower(), r
    assert_within(t_kill, r["t"], BOUND, f"{what}'s MasterLostError (timeout {TIMEOUT} s)")


def _every_call_raises(peers, t_kill: float) -> None:
    for p in peers:
        r = p.call("all_reduce", dtype="float32", count=1000, seed=9, expect_from=None, timeout=BOUND + 10)
        _assert_master_lost(r, t_kill, f"peer {p.index} all_reduce")
        r = p.call("update_topology", timeout=BOUND + 10)
        _assert_master_lost(r, t_kill, f"peer {p.index} update_topology")


def test_master_killed_while_peers_idle(cluster):
    """After kill -9 of the master, every idle peer's next call raises MasterLostError within its timeout."""
    peers = join(cluster, 3, COMM)
    res = cluster.all_reduce(peers, dtype="float32", count=1000, seed=1)
    assert all(r["ok"] and r["correct"] for r in res), res
    t_kill = time.time()
    cluster.master.kill()
    time.sleep(0.2)
    _every_call_raises(peers, t_kill)


def test_master_killed_during_update_topology_and_connect(cluster):
    """kill -9 of the master while two members block in update_topology() and a newcomer blocks in connect():
    each of those calls raises MasterLostError within the bound, and so does every peer's next call."""
    peers = join(cluster, 3, COMM)
    # A joining peer blocks in connect() until admitted; two of three members block in
    # update_topology() waiting for the third.
    newcomer = cluster.spawn()
    newcomer.send("connect", master=cluster.master.address, kwargs=COMM)
    wait_until(lambda: peers[0].call("pending")["pending"], 20, "the newcomer to be pending")
    for p in peers[:2]:
        p.send("update_topology")
    time.sleep(0.5)
    t_kill = time.time()
    cluster.master.kill()
    for p in peers[:2]:
        _assert_master_lost(p.recv(timeout=BOUND + 10), t_kill, f"peer {p.index} update_topology")
    r = newcomer.recv(timeout=BOUND + 10)
    _assert_master_lost(r, t_kill, "the joining peer's connect()")
    _every_call_raises(peers, t_kill)


def test_master_killed_during_all_reduce(cluster):
    """kill -9 of the master during a repeated ring all_reduce: the op in flight may finish on the mesh, but a
    later repetition raises MasterLostError within the bound, with the input and output buffers unchanged."""
    peers = join(cluster, 3, COMM)
    cmd = dict(dtype="int32", count=1 << 20, op="SUM", seed=4, use_out=True, repeat=40, algorithm="ring")
    start = time.time() + 0.4
    for p in peers:
        p.send("all_reduce_at", start_at=start, **cmd)
    time.sleep(max(0.0, start + 0.1 - time.time()))
    t_kill = time.time()
    cluster.master.kill()
    for p in peers:
        r = p.recv(timeout=BOUND + 10)
        # The op in flight may complete on the mesh; the next repetition must raise.
        _assert_master_lost(r, t_kill, f"peer {p.index} all_reduce loop")
        assert r["completed"] < cmd["repeat"], r
        assert r["input_unchanged"] and r["out_unchanged"], r
    _every_call_raises(peers, t_kill)


def test_master_and_a_peer_killed_during_all_reduce(cluster):
    """With the master gone nobody can resolve the lost peer; survivors still raise in bounded time."""
    peers = join(cluster, 4, COMM)
    victim, survivors = peers[1], [p for p in peers if p is not peers[1]]
    cmd = dict(dtype="int32", count=1 << 20, op="SUM", seed=5, use_out=True, repeat=40, algorithm="ring")
    start = time.time() + 0.4
    for p in peers:
        p.send("all_reduce_at", start_at=start, **cmd)
    time.sleep(max(0.0, start + 0.1 - time.time()))
    t_kill = time.time()
    cluster.master.kill()
    victim.kill()
    for p in survivors:
        r = p.recv(timeout=2 * HB + BOUND + 10)
        assert not r["ok"], r
        assert r["error"] == "MasterLostError", r
        assert_within(t_kill, r["t"], BOUND, f"survivor {p.index}'s MasterLostError after the kills")
        assert r["input_unchanged"] and r["out_unchanged"], r
    _every_call_raises(survivors, t_kill)


def test_master_frozen_is_detected_as_lost(cluster):
    """A silent master (SIGSTOP: no FIN, no RST) is declared lost after heartbeat_timeout."""
    import signal

    peers = join(cluster, 3, COMM)
    t_stop = time.time()
    cluster.master.kill(signal.SIGSTOP)
    try:
        for p in peers[:2]:
            p.send("update_topology")  # blocks: the frozen master never answers the vote
        for p in peers[:2]:
            r = p.recv(timeout=HB + BOUND + 10)
            assert not r["ok"] and r["error"] == "MasterLostError", r
            assert_within(t_stop, r["t"], HB + 1.0, f"peer {p.index}'s notice of the silent master (heartbeat {HB} s)")
        # Issued about heartbeat_timeout after the freeze: if this peer has not noticed the silence yet,
        # the op starts, waits for members that stopped, and raises once its own timeout expires.
        t_call = time.time()
        r = peers[2].call("all_reduce", dtype="float32", count=1000, seed=9, expect_from=None, timeout=BOUND + 10)
        _assert_master_lost(r, t_call, f"peer {peers[2].index} all_reduce")
    finally:
        cluster.master.kill(signal.SIGCONT)
