"""Sending payloads by page reference (csrc/transport/page_sender.*).

Large payloads are lent to the kernel (vmsplice into a pipe, splice into the socket) instead of being
copied. These tests check that the path is really taken (each connection that lent a payload holds a
pipe), that PCCL_ZERO_COPY_SEND=0 turns it off and =1 forces it, that by default payloads between
members on one host are copied once those members outnumber the CPUs, that the pipes go away with the
communicator, and that results stay exact when every buffer is overwritten the moment an op returns:
the kernel may read lent pages after a send completes, so this is where a broken lifetime rule would
show.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import pccl_py
from support import run_concurrently, HELPERS_DIR

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="vmsplice and splice are Linux-only")


def pipe_fds() -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("pipe:")
        except OSError:
            pass  # closed meanwhile
    return count


def test_large_payloads_are_lent_through_a_pipe_per_connection(local_group, monkeypatch):
    """With zero-copy send on, small payloads are copied (no pipe opened), large ones go through one pipe per
    connection (four pipes for two peers with two connections each), results stay exact, and close() releases
    every pipe."""
    monkeypatch.setenv("PCCL_ZERO_COPY_SEND", "1")  # whatever this machine's CPU count
    before = pipe_fds()
    peers = local_group(2, connections_per_peer=2)
    small = [np.ones(1000, dtype=np.float32) for _ in peers]  # 4 KB pieces: copied, no pipe needed
    run_concurrently(*[lambda p=p, x=x: p.all_reduce(x) for p, x in zip(peers, small)])
    assert pipe_fds() == before
    xs = [np.ones(4 << 20, dtype=np.float32) for _ in peers]  # 16 MiB: 256 KiB pieces on both links
    run_concurrently(*[lambda p=p, x=x: p.all_reduce(x) for p, x in zip(peers, xs)])
    assert all(np.all(x == 2) for x in xs)
    # Two peers, each sending on both of its connections: four pipes of two ends each.
    assert pipe_fds() - before == 8
    for p in peers:
        p.close()
    assert pipe_fds() == before


def pipes_in_a_fresh_process(peers: int, cpus: int, setting: str | None) -> int:
    """Runs one 16 MiB all-reduce among `peers` in-process members in a new process restricted to the
    first `cpus` CPUs, with PCCL_ZERO_COPY_SEND=setting (None: unset), checks the result, and returns
    how many pipe descriptors the group held."""
    script = textwrap.dedent("""
        import os, sys
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:int(sys.argv[3])])  # before any thread
        import numpy as np
        import pccl_py
        sys.path[:0] = sys.argv[1].split(os.pathsep)
        from support import connect_group, run_concurrently
        from test_zero_copy_send import pipe_fds

        n = int(sys.argv[2])
        before = pipe_fds()
        master = pccl_py.Master("127.0.0.1", 0).start()
        peers = connect_group(master.address, n, timeout=30)
        xs = [np.full(4 << 20, r + 1, dtype=np.float32) for r in range(n)]
        run_concurrently(*[lambda p=p, x=x: p.all_reduce(x) for p, x in zip(peers, xs)])
        assert all(np.all(x == n * (n + 1) // 2) for x in xs)
        print("pipes", pipe_fds() - before)
        for p in peers:
            p.close()
        master.stop()
    """)
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(pccl_py.__file__)))
    env.pop("PCCL_ZERO_COPY_SEND", None)
    if setting is not None:
        env["PCCL_ZERO_COPY_SEND"] = setting
    out = subprocess.run([sys.executable, "-c", script, os.pathsep.join([os.path.dirname(os.path.abspath(__file__)), HELPERS_DIR]), str(peers), str(cpus)], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return int(out.stdout.split("pipes")[-1])


def test_zero_copy_send_can_be_turned_off():
    """With PCCL_ZERO_COPY_SEND=0, large ops create no pipes (even where lending is the default) and are
    still exact."""
    assert pipes_in_a_fresh_process(peers=2, cpus=1, setting="1") > 0  # the same run does lend when forced
    assert pipes_in_a_fresh_process(peers=2, cpus=1, setting="0") == 0
    if len(os.sched_getaffinity(0)) >= 2:
        assert pipes_in_a_fresh_process(peers=2, cpus=2, setting="0") == 0


@pytest.mark.parametrize("peers,cpus,lends", [(2, 1, False), (2, 2, True), (3, 2, False)])
def test_payloads_between_members_on_one_host_are_copied_when_they_outnumber_the_cpus(peers, cpus, lends):
    """By default, members on one machine lend payloads to each other only while each can have a CPU
    of its own: sharing CPUs, the receiver's copy out of lent pages costs more than the sender's copy
    it saves (page_sender.cpp has the numbers)."""
    if len(os.sched_getaffinity(0)) < cpus:
        pytest.skip(f"needs {cpus} CPUs")
    # Two ends per pipe and one pipe per lending connection: each member lends on its one connection
    # to its ring successor (and a two-member ring uses the one connection both ways).
    assert pipes_in_a_fresh_process(peers=peers, cpus=cpus, setting=None) == (2 * peers if lends else 0)


@pytest.mark.parametrize("in_place", [True, False])
def test_buffers_overwritten_right_after_each_op_never_leak_into_results(local_group, in_place, monkeypatch):
    """Four peers (so the ring forwards partial sums), int64 so the reference is exact in any order.
    Every buffer is refilled as soon as an op returns, while a peer that lagged could in principle
    still be reading pages lent to the kernel. Lending is forced: four members on this machine's CPUs
    would copy by default."""
    monkeypatch.setenv("PCCL_ZERO_COPY_SEND", "1")
    peers = local_group(4)
    n = (6 << 20) // 8 + 5  # pieces of every size, a few MiB per chunk
    rng = np.random.default_rng(7)
    xs = [np.empty(n, dtype=np.int64) for _ in peers]
    outs = [np.empty(n, dtype=np.int64) for _ in peers] if not in_place else [None] * len(peers)
    for step in range(15):
        for x in xs:
            x[:] = rng.integers(-(2**40), 2**40, size=n)
        expected = sum(x.copy() for x in xs)
        run_concurrently(*[lambda p=p, x=x, o=o: p.all_reduce(x, out=o) for p, x, o in zip(peers, xs, outs)],
                         timeout=60)
        results = xs if in_place else outs
        for r in results:
            assert np.array_equal(r, expected), f"step {step}"
        for r in results:  # scribble over everything at once
            r[:] = -1
