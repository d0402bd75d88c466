"""``pccl-stress``: a seeded churn run against a master and self-verifying peers, with a pass/fail report.

Why this exists: the unit tests each provoke one failure at a chosen moment. Real groups see
failures at arbitrary moments, overlapping each other, for hours. This tool runs a master and
``--peers`` worker processes (``pccl_py.tools.stress.worker``) on localhost and, for ``--duration``
seconds, every 0.5-2 s does one of: spawn a peer, SIGKILL a peer, SIGSTOP a peer (SIGCONT later),
ask a peer to leave gracefully, or kill -9 the master and restart it on the same port (peers ride
it out with ``master_grace``; ``--no-master-restart`` leaves the master alone). The first events cover every kind once, in a seeded order; after that kinds are drawn
at random (biased towards spawns while fewer than ``--peers`` run). It never leaves fewer than 2
running members. The workers prove every result themselves
(see ``stress_worker``) and report over stdout; this process only schedules, collects and judges.

Seeds: ``--seed`` fixes the schedule (event kinds, times, freeze lengths) and the tensors. Which
peer an event hits is drawn from the same stream but depends on who is a member at that moment,
so two runs with one seed hit the same kinds at the same times, not always the same peers.

Measures, all from worker reports (times are CLOCK_MONOTONIC, shared by the processes on Linux):

- recovery time per event kind, "first reflecting op on any survivor": from the event to the first
  successful, verified op on any other peer whose decoded contributor set reflects the event (the
  victim is gone; the newcomer is in). A freeze shorter than the eviction, and a master restart,
  change no membership; for them it is the end of the survivors' stall that covers the event (0 for a
  master restart that stalled nobody).
- longest stall: the longest gap between two successful ops of one peer, over all peers, leaving
  out gaps that overlap the peer's own freeze (and the wait for its own admission), plus the time
  since each running member's last progress at the end. Freezes of other members that overlap one
  gap add up: a frozen member holds every op until it is evicted (up to heartbeat_timeout), and
  three freezes a second apart keep the group waiting for about three detections in a row. A master
  restart does not start a detection over (the restarted master dates each member's silence from
  what the others last heard of it), but nothing is decided while no master is up: a freeze whose
  heartbeat_timeout ends during an outage is due ``MASTER_REDIAL`` after the new master came up. So a
  gap counts only what is left once the time other members spent frozen and not yet due, beyond the
  first heartbeat_timeout of it, is taken out; a gap with no freeze in it counts whole. Time in which
  the whole machine stood still (``machine_stalls``: an overloaded host or hypervisor steal) is taken
  out too.

Exit code 1 on any wrong result, divergence, crash of a peer the run did not kill, stall longer
than heartbeat_timeout + 2 s, or a run that completed no ops; the reasons are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from ..harness import Children, MasterProcess
from ..machine_stalls import StallMonitor
from ..proof import MAX_SLOTS
from .report import Progress, format_report

EVENT_KINDS = ("spawn", "kill", "stop", "leave", "master_restart")
EVENT_WEIGHTS = {"spawn": 3.0, "kill": 2.0, "stop": 1.0, "leave": 1.0, "master_restart": 0.5}
LEAVE_LIMIT = 30.0        # a peer asked to leave must have exited by then
# A restarted master keeps its rebuild window open at least this long for live members to redial
# (kRedialWindow in csrc/coordinator/master.cpp); a missing member is left out no earlier.
MASTER_REDIAL = 0.5


def _now() -> float:
    return time.monotonic()


@dataclass
class WorkerProc:
    """One worker process as the orchestrator sees it."""

    slot: int
    proc: subprocess.Popen[str]
    log_path: str
    spawned_at: float
    state: str = "starting"            # starting -> member -> (stopped <-> member) -> leaving -> gone
    expected_exit: bool = False        # the orchestrator killed it or asked it to leave
    peer_id: int = 0
    joined_at: Optional[float] = None
    stops: list[Any] = field(default_factory=list)        # [t_stop, t_cont or None]
    members: list[Any] = field(default_factory=list)      # (t, frozenset of slots) on every change
    gaps: list[Any] = field(default_factory=list)         # (start, end) between successful ops
    stats: dict[str, Any] = field(default_factory=dict)
    peak_fds: int = 0
    last_progress: Optional[float] = None
    fatal: Optional[str] = None
    left_at: Optional[float] = None
    leave_deadline: Optional[float] = None
    exit_code: Optional[int] = None

    @property
    def pid(self) -> int:
        return int(self.proc.pid)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal(self, sig: int) -> None:
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            pass


@dataclass
class Event:
    kind: str
    t: float
    slot: int = -1          # victim or newcomer
    t_end: Optional[float] = None   # stop: when SIGCONT was sent; master_restart: when the new master was up
    evicted: bool = False   # stop: the frozen peer was evicted
    recovery: Optional[float] = None


def _frozen_during(w: WorkerProc, start: float, end: float) -> bool:
    """Whether the run froze this worker at some point of [start, end]."""
    return any(s <= end and (c is None or c >= start) for s, c in w.stops)


def _undetected_freeze_time(workers: list[Any], start: float, end: float, hb: float, exclude: int,
                            restarts: Sequence[tuple[float, float]] = ()) -> float:
    """Seconds of [start, end] during which some member other than `exclude` was frozen and not yet
    due for eviction: the union of those intervals, clipped to the gap. A freeze is due `hb` after it
    began; when a master restart (killed, back up; in time order) had the master down at that moment,
    it is due MASTER_REDIAL after the new master came up (the restart does not start the detection
    over: the new master dates the silence from what the other members last heard)."""
    def due(s: float) -> float:
        d = s + hb
        for killed, up in restarts:
            if killed < d < up + MASTER_REDIAL:
                d = up + MASTER_REDIAL
        return d

    spans = sorted((max(s, start), min(end, due(s), c if c is not None else end))
                   for w in workers if w.slot != exclude for s, c in w.stops)
    covered, reach = 0.0, start
    for a, b in spans:
        a = max(a, reach)
        if b > a:
            covered += b - a
            reach = b
    return covered


def _percentiles(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"count": 0}
    v = sorted(values)

    def pct(p: float) -> float:
        return round(v[min(len(v) - 1, int(p * (len(v) - 1) + 0.5))], 3)

    return {"count": len(v), "min": round(v[0], 3), "p50": pct(0.5), "p90": pct(0.9), "max": round(v[-1], 3),
            "mean": round(sum(v) / len(v), 3)}


class Stress:
    """The orchestrator: schedule, collect, judge. See the module docstring."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.kinds = [k for k in EVENT_KINDS if k != "master_restart" or args.master_restart]
        self.cover = list(self.kinds)
        self.rng.shuffle(self.cover)
        self.log_dir = args.log_dir or tempfile.mkdtemp(prefix="pccl-stress-")
        os.makedirs(self.log_dir, exist_ok=True)
        self.master: Optional[MasterProcess] = None
        self.children = Children()
        self._by_key: dict[int, WorkerProc] = {}  # the harness' key of a worker (its spawn number) -> it
        self.workers: dict[int, WorkerProc] = {}     # live or not yet reaped, by slot
        self.finished: list[WorkerProc] = []          # reaped
        self.free_slots: deque[Any] = deque(range(MAX_SLOTS))  # FIFO: a freed slot is reused as late as possible
        self.inbox: "queue.Queue[tuple[int, Optional[dict[str, Any]]]]" = queue.Queue()
        self.events: list[Event] = []
        self.counts: Counter[str] = Counter()
        self.skipped = 0
        self.wrong: list[dict[str, Any]] = []
        self.divergences: list[dict[str, Any]] = []
        self.state_divergences: list[dict[str, Any]] = []
        self.crashes: list[str] = []
        self.notes: list[str] = []
        self.pending_cont: list[tuple[float, WorkerProc, Event]] = []
        self.t0 = _now()
        self.t_end = self.t0
        self.machine = StallMonitor(clock=_now)
        self.spawned = 0
        self.last_event = ""
        # One timeline of what the run did and what the workers said (stats aside), for post-mortems:
        # a failed CI run leaves only this log directory behind.
        self.timeline_path = os.path.join(self.log_dir, "timeline.log")

    def to_timeline(self, what: str, /, **fields: Any) -> None:
        """Appends one line to timeline.log: seconds since the churn started, then what happened."""
        extra = " ".join(f"{k}={v}" for k, v in fields.items())
        with open(self.timeline_path, "a") as f:
            f.write(f"{_now() - self.t0:8.3f} {what} {extra}\n")

    # -- processes --------------------------------------------------------------------------------
    def spawn(self) -> WorkerProc:
        slot = self.free_slots.popleft()
        a = self.args
        self.spawned += 1
        log_path = os.path.join(self.log_dir, f"worker{self.spawned - 1:04d}-slot{slot}.log")
        assert self.master is not None, "spawn() runs after the master started"
        cmd = [sys.executable, "-m", "pccl_py.tools.stress.worker", "--master", self.master.address, "--slot", str(slot),
               "--seed", str(a.seed), "--connections", str(a.connections), "--timeout", str(a.timeout),
               "--heartbeat-timeout", str(a.heartbeat_timeout), "--step-sleep", str(a.step_sleep),
               "--parent-pid", str(os.getpid()), "--log-level", a.log_level]
        if a.master_restart:
            cmd += ["--master-restart", "--master-grace", str(a.master_grace)]
        # The harness starts it in a session of its own: a Ctrl-C in the terminal reaches only us, and we
        # kill the workers.
        child = self.children.spawn(cmd, key=self.spawned, inbox=self.inbox, log_path=log_path, stdin=False)
        w = WorkerProc(slot, child.proc, log_path, _now())
        self.workers[slot] = w
        self._by_key[self.spawned] = w
        return w

    def kill_all(self) -> None:
        """SIGKILL and reap, by PID, every process this run started. Never raises."""
        for w in self.workers.values():
            w.expected_exit = True
        for pid in self.children.close():
            self.notes.append(f"could not reap worker pid {pid}")
        if self.master is not None:
            self.master.kill()

    def leftovers(self) -> list[int]:
        pids = [w.pid for w in self.workers.values() if w.alive()]
        if self.master is not None and self.master.alive():
            pids.append(self.master.pid)
        return pids

    # -- messages ---------------------------------------------------------------------------------
    def drain(self, timeout: float = 0.0) -> None:
        deadline = _now() + timeout
        while True:
            try:
                key, msg = self.inbox.get(timeout=max(0.0, deadline - _now()))
            except queue.Empty:
                return
            self.handle(self._by_key[key], msg)
            if timeout and _now() >= deadline:
                timeout = 0.0
                deadline = _now()

    def handle(self, w: WorkerProc, msg: Optional[dict[str, Any]]) -> None:
        if msg is None:
            self.reap(w)
            return
        ev = msg.get("ev")
        if ev != "stats":
            self.to_timeline(f"slot {w.slot} says", **{k: v for k, v in msg.items() if k not in ("slot", "t")})
        t = msg.get("t", _now())
        if ev == "joined":
            w.peer_id = msg.get("peer_id", 0)
            if w.state == "starting":
                w.state = "member"
            w.joined_at = t
        elif ev == "members":
            w.members.append((t, frozenset(msg["slots"])))
        elif ev == "gap":
            w.gaps.append((msg["start"], msg["end"]))
        elif ev == "stats":
            if msg.get("ops_ok", 0) > w.stats.get("ops_ok", 0):
                w.last_progress = t
            w.stats = msg
            w.peak_fds = max(w.peak_fds, int(msg.get("fds", 0)))
        elif ev == "wrong":
            self.wrong.append(msg)
        elif ev == "divergence":
            self.divergences.append(msg)
        elif ev == "state_divergence":
            self.state_divergences.append(msg)
        elif ev == "evicted":
            w.last_progress = None
            if w.state == "member":
                w.state = "starting"  # it rejoins as a new peer
            for e in reversed(self.events):
                if e.kind == "stop" and e.slot == w.slot:
                    e.evicted = True
                    break
            else:
                self.notes.append(f"slot {w.slot} was evicted without being frozen: {msg.get('message')}")
        elif ev == "fatal":
            w.fatal = f"{msg.get('error')}: {msg.get('message')}"
        elif ev == "left":
            w.left_at = t

    def reap(self, w: WorkerProc) -> None:
        try:
            w.exit_code = w.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            w.signal(signal.SIGKILL)
            w.exit_code = w.proc.wait(timeout=10)
        self.to_timeline(f"slot {w.slot} exited", pid=w.pid, code=w.exit_code, state=w.state)
        if not w.expected_exit:
            why = w.fatal or f"exit code {w.exit_code}"
            self.crashes.append(f"worker slot {w.slot} (pid {w.pid}) died unexpectedly: {why}; log: {w.log_path}")
        elif w.state == "leaving" and w.exit_code != 0:
            why = w.fatal or f"exit code {w.exit_code}"
            self.crashes.append(f"worker slot {w.slot} (pid {w.pid}) failed while leaving: {why}; log: {w.log_path}")
        w.state = "gone"
        self.workers.pop(w.slot, None)
        self.finished.append(w)
        self.free_slots.append(w.slot)

    # -- events -----------------------------------------------------------------------------------
    def active(self) -> list[WorkerProc]:
        """Running members that can take part in ops: admitted, not frozen, not leaving."""
        return sorted((w for w in self.workers.values() if w.state == "member" and w.alive()), key=lambda w: w.slot)

    def next_event(self) -> None:
        # Draw the same numbers whatever happens, so the schedule depends on the seed alone.
        kind = self.rng.choices(self.kinds, weights=[EVENT_WEIGHTS[k] for k in self.kinds])[0]
        victim_u = self.rng.random()
        bias_u = self.rng.random()
        freeze = self.rng.uniform(0.3, 2.5) * self.args.heartbeat_timeout
        active = self.active()
        population = len([w for w in self.workers.values() if w.state in ("starting", "member", "stopped")])
        starting = len([w for w in self.workers.values() if w.state == "starting"])
        can_remove = len(active) >= 3
        can_spawn = population < self.args.peers + 2 and starting < 3 and self.free_slots
        if kind in ("kill", "stop", "leave") and population < self.args.peers and bias_u < 0.5:
            kind = "spawn"  # drift back towards --peers, or churn would mostly run with the minimum
        if kind in ("kill", "stop", "leave") and not can_remove:
            kind = "spawn"
        if kind == "spawn" and not can_spawn:
            kind = "kill" if can_remove else ""
        if self.cover:
            # Every kind once first (in a seeded order), so that even a short run exercises them all; a
            # kind that is not possible right now waits for a later event.
            possible = [k for k in self.cover if (k == "spawn" and can_spawn) or (k != "spawn" and can_remove)]
            if possible:
                kind = possible[0]
                self.cover.remove(kind)
        now = _now()
        if not kind:
            self.skipped += 1
            return
        victim = active[int(victim_u * len(active))] if kind in ("kill", "stop", "leave") else None
        e = Event(kind, now)
        if kind == "spawn":
            e.slot = self.spawn().slot
        elif kind == "kill":
            assert victim is not None
            e.slot = victim.slot
            victim.expected_exit = True
            victim.state = "killed"
            victim.signal(signal.SIGKILL)
        elif kind == "stop":
            assert victim is not None
            e.slot = victim.slot
            victim.state = "stopped"
            victim.stops.append([now, None])
            victim.signal(signal.SIGSTOP)
            self.pending_cont.append((now + freeze, victim, e))
        elif kind == "leave":
            assert victim is not None
            e.slot = victim.slot
            victim.expected_exit = True
            victim.state = "leaving"
            victim.signal(signal.SIGTERM)
            victim.leave_deadline = now + LEAVE_LIMIT
        elif kind == "master_restart":
            assert self.master is not None
            self.master.kill()
            time.sleep(0.2)
            self.master.start()  # on the same port
            e.t_end = _now()  # back up: a new master's rebuild window starts about now
        self.events.append(e)
        self.counts[kind] += 1
        self.to_timeline(f"event {kind}", slot=e.slot, pid=self.workers[e.slot].pid if e.slot in self.workers else "-",
                  began=f"{e.t - self.t0:.3f}")  # a master restart is noted once the new master is up
        self.last_event = f"{kind}" + (f" slot {e.slot}" if e.slot >= 0 else "") + f" at {now - self.t0:.1f} s"

    def service(self) -> None:
        """Time-driven chores: SIGCONT frozen peers when due, enforce the leave deadline."""
        now = _now()
        for item in list(self.pending_cont):
            due, w, e = item
            if now >= due:
                self.pending_cont.remove(item)
                e.t_end = now
                if w.alive():
                    w.signal(signal.SIGCONT)
                    self.to_timeline(f"slot {w.slot} thawed", pid=w.pid)
                    w.stops[-1][1] = now
                    if w.state == "stopped":
                        w.state = "member"
        for w in list(self.workers.values()):
            if w.state == "leaving" and w.alive() and w.leave_deadline and now > w.leave_deadline:
                self.crashes.append(f"worker slot {w.slot} (pid {w.pid}) did not leave within {LEAVE_LIMIT:.0f} s")
                w.signal(signal.SIGKILL)

    # -- run --------------------------------------------------------------------------------------
    def run(self, progress: "Progress") -> None:
        a = self.args
        self.master = MasterProcess(os.path.join(self.log_dir, "master.log"))
        for _ in range(a.peers):
            self.spawn()
        # Let the initial group form before the churn starts, so the schedule's first events hit members.
        form_deadline = _now() + 60.0
        while len(self.active()) < min(a.peers, 3) and _now() < form_deadline:
            self.drain(0.1)
        self.t0 = _now()
        deadline = self.t0 + a.duration
        next_at = self.t0 + self.rng.uniform(a.min_interval, a.max_interval)
        while _now() < deadline:
            self.drain(min(0.1, max(0.0, next_at - _now())))
            self.service()
            if _now() >= next_at:
                self.next_event()
                next_at = _now() + self.rng.uniform(a.min_interval, a.max_interval)
            progress.update(self)
        self.t_end = _now()
        self.machine.stop()  # the run's window is over; what it recorded stays for the report
        self.teardown()

    def teardown(self) -> None:
        """Thaw the frozen, kill those still joining, ask every member to leave, then kill the rest."""
        self.to_timeline("teardown")
        for due, w, e in self.pending_cont:
            e.t_end = _now()
            if w.alive():
                w.signal(signal.SIGCONT)
                w.stops[-1][1] = _now()
        self.pending_cont.clear()
        self.drain(0.0)
        # A member thawed late in the run may not have learned yet that it was evicted while frozen:
        # like a closed gap, an open one that covers the peer's own freeze is not the group's stall.
        self.open_stalls = {w.slot: self.t_end - w.last_progress for w in self.workers.values()
                            if w.state == "member" and w.last_progress is not None and w.joined_at is not None
                            and not _frozen_during(w, w.last_progress, self.t_end)}
        for w in list(self.workers.values()):
            w.expected_exit = True
            if w.state in ("starting", "stopped", "killed"):
                w.signal(signal.SIGKILL)
            elif w.alive() and w.state != "leaving":
                # Only once: a second SIGTERM that lands while the worker's interpreter is shutting
                # down (its handlers already reset) would kill a peer that left cleanly.
                w.state = "leaving"
                w.signal(signal.SIGTERM)
        limit = _now() + self.args.timeout + 10
        while self.workers and _now() < limit:
            self.drain(0.1)
        self.kill_all()
        self.drain(0.5)

    # -- judgement --------------------------------------------------------------------------------
    def recovery_times(self) -> dict[str, Any]:
        everyone = list(self.finished) + list(self.workers.values())
        by_kind: dict[str, list[Any]] = {}
        unobserved: Counter[str] = Counter()

        def first_membership(after: float, slot: int, want_in: bool, before: float = float("inf")) -> Optional[float]:
            best = None
            for w in everyone:
                if w.slot == slot and not want_in:
                    continue
                for t, slots in w.members:
                    if after < t < before and (slot in slots) == want_in:
                        best = t if best is None else min(best, t)
                        break
            return best

        # Slots are reused: a spawned worker that never joined (killed while it waited, say) must not be
        # credited with the membership of the next worker started in its slot.
        next_spawn: dict[int, float] = {}
        respawn_after: dict[int, float] = {}
        for i in range(len(self.events) - 1, -1, -1):
            e = self.events[i]
            if e.kind == "spawn":
                respawn_after[i] = next_spawn.get(e.slot, float("inf"))
                next_spawn[e.slot] = e.t

        def end_of_stall(at: float, exclude: int) -> Optional[float]:
            # Such an event always stalls the others for a while (a frozen member holds up every op); no
            # gap around it means the run ended first.
            ends = [end for w in everyone if w.slot != exclude for start, end in w.gaps if start <= at <= end]
            return min(ends) if ends else None

        for i, e in enumerate(self.events):
            kind = e.kind
            if kind == "spawn":
                t = first_membership(e.t, e.slot, True, respawn_after[i])
            elif kind in ("kill", "leave"):
                t = first_membership(e.t, e.slot, False)
            elif kind == "stop":
                kind = "stop_evicted" if e.evicted else "stop_resumed"
                t = first_membership(e.t, e.slot, False) if e.evicted else end_of_stall(e.t, e.slot)
            else:
                # A master restart need not stall anyone (reduces keep running without the master):
                # then the survivors never stopped and the recovery time is 0.
                t = end_of_stall(e.t, -1) or e.t
            if t is None:
                unobserved[kind] += 1
                continue
            e.recovery = t - e.t
            by_kind.setdefault(kind, []).append(e.recovery)
        out = {k: _percentiles(v) for k, v in sorted(by_kind.items())}
        for k, n in unobserved.items():
            out.setdefault(k, {"count": 0})["unobserved"] = n
        return out

    def longest_stall(self) -> tuple[float, str]:
        everyone = list(self.finished) + list(self.workers.values())
        hb = self.args.heartbeat_timeout
        restarts = [(e.t, e.t_end) for e in self.events if e.kind == "master_restart" and e.t_end is not None]
        worst, where = 0.0, ""

        def consider(slot: int, start: float, end: float, what: str) -> None:
            nonlocal worst, where
            # Only the overlapping freezes beyond the first one's detection are excused (see the docstring).
            frozen = max(0.0, _undetected_freeze_time(everyone, start, end, hb, slot, restarts) - hb)
            still = self.machine.stalled(start, end)
            excused = min(end - start, frozen + still)
            if end - start - excused > worst:
                reasons = ([f"{frozen:.1f} s other members frozen, not yet due for eviction"] if frozen > 0 else []) + (
                    [f"{still:.1f} s the whole machine stood still"] if still > 0 else [])
                worst, where = end - start - excused, what + (
                    f" (a {end - start:.1f} s gap, excused: {'; '.join(reasons)})" if reasons else "")

        for w in everyone:
            for start, end in w.gaps:
                if _frozen_during(w, start, end):
                    continue  # its own freeze (or leave) is not the group's stall
                consider(w.slot, start, end, f"slot {w.slot}, {start - self.t0:.1f}-{end - self.t0:.1f} s")
        for slot, gap in getattr(self, "open_stalls", {}).items():
            consider(slot, self.t_end - gap, self.t_end, f"slot {slot}, no progress for the last {gap:.1f} s of the run")
        return worst, where

    def report(self) -> dict[str, Any]:
        everyone = list(self.finished) + list(self.workers.values())
        total: Counter[str] = Counter()
        errors: Counter[str] = Counter()
        for w in everyone:
            for k in ("ops_ok", "ops_failed", "retries", "steps", "state_syncs", "state_tx", "state_rx", "votes",
                      "vote_failures", "joins", "join_failures", "evictions", "master_losses"):
                total[k] += int(w.stats.get(k, 0))
            errors.update(w.stats.get("errors", {}))
        stall, stall_where = self.longest_stall()
        limit = self.args.heartbeat_timeout + 2.0
        rss = max((w.stats.get("hwm_kb", 0) for w in everyone), default=0)
        fds = max((w.peak_fds for w in everyone), default=0)
        # Workers send the details of their first few wrong results only; their counters have the rest.
        wrong = max(len(self.wrong), sum(int(w.stats.get("wrong", 0)) for w in everyone))
        r = {
            "seed": self.args.seed, "duration_s": round(self.t_end - self.t0, 1), "initial_peers": self.args.peers,
            "heartbeat_timeout_s": self.args.heartbeat_timeout, "connections_per_peer": self.args.connections,
            "master_restart": self.args.master_restart, "log_dir": self.log_dir,
            "encryption": os.environ.get("PCCL_ENCRYPTION", "").strip().lower() or "none",
            "events": {k: self.counts.get(k, 0) for k in EVENT_KINDS}, "events_skipped": self.skipped,
            "workers_started": self.spawned,
            "ops_completed": total["ops_ok"], "ops_failed": total["ops_failed"], "ops_retried": total["retries"],
            "op_errors": dict(errors), "peer_steps": total["steps"],
            "wrong_results": wrong, "divergences": len(self.divergences),
            "state_syncs": total["state_syncs"],
            "state_divergences": len(self.state_divergences), "state_tx_bytes": total["state_tx"],
            "state_rx_bytes": total["state_rx"],
            "votes": total["votes"], "vote_failures": total["vote_failures"], "joins": total["joins"],
            "join_failures": total["join_failures"], "evictions": total["evictions"],
            "master_losses": total["master_losses"],
            "longest_stall_s": round(stall, 3), "longest_stall_where": stall_where, "stall_limit_s": limit,
            "worst_machine_stall_s": round(self.machine.worst(), 3),
            "recovery_s": self.recovery_times(),
            "peak_rss_mb": round(rss / 1024, 1), "peak_fds": fds,
            "survivor_crashes": len(self.crashes),
            "wrong_examples": [f"slot {m['slot']} step {m['step']}: {m['what']}" for m in self.wrong[:10]],
            "divergence_examples": [f"slot {m['slot']} step {m['step']}" for m in
                                    (self.divergences + self.state_divergences)[:10]],
            "crash_details": self.crashes[:20], "notes": self.notes[:20],
        }
        failures = []
        if r["wrong_results"]:
            failures.append(f"{r['wrong_results']} wrong result(s), e.g. {r['wrong_examples'][0]}")
        if r["divergences"] or r["state_divergences"]:
            failures.append(f"{r['divergences']} result divergence(s), {r['state_divergences']} state divergence(s)")
        if self.crashes:
            failures.append(f"{len(self.crashes)} peer crash(es): {self.crashes[0]}")
        if stall > limit:
            failures.append(f"longest stall {stall:.2f} s > heartbeat_timeout + 2 s = {limit:.1f} s ({stall_where})")
        if not r["ops_completed"]:
            failures.append("no op completed")
        r["failures"] = failures
        r["passed"] = not failures
        return r


class _Terminated(BaseException):
    """Raised from the SIGTERM handler so that the same cleanup as for Ctrl-C runs."""


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="pccl-stress",
        description="Seeded churn against a local master and self-verifying peers: spawn, SIGKILL, SIGSTOP/SIGCONT, "
                    "graceful leave (and master restart); fails on any wrong result, divergence, crash or long stall.")
    p.add_argument("--duration", type=float, default=180.0, help="seconds of churn (default 180)")
    p.add_argument("--seed", type=int, default=1, help="fixes the event schedule and the tensors (default 1)")
    p.add_argument("--peers", type=int, default=6, help="initial peers (default 6, at least 3)")
    p.add_argument("--json", default=None, help="also write the report to this JSON file")
    p.add_argument("--heartbeat-timeout", type=float, default=2.0, help="peers' heartbeat_timeout (default 2)")
    p.add_argument("--timeout", type=float, default=10.0, help="peers' op timeout (default 10)")
    p.add_argument("--connections", type=int, default=4, help="connections_per_peer K (default 4)")
    p.add_argument("--no-master-restart", dest="master_restart", action="store_false",
                   help="never kill -9 and restart the master (by default it is one of the events)")
    p.add_argument("--master-grace", type=float, default=10.0, help="peers' master_grace (default 10)")
    p.add_argument("--min-interval", type=float, default=0.5, help="shortest time between events (default 0.5)")
    p.add_argument("--max-interval", type=float, default=2.0, help="longest time between events (default 2)")
    p.add_argument("--step-sleep", type=float, default=0.005,
                   help="pause between a peer's steps, leaves CPU for the rest (default 0.005)")
    p.add_argument("--progress", choices=["auto", "rich", "plain", "none"], default="auto",
                   help="live progress: rich on a TTY when installed (auto), plain lines, or none")
    p.add_argument("--log-dir", default=None,
                   help="where the master's and workers' logs and timeline.log go (default: a temp dir)")
    p.add_argument("--log-level", default="error", choices=["debug", "info", "warn", "error", "off"],
                   help="peers' core log level into their logs (default error)")
    p.add_argument("--encryption", choices=["none", "tls"], default=None,
                   help="encrypt every connection (tls; keyed by $PCCL_SECRET, or a secret made for the run); "
                        "default: $PCCL_ENCRYPTION, else none")
    a = p.parse_args(argv)
    if a.peers < 3:
        p.error("--peers must be at least 3 (events never leave fewer than 2 running members)")
    if a.duration <= 0 or not 0 < a.min_interval <= a.max_interval:
        p.error("--duration must be positive and 0 < --min-interval <= --max-interval")
    return a


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if args.encryption is not None:
        # The master and the workers read both from the environment they inherit (_package_env).
        os.environ["PCCL_ENCRYPTION"] = args.encryption
    if os.environ.get("PCCL_ENCRYPTION", "").strip().lower() == "tls" and not os.environ.get("PCCL_SECRET"):
        from ...secret import generate_secret  # noqa: PLC0415

        os.environ["PCCL_SECRET"] = generate_secret()

    def on_sigterm(signum: int, frame: Any) -> None:
        raise _Terminated()

    old_term = signal.signal(signal.SIGTERM, on_sigterm)
    stress = Stress(args)
    progress = Progress(args.progress)
    interrupted = False
    error: Optional[str] = None
    try:
        try:
            stress.run(progress)
        except (KeyboardInterrupt, _Terminated):
            interrupted = True
        except Exception as exc:  # noqa: BLE001 - reported as a failure after cleanup
            import traceback

            traceback.print_exc()
            error = f"{type(exc).__name__}: {exc}"
    finally:
        # Whatever happened, every child is killed and reaped by PID; a second Ctrl-C or SIGTERM (timeout(1)
        # and a shell's kill often both send one) cannot cut this short and orphan the master.
        old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            progress.close()
            stress.kill_all()
        finally:
            signal.signal(signal.SIGINT, old_int)
            signal.signal(signal.SIGTERM, old_term)
    if not stress.t_end or stress.t_end <= stress.t0:
        stress.t_end = _now()
    report = stress.report()
    if interrupted:
        report["failures"].append("interrupted")
    if error:
        report["failures"].append(f"orchestrator error: {error}")
    left = stress.leftovers()
    if left:
        report["failures"].append(f"could not reap pids {left}")
    report["passed"] = not report["failures"]
    print(format_report(report), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
