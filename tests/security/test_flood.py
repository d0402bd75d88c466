"""Resource limits under load: a flood at the master and at a member's mesh listener during a
run. Thousands of connections (idle, slowloris, garbage, churn, refused authentications) from addresses
other than the members' while three members all-reduce; then a newcomer joins and four go on. Zero
crashes, zero evictions, every op correct, the newcomer admitted within 2 s, peak RSS bounded.
stress/pccl_flood.py runs the same scenario for longer and reports the figures (docs/operations.md).
"""

from __future__ import annotations

import json
import time

from flood_scenario import run
from pccl_py.tools.machine_stalls import monitor

# Peak resident set (VmHWM) a process may reach: a master is a Python interpreter plus the core, about
# 30 MiB; a worker with numpy about 60 MiB. The flood must not add more than this on top of either.
MAX_GROWTH_KB = 64 << 10


def test_flood_at_master_and_listener_during_a_run(tmp_path):
    """Thousands of hostile connections at the master and at a member's mesh listener during a run: no member is
    evicted, no op fails or is wrong, a newcomer still joins within 2 s, and no process's peak RSS grows past
    the bound."""
    t0 = time.time()
    report = run(20.0, str(tmp_path), peers=3, newcomers=1, rate=400.0, max_open=3000)
    print(json.dumps(report, indent=2))
    assert report["evictions"] == [], report["evictions"]
    assert report["problems"] == [], report["problems"]
    for stats in report["flood"]:
        assert stats.get("opened", 0) >= 4000, f"the flood was too weak to mean anything: {stats}"
    stalled = monitor().stalled(t0, time.time())
    for j in report["newcomer_join_s"]:
        assert j < 2.0 + stalled, f"the newcomer took {j:.2f} s to join under the flood"
    for name, peak in report["vmhwm_kb_peak"].items():
        base = report["vmhwm_kb_before"].get(name)
        if base is not None:
            assert peak - base < MAX_GROWTH_KB, f"{name}: peak RSS grew from {base} to {peak} KiB under the flood"
        assert peak < 512 << 10, f"{name}: peak RSS {peak} KiB"
