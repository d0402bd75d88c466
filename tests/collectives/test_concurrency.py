"""Concurrent collectives: many all_reduce_async ops on different tags in flight at once.

One module-wide cluster of 3 peers with 2 connections per neighbour (plus a pre-spawned spare that
replaces a killed member). Every peer submits its ops with the worker command multi_all_reduce, which
prepares the buffers, submits every op at an agreed wall-clock time and waits for all of them on one
thread each, reporting per op: ok or the error, submission and completion times, result sha, correctness
against the numpy reference of the membership it ran in, and (for failed ops) whether the caller's
buffers were left unchanged.

* 8 ops on 8 tags (1 KiB .. 4 MiB, five dtypes, ring and star, in place and out=, two quantized),
  submitted in a different order on every peer: all correct and bitwise identical across peers.
* A small op on one tag, submitted after four large ops queued on another tag, completes before the
  large ones do: ops on different tags do not wait for each other.
* kill -9 of a member (the star root, then the last rank) while 8 ops are in flight: on every survivor
  each op either raised PeerLostError within 1 s of the kill with its buffers unchanged, or succeeded with
  the right result; calling each failed op again (same buffers) succeeds among the survivors, and every
  op ends with the same bits on every survivor.
* Two async ops queued on one tag while a member dies and another member calls them late: no op may
  return another op's result (each raises PeerLostError or is right), and the retries line up.
* An op called while the group is still recovering from a failure (a frozen member delays the master's
  decision): it lines up with the others' retry, and leaves no failure behind for the next op on its tag.
"""

from __future__ import annotations

import os
import random
import signal
import time

import pytest

from fault_helpers import refill, settle_survivors
from harness import Cluster, Peer
from support import assert_within, join, wait_until

WORLD = 3
# Two connections per neighbour: concurrent ops share striped connections.
COMM = dict(timeout=30.0, heartbeat_timeout=3.0, connections_per_peer=2)
ERROR_BOUND = 1.0  # seconds from the kill to a survivor's PeerLostError, beyond any stall of the machine
KiB, MiB = 1 << 10, 1 << 20
ITEMSIZE = {"float32": 4, "float64": 8, "int32": 4, "int64": 8, "uint8": 1}

# (bytes, dtype, algorithm, use_out, quantization): ring above 64 KiB and star below under "auto"; one
# forced of each; two quantized.
MIXED = [(1 * KiB, "float32", "auto", False, None), (16 * KiB, "int32", "auto", True, None),
         (64 * KiB, "float64", "auto", False, "bf16"), (200 * KiB, "int64", "star", True, None),
         (1 * MiB, "float32", "auto", False, None), (2 * MiB, "uint8", "auto", True, None),
         (3 * MiB, "float64", "ring", False, None), (4 * MiB, "float32", "auto", True, "q8")]
# For the kills: larger, so the ops are still running when the kill lands (~0.2-0.4 s together).
KILL_MIX = [(1 * KiB, "float32", "auto", False, None), (64 * KiB, "int32", "auto", True, None),
            (1 * MiB, "float64", "auto", False, "fp16"), (4 * MiB, "float32", "auto", True, None),
            (8 * MiB, "int32", "ring", False, None), (12 * MiB, "float32", "auto", True, "q8"),
            (16 * MiB, "float64", "auto", False, None), (16 * MiB, "int64", "auto", True, None)]

LOG: list[str] = []


def make_ops(mix, seed: int, first_tag: int) -> list[dict]:
    """Quantized ops count as correct within the relative L2 bounds of test_quantization."""
    return [dict(key=f"op{k}", dtype=dtype, count=nbytes // ITEMSIZE[dtype], seed=seed + k, tag=first_tag + k,
                 algorithm=algorithm, use_out=use_out, op="SUM", quantization=quantization)
            for k, (nbytes, dtype, algorithm, use_out, quantization) in enumerate(mix)]


class Bed:
    """WORLD members in rank order, and a spare peer that replaces a killed one."""

    def __init__(self, log_dir: str) -> None:
        self.cluster = Cluster(log_dir=log_dir)
        self.members = join(self.cluster, WORLD, COMM)
        self.spare = self.cluster.spawn()

    def ensure(self) -> list[Peer]:
        self.members, self.spare = refill(self.cluster, self.members, self.spare, COMM, WORLD)
        return self.members

    def multi(self, peers: list[Peer], ops_per_peer: list[list[dict]], expect: dict, lead: float = 0.3,
              timeout: float = 60.0) -> list[dict]:
        start_at = time.time() + lead
        for p, ops in zip(peers, ops_per_peer):
            p.send("multi_all_reduce", ops=ops, start_at=start_at, expect_by_world=expect, wait_timeout=timeout - 5)
        return [p.recv(timeout) for p in peers]


@pytest.fixture(scope="module")
def bed(tmp_path_factory):
    b = Bed(str(tmp_path_factory.mktemp("concurrency")))
    yield b
    b.cluster.close()
    if LOG:
        print("\n" + "\n".join(LOG))


def _by_key(reply: dict) -> dict[str, dict]:
    return {o["key"]: o for o in reply["ops"]}


def test_eight_tags_in_flight_correct_and_identical(bed: Bed) -> None:
    """Eight all_reduce_async ops on different tags, submitted by each peer in its own order, all return at once,
    all give the correct result with the input untouched, and every peer holds bitwise the same result for
    each op."""
    members = bed.ensure()
    everyone = [m.index for m in members]
    for round_ in range(2):
        ops = make_ops(MIXED, seed=100 + 10 * round_, first_tag=11)
        rng = random.Random(round_)
        orders = [rng.sample(ops, len(ops)) for _ in members]  # every peer submits in its own order
        replies = bed.multi(members, orders, expect={WORLD: everyone})
        per_peer = []
        for m, r in zip(members, replies):
            assert r["ok"], (m.index, r)
            outs = _by_key(r)
            for key, o in outs.items():
                assert o["ok"], (m.index, key, o)
                assert o["world_size"] == WORLD and o["correct"], (m.index, key, o.get("detail"))
                assert o["input_unchanged"], (m.index, key)
            per_peer.append(outs)
            # all_reduce_async returned at once for every op: none waited for another to be submitted or
            # to finish. (A blocking submit would also deadlock on the peers' different orders.)
            for o in r["ops"]:
                assert_within(o["t_submit"], o["t_returned"], 0.5, f"peer {m.index}'s all_reduce_async of {o['key']}")
        for op in ops:
            shas = {outs[op["key"]]["sha"] for outs in per_peer}
            assert len(shas) == 1, f"peers disagree on {op['key']} ({op['dtype']}, {op['count']} elements)"
        span = max(o["t_done"] for r in replies for o in r["ops"]) - min(r["t0"] for r in replies)
        total = sum(b for b, *_ in MIXED) / MiB
        LOG.append(f"8 concurrent ops ({total:.1f} MiB): all done {span:.3f} s after the start")


def test_small_op_on_another_tag_overtakes_queued_large_ops(bed: Bed) -> None:
    """Four 16 MiB ops on tag 1 (which run one after another), then 30 ms later a 1 KiB op on tag 2: on
    every peer the small op finishes before the tag-1 ops do, and the tag-1 ops finish in order."""
    members = bed.ensure()
    everyone = [m.index for m in members]
    big = [dict(key=f"big{j}", dtype="float32", count=16 * MiB // 4, seed=200 + j, tag=1) for j in range(4)]
    small = dict(key="small", dtype="float32", count=256, seed=210, tag=2, offset=0.03)
    replies = bed.multi(members, [big + [small]] * WORLD, expect={WORLD: everyone}, lead=2.0)
    skew = max(r["t0"] for r in replies) - min(r["t0"] for r in replies)
    LOG.append(f"start skew across peers: {skew * 1e3:.1f} ms")
    for m, r in zip(members, replies):
        assert r["ok"], r
        outs = _by_key(r)
        assert all(o["ok"] and o["correct"] for o in outs.values()), (m.index, outs)
        done = [outs[f"big{j}"]["t_done"] for j in range(4)]
        assert done == sorted(done), f"peer {m.index}: ops on one tag finished out of submission order"
        s = outs["small"]
        latency, large_span = s["t_done"] - s["t_submit"], done[-1] - r["t0"]
        LOG.append(f"peer {m.index}: 1 KiB op on tag 2 took {latency * 1e3:.1f} ms while the 4 x 16 MiB ops on "
                   f"tag 1 took {large_span * 1e3:.1f} ms; first large op done after "
                   f"{(done[0] - r['t0']) * 1e3:.1f} ms")
        assert s["t_done"] < done[-1], (
            f"peer {m.index}: the small op on tag 2 finished {s['t_done'] - done[-1]:.3f} s after the last large op "
            "on tag 1: ops on different tags did not overlap")
    assert len({_by_key(r)["small"]["sha"] for r in replies}) == 1


def _collect_with_retries(survivors: list[Peer], surv_idx: list[int], t_kill: float,
                          deadline: float) -> tuple[dict, dict]:
    """First and final reply of every survivor; a survivor's failed ops are retried with the same
    buffers and tags."""
    def retry(s: Peer, r: dict) -> bool:
        assert r["ok"], (s.index, r)
        failed = [o for o in r["ops"] if not o["ok"]]
        for o in failed:
            assert o["error"] == "PeerLostError", (s.index, o)
        if failed:
            s.send("multi_all_reduce", ops=[dict(key=o["key"], reuse=True) for o in failed],
                   start_at=0, expect_by_world={WORLD - 1: surv_idx}, wait_timeout=30)
        return bool(failed)

    first, final = settle_survivors(survivors, deadline, retry)
    for k, r in final.items():
        assert r["ok"], (k, r)
    return first, final


@pytest.mark.parametrize("victim_rank", [0, WORLD - 1], ids=["star_root", "last_rank"])
def test_kill_with_eight_ops_in_flight(bed: Bed, victim_rank: int) -> None:
    """The star root or the last rank is killed while eight ops are in flight: each survivor's failed ops raise
    PeerLostError within the bound with their buffers unchanged, every op ends (directly or on retry) correct,
    with one membership and bitwise identical results on every survivor, and the survivors keep running ops
    among themselves."""
    # A kill that lands after every op finished (the machine got faster than the calibration) tests
    # nothing; then the victim is replaced and the round repeated, at most 3 times.
    for attempt in range(3):
        members = bed.ensure()
        everyone = [m.index for m in members]
        seed = 300 + 10 * victim_rank + attempt
        ops = make_ops(KILL_MIX, seed=seed, first_tag=21)

        # Calibrate: how long preparing the buffers and running the 8 ops take (second run: warm pools).
        for _ in range(2):
            t_send = time.time()
            replies = bed.multi(members, [ops] * WORLD, expect={WORLD: everyone}, lead=0)
            assert all(r["ok"] and all(o["ok"] and o["correct"] for o in r["ops"]) for r in replies), replies
            prep = max(r["t0"] for r in replies) - t_send
        duration = min(max(o["t_done"] for o in r["ops"]) - r["t0"] for r in replies)

        victim = members[victim_rank]
        survivors = [m for m in members if m is not victim]
        surv_idx = [m.index for m in survivors]
        expect = {WORLD: everyone, WORLD - 1: surv_idx}
        start_at = time.time() + 2 * prep + 0.2
        for m in members:
            m.send("multi_all_reduce", ops=ops, start_at=start_at, expect_by_world=expect, wait_timeout=30)
        time.sleep(max(0.0, start_at + 0.3 * duration - time.time()))
        t_kill = victim.kill()
        bed.members = survivors
        first, final = _collect_with_retries(survivors, surv_idx, t_kill, deadline=t_kill + 20)

        n_failed = sum(1 for r in first.values() for o in r["ops"] if not o["ok"])
        missed = all(o["ok"] and o["world_size"] == WORLD for r in first.values() for o in r["ops"])
        # A survivor woken late (a loaded machine) may start submitting only after the kill: its ops
        # then run among the survivors from the start, and the round does not test ops in flight.
        late = [k for k in surv_idx if first[k]["t0"] > t_kill]
        LOG.append(f"kill of rank {victim_rank} {(t_kill - start_at) * 1e3:.0f} ms into ~{duration * 1e3:.0f} ms of "
                   f"ops: {n_failed} of {len(ops) * len(survivors)} survivor ops raised, kill-to-error "
                   + ", ".join(f"{o['t_done'] - t_kill:.3f}" for r in first.values() for o in r["ops"] if not o["ok"])
                   + (" - missed the ops" if missed else "")
                   + (f" - survivors {late} started after the kill" if late else ""))
        if not missed and not late:
            break
        assert all(o["correct"] for r in first.values() for o in r["ops"] if o["ok"]), first
    else:
        pytest.fail("three kills in a row landed after the ops had finished or before a survivor started; "
                    "the machine is too erratic")

    for k, r in first.items():
        for o in r["ops"]:
            if o["ok"]:
                continue
            assert_within(t_kill, o["t_done"], ERROR_BOUND, f"survivor {k}: {o['key']}'s PeerLostError")
            assert o["input_unchanged"] and o["out_unchanged"], f"survivor {k}: failed {o['key']} changed buffers"

    # Every op's outcome on every survivor: the first reply's success, or the retry's.
    outcome: dict[str, dict[int, dict]] = {op["key"]: {} for op in ops}
    for k in surv_idx:
        assert first[k]["t0"] <= t_kill, f"survivor {k} started submitting after the kill: it missed the ops"
        for o in first[k]["ops"]:
            if o["ok"]:
                # Among everyone, or among the survivors: an op that some survivor started only after the
                # epoch changed runs there, paired with the other survivors' retry (checked below: all
                # survivors end with the same membership and bits for every op).
                outcome[o["key"]][k] = o
        if k in final and final[k] is not first[k]:
            for o in final[k]["ops"]:
                assert o["ok"], f"survivor {k}: retry of {o['key']} failed: {o}"
                assert o["world_size"] == WORLD - 1, o
                outcome[o["key"]][k] = o
    for key, per in outcome.items():
        assert set(per) == set(surv_idx), (key, per)
        for k, o in per.items():
            assert o["world_size"] in (WORLD, WORLD - 1) and o["correct"], (k, key, o)
        assert len({o["world_size"] for o in per.values()}) == 1, f"{key}: survivors disagree on its membership"
        assert len({o["sha"] for o in per.values()}) == 1, f"{key}: survivors hold different results"

    # The survivors go on: 8 more ops among them.
    more = make_ops(MIXED, seed=seed + 50, first_tag=21)
    replies = bed.multi(survivors, [more] * len(survivors), expect={WORLD - 1: surv_idx})
    for r in replies:
        assert all(o["ok"] and o["world_size"] == WORLD - 1 and o["correct"] for o in r["ops"]), r
    for op in more:
        assert len({_by_key(r)[op["key"]]["sha"] for r in replies}) == 1


def test_ops_queued_on_one_tag_when_a_member_dies(bed: Bed) -> None:
    """Two async ops X1, X2 queued on one tag by ranks 0 and 2; rank 1 is slower and submits its X1, X2
    only after rank 2 was killed (and the survivors' epoch is up). Whatever the library does, no op may
    return a wrong result: each op raises PeerLostError or returns the sum of that same op's inputs, and
    after the failed ops are called again (in their order) every op holds the survivors' correct sum on
    both survivors.

    Runs last: it leaves the group at 2 members if it fails."""
    members = bed.ensure()
    a, b, c = members
    surv_idx = [a.index, b.index]
    ops = [dict(key="X1", dtype="int32", count=100_000, seed=901, tag=40),
           dict(key="X2", dtype="int32", count=100_000, seed=902, tag=40)]
    expect = {WORLD: [m.index for m in members], WORLD - 1: surv_idx}
    for p in (a, c):
        p.send("multi_all_reduce", ops=ops, start_at=0, expect_by_world=expect, wait_timeout=20)
    time.sleep(0.3)  # X1 of ranks 0 and 2 now waits for rank 1
    t_kill = c.kill()
    bed.members = [a, b]
    wait_until(lambda: b.call("state")["world_size"], 10, "the survivors' epoch", until=lambda w: w == WORLD - 1)
    time.sleep(0.2)  # whatever rank 0 runs next on the tag has started in the survivors' epoch
    b.send("multi_all_reduce", ops=ops, start_at=0, expect_by_world=expect, wait_timeout=20)
    first, final = _collect_with_retries([a, b], surv_idx, t_kill, deadline=time.time() + 30)

    wrong = []
    for k, r in first.items():
        for o in r["ops"]:
            if o["ok"] and not o["correct"]:
                wrong.append(f"worker {k} {o['key']}: returned (world {o['world_size']}) a result that is not the "
                             f"sum of {o['key']}'s inputs ({o['detail']})")
            elif not o["ok"]:
                assert o["error"] == "PeerLostError", (k, o)
                assert o["input_unchanged"] and o["out_unchanged"], (k, o)
    for k, r in final.items():
        if r is not first[k]:
            for o in r["ops"]:
                if not (o["ok"] and o["correct"]):
                    wrong.append(f"worker {k} retry of {o['key']}: {o.get('error') or o.get('detail')}")
    summary = {k: [(o["key"], o["ok"] and "ok" or o["error"], o.get("world_size")) for o in r["ops"]]
               for k, r in first.items()}
    assert not wrong, "ops paired with a different op after the failure:\n" + "\n".join(wrong) + f"\n{summary}"


def test_op_called_while_the_group_recovers(cluster: Cluster) -> None:
    """Ranks 0 and 2 of 4 call X on a tag; rank 3 is frozen (SIGSTOP) and rank 2 killed, so the master
    waits ~heartbeat_timeout for rank 3's status before it decides; rank 1 calls X inside that window.
    X is aborted for rank 0; rank 1's X must line up with rank 0's retry (or fail too and be retried) -
    and once X succeeded on both survivors, their next op Y on the tag simply succeeds on both: no
    failure may be left over from X."""
    members = join(cluster, 4, dict(timeout=20.0, heartbeat_timeout=2.0))
    a, b, c, d = members
    surv = [a.index, b.index]
    x = dict(dtype="int32", count=100_000, seed=911, tag=1, expect_from=surv)
    y = dict(dtype="int32", count=100_000, seed=912, tag=1, expect_from=surv)
    for p in (a, c):
        p.send("all_reduce", **x)
    time.sleep(0.3)
    os.kill(d.pid, signal.SIGSTOP)  # killed (SIGKILL) by the cluster fixture at the end
    t_kill = c.kill()
    time.sleep(0.3)
    assert b.call("state")["world_size"] == 4, "the recovery window closed before rank 1 called X"
    b.send("all_reduce", **x)
    # X: whoever raised PeerLostError calls it again, as soon as it raised.
    def retry(p: Peer, r: dict) -> bool:
        if r["ok"]:
            return False
        assert r["error"] == "PeerLostError", (p.index, r)
        p.send("all_reduce", **x)
        return True

    _, outcome = settle_survivors([a, b], t_kill + 20, retry)
    for i, r in outcome.items():
        assert r["ok"] and r["correct"] and r["world_size"] == 2, (i, r)
    assert outcome[a.index]["sha"] == outcome[b.index]["sha"]

    for p in (a, b):
        p.send("all_reduce", **y)
    res = {}
    for p in (a, b):
        try:
            res[p.index] = p.recv(timeout=8)
        except TimeoutError:
            res[p.index] = {"ok": False, "error": "no reply within 8 s"}
    summary = {i: (r["ok"], r.get("error"), (r.get("message") or "")[:90]) for i, r in res.items()}
    assert all(r["ok"] and r["correct"] for r in res.values()), (
        f"the op after X failed although X had succeeded everywhere (raised X's failure again?): {summary}")
