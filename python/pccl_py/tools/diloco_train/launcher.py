"""The launcher: a master, N peer processes, churn, an emulated WAN, and the run's record.

Why this exists: comparing training algorithms needs many runs that differ in one thing only, and
each run needs real processes (a SIGKILL has to be a real SIGKILL) without leaving any behind. The
launcher runs a ``pccl_py.Master`` in-process, starts the peers (``python -m
pccl_py.tools.diloco_train.peer``), reads their JSON-line reports, kills and replaces peers under
``--churn``, routes their traffic through :class:`pccl_py.tools.wan.WanRelay` under ``--wan``, tells them
when to stop, and writes the record (:mod:`.record`).

The traps to avoid:

- Leaving processes behind. Every peer is tracked by PID and SIGKILLed and reaped in a ``finally``;
  peers also die with the launcher (``die_with_parent``) if it is killed itself; every wait has a
  deadline, and the whole run a hard time limit.
- Stopping peers at different steps. A time-limited run tells every live peer to stop at one inner
  step on a sync boundary, far enough ahead (two outer steps) that no peer has passed it yet; peers
  started later get it on their command line.
- A newcomer still waiting to join when the group finishes would be admitted into the empty group
  and start alone from scratch: once no peer is training any more, waiting newcomers are killed.
- Importing torch here: the launcher only moves JSON, and torch costs seconds and hundreds of MB.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import random
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from ..harness import Child, Children, package_env
from . import record
from .display import Display
from .peer import MARK, PROGRESS_EVERY

ALGOS = ("ddp", "diloco", "async", "streaming", "solo")
LIVE = ("starting", "joining", "training")
STOP_MARGIN_S = 2.0  # a stop takes effect this many seconds of training (at least 2 reports) after the fastest report


class _Terminated(BaseException):
    """SIGTERM, raised in the main thread so that the same cleanup as for Ctrl-C runs."""


@dataclass
class PeerProc:
    index: int                 # order of start; slots are reused by newcomers
    slot: int
    role: str                  # "founder" or "newcomer"
    proc: subprocess.Popen[str]
    started_t: float
    status: str = "starting"   # starting -> joining -> training -> done | killed | failed | cut
    joined_t: Optional[float] = None
    ended_t: Optional[float] = None
    joined_at_step: Optional[int] = None
    inner_step: int = 0
    outer_step: int = 0
    world_size: int = 0
    loss: Optional[float] = None
    eval_loss: Optional[float] = None
    tx_bytes: int = 0
    longest_step_s: float = 0.0
    eval_curve: list[Any] = field(default_factory=list)
    outer_reports: list[Any] = field(default_factory=list)
    final: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    stderr_tail: deque[Any] = field(default_factory=lambda: deque(maxlen=40))
    child: Optional[Child] = None  # the harness' handle on proc

    @property
    def pid(self) -> int:
        return int(self.proc.pid)


class Run:
    def __init__(self, args: argparse.Namespace, display: Display) -> None:
        self.args = args
        self.display = display
        self.rng = random.Random(args.seed)
        self.t0 = time.monotonic()
        self.events: "queue.Queue[tuple[int, Optional[dict[str, Any]]]]" = queue.Queue()  # None: that peer's output ended
        self.children = Children()
        self.peers: list[PeerProc] = []
        self.churn_events: list[dict[str, Any]] = []
        self.problems: list[str] = []
        self.master: Any = None
        self.relay: Any = None
        self.stop_at: Optional[int] = None
        self.next_kill: Optional[float] = None
        self.first_joined: Optional[float] = None  # when training started (the stop margin needs the step rate)
        self.wall_seconds = 0.0
        self.relay_stats: Optional[dict[str, Any]] = None  # --wan: what the relay carried
        self.model_info: dict[str, Any] = {}  # the model's size and the corpus' digest, from the first peer that joined

    # -- plumbing ------------------------------------------------------------------------------------
    def now(self) -> float:
        return time.monotonic() - self.t0

    def live(self, *states: str) -> list[PeerProc]:
        return [p for p in self.peers if p.status in (states or LIVE)]

    def spawn(self, slot: int, role: str) -> PeerProc:
        a = self.args
        argv = [sys.executable, "-m", "pccl_py.tools.diloco_train.peer", "--slot", str(slot), "--algo", a.algo,
                "--world-size", str(a.peers), "--inner-steps", str(self.stop_at or a.inner_steps),
                "--sync-every", str(a.sync_every), "--fragments", str(a.fragments), "--overlap", str(a.overlap),
                "--mixing", str(a.mixing),
                "--quantization", a.quantization, "--outer-lr", str(a.outer_lr),
                "--outer-momentum", str(a.outer_momentum), "--seed", str(a.seed), "--model", a.model,
                "--batch-size", str(a.batch_size), "--lr", str(a.lr), "--warmup", str(a.warmup),
                "--eval-every", str(a.eval_every), "--eval-sequences", str(a.eval_sequences),
                "--log-level", a.log_level, "--parent-pid", str(os.getpid())]
        if self.master is not None:
            argv += ["--master", self.master.address]
        if role == "founder":
            argv.append("--founder")
        if a.no_error_feedback:
            argv.append("--no-error-feedback")
        if self.relay is not None:  # every peer advertises its relay port, so all peer traffic crosses the WAN
            port = _free_port()
            host, relay_port = self.relay.add_mapping(("127.0.0.1", 0), ("127.0.0.1", port))
            argv += ["--listen-port", str(port), "--advertise-address", f"{host}:{relay_port}"]
        env = package_env({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
        # The harness starts it in a session of its own: a Ctrl-C in the terminal reaches only the
        # launcher, which kills the peers.
        index = len(self.peers)
        tail: deque[Any] = deque(maxlen=40)
        child = self.children.spawn(argv, key=index, inbox=self.events, env=env, marker=MARK,
                                    on_stderr_line=lambda line: tail.append(line.rstrip()))
        p = PeerProc(index, slot, role, child.proc, self.now(), stderr_tail=tail, child=child)
        self.peers.append(p)
        return p

    def tell(self, p: PeerProc, msg: dict[str, Any]) -> None:
        assert p.child is not None
        p.child.send(msg)  # False if it died meanwhile; its end is reported by its stdout reader

    def kill(self, p: PeerProc) -> None:
        assert p.child is not None
        if not p.child.kill(timeout=5.0):
            self.problems.append(f"slot {p.slot} (pid {p.pid}) did not die after SIGKILL")

    # -- events from peers ---------------------------------------------------------------------------
    def handle(self, p: PeerProc, ev: dict[str, Any]) -> None:
        kind, t = ev.get("event"), self.now()
        if kind == "started":
            p.status = "joining" if p.status == "starting" else p.status
        elif kind == "joined":
            rejoin = p.joined_t is not None  # back after an eviction
            if not rejoin:
                p.joined_t, p.joined_at_step = t, ev["inner_step"]
            p.status, p.inner_step, p.world_size = "training", ev["inner_step"], ev["world_size"]
            self.first_joined = self.first_joined or t
            self.model_info = self.model_info or {"model": ev.get("model"), "text_sha256": ev.get("text_sha256")}
            if p.role == "newcomer" or rejoin:
                self.churn_events.append({"t": t, "kind": "rejoin" if rejoin else "join", "slot": p.slot,
                                          "pid": p.pid, "inner_step": ev["inner_step"], "world_size": ev["world_size"]})
                who = "evicted peer" if rejoin else "newcomer"
                self.display.event(f"++ slot {p.slot}: {who} pid {p.pid} joined at inner step {ev['inner_step']} "
                                   f"(world size {ev['world_size']})")
        elif kind == "evicted":
            p.status = "joining"
            self.churn_events.append({"t": t, "kind": "evicted", "slot": p.slot, "pid": p.pid,
                                      "inner_step": p.inner_step})
            self.display.event(f"!! slot {p.slot}: pid {p.pid} was evicted ({ev['message'][:80]}); rejoining")
        elif kind == "progress":
            p.inner_step, p.loss, p.tx_bytes = ev["inner_step"], ev["loss"], ev["tx_bytes"]
            p.world_size, p.outer_step, p.longest_step_s = ev["world_size"], ev["outer_step"], ev["longest_step_s"]
        elif kind == "eval":
            p.eval_loss = ev["eval_loss"]
            p.eval_curve.append({"inner_step": ev["inner_step"], "eval_loss": ev["eval_loss"],
                                 "tx_bytes": ev["tx_bytes"], "t": round(t, 3)})
        elif kind == "outer":
            p.outer_reports.append({"t": round(t, 3), "inner_step": ev["inner_step"],
                                    "step_seconds": ev["step_seconds"], **ev["report"]})
            p.outer_step = ev["report"].get("outer_step", p.outer_step)
            p.tx_bytes = ev.get("tx_total", p.tx_bytes)
        elif kind == "done":
            p.final, p.status, p.ended_t = ev, "done", t
            p.inner_step, p.tx_bytes, p.longest_step_s = ev["inner_step"], ev["tx_bytes"], ev["longest_step_s"]
        elif kind == "error":
            p.error = f"{ev['error']}: {ev['message']}"
        elif kind == "_eof" and p.status in LIVE:
            try:
                p.proc.wait(timeout=10.0)
            except subprocess.TimeoutExpired:  # closed its stdout but lives on: no use to anyone
                self.kill(p)
            p.status, p.ended_t = "failed", t
            tail = "\n    ".join(list(p.stderr_tail)[-8:])
            self.problems.append(f"slot {p.slot} (pid {p.pid}) exited with code {p.proc.returncode} at inner step "
                                 f"{p.inner_step}: {p.error or 'no error reported'}" + (f"\n    {tail}" if tail else ""))
            self.display.event(f"!! slot {p.slot}: pid {p.pid} failed ({p.error or f'exit code {p.proc.returncode}'})")

    def drain(self, wait: float) -> None:
        """Handles the peers' reports: waits up to `wait` s for the first, then takes what is queued, for at
        most `wait` s. Peers report many times a second; returning only once the queue stays empty would
        starve the clock, the churn and the display."""
        until = time.monotonic() + wait
        try:
            index, ev = self.events.get(timeout=wait)
            self.handle(self.peers[index], ev or {"event": "_eof"})
            while time.monotonic() < until:
                index, ev = self.events.get_nowait()
                self.handle(self.peers[index], ev or {"event": "_eof"})
        except queue.Empty:
            pass

    # -- churn and stopping ----------------------------------------------------------------------------
    def churn(self) -> None:
        a = self.args
        training = self.live("training")
        if self.next_kill is None:
            if len(training) == a.peers and all(p.status == "training" for p in self.peers):
                self.next_kill = self.now() + a.churn_every * self.rng.uniform(0.75, 1.25)
            return
        if self.now() < self.next_kill:
            return
        # Not near the end: a newcomer needs time to start (torch's import alone takes seconds) and to join.
        near_end = (max((p.inner_step for p in training), default=0) >= (self.stop_at or a.inner_steps) - 2 * a.sync_every
                    or self.now() > 0.8 * a.time_limit - max(10.0, 0.15 * a.time_limit))
        if near_end or len(training) < 2 or self.live("starting", "joining"):
            self.next_kill = self.now() + 1.0  # not now: try again in a second
            return
        victim = self.rng.choice(training)
        self.kill(victim)
        victim.status, victim.ended_t = "killed", self.now()
        self.churn_events.append({"t": victim.ended_t, "kind": "kill", "slot": victim.slot, "pid": victim.pid,
                                  "inner_step": victim.inner_step})
        self.display.event(f"xx slot {victim.slot}: SIGKILL pid {victim.pid} at inner step {victim.inner_step}")
        newcomer = self.spawn(victim.slot, "newcomer")
        self.churn_events.append({"t": self.now(), "kind": "start", "slot": newcomer.slot, "pid": newcomer.pid})
        self.display.event(f".. slot {newcomer.slot}: newcomer pid {newcomer.pid} started, connecting")
        self.next_kill = self.now() + a.churn_every * self.rng.uniform(0.75, 1.25)

    def maybe_stop(self) -> None:
        """Past 80% of the time limit: every peer stops at one inner step on a sync boundary."""
        a = self.args
        if self.stop_at is not None or self.now() < 0.8 * a.time_limit:
            return
        fastest = max((p.inner_step for p in self.live("training")), default=0)
        # Far enough ahead that no peer is past it when the command arrives: a peer already past it would
        # stop where it is, and leave the others to finish without it.
        rate = fastest / max(self.now() - (self.first_joined or 0.0), 1.0)
        margin = max(2 * PROGRESS_EVERY, int(rate * STOP_MARGIN_S) + 1)
        boundary = 1 if a.algo in ("ddp", "solo") else a.sync_every
        target = -(-(fastest + margin) // boundary) * boundary
        if target >= a.inner_steps:
            return
        self.stop_at = target
        for p in self.live():
            self.tell(p, {"cmd": "stop_at", "inner_step": target})
        self.display.event(f"-- time limit: every peer stops at inner step {target}")

    # -- the run ---------------------------------------------------------------------------------------
    def run(self) -> None:
        a = self.args
        if a.algo != "solo":
            import pccl_py  # noqa: PLC0415

            self.master = pccl_py.Master("127.0.0.1", 0).start()
        if a.wan is not None:
            from pccl_py.tools.wan import WanRelay  # noqa: PLC0415

            self.relay = WanRelay(a.wan).start()
        self.display.event(f"{a.peers} peers, --algo {a.algo}, master {self.master.address if self.master else '-'}"
                           + (f", WAN {a.wan.describe()}" if a.wan is not None else ""))
        for slot in range(a.peers):
            self.spawn(slot, "founder")
        hard_deadline = 1.2 * a.time_limit  # the peers are told to stop at 80%; this only catches hangs
        while True:
            self.drain(0.2)
            if a.churn:
                self.churn()
            self.maybe_stop()
            self.display.update(self)
            if not self.live("training") and not [p for p in self.live() if p.role == "founder"]:
                break
            if self.now() > hard_deadline:
                self.problems.append(f"the run did not finish within 1.2 x --time-limit ({hard_deadline:.0f} s)")
                break
        if self.relay is not None:
            self.relay_stats = self.relay.stats()
        for p in self.live():  # newcomers still waiting for a group that has finished
            self.kill(p)
            p.status, p.ended_t = "cut", self.now()
        self.wall_seconds = self.now()

    def cleanup(self) -> None:
        """SIGKILL and reap, by PID, every peer still running; stop the relay and the master. Never raises."""
        for pid in self.children.close():
            self.problems.append(f"pid {pid} did not die after SIGKILL")
        for thing in (self.relay, self.master):
            if thing is not None:
                try:
                    thing.stop()
                except Exception as exc:  # noqa: BLE001 - cleanup goes on
                    print(f"diloco_train: stopping {type(thing).__name__} failed: {exc}", file=sys.stderr)
        self.relay = self.master = None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def execute(args: argparse.Namespace) -> tuple[dict[str, Any], bool]:
    """Runs one training run; returns its record and whether it passed. Every child is reaped on the way out."""
    display = Display(args.progress, f"diloco_train --algo {args.algo}")
    run = Run(args, display)

    def on_sigterm(signum: int, frame: Any) -> None:
        raise _Terminated()

    old_term = signal.signal(signal.SIGTERM, on_sigterm)
    interrupted = False
    try:
        run.run()
    except (KeyboardInterrupt, _Terminated):
        interrupted = True
        run.problems.append("interrupted")
    finally:
        old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C cannot cut the cleanup short
        try:
            display.close(run)
            run.cleanup()
        finally:
            signal.signal(signal.SIGINT, old_int)
            signal.signal(signal.SIGTERM, old_term)
    left = [p for p in run.peers if p.proc.poll() is None]
    if left:
        run.problems.append("could not reap " + ", ".join(f"pid {p.pid}" for p in left))
    rec = record.build(run)
    return rec, bool(rec["passed"]) and not interrupted


def build_parser(prog: str = "python -m pccl_py.tools.diloco_train") -> argparse.ArgumentParser:
    from .cli import add_arguments  # noqa: PLC0415

    p = argparse.ArgumentParser(prog=prog, description=(
        "Local peers train a character-level transformer on CPython's pydoc topics with DDP, DiLoCo, async or "
        "streaming DiLoCo, or alone; optionally under churn and an emulated WAN. Writes a JSON record and a plot."))
    add_arguments(p)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    from .cli import validate  # noqa: PLC0415

    parser = build_parser()
    args = parser.parse_args(argv)
    validate(parser, args)
    if args.sources:  # --plot OUT.png --from a.json b.json: plot earlier runs, train nothing
        return record.plot_files(args.sources, args.plot)
    rec, ok = execute(args)
    print(record.summary(rec), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rec, f, indent=1)
        print(f"record written to {args.json}")
    if args.plot:
        code = record.plot_records([rec], args.plot)
        ok = ok and code == 0
    return 0 if ok else 1
