"""Every serving loop survives an exception that is not the library's own (docs/operations.md, "Failpoints").

An out-of-memory error or a standard-library exception thrown inside the master's event loop, a peer's
control thread, its mesh I/O thread or its mesh listener must be logged and survived: the process keeps
serving, an op it was serving fails with a clear error on every member (or is retried), and the next op
succeeds. The one message a peer cannot lose and serve on is a membership change (welcome, recover,
epoch): it then leaves its group with an EvictedError naming the cause, and the others go on without it. Nothing on the network can make those loops throw such an exception, so the tests arm the
core's failpoints (PCCL_FAILPOINTS, read when the core loads) in real master and peer processes.

The trap: a failpoint that never fired proves nothing. Each test first waits for the failpoint's own
"throwing" line in the process's log, then checks what the loop did about it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from fault_helpers import read_text
from harness import Cluster
from support import admit, assert_within, call, check_replies, join, reply_to, wait_until

COUNT = 4096  # float32 elements per op: small, a few frames per link


def _log_has(path: str, *needles: str):
    text = read_text(path)
    return all(n in text for n in needles) and text


def _reduce_until_ok(peers, tries: int = 3, timeout: float = 30.0) -> tuple[list[dict], list[dict]]:
    """Issues the same all_reduce on every peer until one round succeeds everywhere (at most `tries`
    rounds). Returns (the failed rounds' replies, the successful round's replies). A failed round must
    have failed on every peer, each with a clear library error and its input untouched."""
    failed: list[dict] = []
    for attempt in range(tries):
        ids = [p.send("all_reduce", dtype="float32", count=COUNT, seed=attempt, expect_from=[q.index for q in peers])
               for p in peers]
        replies = [reply_to(p, i, timeout) for p, i in zip(peers, ids)]
        if all(r["ok"] for r in replies):
            check_replies(replies, world_size=len(peers))
            return failed, replies
        assert not any(r["ok"] for r in replies), f"an op failed on some members only: {replies}"
        for r in replies:
            if not r["ok"]:
                assert r["error"].endswith("Error") and r["message"], f"an op failed without a clear error: {r}"
                assert r.get("input_unchanged", True), f"a failed op changed its input: {r}"
        failed.extend(replies)
    raise AssertionError(f"no all_reduce succeeded in {tries} rounds: {failed}")


@pytest.mark.parametrize("kind,what", [("bad_alloc", "std::bad_alloc"), ("runtime_error", "failpoint master_loop")])
def test_master_loop_survives(tmp_path, kind, what):
    """The master's first message handled (a newcomer's first frame) throws: the master logs it, closes
    that one connection, and then admits newcomers and runs their group as usual."""
    with Cluster(log_dir=str(tmp_path), master_env={"PCCL_FAILPOINTS": f"master_loop={kind}:1"}) as cluster:
        mlog = os.path.join(str(tmp_path), "master.log")
        victim = cluster.spawn()
        r = call(victim, "connect", timeout=30.0, master=cluster.master.address, kwargs={"join_timeout": 10.0})
        assert not r["ok"] and r["message"], f"the connection the master closed still joined: {r}"
        wait_until(lambda: _log_has(mlog, "master_loop: throwing", "internal error handling a message", what), 10.0,
                   "the master to log the exception it caught")
        peers = join(cluster, 2, timeout=30.0)
        failed, ok = _reduce_until_ok(peers, tries=1)
        assert not failed
        assert cluster.master.alive()


def test_control_thread_survives(tmp_path):
    """A peer's control thread throws on a message from the master (a heartbeat, once the group is formed):
    it logs the error and serves on; the group's next all_reduce succeeds with the right values."""
    with Cluster(log_dir=str(tmp_path)) as cluster:
        founder = cluster.spawn(env={"PCCL_FAILPOINTS": "control_loop=bad_alloc:1@12"})
        plog = os.path.join(str(tmp_path), "peer0.log")
        r = call(founder, "connect", timeout=30.0, master=cluster.master.address, kwargs={"join_timeout": 20.0})
        assert r["ok"], r
        peers = admit(cluster, [founder], [cluster.spawn()], timeout=30.0)
        wait_until(lambda: _log_has(plog, "control_loop: throwing",
                                    "internal error handling a message from the master: std::bad_alloc; serving on"),
                   15.0, "the peer's control thread to log the exception it caught")
        _reduce_until_ok(peers)
        assert all(p.call("state")["ok"] for p in peers)


@pytest.mark.parametrize("skip,lost", [(0, "welcome"), (1, "epoch")])
def test_control_thread_losing_a_join_message_fails_connect_clearly(tmp_path, skip, lost):
    """The message the control thread lost is one connect() waits for (the welcome, or the epoch that makes
    the founder a member): connect() fails at once with an EvictedError saying the admission was lost and
    to connect again (before: the welcome's loss was reported as "not part of the new membership", the
    epoch's as a TimeoutError blaming the members after the whole join_timeout), and the master goes on
    admitting others."""
    with Cluster(log_dir=str(tmp_path)) as cluster:
        victim = cluster.spawn(env={"PCCL_FAILPOINTS": f"control_loop=runtime_error:1@{skip}"})
        t0 = time.monotonic()
        r = call(victim, "connect", timeout=30.0, master=cluster.master.address, kwargs={"join_timeout": 3.0})
        took = time.monotonic() - t0
        plog = os.path.join(str(tmp_path), "peer0.log")
        assert _log_has(plog, f"control_loop: throwing std::runtime_error on {lost}"), read_text(plog)[-2000:]
        assert not r["ok"] and r["error"] == "EvictedError", f"lost the {lost}, yet: {r}"
        assert "was not admitted" in r["message"] and "connect a new one to try again" in r["message"], r
        assert took < 2.0, f"connect() waited {took:.1f} s for an admission it knew was lost (join_timeout 3 s)"
        assert _log_has(plog, f"internal error handling the master's {lost} message: failpoint control_loop; "
                              "leaving the group"), read_text(plog)[-2000:]
        victim.call("close", timeout=10.0)
        peers = join(cluster, 2, timeout=30.0)
        _reduce_until_ok(peers, tries=1)


# The control_epoch failpoint fires on EPOCH messages only: a control_loop skip count would land on one
# only by chance, among the master's heartbeats (4 a second).
HB = 2.0  # heartbeat_timeout of the epoch-loss tests: the bound on the survivors' stall is HB / 2 + margin
EPOCH_COMM = {"heartbeat_timeout": HB, "timeout": 10.0, "join_timeout": 30.0}


def _vote_with_newcomer(cluster, members, newcomer):
    """newcomer connects, every member votes it in; returns (vote replies, connect reply, seconds the
    vote took)."""
    nid = newcomer.send("connect", master=cluster.master.address, kwargs=EPOCH_COMM)
    wait_until(lambda: call(members[0], "pending", timeout=10.0)["pending"], 15.0, "the newcomer to be pending")
    t0 = time.monotonic()
    ids = [m.send("update_topology") for m in members]
    votes = [reply_to(m, i, 30.0) for m, i in zip(members, ids)]
    took = time.monotonic() - t0
    return votes, reply_to(newcomer, nid, 30.0), took


def test_member_losing_an_epoch_change_leaves_clearly(tmp_path):
    """A running member's control thread throws on the EPOCH that admits a 4th peer. The member cannot
    know the new membership or the master's decisions on its ops, so it leaves at once with an
    EvictedError naming the cause; the two other members and the newcomer form the next epoch within
    HB / 2 + margin (their mesh build giving up on it), without accusing anyone, and all_reduce correctly.
    Before: the member stayed in at the old epoch; the others' failure reports were remembered against
    the link to it, so a second lost change evicted it together with the innocent newcomer."""
    with Cluster(log_dir=str(tmp_path)) as cluster:
        a, b = cluster.spawn(), cluster.spawn()
        victim = cluster.spawn(env={"PCCL_FAILPOINTS": "control_epoch=runtime_error:1@1"})  # passes its own admission
        vlog, mlog = os.path.join(str(tmp_path), "peer2.log"), os.path.join(str(tmp_path), "master.log")
        members = admit(cluster, [], [a], EPOCH_COMM)
        members = admit(cluster, members, [b], EPOCH_COMM)  # one at a time: the victim sees one EPOCH
        members = admit(cluster, members, [victim], EPOCH_COMM)
        newcomer = cluster.spawn()
        votes, joined, took = _vote_with_newcomer(cluster, members, newcomer)
        wait_until(lambda: _log_has(vlog, "control_epoch: throwing std::runtime_error on epoch"), 10.0,
                   "the victim's control thread to throw on the epoch change")
        lost = votes[[m.index for m in members].index(victim.index)]
        assert not lost["ok"] and lost["error"] == "EvictedError", f"the member that lost the change: {lost}"
        assert "lost a membership change" in lost["message"] and "failpoint control_epoch" in lost["message"], lost
        assert _log_has(vlog, "internal error handling the master's epoch message: failpoint control_epoch; leaving the group")
        survivors = [m for m in members if m is not victim] + [newcomer]
        for r in [v for v in votes if v is not lost] + [joined]:
            assert r["ok"] and r["world_size"] == 3, f"a survivor or the newcomer: {r}"
        assert took < HB / 2 + 1.5, f"the survivors' vote took {took:.2f} s (bound HB / 2 + 1.5 s)"
        _, ok = _reduce_until_ok(cluster.ranked(survivors), tries=1)
        assert {r["epoch"] for r in ok} == {joined["epoch"]}
        r = call(victim, "all_reduce", dtype="float32", count=COUNT, seed=0, expect_from=[victim.index])
        assert not r["ok"] and r["error"] == "EvictedError" and "lost a membership change" in r["message"], r
        master_log = read_text(mlog)
        # Dropped when it closed its connection, not evicted later, and nobody was accused of a broken link.
        assert f"peer {victim.peer_id} lost from group" in master_log, master_log[-3000:]
        assert "evicting" not in master_log and "looks alive" not in master_log, master_log[-3000:]
        # The process stays usable: a new Communicator in it is admitted and reduces with the others.
        assert victim.call("close", timeout=10.0)["ok"]
        group = admit(cluster, survivors, [victim], EPOCH_COMM, timeout=30.0)
        _reduce_until_ok(group, tries=1)


def test_newcomer_losing_its_first_epoch_fails_connect_clearly(tmp_path):
    """A newcomer's control thread throws on the EPOCH that admits it into a running group of 3: connect()
    raises at once an EvictedError saying the admission was lost and to connect again (before: a
    MasterLostError claiming the master sent an invalid message, raised when the master's next recovery
    request reached it); the members' vote returns within HB / 2 + margin (before: HB / 2 + HB, until the
    master evicted the silent newcomer) and their all_reduce succeeds; a new Communicator in the same
    process is then admitted."""
    with Cluster(log_dir=str(tmp_path)) as cluster:
        members = join(cluster, 3, comm=EPOCH_COMM, timeout=30.0)
        newcomer = cluster.spawn(env={"PCCL_FAILPOINTS": "control_epoch=runtime_error:1"})
        nlog = os.path.join(str(tmp_path), f"peer{newcomer.index}.log")
        votes, joined, took = _vote_with_newcomer(cluster, members, newcomer)
        wait_until(lambda: _log_has(nlog, "control_epoch: throwing std::runtime_error on epoch"), 10.0,
                   "the newcomer's control thread to throw on its first epoch")
        assert not joined["ok"] and joined["error"] == "EvictedError", f"connect() after losing its admission: {joined}"
        assert "was not admitted" in joined["message"] and "connect a new one to try again" in joined["message"], joined
        assert "failpoint control_epoch" in joined["message"], joined
        assert _log_has(nlog, "internal error handling the master's epoch message: failpoint control_epoch; leaving the group")
        for r in votes:
            assert r["ok"] and r["world_size"] == 3, f"a member's vote: {r}"
        assert took < HB / 2 + 1.5, f"the members' vote took {took:.2f} s (bound HB / 2 + 1.5 s)"
        _reduce_until_ok(members, tries=1)
        assert newcomer.call("close", timeout=10.0)["ok"]
        group = admit(cluster, members, [newcomer], EPOCH_COMM, timeout=30.0)
        _reduce_until_ok(group, tries=1)


def test_member_losing_the_recover_request_after_a_kill_leaves_clearly(tmp_path):
    """Four members all-reduce back to back (the self-verifying reduce_loop); one is killed with SIGKILL and
    another's control thread throws on the master's recover request that follows. That member cannot tell
    which of its ops the master will count, so its loop ends with an EvictedError naming the cause; the two
    others lose no result (every one checked against its contributors, every failed op left its buffer
    alone), wait at most HB / 2 + margin, and end in a group of 2. The process that left can join again."""
    with Cluster(log_dir=str(tmp_path)) as cluster:
        members = admit(cluster, [], [cluster.spawn() for _ in range(3)], EPOCH_COMM)
        # Admitted last and alone: a recover request goes to the members only, so it sees none before the kill.
        victim = cluster.spawn(env={"PCCL_FAILPOINTS": "control_recover=runtime_error:1"})
        members = admit(cluster, members, [victim], EPOCH_COMM)
        vlog, mlog = os.path.join(str(tmp_path), f"peer{victim.index}.log"), os.path.join(str(tmp_path), "master.log")
        killed = next(m for m in members if m is not victim and m is not members[0])
        survivors = [m for m in members if m is not victim and m is not killed]
        until = time.time() + 6.0
        for m in members:
            m.send("reduce_loop", until=until, count=256, seed=3)
        time.sleep(1.5)  # every loop is running
        t_kill = killed.kill()
        wait_until(lambda: _log_has(vlog, "control_recover: throwing std::runtime_error on recover"), 10.0,
                   "the victim's control thread to throw on the recover request")
        lost = victim.recv(30.0)
        assert lost["end"] is not None and lost["end"]["error"] == "EvictedError", f"the member that lost it: {lost}"
        assert "lost a membership change" in lost["end"]["message"], lost["end"]
        assert "failpoint control_recover" in lost["end"]["message"], lost["end"]
        assert _log_has(vlog, "internal error handling the master's recover message: failpoint control_recover; "
                              "leaving the group"), read_text(vlog)[-2000:]
        replies = [s.recv(until - time.time() + 40) for s in survivors]
        for r in replies + [lost]:
            assert r["ok"] and not r["wrong"] and all(f["unchanged"] for f in r["failed"]), r
        for r in replies:
            assert r["end"] is None and set(r["worlds"]) <= {2, 4} and 2 in r["worlds"], r
            start, end = next(([g0, g1] for g0, g1 in r["gaps"] if g0 <= t_kill + 0.1 <= g1 + 0.1), [t_kill, t_kill])
            assert_within(start, end, HB / 2 + 1.5, f"a survivor's wait for an op after the kill (gaps {r['gaps']})")
        assert replies[0]["ops_ok"] == replies[1]["ops_ok"], replies
        states = [s.call("state", timeout=10) for s in survivors]
        assert [st["world_size"] for st in states] == [2, 2] and states[0]["epoch"] == states[1]["epoch"], states
        # Dropped when it closed its master connection, not evicted as silent later.
        assert f"peer {victim.peer_id} lost from group" in read_text(mlog), read_text(mlog)[-3000:]
        assert victim.call("close", timeout=10.0)["ok"]
        group = admit(cluster, cluster.ranked(survivors), [victim], EPOCH_COMM, timeout=30.0)
        _reduce_until_ok(group, tries=1)


def test_mesh_io_thread_survives(tmp_path):
    """A peer's mesh I/O thread throws on a frame: that epoch's mesh ends like a broken link, the op on it
    fails with a clear error on every member or is retried, and the next all_reduce succeeds."""
    with Cluster(log_dir=str(tmp_path)) as cluster:
        founder = cluster.spawn(env={"PCCL_FAILPOINTS": "mesh_io=runtime_error:1"})
        plog = os.path.join(str(tmp_path), "peer0.log")
        peers = admit(cluster, [], [founder, cluster.spawn()], timeout=30.0)
        _reduce_until_ok(peers)
        assert _log_has(plog, "mesh_io: throwing", "internal error in the mesh I/O thread: failpoint mesh_io"), \
            read_text(plog)[-2000:]
        _reduce_until_ok(peers, tries=1)


def test_mesh_listener_survives(tmp_path):
    """A peer's mesh listener throws on a complete handshake: it logs the error and serves on; the mesh
    build it was serving fails or is retried, and the members' next all_reduce succeeds. Both peers are
    armed: which one dials and which one listens is the mesh's choice."""
    env = {"PCCL_FAILPOINTS": "mesh_listener=bad_alloc:1"}
    with Cluster(log_dir=str(tmp_path)) as cluster:
        founder, newcomer = cluster.spawn(env=env), cluster.spawn(env=env)
        logs = [os.path.join(str(tmp_path), f"peer{i}.log") for i in (0, 1)]
        r = call(founder, "connect", timeout=30.0, master=cluster.master.address, kwargs={"join_timeout": 20.0})
        assert r["ok"], r
        nid = newcomer.send("connect", master=cluster.master.address, kwargs={"join_timeout": 20.0})
        wait_until(lambda: call(founder, "pending", timeout=10.0)["pending"], 15.0, "the newcomer to be pending")
        vote = founder.call("update_topology", timeout=30.0)
        joined = reply_to(newcomer, nid, 30.0)
        for reply in (vote, joined):
            assert reply["ok"] or reply["message"], f"a failure without a clear error: {reply}"
        wait_until(lambda: any(_log_has(p, "mesh_listener: throwing", "internal error: std::bad_alloc; serving on")
                               for p in logs), 15.0, "a listener to log the exception it caught")
        if joined["ok"]:
            peers = cluster.ranked([founder, newcomer])
        else:  # the admission whose mesh build the listener was serving failed: admit it again
            peers = admit(cluster, [founder], [newcomer], comm={"join_timeout": 20.0}, timeout=30.0)
        _reduce_until_ok(peers)


@pytest.mark.parametrize("value,why", [
    ("master_loop", "is not name=kind:count"),
    ("nowhere=bad_alloc:1", "unknown failpoint 'nowhere'"),
    ("mesh_io=segfault:1", "unknown exception kind 'segfault'"),
    ("mesh_io=bad_alloc:0", "count must be"),
    ("mesh_io=bad_alloc:1@x", "count must be"),
    ("mesh_io=bad_alloc:1,mesh_io=bad_alloc:2", "named twice"),
])
def test_bad_failpoint_value_is_refused_not_fatal(value, why):
    """A malformed PCCL_FAILPOINTS arms nothing, says why in one line, and the process carries on."""
    code = "import pccl_py, numpy as np; print('ok')"
    env = dict(os.environ, PCCL_FAILPOINTS=value)
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stdout.strip() == "ok", p
    assert "PCCL_FAILPOINTS ignored, nothing armed" in p.stderr and why in p.stderr, p.stderr
