"""Striping: with connections_per_peer=K one large all-reduce is spread over the K TCP connections to each
neighbour (consecutive 256 KiB pieces of a ring chunk go to consecutive connections).

Each test runs its own cluster of 3 peers, all created with the same K.

* K in {1, 2, 4, 16}: an 8 MiB (12 MiB for K = 16, so every ring chunk has at least K pieces) float32 ring
  all_reduce is correct and bitwise identical on every peer. To prove that K connections exist and carry
  the op, the test pairs up the established TCP connections of the worker processes (local/remote ports
  of their socket descriptors): every pair of peers is joined by exactly K connections, each peer's
  descriptors grew by at least 2K on connect (and by 2(K-1) more than with K = 1), and - from TCP_INFO
  byte counters - every one of the K connections to the ring successor carried a fair share of the op's
  bytes, which add up to the op's tx_bytes.
* kill -9 of a member during a striped op (K = 16 and K = 4, and K = 4 with quantization="q8"), with
  use_out and repeat so that the kill lands inside the ops: every survivor either raised PeerLostError
  within 1 s with its buffers unchanged, or succeeded; retrying the rest of its ops succeeds among the
  survivors, and all survivors end with the same correct result. (A kill that landed after the ops had
  finished is repeated with a replacement peer, at most 3 times.)
"""

from __future__ import annotations

import random
import time

import pytest

from fault_helpers import settle_survivors
from harness import Cluster, Peer
from support import admit, assert_within

WORLD = 3
COMM = dict(timeout=30.0, heartbeat_timeout=3.0)
ERROR_BOUND = 1.0  # seconds from the kill to a survivor's PeerLostError, beyond any stall of the machine
MiB = 1 << 20
PIECE = 256 << 10
FDS: dict[int, int] = {}
LOG: list[str] = []


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    if LOG:
        print("\n" + "\n".join(LOG))


def _join(cluster: Cluster, k: int) -> tuple[list[Peer], list[int]]:
    """Spawns WORLD peers, measures each one's descriptors before and after joining with K connections."""
    peers = [cluster.spawn() for _ in range(WORLD)]
    before = [p.call("resources", timeout=30)["fds"] for p in peers]
    members = admit(cluster, [], peers, dict(COMM, connections_per_peer=k))
    members = cluster.ranked(members)
    by_index = dict(zip([p.index for p in peers], before))
    grown = [m.call("resources")["fds"] - by_index[m.index] for m in members]
    return members, grown


def _links(members: list[Peer]) -> dict[tuple[int, int], dict[tuple[int, int], tuple[int, int]]]:
    """{(a, b): {(a's port, b's port): (bytes a sent, bytes b sent)}} for every pair a < b of worker
    indices: a TCP connection joins a and b when one worker's (local port, remote port) is the other's
    (remote port, local port). Bytes are the receiving side's TCP_INFO bytes_received (exact once the data
    arrived, unlike the sender's bytes_acked, which may lag behind a delayed ACK)."""
    conns = {m.index: m.call("tcp_conns")["conns"] for m in members}
    out: dict[tuple[int, int], dict[tuple[int, int], tuple[int, int]]] = {}
    for a in members:
        for b in members:
            if a.index >= b.index:
                continue
            theirs = {(c[0], c[1]): c for c in conns[b.index]}
            pairs = {}
            for lp, rp, _acked, received in conns[a.index]:
                c = theirs.get((rp, lp))
                if c is not None:
                    pairs[(lp, rp)] = (c[3], received)  # what b received from a, what a received from b
            out[(a.index, b.index)] = pairs
    return out


def _sent(before: dict, after: dict, col: int) -> list[int]:
    """Bytes each connection carried in direction col (0: a -> b, 1: b -> a) between two snapshots."""
    assert set(before) == set(after), "the connections changed between the snapshots"
    return [after[c][col] - before[c][col] for c in sorted(after)]


@pytest.mark.parametrize("k", [1, 2, 4, 16])
def test_striped_ring_all_reduce(cluster: Cluster, k: int) -> None:
    """With connections_per_peer=K, each pair of neighbours is joined by K TCP connections, a large ring
    all-reduce is correct and identical on every peer, and its bytes are spread over all K connections."""
    members, grown = _join(cluster, k)
    everyone = [m.index for m in members]
    # Every peer dialed or accepted K connections to each of its 2 neighbours.
    for m, g in zip(members, grown):
        assert 2 * k <= g <= 2 * k + 16, f"peer {m.index}: {g} new descriptors for K={k}"
    FDS[k] = min(grown)
    if 1 in FDS:  # against the K = 1 cluster of this session: one more descriptor per extra connection
        assert FDS[k] - FDS[1] >= 2 * (k - 1), FDS
    for pair, conns in _links(members).items():
        assert len(conns) == k, f"peers {pair} are joined by {len(conns)} TCP connections, not K={k}"

    mib = 8 if k <= 4 else 12  # >= K pieces in each ring chunk
    count = mib * MiB // 4
    before: dict = {}
    res: list[dict] = []
    for attempt in range(2):  # the first op also warms the buffer pools; both must be right
        before = _links(members)
        res = cluster.all_reduce(members, dtype="float32", count=count, seed=30 + k + attempt, algorithm="ring",
                                 expect_from=everyone, use_out=attempt == 1)
        for m, r in zip(members, res):
            assert r["ok"], (m.index, r)
            assert r["correct"] and r["world_size"] == WORLD and r["algorithm"] == "ring", (m.index, r)
            assert r["input_unchanged"]
        assert len({r["sha"] for r in res}) == 1, f"K={k}: peers disagree"
    after = _links(members)
    rank_of = {m.index: r for r, m in enumerate(members)}
    tx = {m.index: r["tx_bytes"] for m, r in zip(members, res)}
    shares = []
    for (a, b), conns in after.items():
        # Ring direction: rank r sends to rank r + 1; the other direction only carries DONE frames.
        col = 0 if (rank_of[a] + 1) % WORLD == rank_of[b] else 1
        sender = (a, b)[col]
        per_conn = _sent(before[(a, b)], conns, col)
        total = sum(per_conn)
        # Everything the op sent to its successor (payload plus 56-byte frame headers) crossed these K.
        assert tx[sender] <= total <= tx[sender] * 1.01 + 64 * 1024, (
            f"K={k}: peer {sender} sent {total} bytes on its K connections to its successor for tx_bytes {tx[sender]}")
        fair = total / k
        assert min(per_conn) >= 0.5 * fair, (
            f"K={k}: loads of the connections from peer {sender} are {sorted(per_conn)} bytes; a fair share "
            f"is {fair:.0f}: the op was not striped over all K connections")
        shares.append(sorted(round(x / MiB, 2) for x in per_conn))
    LOG.append(f"K={k:2d}: {mib} MiB op, MiB per connection to the ring successor: {shares[0]}; "
               f"elapsed {max(r['elapsed'] for r in res):.3f} s; +{min(grown)} descriptors on connect")

    if k == 16:
        # Reported, not asserted (it follows the documented piece-to-connection mapping): in an 8 MiB op
        # the ring chunks have 11 pieces, and every ring step starts again at connection 0.
        snap = _links(members)
        r8 = cluster.all_reduce(members, dtype="float32", count=8 * MiB // 4, seed=99, algorithm="ring",
                                expect_from=everyone)
        assert all(r["ok"] and r["correct"] for r in r8), r8
        late = _links(members)
        busy = []
        for (a, b) in late:
            col = 0 if (rank_of[a] + 1) % WORLD == rank_of[b] else 1
            busy.append(sum(1 for d in _sent(snap[(a, b)], late[(a, b)], col) if d >= PIECE))
        LOG.append(f"K=16, 8 MiB op: connections (of 16) to the ring successor that carried data: {busy}")


def _settle(survivors: list[Peer], cmd: dict, repeat: int, t_kill: float) -> tuple[dict, dict]:
    """Every survivor's first and final reply; one that raised retries the rest of its repetitions."""
    def retry(s: Peer, r: dict) -> bool:
        if r["ok"]:
            return False
        assert r["error"] == "PeerLostError", (s.index, r)
        s.send("all_reduce", **dict(cmd, repeat=repeat - r["completed"]))
        return True

    return settle_survivors(survivors, t_kill + 20, retry)


@pytest.mark.parametrize("k,quantization", [(16, None), (4, None), (4, "q8")], ids=["K16", "K4", "K4-q8"])
def test_kill_during_striped_op(cluster: Cluster, k: int, quantization) -> None:
    """A peer killed during repeated striped ring all-reduces (K=4 or 16, with and without q8): a survivor's
    failed op raises PeerLostError within the bound with input and output unchanged, the retried ops end
    correct, at one world size and bitwise identical on every survivor, and the survivors go on with striped
    ops."""
    comm = dict(COMM, connections_per_peer=k)
    members, _ = _join(cluster, k)
    rng = random.Random(k * 10 + (quantization is not None))
    repeat = 12 if quantization else 20  # ~0.3-0.5 s of ops in all

    # A kill that lands after the ops finished (the machine got faster than the calibration) tests
    # nothing; then the victim is replaced and the round repeated, at most 3 times.
    for attempt in range(3):
        everyone = [m.index for m in members]
        victim = members[rng.randrange(WORLD)]
        survivors = [m for m in members if m is not victim]
        surv_idx = [m.index for m in survivors]
        cmd = dict(dtype="float32", count=8 * MiB // 4, seed=500 + k + attempt, algorithm="ring", use_out=True,
                   repeat=repeat, tag=3, expect_by_world={WORLD: everyone, WORLD - 1: surv_idx})
        if quantization:
            cmd["quantization"] = quantization

        # Calibrate the duration of the repeated ops (second run: warm buffer pools).
        for _ in range(2):
            t_send = time.time()
            for m in members:
                m.send("all_reduce_at", start_at=0, **cmd)
            res = [m.recv(60) for m in members]
            assert all(r["ok"] and r["correct"] and r["completed"] == repeat for r in res), res
            assert len({r["sha"] for r in res}) == 1
            prep = max(r["t0"] for r in res) - t_send
            op_time = min(r["elapsed"] for r in res)

        start_at = time.time() + 2 * prep + 0.2
        for m in members:
            m.send("all_reduce_at", start_at=start_at, **cmd)
        time.sleep(max(0.0, start_at + rng.uniform(0.15, 0.4) * op_time - time.time()))
        t_kill = victim.kill()
        first, final = _settle(survivors, cmd, repeat, t_kill)
        missed = all(r["ok"] and r["world_size"] == WORLD for r in first.values())
        # A survivor woken late (a loaded machine) may start only after the kill: its ops then run among
        # the survivors from the start, and the round does not test a kill during a striped op.
        late = [i for i, r in first.items() if r["t0"] > t_kill]
        LOG.append(f"kill K={k} quantization={quantization}: {(t_kill - start_at) * 1e3:.0f} ms into "
                   f"{op_time * 1e3:.0f} ms of {repeat} ops; survivors raised after "
                   + ", ".join(f"{r['t'] - t_kill:.3f} s" for r in first.values() if not r["ok"])
                   + f" ({sum(not r['ok'] for r in first.values())} of 2)" + (" - missed the ops" if missed else "")
                   + (f" - survivors {late} started after the kill" if late else ""))
        if not missed and not late:
            break
        assert all(r["correct"] for r in first.values() if r["ok"]), first
        members = admit(cluster, survivors, [cluster.spawn()], comm)
    else:
        pytest.fail("three kills in a row landed after the ops had finished or before a survivor started; "
                    "the machine is too erratic")

    errors = {i: r for i, r in first.items() if not r["ok"]}
    summary = {i: dict(first=(r["ok"], r.get("error"), r.get("world_size"), r["completed"],
                              round(r["t0"] - t_kill, 3), round(r["t"] - t_kill, 3)),
                       final=(final[i]["ok"], final[i].get("world_size"), final[i].get("correct"),
                              final[i].get("detail"), final[i].get("sha", "")[:8]))
               for i, r in first.items()}
    for i, r in first.items():
        assert r["t0"] <= t_kill, f"survivor {i} started its ops after the kill: the kill missed them {summary}"
    for i, r in errors.items():
        assert r["error"] == "PeerLostError" and "peer was lost" in r["message"], (r, summary)
        assert_within(t_kill, r["t"], ERROR_BOUND, f"survivor {i}'s PeerLostError {summary}")
        assert r["input_unchanged"] and r["out_unchanged"], f"survivor {i}: a failed op changed the buffers"
        assert 0 <= r["completed"] < repeat, (r, summary)
    for i, r in first.items():
        if r["ok"]:
            assert r["completed"] == repeat and r["input_unchanged"], (r, summary)
    for i, r in final.items():
        assert r["ok"], (i, r, summary)
        assert r["correct"], (i, r.get("detail"), summary)
        if i in errors:
            assert r["world_size"] == WORLD - 1 and r["completed"] == repeat - errors[i]["completed"], (r, summary)
    assert len({r["world_size"] for r in final.values()}) == 1, summary
    assert len({r["sha"] for r in final.values()}) == 1, f"survivors hold different results {summary}"

    # And the survivors go on with striped ops among themselves.
    again = dict(dtype="float32", count=6 * MiB // 4, seed=600 + k, algorithm="ring", expect_from=surv_idx)
    if quantization:
        again["quantization"] = quantization
    res = cluster.all_reduce(survivors, timeout=30, **again)
    assert all(r["ok"] and r["correct"] and r["world_size"] == WORLD - 1 for r in res), res
    assert len({r["sha"] for r in res}) == 1
