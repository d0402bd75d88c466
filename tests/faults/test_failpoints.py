"""Every serving loop survives an exception that is not the library's own (docs/operations.md, "Failpoints").

An out-of-memory error or a standard-library exception thrown inside the master's event loop, a peer's
control thread, its mesh I/O thread or its mesh listener must be logged and survived: the process keeps
serving, an op it was serving fails with a clear error on every member (or is retried), and the next op
succeeds. Nothing on the network can make those loops throw such an exception, so the tests arm the
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
from support import admit, call, check_replies, join, reply_to, wait_until

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


@pytest.mark.parametrize("skip,lost", [(0, "welcome"), (1, "first epoch")])
def test_control_thread_losing_a_join_message_fails_connect_clearly(tmp_path, skip, lost):
    """The message the control thread lost is one connect() waits for (the welcome, or the epoch that makes
    the founder a member): connect() fails with a clear error within its join_timeout, never hangs, and
    the master goes on admitting others."""
    with Cluster(log_dir=str(tmp_path)) as cluster:
        victim = cluster.spawn(env={"PCCL_FAILPOINTS": f"control_loop=runtime_error:1@{skip}"})
        t0 = time.monotonic()
        r = call(victim, "connect", timeout=30.0, master=cluster.master.address, kwargs={"join_timeout": 3.0})
        assert not r["ok"] and r["error"].endswith("Error") and r["message"], f"lost the {lost}, yet: {r}"
        assert time.monotonic() - t0 < 3.0 + 10.0, f"connect() outlived its join_timeout by far: {r}"
        assert _log_has(os.path.join(str(tmp_path), "peer0.log"), "control_loop: throwing",
                        "internal error handling a message from the master: failpoint control_loop; serving on")
        victim.call("close", timeout=10.0)
        peers = join(cluster, 2, timeout=30.0)
        _reduce_until_ok(peers, tries=1)


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
