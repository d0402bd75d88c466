"""Once membership is settled, an all-reduce never talks to the master.

The master process is frozen with SIGSTOP while the peers keep all-reducing: if any op needed a round trip
to the master, it would stall until the peers' master-silence deadline and fail.
"""

import signal
import time

from support import assert_within, join

HB = 10.0  # the master-silence deadline: an op that waited for the master would take this long and fail


def test_all_reduce_needs_no_master(cluster):
    """With the master frozen (SIGSTOP), star, ring and auto all-reduces among settled peers still succeed with
    correct, identical results, well within the master-silence deadline: an op never talks to the master."""
    peers = join(cluster, 3, dict(heartbeat_timeout=HB))
    warm = cluster.all_reduce(peers, dtype="float32", count=1000, seed=1)
    assert all(r["ok"] and r["correct"] for r in warm), warm
    cluster.master.kill(signal.SIGSTOP)
    try:
        t0 = time.time()
        for i, (count, algorithm) in enumerate([(256, "star"), (300_000, "ring"), (5, "auto")] * 5):
            replies = cluster.all_reduce(peers, dtype="float32", count=count, seed=10 + i, algorithm=algorithm,
                                         timeout=2 * HB)
            assert all(r["ok"] and r["correct"] for r in replies), replies
            assert len({r["sha"] for r in replies}) == 1
        t1 = time.time()
    finally:
        cluster.master.kill(signal.SIGCONT)
    # 15 ops among 3 peers (about 0.5 s on an idle machine) finish long before the master-silence deadline.
    assert_within(t0, t1, 0.5 * HB, "15 all-reduces with the master frozen")
