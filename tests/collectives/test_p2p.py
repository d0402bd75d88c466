"""Point-to-point send/recv (Communicator.send/recv and their async forms).

Multi-process tests use worker processes and real sockets (harness.Cluster; worker command "p2p": async
sends/receives of random bits, sha256 of every receive buffer before and after). Argument checks and
the async handle run on in-process communicators.

What must hold:
* a received buffer is bitwise the sent one (random bits: NaN payloads, -0.0, every byte value);
* messages on one (peer, tag) arrive in issue order; tags and directions are independent channels,
  and a p2p op does not need (or disturb) the members that are not its parties;
* a party killed (kill -9), frozen until evicted, or leaving mid-transfer makes the other side raise
  promptly (not after the op timeout), with its receive buffer unchanged; the loss of a third member
  does not fail the transfer (it is re-run transparently);
* bad arguments raise InvalidArgumentError before anything is sent; a dtype or size mismatch between
  sender and receiver raises MismatchError on both sides.
"""

from __future__ import annotations

import hashlib
import itertools
import signal
import time

import numpy as np
import pytest

import pccl_py
from harness import Cluster
from support import Background, assert_within, connect_group, join, run_concurrently, wait_until

COMM = dict(heartbeat_timeout=2.0, timeout=30.0)
KILL_BOUND = 1.0  # seconds from kill -9 to the survivor's exception


def sent_sha(dtype: str, count: int, seed: int) -> str:
    nbytes = count * np.dtype(dtype).itemsize
    return hashlib.sha256(np.random.default_rng(seed).integers(0, 256, nbytes, dtype=np.uint8).tobytes()).hexdigest()


def op(kind: str, peer: int, count: int, seed: int, dtype: str = "float32", tag: int = 0) -> dict:
    return dict(op=kind, peer=peer, count=count, seed=seed, dtype=dtype, tag=tag)


@pytest.fixture(scope="module")
def trio(tmp_path_factory):
    with Cluster(str(tmp_path_factory.mktemp("p2p"))) as cluster:
        yield cluster, join(cluster, 3, COMM)


def run(peers_ops, timeout: float = 60.0) -> list[dict]:
    """peers_ops: [(peer, [op, ...], extra kwargs)]; all issued at once; replies in the same order."""
    for p, ops, kw in peers_ops:
        p.send("p2p", ops=ops, **kw)
    replies = [p.recv(timeout) for p, _, _ in peers_ops]
    for r in replies:
        assert r["ok"], r
    return replies


def test_payload_is_bitwise_identical(trio):
    """Sizes from empty to several pieces and a page-swapped 9 MiB, several dtypes, both directions."""
    _, (a, b, c) = trio
    cases = [("float32", 0), ("float32", 1), ("float64", 1000), ("uint8", 262145), ("int16", 1 << 20),
             ("float32", 9 * (1 << 18) + 3), ("bfloat16" if False else "float16", 12345)]
    for i, (dtype, count) in enumerate(cases):
        seed = 100 + i
        ra, rc = run([(a, [op("send", 2, count, seed, dtype, tag=i)], {}),
                      (c, [op("recv", 0, count, seed, dtype, tag=i)], {})])
        assert rc["results"][0]["ok"], rc
        assert rc["results"][0]["sha_after"] == sent_sha(dtype, count, seed), (dtype, count)
        assert ra["results"][0]["ok"], ra
    # The other direction, on a peer that was idle meanwhile (b never took part above).
    rb, ra = run([(b, [op("send", 0, 4096, 7)], {}), (a, [op("recv", 1, 4096, 7)], {})])
    assert ra["results"][0]["sha_after"] == sent_sha("float32", 4096, 7)


def test_order_per_channel_and_independent_tags(trio):
    """Five async sends per tag on two tags; the receiver posts tag 2's receives before tag 1's. Each
    receive must get the message of the same position on its own tag. Simultaneous opposite-direction
    transfers (a <-> b) on the same tag do not interfere."""
    _, (a, b, _c) = trio
    sends = [op("send", 1, 1000 + j, 200 + 10 * t + j, tag=t) for j in range(5) for t in (1, 2)]
    recvs = [op("recv", 0, 1000 + j, 200 + 10 * t + j, tag=t) for t in (2, 1) for j in range(5)]
    ra, rb = run([(a, sends, {}), (b, recvs, {})])
    for o, r in zip(recvs, rb["results"]):
        assert r["ok"] and r["sha_after"] == sent_sha("float32", o["count"], o["seed"]), (o, r)
    # Both directions at once, same tag.
    ra, rb = run([(a, [op("send", 1, 50000, 301), op("recv", 1, 60000, 302)], {}),
                  (b, [op("recv", 0, 50000, 301), op("send", 0, 60000, 302)], {})])
    assert rb["results"][0]["sha_after"] == sent_sha("float32", 50000, 301)
    assert ra["results"][1]["sha_after"] == sent_sha("float32", 60000, 302)


def test_mismatch_fails_both_sides(trio):
    """A receive of another size, then of another dtype: MismatchError on both parties, the receive
    buffer unchanged, and the channel usable right after."""
    _, (a, b, _c) = trio
    for send_op, recv_op in ((op("send", 1, 100, 1), op("recv", 0, 101, 1)),
                             (op("send", 1, 100, 1, "int32"), op("recv", 0, 100, 1, "float32"))):
        t0 = time.time()
        ra, rb = run([(a, [send_op], {}), (b, [recv_op], {})])
        for r in (ra["results"][0], rb["results"][0]):
            assert not r["ok"] and r["error"] == "MismatchError", r
            assert_within(t0, r["t"], 5.0, "a mismatch")  # resolved by the master, not the op timeout
        assert rb["results"][0]["sha_after"] == rb["results"][0]["sha_before"]
    ra, rb = run([(a, [op("send", 1, 100, 5)], {}), (b, [op("recv", 0, 100, 5)], {})])
    assert rb["results"][0]["sha_after"] == sent_sha("float32", 100, 5)


@pytest.mark.parametrize("victim", ["sender", "receiver"])
def test_kill_mid_transfer_fails_the_other_side_fast(tmp_path, victim):
    """Repeated 32 MiB transfers; one party is killed while they run. The survivor raises PeerLostError
    within KILL_BOUND of the kill, its receive buffer unchanged; a third member, idle, is unaffected and
    the survivors can transfer again."""
    count = 8 << 20  # float32: 32 MiB
    with Cluster(str(tmp_path)) as cluster:
        a, b, c = join(cluster, 3, COMM)
        start = time.time() + 0.5
        # Pinned to this epoch: a transfer issued after the kill was seen must fail too, not name
        # whoever holds the dead peer's rank by then.
        a.send("p2p", ops=[op("send", 1, count, 11)], repeat=200, start_at=start, pin_epoch=True)
        b.send("p2p", ops=[op("recv", 0, count, 11)], repeat=200, start_at=start, pin_epoch=True)
        time.sleep(1.3)  # several transfers in (each takes a few tens of ms)
        dead, survivor = (a, b) if victim == "sender" else (b, a)
        t_kill = dead.kill()
        r = survivor.recv(30)
        assert r["ok"], r
        res = r["results"][0]
        assert not res["ok"] and res["error"] == "PeerLostError", res
        assert_within(t_kill, res["t"], KILL_BOUND, "kill -9 to the survivor's error")
        if victim == "sender":
            # Completed receives legitimately overwrote the buffer; the failed one must not have touched
            # it: it holds either the initial pattern or exactly the sent message.
            assert res["sha_after"] in (res["sha_before"], sent_sha("float32", count, 11))
        # Survivors keep working: a and c (or b and c) transfer.
        s_rank = survivor.call("state")["rank"]
        c_rank = c.call("state")["rank"]
        rs, rc = run([(survivor, [op("send", c_rank, 1000, 12)], {}), (c, [op("recv", s_rank, 1000, 12)], {})])
        assert rc["results"][0]["sha_after"] == sent_sha("float32", 1000, 12)


def test_failed_receive_leaves_buffer_unchanged(tmp_path):
    """One 64 MiB receive whose sender is killed a few ms after it started sending (loopback moves 64 MiB
    in tens of ms): the receive either failed with its buffer bitwise unchanged, or completed with the
    exact message; never a partial write. Both sides prepare their buffers before the agreed start."""
    count = 16 << 20
    with Cluster(str(tmp_path)) as cluster:
        a, b = join(cluster, 2, COMM)
        start = time.time() + 1.5
        b.send("p2p", ops=[op("recv", 0, count, 21)], start_at=start, pin_epoch=True)
        a.send("p2p", ops=[op("send", 1, count, 21)], start_at=start, pin_epoch=True)
        time.sleep(max(0.0, start - time.time()) + 0.02)
        a.kill()
        res = b.recv(30)["results"][0]
        if res["ok"]:
            assert res["sha_after"] == sent_sha("float32", count, 21)
        else:
            assert res["error"] == "PeerLostError", res
            assert res["sha_after"] == res["sha_before"]


def test_a_pinned_epoch_fails_instead_of_renaming_the_partner(tmp_path):
    """Ranks shift when the membership changes. A receive from rank 0 issued after rank 0 died would name
    another member (here: itself); with epoch= it raises PeerLostError instead, and so does a send."""
    with Cluster(str(tmp_path)) as cluster:
        a, b, c = join(cluster, 3, COMM)
        ranks = {p.index: p.call("state")["rank"] for p in (a, b, c)}
        epoch = b.call("state")["epoch"]
        victim = next(p for p in (a, b, c) if ranks[p.index] == 0)
        survivors = [p for p in (a, b, c) if p is not victim]
        victim.kill()
        for p in survivors:  # wait until both have left the old epoch
            wait_until(lambda: p.call("state")["epoch"], 30, f"peer {p.index} to notice the kill (leave epoch {epoch})",
                       until=lambda e: e != epoch, interval=0.05)
        s0, s1 = survivors
        for p, o in ((s0, op("recv", 0, 1000, 41)), (s1, op("send", 0, 1000, 41))):
            r = p.call("p2p", ops=[o], pin_epoch=True, pinned=epoch)
            res = r["results"][0]
            assert not res["ok"] and res["error"] == "PeerLostError", res
            assert res["sha_after"] == res["sha_before"]


def test_third_member_loss_is_transparent(tmp_path):
    """a -> b transfers keep succeeding (re-run in the new epoch) while member c is killed."""
    count = 4 << 20
    with Cluster(str(tmp_path)) as cluster:
        a, b, c = join(cluster, 3, COMM)
        start = time.time() + 0.5
        a.send("p2p", ops=[op("send", 1, count, 31)], repeat=60, start_at=start)
        b.send("p2p", ops=[op("recv", 0, count, 31)], repeat=60, start_at=start)
        time.sleep(0.9)
        c.kill()
        ra, rb = a.recv(60), b.recv(60)
        assert ra["results"][0]["ok"], ra
        assert rb["results"][0]["ok"], rb
        assert rb["results"][0]["sha_after"] == sent_sha("float32", count, 31)
        assert a.call("state")["world_size"] == 2


def test_frozen_partner_is_evicted_and_the_survivor_raises(tmp_path):
    """SIGSTOP the receiver mid-transfer: the sender raises PeerLostError after about the heartbeat
    timeout (eviction), far before the 30 s op timeout."""
    with Cluster(str(tmp_path)) as cluster:
        a, b = join(cluster, 2, COMM)
        start = time.time() + 0.5
        a.send("p2p", ops=[op("send", 1, 4 << 20, 41)], repeat=500, start_at=start)
        b.send("p2p", ops=[op("recv", 0, 4 << 20, 41)], repeat=500, start_at=start)
        time.sleep(1.0)
        t_stop = b.kill(signal.SIGSTOP)
        try:
            r = a.recv(30)
        finally:
            b.kill(signal.SIGKILL)
        res = r["results"][0]
        assert not res["ok"] and res["error"] == "PeerLostError", res
        assert_within(t_stop, res["t"], 2 * COMM["heartbeat_timeout"] + 2.0, "SIGSTOP to the survivor's error")


def test_leaving_partner_fails_the_survivor(tmp_path):
    """The receiver leaves (close()) while the sender's message waits for it: PeerLostError."""
    with Cluster(str(tmp_path)) as cluster:
        a, b = join(cluster, 2, COMM)
        a.send("p2p", ops=[op("send", 1, 1000, 51)])
        time.sleep(0.3)
        t0 = time.time()
        assert b.call("close")["ok"]
        r = a.recv(30)
        res = r["results"][0]
        assert not res["ok"] and res["error"] == "PeerLostError", res
        assert_within(t0, res["t"], 3.0, "leave to the survivor's error")


# -- in-process: arguments and handles -----------------------------------------------------------------
_groups = itertools.count(500)


@pytest.fixture(scope="module")
def pair():
    with pccl_py.Master() as m:
        comms = connect_group(m.address, 2, timeout=3.0, peer_group=next(_groups))
        comms.sort(key=lambda c: c.rank)
        yield comms
        run_concurrently(*[c.close for c in comms])


def test_argument_errors_before_any_traffic(pair):
    """send()/recv() with a bad rank, tag, buffer type, layout or a read-only receive buffer raise
    InvalidArgumentError within a second, naming the problem, without sending anything: the pair stays in
    step."""
    a, b = pair
    x = np.zeros(10, np.float32)
    bad = [
        (lambda: a.send(x, 0), "own rank"),
        (lambda: a.recv(x, 0), "own rank"),
        (lambda: a.send(x, 2), "not a rank"),
        (lambda: a.send(x, -1), "not a rank"),
        (lambda: a.send(x, 1, tag=-1), "tag"),
        (lambda: a.send(x, 1, tag=pccl_py.tags.MAX_USER_TAG), "reserved"),
        (lambda: a.send(x, True), "int rank"),
        (lambda: a.send([1, 2], 1), "numpy"),
        (lambda: a.send(x[::2], 1), "contiguous"),
    ]
    ro = np.zeros(4, np.float32)
    ro.flags.writeable = False
    bad.append((lambda: a.recv(ro, 1), "read-only"))
    for fn, words in bad:
        t0 = time.monotonic()
        with pytest.raises(pccl_py.InvalidArgumentError, match=words):
            fn()
        assert time.monotonic() - t0 < 1.0
    # The pair is still in step: nothing was sent by the failed calls.
    y = np.zeros(10, np.float32)
    h = b.recv_async(y, 0, tag=3)
    a.send(np.arange(10, dtype=np.float32), 1, tag=3)
    h.wait()
    assert np.array_equal(y, np.arange(10, dtype=np.float32))


def test_async_handle(pair):
    """done() is False until the partner acts; wait() returns a ReduceInfo with algorithm "p2p"."""
    a, b = pair
    y = np.full(1000, -1.0, np.float64)
    h = b.recv_async(y, 0, tag=4)
    time.sleep(0.2)
    assert not h.done()
    assert np.all(y == -1.0)  # untouched while pending
    x = np.random.default_rng(0).standard_normal(1000)
    info = a.send(x, 1, tag=4)
    r = h.wait()
    assert h.done()
    assert r.algorithm == "p2p" and info.algorithm == "p2p"
    assert r.rx_bytes == x.nbytes and info.tx_bytes == x.nbytes
    assert np.array_equal(x, y)


def test_send_releases_the_gil(pair):
    """A blocking recv waits without the GIL: another Python thread keeps running meanwhile."""
    a, b = pair
    y = np.zeros(8, np.int64)
    waiter = Background(lambda: b.recv(y, 0, tag=6))
    ticks = 0
    t_end = time.monotonic() + 0.3
    while time.monotonic() < t_end:
        ticks += 1
    assert ticks > 10000 and not waiter.done()
    a.send(np.arange(8, dtype=np.int64), 1, tag=6)
    waiter.result(10)
    assert np.array_equal(y, np.arange(8))


def test_timeout_fails_both_sides_and_the_late_receiver_owes_it(pair):
    """A send nobody receives times out (the pair's timeout is 3 s) with TimeoutError; the receive that
    comes too late raises the same error at once (both parties see one outcome per message), and the
    channel then pairs up again."""
    a, b = pair
    t0 = time.monotonic()
    with pytest.raises(pccl_py.TimeoutError):
        a.send(np.ones(100, np.float32), 1, tag=11)
    assert 2.5 < time.monotonic() - t0 < 10.0
    y = np.full(100, 7.0, np.float32)
    t1 = time.monotonic()
    with pytest.raises(pccl_py.TimeoutError, match="before this peer called it"):
        b.recv(y, 0, tag=11)
    assert time.monotonic() - t1 < 1.0 and np.all(y == 7.0)
    h = b.recv_async(y, 0, tag=11)
    a.send(np.arange(100, dtype=np.float32), 1, tag=11)
    h.wait()
    assert np.array_equal(y, np.arange(100, dtype=np.float32))
