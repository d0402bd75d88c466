"""The self-verifying peer (pccl_py.tools.verified_peer) that pccl-stress, the demo and the fault tests run.

Those runs pass only if this peer notices what goes wrong, so these tests make things go wrong on
purpose: a result that names the wrong contributors, a failed op that scribbled on its buffer, and a
group whose members must stop together on a clock only one of them has passed.
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import numpy as np
import pytest

import pccl_py
from pccl_py.tools.proof import HEAD, exact_contribution
from pccl_py.tools.verified_peer import VerifiedPeer
from support import run_concurrently


def _sum(slots, step, tag, size, seed=5):
    return np.sum([exact_contribution(s, seed, step, tag, size) for s in slots], axis=0)


def test_a_result_is_checked_against_the_contributors_it_names():
    """verify_exact accepts an exact sum, and records as wrong a payload off by one, a missing own slot, a world
    size that disagrees, and an epoch whose contributors change."""
    events = []
    peer = VerifiedPeer(1, 5, on_event=lambda ev, **f: events.append((ev, f)))
    ok = SimpleNamespace(world_size=2, epoch=3)
    assert peer.verify_exact(0, "x", _sum([0, 1], 0, 2, 64), 2, ok) == frozenset({0, 1})
    assert peer.c["wrong"] == 0 and ("members", {"step": 0, "epoch": 3, "slots": [0, 1]}) in events

    bad = _sum([0, 1], 1, 2, 64)
    bad[HEAD + 7] += 1.0
    assert peer.verify_exact(1, "x", bad, 2, ok) is None
    assert "payload element" in peer.wrongs[-1]["what"]
    peer.verify_exact(2, "x", _sum([0, 2], 2, 2, 64), 2, SimpleNamespace(world_size=2, epoch=4))
    assert "own slot 1 missing" in peer.wrongs[-1]["what"]
    peer.verify_exact(3, "x", _sum([0, 1], 3, 2, 64), 2, SimpleNamespace(world_size=3, epoch=3))
    assert "world_size 3" in peer.wrongs[-1]["what"]
    peer.verify_exact(4, "x", _sum([1, 2], 4, 2, 64), 2, SimpleNamespace(world_size=2, epoch=3))
    assert "which earlier had [0, 1]" in peer.wrongs[-1]["what"]
    assert peer.c["wrong"] == 4 and [ev for ev, _ in events].count("wrong") == 4


def test_a_failed_op_that_changed_its_buffer_is_caught_restored_and_retried():
    """run_ops: an op that fails with PeerLostError after writing into its buffer is recorded as wrong, the buffer
    is put back before the retry, and the retry's result is returned; with retry=False the error is raised."""
    peer = VerifiedPeer(0, 1)
    buf = np.arange(8, dtype=np.float64)
    original = buf.copy()
    seen = []

    def start():
        seen.append(buf.copy())
        if len(seen) == 1:
            buf[3] = -1.0
            raise pccl_py.PeerLostError("lost")
        return "info"

    assert peer.run_ops(0, {"op": (buf, start)}) == {"op": "info"}
    assert np.array_equal(seen[1], original)                     # the retry saw the input, not the scribble
    assert peer.failures[0]["unchanged"] is False and peer.c["retries"] == 1
    assert "modified its buffer" in peer.wrongs[0]["what"]

    def fails():
        raise pccl_py.PeerLostError("lost")

    with pytest.raises(pccl_py.PeerLostError):
        peer.run_ops(1, {"op": (buf, fails)}, retry=False)
    assert peer.failures[-1] == {"t": peer.failures[-1]["t"], "error": "PeerLostError", "unchanged": True}


def test_members_stop_together_when_one_clock_has_passed(local_group):
    """reduce_until on two real peers: the one whose deadline is already past votes to stop, the other (an hour
    away) stops on the same result; both report the same number of verified ops in a world of 2."""
    comms = local_group(2)
    peers = []
    for slot, comm in enumerate(comms):
        peer = VerifiedPeer(slot, 9, clock=time.time)
        peer.comm = comm
        peers.append(peer)
    soon, later = time.time() + 0.5, time.time() + 3600
    reports = run_concurrently(lambda: peers[0].reduce_until(soon), lambda: peers[1].reduce_until(later), timeout=60)
    for r in reports:
        assert r["end"] is None and not r["wrong"] and r["wrong_count"] == 0 and not r["failed"], r
        assert r["worlds"] == [2] and r["ops_ok"] > 1, r
    assert reports[0]["ops_ok"] == reports[1]["ops_ok"]
