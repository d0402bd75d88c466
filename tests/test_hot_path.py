"""Point 3: once membership is settled, an all-reduce never talks to the master.

The master process is frozen with SIGSTOP while the peers keep all-reducing: if any op needed a round trip
to the master, it would stall until the peers' master-silence deadline and fail.
"""

import signal
import time


def test_all_reduce_needs_no_master(cluster):
    peers = cluster.join(3, heartbeat_timeout=5.0)
    warm = cluster.all_reduce(peers, dtype="float32", count=1000, seed=1)
    assert all(r["ok"] and r["correct"] for r in warm), warm
    cluster.master.kill(signal.SIGSTOP)
    try:
        t0 = time.time()
        for i, (count, algorithm) in enumerate([(256, "star"), (300_000, "ring"), (5, "auto")] * 5):
            replies = cluster.all_reduce(peers, dtype="float32", count=count, seed=10 + i, algorithm=algorithm,
                                         timeout=10)
            assert all(r["ok"] and r["correct"] for r in replies), replies
            assert len({r["sha"] for r in replies}) == 1
        elapsed = time.time() - t0
    finally:
        cluster.master.kill(signal.SIGCONT)
    # 15 ops among 3 peers finish long before the 5 s master-silence deadline would fire.
    assert elapsed < 4.0, f"15 all-reduces took {elapsed:.2f} s with the master frozen"
