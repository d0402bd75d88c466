"""200 interleaved joins and deaths against two long-lived observer members, which
keep doing all_reduce between the events. The observers' (and the master's) file descriptors, OS
threads and RSS must not grow: after a warm-up and at the end they are compared (fds/threads: +2 at
most, RSS: < +30 MB).

Each event admits one joiner (a fresh process from a pre-spawned pool, or a worker whose previous
Communicator was closed) and then ends it in one of four ways, drawn from a seeded RNG:
  kill_idle   - kill -9 while the group is idle;
  kill_mid_op - kill -9 during an all_reduce of all three (the observers' op raises PeerLostError or
                completes; their retry succeeds);
  close       - graceful close(); the worker process is reused for a later join;
  kill_pending- the joiner is killed while still waiting for admission (before update_topology).
After each event the observers run an all_reduce (retrying once on PeerLostError) and must agree on a
correct result with world_size 2.
"""

from __future__ import annotations

import random
import time
from collections import Counter

from harness import Peer
from pccl_py.tools._process import process_resources
from support import admit, join, wait_until

EVENTS = 200
WARMUP = 20
POOL = 3
COMM = dict(heartbeat_timeout=2.0, timeout=10.0)
KINDS = ["kill_idle"] * 35 + ["close"] * 35 + ["kill_mid_op"] * 20 + ["kill_pending"] * 10


def test_churn_does_not_leak(cluster):
    """200 joins, each ended by a kill (idle, mid-op or while pending) or a graceful close: the two observers
    keep agreeing on correct results at world size 2 after every event, every join succeeds, and the
    observers' and master's descriptors, threads and RSS do not grow past the warm-up baseline."""
    t_start = time.time()
    rng = random.Random(2024)
    observers = join(cluster, 2, COMM)
    pool: list[Peer] = [cluster.spawn() for _ in range(POOL)]  # fresh processes, python already starting
    reusable: list[Peer] = []  # workers whose Communicator was closed; "connect" makes a new one
    kinds: Counter = Counter()
    join_failures: list[str] = []
    peer_lost_retries = 0
    seed = 100
    baseline = None

    def observers_reduce() -> None:
        nonlocal seed, peer_lost_retries
        seed += 1
        for attempt in range(3):
            res = cluster.all_reduce(observers, timeout=30, dtype="float32", count=4096, seed=seed)
            if all(r["ok"] for r in res):
                assert all(r["correct"] and r["world_size"] == 2 for r in res), res
                assert res[0]["sha"] == res[1]["sha"], res
                return
            assert all(r["ok"] or r["error"] == "PeerLostError" for r in res), res
            peer_lost_retries += 1
        raise AssertionError(f"observers' all_reduce kept failing: {res}")

    def settle() -> None:
        wait_until(lambda: all(o.call("state", timeout=10)["world_size"] == 2 for o in observers), 10.0,
                   interval=0.01, what="observers back to world size 2")

    def snapshot() -> dict:
        snap = {f"obs{o.index}": {k: v for k, v in o.call("resources", timeout=10).items() if k != "id"}
                for o in observers}
        snap["master"] = process_resources(cluster.master.pid)
        return snap

    def take_joiner() -> Peer:
        if reusable and rng.random() < 0.5:
            return reusable.pop(0)
        p = pool.pop(0)
        pool.append(cluster.spawn())
        return p

    for i in range(EVENTS):
        if i == WARMUP:
            baseline = snapshot()
        kind = KINDS[rng.randrange(len(KINDS))]
        kinds[kind] += 1
        joiner = take_joiner()

        if kind == "kill_pending":
            joiner.send("connect", master=cluster.master.address, kwargs=COMM)
            wait_until(lambda: observers[0].call("pending", timeout=10)["pending"], 10.0, interval=0.005,
                       what="joiner pending")
            joiner.kill()
            # A vote with nobody left to admit just returns.
            for o in observers:
                o.send("update_topology")
            for o in observers:
                r = o.recv(15)
                assert r["ok"], r
            settle()
            observers_reduce()
            continue

        try:
            members = admit(cluster, observers, [joiner], COMM, timeout=15)
        except AssertionError as exc:
            # A failed admission is a library bug (see the report); note it, drop the joiner, go on, and
            # fail at the end so that the resource measurement still happens.
            join_failures.append(f"event {i}: {exc}")
            joiner.kill()
            settle()
            observers_reduce()
            continue
        trio = cluster.ranked(members)
        res = cluster.all_reduce(trio, timeout=30, dtype="float32", count=4096, seed=seed + 5000)
        assert all(r["ok"] and r["correct"] and r["world_size"] == 3 for r in res), res

        if kind == "kill_idle":
            joiner.kill()
        elif kind == "close":
            r = joiner.call("close", timeout=15)
            assert r["ok"], r
            reusable.append(joiner)
        else:  # kill_mid_op
            start = time.time() + 0.15
            cmd = dict(dtype="float32", count=1 << 18, seed=seed, use_out=True, repeat=6,
                       algorithm=rng.choice(["ring", "star"]))
            for p in trio:
                p.send("all_reduce_at", start_at=start, **cmd)
            time.sleep(max(0.0, start + rng.uniform(0.0, 0.03) - time.time()))
            t_kill = joiner.kill()
            # An observer that raised retries the rest of its loop at once; an observer whose op had
            # completed waits on its next repetition for exactly that retry.
            pending = {o.index: o for o in observers}
            retried: set[int] = set()
            deadline = time.time() + 30
            while pending:
                assert time.time() < deadline, f"observers hung after a mid-op kill: {list(pending)}"
                for idx, o in list(pending.items()):
                    try:
                        r = o.recv(0.02)
                    except TimeoutError:
                        continue
                    if not r["ok"] and idx not in retried:
                        assert r["error"] == "PeerLostError", r
                        assert r["input_unchanged"] and r["out_unchanged"], r
                        assert r["t"] - t_kill < 1.0, r
                        retried.add(idx)
                        peer_lost_retries += 1
                        o.send("all_reduce", **dict(cmd, repeat=cmd["repeat"] - r["completed"], expect_from=None))
                        continue
                    assert r["ok"], r
                    del pending[idx]
        settle()
        observers_reduce()

    # Let everything settle: parked connections, closed sockets, exited threads.
    time.sleep(1.0)
    settle()
    observers_reduce()
    final = snapshot()
    elapsed = time.time() - t_start
    print(f"\nchurn: {EVENTS} events in {elapsed:.1f} s; kinds {dict(kinds)}; "
          f"observer PeerLostError retries {peer_lost_retries}; join failures {len(join_failures)}")
    print(f"resources after warm-up: {baseline}\nresources at the end:    {final}")

    for who in baseline:
        b, f = baseline[who], final[who]
        assert f["fds"] <= b["fds"] + 2, f"{who}: fds grew {b['fds']} -> {f['fds']}"
        assert f["os_threads"] <= b["os_threads"] + 2, f"{who}: threads grew {b['os_threads']} -> {f['os_threads']}"
        assert f["rss_kb"] - b["rss_kb"] < 30 * 1024, f"{who}: RSS grew {b['rss_kb']} -> {f['rss_kb']} kB"
    assert not join_failures, f"{len(join_failures)} of {EVENTS} joins failed:\n" + "\n".join(join_failures)
