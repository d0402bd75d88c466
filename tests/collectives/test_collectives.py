"""pccl_py.collectives on numpy arrays (no torch): exact broadcast, all_gather, reduce_scatter, barrier."""

from __future__ import annotations

import numpy as np
import pytest

import pccl_py
from pccl_py import collectives as C
from support import connect_group, run_concurrently


@pytest.fixture
def group():
    master = pccl_py.Master().start()
    comms = sorted(connect_group(master.address, 3, timeout=10, heartbeat_timeout=2), key=lambda c: c.rank)
    yield comms
    for c in comms:
        c.close()
    master.stop()


def each(comms, fn, timeout=20.0):
    """fn(rank, comm) on every member at once; their results in rank order."""
    return run_concurrently(*[lambda i=i, c=c: fn(i, c) for i, c in enumerate(comms)], timeout=timeout)


def test_broadcast_copies_every_bit_pattern(group):
    """broadcast() delivers the root's bytes unchanged to every rank, NaN payloads, -0.0 and infinities included,
    and works for byte counts that are not a multiple of the word size."""
    # NaN payloads, -0.0 and infinities would not survive a float sum; an odd byte count forces 1-byte words.
    special = np.array([0x7FC00001, 0xFFF00002, 0x80000000, 0x7F800000, 0x3F800000], dtype=np.uint32).view(np.float32)
    arrays = [special.copy() if r == 1 else np.zeros(5, np.float32) for r in range(3)]
    odd = [np.arange(7, dtype=np.uint8) * (r + 1) for r in range(3)]
    each(group, lambda r, c: (C.broadcast(c, arrays[r], 1), C.broadcast(c, odd[r], 2)))
    for a in arrays:
        assert a.tobytes() == special.tobytes()
    for o in odd:
        assert o.tobytes() == (np.arange(7, dtype=np.uint8) * 3).tobytes()


def test_all_gather_and_reduce_scatter(group):
    """all_gather() concatenates every rank's bytes in rank order (-0.0 kept); reduce_scatter() gives each rank
    its slice of the exact sum and leaves the input unchanged."""
    ins = [np.full(5, r - 0.0 if r else -0.0, dtype=np.float64) for r in range(3)]
    outs = [np.empty(15, np.float64) for _ in range(3)]
    each(group, lambda r, c: C.all_gather(c, ins[r], outs[r]))
    expected = np.concatenate(ins)
    for o in outs:
        assert o.tobytes() == expected.tobytes()  # -0.0 included
    xs = [np.arange(6, dtype=np.int64) * (r + 1) for r in range(3)]
    rs = [np.empty(2, np.int64) for _ in range(3)]
    each(group, lambda r, c: C.reduce_scatter(c, xs[r], rs[r], op=pccl_py.ReduceOp.SUM))
    total = np.arange(6, dtype=np.int64) * 6
    for r in range(3):
        assert np.array_equal(rs[r], total[2 * r:2 * r + 2])
    assert np.array_equal(xs[1], np.arange(6) * 2), "the input is not changed"


def test_barrier_and_bad_sizes(group):
    """barrier() returns on every rank; an all_gather output of the wrong size or a non-contiguous broadcast
    buffer is refused with InvalidArgumentError saying what is wrong."""
    each(group, lambda r, c: C.barrier(c, tag=3))
    with pytest.raises(pccl_py.InvalidArgumentError, match="needs"):
        C.all_gather(group[0], np.zeros(4, np.float32), np.zeros(4, np.float32))
    with pytest.raises(pccl_py.InvalidArgumentError, match="contiguous"):
        C.broadcast(group[0], np.zeros((4, 4))[:, 0], 0)
