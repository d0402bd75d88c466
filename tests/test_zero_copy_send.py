"""Sending payloads by page reference (csrc/transport/page_sender.*).

Large payloads are lent to the kernel (vmsplice into a pipe, splice into the socket) instead of being
copied. These tests check that the path is really taken (each connection that lent a payload holds a
pipe), that PCCL_ZERO_COPY_SEND=0 turns it off, that the pipes go away with the communicator, and
that results stay exact when every buffer is overwritten the moment an op returns: the kernel may
read lent pages after a send completes, so this is where a broken lifetime rule would show.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import pccl_py
from support import run_concurrently

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="vmsplice and splice are Linux-only")


def pipe_fds() -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("pipe:")
        except OSError:
            pass  # closed meanwhile
    return count


def test_large_payloads_are_lent_through_a_pipe_per_connection(local_group):
    if os.environ.get("PCCL_ZERO_COPY_SEND") == "0":
        pytest.skip("PCCL_ZERO_COPY_SEND=0 in this environment")
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


def test_zero_copy_send_can_be_turned_off(tmp_path):
    """In a process started with PCCL_ZERO_COPY_SEND=0, large ops create no pipes and are still exact."""
    script = textwrap.dedent("""
        import os, sys
        import numpy as np
        import pccl_py
        sys.path.insert(0, sys.argv[1])
        from support import connect_group, run_concurrently
        from test_zero_copy_send import pipe_fds

        before = pipe_fds()
        master = pccl_py.Master("127.0.0.1", 0).start()
        peers = connect_group(master.address, 2, timeout=30)
        xs = [np.full(4 << 20, r + 1, dtype=np.float32) for r in range(2)]
        run_concurrently(*[lambda p=p, x=x: p.all_reduce(x) for p, x in zip(peers, xs)])
        assert all(np.all(x == 3) for x in xs)
        print("pipes", pipe_fds() - before)
        for p in peers:
            p.close()
        master.stop()
    """)
    env = dict(os.environ, PCCL_ZERO_COPY_SEND="0",
               PYTHONPATH=os.path.dirname(os.path.dirname(pccl_py.__file__)))
    out = subprocess.run([sys.executable, "-c", script, os.path.dirname(__file__)], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "pipes 0" in out.stdout, out.stdout


@pytest.mark.parametrize("in_place", [True, False])
def test_buffers_overwritten_right_after_each_op_never_leak_into_results(local_group, in_place):
    """Four peers (so the ring forwards partial sums), int64 so the reference is exact in any order.
    Every buffer is refilled as soon as an op returns, while a peer that lagged could in principle
    still be reading pages lent to the kernel."""
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
