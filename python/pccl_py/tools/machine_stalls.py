"""How long the whole machine stood still: time that a wall-clock bound should not count against pccl_py.

Some promises are wall-clock bounds (a survivor raises within 1 s of a kill; pccl-stress fails a run whose
group stalls longer than heartbeat_timeout + 2 s). On a shared VM the hypervisor or an overloaded host can
stop every process for most of a second (steal from 5% to 59% was seen on the 2-core CI machines), and a
bound that fails then measures the host, not the library. A StallMonitor is a thread that sleeps STEP at a
time and records each oversleep beyond SLACK. A sleeping thread is among the first the scheduler runs
once the machine runs at all, so what it misses is time in which nothing here could run (or in which
another thread of its process held the GIL: its users only wait on pipes and sockets meanwhile). Checked
as `measured < bound + stalled(t0, t1)`, a slow or hung code path still fails: a stall excuses at most
its own length.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, List, Optional, Tuple

STEP = 0.005  # seconds slept per tick
SLACK = 0.02  # oversleep below this is ordinary timer and scheduler jitter


class StallMonitor:
    """Records the intervals in which its thread could not run; `clock` is the time base of its answers
    (time.time for wall-clock stamps shared between processes, time.monotonic for monotonic ones)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._stalls: List[Tuple[float, float]] = []  # (start, end) on self._clock
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pccl-stall-monitor", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        before = self._clock()
        while not self._stop.wait(STEP):
            now = self._clock()
            if now - before > STEP + SLACK:
                with self._lock:
                    self._stalls.append((before + STEP, now))
            before = now

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(1.0)

    def stalled(self, t0: float, t1: float) -> float:
        """Seconds within [t0, t1] during which this process could not run."""
        with self._lock:
            stalls = list(self._stalls)
        return sum(max(0.0, min(end, t1) - max(start, t0)) for start, end in stalls)

    def worst(self) -> float:
        """The longest single stall seen so far, for reports."""
        with self._lock:
            return max((end - start for start, end in self._stalls), default=0.0)


_monitor: Optional[StallMonitor] = None


def monitor() -> StallMonitor:
    """The process's wall-clock (time.time) monitor, started on first use: call it early (a test module
    calls it at import) so that it watches every window it will be asked about."""
    global _monitor
    if _monitor is None:
        _monitor = StallMonitor()
    return _monitor
