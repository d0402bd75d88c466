"""Shared helpers for the correctness, API, thread and membership tests.

Two kinds of peers are used:

* worker processes (harness.Peer), driven by JSON commands, for multi-process behaviour;
* in-process Communicators, for API checks that need the caller's own objects and threads.

Every wait here has a deadline, so a broken library makes a test fail instead of hang.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any, Callable, Iterable, Optional

import pccl_py
from harness import Cluster, Peer
from pccl_py.tools.machine_stalls import monitor

# Where the worker scripts live (tests start them as processes by path) and the repository's root.
HELPERS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(os.path.dirname(HELPERS_DIR))

# ---------------------------------------------------------------------------------------------
# generic


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Polls predicate until it is true; fails the test after timeout seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.01)


class Background:
    """fn running in a daemon thread from construction on; result() bounds the wait for it."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self._box: dict = {}
        self._thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self._thread.start()

    def _run(self, fn: Callable[[], Any]) -> None:
        try:
            self._box["result"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed back by result()
            self._box["error"] = exc

    def done(self) -> bool:
        return not self._thread.is_alive()

    def join(self, timeout: float) -> bool:
        """Waits up to timeout for fn to end, whatever its outcome; True if it ended. Tests call this
        before returning so that no thread is still inside the library when the interpreter exits."""
        self._thread.join(timeout)
        return self.done()

    def result(self, timeout: float, return_exception: bool = False) -> Any:
        """fn's return value, or its exception re-raised (or returned, with return_exception=True);
        fails the test if fn runs longer than timeout."""
        assert self.join(timeout), f"call did not return within {timeout} s"
        if "error" in self._box:
            if return_exception:
                return self._box["error"]
            raise self._box["error"]
        return self._box["result"]


def run_concurrently(*fns: Callable[[], Any], timeout: float = 30.0, return_exceptions: bool = False) -> list:
    """Runs each fn in its own thread; returns their results in order, or re-raises the first exception
    (with return_exceptions=True, exceptions are returned in place of results).

    A call still running after timeout fails the test (the library hung); it runs in a daemon thread,
    so it cannot keep the test process alive.
    """
    calls = [Background(fn) for fn in fns]
    deadline = time.monotonic() + timeout
    stuck = [i for i, c in enumerate(calls) if not c.join(max(0.0, deadline - time.monotonic()))]
    assert not stuck, f"calls {stuck} did not return within {timeout} s"
    outcomes = [c.result(0, return_exception=True) for c in calls]
    if not return_exceptions:
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
    return outcomes


# ---------------------------------------------------------------------------------------------
# worker processes


def reply_to(peer: Peer, msg_id: int, timeout: float = 60.0) -> dict:
    """The reply to one command; stale replies left behind by an earlier failed test are skipped."""
    deadline = time.monotonic() + timeout
    while True:
        r = peer.recv(timeout=max(0.01, deadline - time.monotonic()))
        if r.get("id") == msg_id:
            return r


def call(peer: Peer, cmd: str, timeout: float = 60.0, **kwargs: Any) -> dict:
    return reply_to(peer, peer.send(cmd, **kwargs), timeout)


def check_replies(replies: list[dict], world_size: int) -> None:
    """Every peer succeeded with the right world size, a correct result and an unchanged input, and
    every peer holds bitwise the same result."""
    for r in replies:
        assert r["ok"], r
        assert r["world_size"] == world_size, r
        assert r["correct"], r
        assert r["input_unchanged"], r
    shas = {r["sha"] for r in replies}
    assert len(shas) == 1, f"peers hold different results: {replies}"


def reduce_all(peers: list[Peer], *, expect_from: Optional[Iterable[int]] = None, timeout: float = 60.0,
               **kwargs: Any) -> list[dict]:
    """Issues the same all_reduce on every peer at once and checks the replies with check_replies.

    expect_from: worker indices whose inputs the result must contain (default: the peers themselves).
    """
    expect = list(expect_from) if expect_from is not None else [p.index for p in peers]
    ids = [p.send("all_reduce", expect_from=expect, **kwargs) for p in peers]
    replies = [reply_to(p, i, timeout) for p, i in zip(peers, ids)]
    check_replies(replies, world_size=len(expect))
    return replies


def vote(members: list[Peer], timeout: float = 30.0) -> list[dict]:
    """Every member calls update_topology() at once; returns the replies (not checked)."""
    ids = [m.send("update_topology") for m in members]
    return [reply_to(m, i, timeout) for m, i in zip(members, ids)]


def grow(cluster: Cluster, members: list[Peer], n: int, admit_timeout: float = 30.0,
         **connect_kwargs: Any) -> list[Peer]:
    """Admits n new worker peers into the group of `members` (a new group if members is empty).

    Unlike Cluster.join, the group's members are given explicitly, so several peer groups can share
    one master, and every connect() kwarg (including timeout=) reaches the Communicator. Returns the
    whole group in rank order.
    """
    timeout = admit_timeout
    members = list(members)
    for _ in range(n):
        p = cluster.spawn()
        msg = p.send("connect", master=cluster.master.address, kwargs=connect_kwargs)
        if members:
            wait_until(lambda: call(members[0], "pending")["pending"], timeout, "the newcomer to be pending")
            for r in vote(members, timeout):
                assert r["ok"], r
        r = reply_to(p, msg, timeout)
        assert r["ok"], r
        p.peer_id = r["peer_id"]
        members.append(p)
    return cluster.ranked(members)


# ---------------------------------------------------------------------------------------------
# in-process communicators


def new_comm(address: str, **kwargs: Any) -> pccl_py.Communicator:
    """A Communicator on loopback whose connect() gives up after 30 s instead of the default 10 minutes."""
    kwargs.setdefault("listen_host", "127.0.0.1")
    kwargs.setdefault("join_timeout", 30.0)
    return pccl_py.Communicator(address, **kwargs)


def admit_pending(members: list[pccl_py.Communicator], timeout: float = 30.0) -> None:
    """Waits until the members see a pending peer, then has every member vote (they block until all did)."""
    wait_until(members[0].are_peers_pending, timeout, "a pending peer")
    run_concurrently(*[m.update_topology for m in members], timeout=timeout)


def connect_group(address: str, n: int, admit_timeout: float = 30.0, **kwargs: Any) -> list[pccl_py.Communicator]:
    """n in-process communicators admitted into one group, in join order; kwargs go to Communicator()."""
    members = [new_comm(address, **kwargs).connect()]
    for _ in range(n - 1):
        c = new_comm(address, **kwargs)
        run_concurrently(c.connect, lambda: admit_pending(members, admit_timeout), timeout=admit_timeout)
        members.append(c)
    for m in members:
        assert m.world_size == n
    return members


def assert_within(t0: float, t1: float, bound: float, what: str) -> float:
    """Fails unless [t0, t1] (time.time()) lasted less than bound plus the time the whole machine stood
    still within it (pccl_py.tools.machine_stalls); returns the duration net of those stalls."""
    stalled = monitor().stalled(t0, t1)
    assert t1 - t0 < bound + stalled, (f"{what} took {t1 - t0:.3f} s, over the {bound} s bound even after "
                                       f"the {stalled:.3f} s the whole machine stood still")
    return t1 - t0 - stalled
