"""Shared helpers for the correctness, API, thread and membership tests.

Two kinds of peers are used:

* worker processes (harness.Peer), driven by JSON commands, for multi-process behaviour;
* in-process Communicators, for API checks that need the caller's own objects and threads.

Every wait here has a deadline, so a broken library makes a test fail instead of hang. There is one
polling wait (wait_until) and one admission procedure, for each kind of peer: admit()/join() for worker
processes, admit_pending()/connect_group() for in-process communicators. Both admit the same way: wait
until the first member sees a pending peer, then every member calls update_topology() at once.
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional

import pccl_py
from pccl_py.tools.machine_stalls import monitor

if TYPE_CHECKING:
    from harness import Cluster, Peer

# Where the worker scripts live (tests start them as processes by path) and the repository's root.
HELPERS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(os.path.dirname(HELPERS_DIR))

# ---------------------------------------------------------------------------------------------
# generic


def wait_until(probe: Callable[[], Any], timeout: float, what: str, *, until: Callable[[Any], Any] = bool,
               interval: float = 0.01) -> Any:
    """The one polling wait of the tests: calls probe() every `interval` seconds until until(value) holds,
    and returns that value.

    Fails the test after `timeout` seconds with an AssertionError naming `what` was awaited and the last
    value probe() gave (its tail if long), so a failure shows how far things got. probe() runs at least
    once, even with timeout 0. With the default `until`, any truthy value ends the wait.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if until(value):
            return value
        if time.monotonic() >= deadline:
            seen = repr(value)
            if len(seen) > 2000:
                seen = "..." + seen[-2000:]
            raise AssertionError(f"timed out after {timeout} s waiting for {what}; last seen: {seen}")
        time.sleep(interval)


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


def admit(cluster: Cluster, members: list[Peer], newcomers: list[Peer], comm: Optional[dict] = None,
          timeout: float = 60.0) -> list[Peer]:
    """The one way tests admit worker peers: connects every newcomer (spawned, not yet connected) to the
    cluster's master with Communicator kwargs `comm` and has `members` admit them; returns the whole
    group, members and newcomers, in rank order.

    With no members, the first newcomer founds the group. The other newcomers connect at once, so one
    vote may admit all of them or only those already pending when it was taken: it votes again until
    every newcomer's connect() returned. A vote waits until members[0] sees a pending peer, then every
    member calls update_topology() at the same time. Fails the test if a connect() or a vote fails or
    everything takes longer than `timeout`. Several groups can share one master: pass each group's
    members (and `peer_group` in comm).
    """
    comm = dict(comm or {})
    members = list(members)
    newcomers = list(newcomers)
    deadline = time.monotonic() + timeout

    def left() -> float:
        return max(0.01, deadline - time.monotonic())

    if not members:
        first = newcomers.pop(0)
        r = call(first, "connect", timeout=left(), master=cluster.master.address, kwargs=comm)
        assert r["ok"], f"peer {first.index} failed to found the group: {r}"
        first.peer_id = r["peer_id"]
        members.append(first)
    waiting = {p.index: (p, p.send("connect", master=cluster.master.address, kwargs=comm)) for p in newcomers}

    def collect(wait: float) -> None:
        # A connect() that returned: admitted by an earlier vote (its reply can lag the vote's on a slow
        # machine), or failed, which never becomes pending.
        for idx, (p, msg) in list(waiting.items()):
            try:
                r = p.recv(timeout=wait)
            except TimeoutError:
                continue
            if r.get("id") != msg:
                continue  # a stale reply left behind by an earlier failed test
            assert r["ok"], f"peer {idx} failed to join: {r}"
            p.peer_id = r["peer_id"]
            members.append(p)
            del waiting[idx]

    def pending() -> bool:
        collect(0)
        return not waiting or call(members[0], "pending", timeout=left())["pending"]

    while waiting:
        assert time.monotonic() < deadline, f"peers {sorted(waiting)} were not admitted within {timeout} s"
        wait_until(pending, left(), f"peers {sorted(waiting)} to be pending or admitted")
        if not waiting:
            break
        for r in vote(members, left()):
            assert r["ok"], f"a vote to admit peers {sorted(waiting)} failed: {r}"
        collect(0.5)
    return cluster.ranked(members)


def join(cluster: Cluster, n: int, comm: Optional[dict] = None, timeout: float = 60.0) -> list[Peer]:
    """Founds a new group of n fresh worker peers with Communicator kwargs `comm` (admit() with no
    members); returns them in rank order."""
    return admit(cluster, [], [cluster.spawn() for _ in range(n)], comm, timeout)


# ---------------------------------------------------------------------------------------------
# in-process communicators


def new_comm(address: str, **kwargs: Any) -> pccl_py.Communicator:
    """A Communicator on loopback whose connect() gives up after 30 s instead of the default 10 minutes."""
    kwargs.setdefault("listen_host", "127.0.0.1")
    kwargs.setdefault("join_timeout", 30.0)
    return pccl_py.Communicator(address, **kwargs)


def admit_pending(members: list[pccl_py.Communicator], timeout: float = 30.0) -> None:
    """admit() for in-process communicators, one vote: waits until members[0] sees a pending peer, then
    every member calls update_topology() at once (each blocks until all did). The newcomer's connect()
    runs in the caller's own thread (see connect_group)."""
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


# ---------------------------------------------------------------------------------------------
# torch.distributed ranks


def free_port() -> int:
    """A TCP port on loopback that was free a moment ago, for a listener a child process opens later.

    Drawn at random below the kernel's ephemeral range: a port from bind(0) is an ephemeral one, which any
    outgoing connection on the machine may take before the child listens on it (CI once lost a torch
    rendezvous to EADDRINUSE that way). Another test picking the same random port meanwhile is the
    remaining, much smaller, chance."""
    low = 32768
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(10000, max(low, 10001))
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:  # everything below the range is taken: fall back to an ephemeral port
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_torch_ranks(script: str, world: int, out_dir: str, env: dict, timeout: float) -> list[dict]:
    """Runs the Python source `script` as `world` processes, the ranks of one torch.distributed group,
    and returns the JSON object each rank wrote, in rank order.

    Each process gets the arguments: rank, world size, a free port for init_method tcp://127.0.0.1:port,
    and the path of the JSON file to write. Every process is waited for up to `timeout` s and any still
    running is killed (so a hung rank never outlives the test); the test fails unless every rank exited 0.
    """
    port = free_port()
    outs = [os.path.join(out_dir, f"rank{r}.json") for r in range(world)]
    procs = [subprocess.Popen([sys.executable, "-c", script, str(r), str(world), str(port), outs[r]], env=env)
             for r in range(world)]
    try:
        for p in procs:
            p.wait(timeout=timeout)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
    assert [p.returncode for p in procs] == [0] * world, f"rank exit codes {[p.returncode for p in procs]}"
    results = []
    for o in outs:
        with open(o) as f:
            results.append(json.load(f))
    return results
