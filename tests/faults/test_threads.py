"""The GIL is released while the C++ core waits on the network.

Training code overlaps communication with Python work and may drive several communicators from
threads of one process; both would stall (or deadlock) if a blocked all_reduce held the GIL.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

import pccl_py
from harness import Cluster
from reference import make_input, reference_result, results_match
from support import (Background, admit_pending, call, connect_group, new_comm, reply_to, run_concurrently,
                     wait_until)

PARTNER_DELAY = 2.0  # seconds the partner waits before joining the op


@pytest.fixture
def master():
    with pccl_py.Master() as m:
        yield m


def spin(seconds: float) -> int:
    """Iterations of a pure-Python loop (which needs the GIL on every bytecode) during `seconds`."""
    n, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        n += 1
    return n


def best_rate(windows: int, seconds: float) -> float:
    """spin()'s best rate (iterations/s) over several short windows. A shared CI machine can take the CPU
    away for part of any one window; a GIL held by the library would slow every window alike."""
    return max(spin(seconds) for _ in range(windows)) / seconds


def check_sum(dtype: str, count: int, seed: int, indices: list[int], got: np.ndarray) -> None:
    ok, detail = results_match(dtype, got, reference_result(dtype, count, seed, indices, "SUM"), "SUM", len(indices))
    assert ok, detail


def test_blocked_all_reduce_lets_other_threads_run(master):
    """While one thread waits in all_reduce for its partner (which joins only after the measurement),
    the main thread keeps running Python at (nearly) full speed. With the GIL held, the main thread could
    not even return from sleep() until the op ended."""
    a, b = connect_group(master.address, 2, timeout=30.0)
    try:
        baseline = best_rate(4, 0.1)
        xa, xb = np.full(1000, 1.0, np.float32), np.full(1000, 2.0, np.float32)
        op = Background(lambda: a.all_reduce(xa))
        t0 = time.monotonic()
        time.sleep(0.1)
        assert time.monotonic() - t0 < 1.0, "the main thread could not get the GIL back from the blocked op"
        rate = best_rate(10, 0.15)  # 1.5 s, inside the partner's delay
        assert not op.done(), "the op must have been blocked for the whole measurement"
        b.all_reduce(xb)
        assert op.result(timeout=30).world_size == 2
        np.testing.assert_array_equal(xa, np.full(1000, 3.0, np.float32))
        # The blocked thread does not compete for the GIL: expect most of the single-thread rate.
        assert rate > 0.3 * baseline, f"{rate:.0f} iterations/s while blocked vs {baseline:.0f} alone"
    finally:
        run_concurrently(a.close, b.close)


def test_two_communicators_in_one_process_reduce_with_each_other(master):
    """Two members of one group living in one process, each driven by its own thread, complete many
    all_reduces together (small star ops and 1 MiB ring ops). If either op held the GIL while waiting
    for the other, the first op would deadlock until its timeout."""
    a, b = connect_group(master.address, 2, timeout=10.0)
    try:
        rounds = 20

        def drive(comm, index):
            for i in range(rounds):
                count = 1001 if i % 2 else 1 << 18
                x = make_input("float32", count, i, index, "SUM")
                info = comm.all_reduce(x)
                assert info.algorithm == ("star" if i % 2 else "ring")
                check_sum("float32", count, i, [0, 1], x)
            return rounds

        assert run_concurrently(lambda: drive(a, 0), lambda: drive(b, 1), timeout=60) == [rounds, rounds]
    finally:
        run_concurrently(a.close, b.close)


def test_two_groups_progress_independently_in_one_process(tmp_path):
    """Two threads of one process each drive a communicator of a different peer group, each partnered
    with a worker process. While group 1's op waits for its partner, group 2's thread completes many
    ops: one communicator blocking must not block the other."""
    me = 1000  # input index of the in-process peers (the workers use 0 and 1)
    spec = dict(dtype="float32", count=4099, op="SUM", seed=7)
    rounds = 10
    with Cluster(log_dir=str(tmp_path)) as cluster:
        comms, partners = [], []
        try:
            for group in (1, 2):
                comm = new_comm(cluster.master.address, peer_group=group, timeout=30.0).connect()
                comms.append(comm)
                worker = cluster.spawn()
                msg = worker.send("connect", master=cluster.master.address, kwargs={"peer_group": group})
                admit_pending([comm])
                assert reply_to(worker, msg)["ok"]
                partners.append(worker)
            x1 = make_input(spec["dtype"], spec["count"], spec["seed"], me, spec["op"])
            x2, out2 = x1.copy(), np.empty_like(x1)

            group_1 = Background(lambda: comms[0].all_reduce(x1))

            def group_2():
                for _ in range(rounds):
                    comms[1].all_reduce(x2, out=out2)

            msg2 = partners[1].send("all_reduce", repeat=rounds, use_out=True,
                                    expect_from=[partners[1].index, me], **spec)
            run_concurrently(group_2, timeout=PARTNER_DELAY)
            r2 = reply_to(partners[1], msg2)
            assert r2["ok"] and r2["correct"] and r2["completed"] == rounds, r2
            assert not group_1.done(), "group 1's op cannot finish before its partner joins"

            r1 = call(partners[0], "all_reduce", expect_from=[partners[0].index, me], **spec)
            assert r1["ok"] and r1["correct"], r1
            assert group_1.result(timeout=30).world_size == 2
            for got, worker in ((x1, partners[0]), (out2, partners[1])):
                check_sum(spec["dtype"], spec["count"], spec["seed"], [worker.index, me], got)
        finally:
            run_concurrently(*[c.close for c in comms])


def thread_names() -> set[str]:
    """The names of this process's threads, as top -H and perf show them."""
    names = set()
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/comm") as f:
                names.add(f.read().strip())
        except FileNotFoundError:  # the thread ended while we listed
            pass
    return names


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="reads thread names from /proc")
def test_core_threads_carry_names(master):
    """Every thread the core starts is named for its job, so top -H, perf and gdb can tell pccl's work
    from the application's (and from gloo's in one process). Unnamed, they would all be called after
    the Python executable."""
    a, b = connect_group(master.address, 2, timeout=30.0)
    try:
        xa, xb = np.ones(1000, np.float32), np.ones(1000, np.float32)
        run_concurrently(lambda: a.all_reduce(xa), lambda: b.all_reduce(xb))
        handle = a.all_reduce_async(xa)  # waits for b inside its own thread
        expected = {"pccl-master", "pccl-listen", "pccl-control", "pccl-mesh", "pccl-async-op"}
        seen: set[str] = set()
        try:  # a new thread names itself first thing, but not atomically
            wait_until(lambda: seen.update(thread_names()) or seen, 5.0, f"threads named {sorted(expected)}",
                       until=lambda s: expected <= s)
        finally:
            b.all_reduce(xb)
            handle.wait()
    finally:
        run_concurrently(a.close, b.close)
