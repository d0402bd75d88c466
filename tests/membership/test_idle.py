"""No busy-waiting: idle members (control threads, mesh I/O threads, listeners) and the master use
next to no CPU. A spinning wait would show up as tens of percent of a core."""

from __future__ import annotations

import time

import numpy as np

import pccl_py
from support import connect_group, run_concurrently


def test_idle_peers_and_master_use_almost_no_cpu():
    """Three idle peers and a master in one process, heartbeating every 250 ms, use under 5% of a core: no wait
    spins."""
    master = pccl_py.Master("127.0.0.1", 0)
    master.start()
    comms = connect_group(f"127.0.0.1:{master.port}", 3, heartbeat_timeout=1.0)
    try:
        for c in comms:  # every thread has started and done real work once
            assert c.world_size == 3
        x = [np.ones(1 << 16, np.float32) for _ in comms]
        run_concurrently(*[lambda c=c, a=a: c.all_reduce(a) for c, a in zip(comms, x)])
        time.sleep(0.5)
        c0, t0 = time.process_time(), time.monotonic()
        time.sleep(3.0)
        share = (time.process_time() - c0) / (time.monotonic() - t0)
        # Three peers and the master in this process, heartbeats every 250 ms: well under 5% of a core.
        assert share < 0.05, f"idle peers used {share * 100:.1f}% of a core"
    finally:
        for c in comms:
            c.close()
        master.stop()
