"""pccl_py.collectives on numpy arrays (no torch): exact broadcast, all_gather, reduce_scatter, barrier."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

import pccl_py
from pccl_py import collectives as C


@pytest.fixture
def group():
    master = pccl_py.Master().start()
    comms = [pccl_py.Communicator(master.address, timeout=10, heartbeat_timeout=2) for _ in range(3)]
    comms[0].connect()
    joiners = [threading.Thread(target=c.connect, daemon=True) for c in comms[1:]]
    for t in joiners:
        t.start()
    deadline = time.monotonic() + 20
    while comms[0].world_size < 3:
        assert time.monotonic() < deadline, "peers were not admitted"
        if comms[0].are_peers_pending():
            voters = [threading.Thread(target=c.update_topology, daemon=True) for c in comms if c.rank >= 0]
            for v in voters:
                v.start()
            for v in voters:
                v.join(20)
        time.sleep(0.01)
    for t in joiners:
        t.join(20)
    comms.sort(key=lambda c: c.rank)
    yield comms
    for c in comms:
        c.close()
    master.stop()


def each(comms, fn, timeout=20.0):
    out, errors = [None] * len(comms), []

    def call(i):
        try:
            out[i] = fn(i, comms[i])
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
    threads = [threading.Thread(target=call, args=(i,), daemon=True) for i in range(len(comms))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    assert not any(t.is_alive() for t in threads), "collective hung"
    assert not errors, errors
    return out


def test_broadcast_copies_every_bit_pattern(group):
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
    each(group, lambda r, c: C.barrier(c, tag=3))
    with pytest.raises(pccl_py.InvalidArgumentError, match="needs"):
        C.all_gather(group[0], np.zeros(4, np.float32), np.zeros(4, np.float32))
    with pytest.raises(pccl_py.InvalidArgumentError, match="contiguous"):
        C.broadcast(group[0], np.zeros((4, 4))[:, 0], 0)
