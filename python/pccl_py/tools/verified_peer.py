"""The self-verifying peer: runs collectives on inputs that prove their contributors and checks each result.

Why this exists: pccl-stress's peers, pccl-demo --allreduce's peers and the multi-process tests'
workers all need the same thing from a peer under churn: run an op, retry it among the survivors when it
fails with PeerLostError or TimeoutError, check that the failed op left the buffer alone, check the
result against the set of peers it says took part (:mod:`pccl_py.tools.proof`), notice when that set
changes within one membership epoch, and time the waits between successful ops. This class does that
once. Its drivers differ only in who decides what runs next: the stress worker steps itself
(:mod:`pccl_py.tools.stress.worker` derives from this class), the tests' worker runs
:meth:`VerifiedPeer.reduce_until` on command, and the demo's parent steps each peer one op at a time
with ``retry=False`` so that a kill lands inside an op and its failure is shown.

The trap: a loop that stops on its own clock leaves the others waiting inside one more op, which then
fails as a lost peer. :meth:`reduce_until` stops only when a member's stop lane says so in a result, and
every member sees the same result.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Optional

import numpy as np

from .proof import check_exact, exact_contribution

GAP_REPORT = 0.25       # waits between successful ops longer than this are reported
WRONG_DETAILS = 20      # wrong results reported one by one; the counter has them all
MAX_RECORDS = 1000      # failures and gaps kept for a report (c counts every failure; c["max_gap"] the longest)
LOOP_DATA_TAG = 2       # the proof's (seed, step, tag) stream of reduce_until's inputs

# An op: the buffer it reduces in place, and start() -> an AllReduceHandle (async) or a ReduceInfo.
Op = tuple[np.ndarray, Callable[[], Any]]


class VerifiedPeer:
    """One peer's verified collectives; ``comm`` is set by the driver (a connected Communicator).

    on_event(ev, **fields) hears "gap" (start, end), "wrong" (step, epoch, what) and "members" (step,
    epoch, slots) as they happen; ``clock`` stamps them (time.monotonic, or time.time when another
    process compares the stamps). The counters in ``c`` hold everything so far; ``failures``, ``gaps``,
    ``wrongs`` and ``longest`` hold the details since the start, since :meth:`reduce_until` began, or since
    the driver last called :meth:`clear_details` (the demo does, per step). ``failures`` and ``gaps`` keep
    MAX_RECORDS entries, ``wrongs`` WRONG_DETAILS.
    """

    def __init__(self, slot: int, seed: int, *, clock: Callable[[], float] = time.monotonic,
                 on_event: Optional[Callable[..., None]] = None) -> None:
        import pccl_py

        self.pccl = pccl_py
        self.slot = slot
        self.seed = seed
        self.clock = clock
        self.on_event = on_event or (lambda ev, **fields: None)
        self.comm: Any = None
        self.c: dict[str, Any] = dict(ops_ok=0, ops_failed=0, retries=0, errors={}, wrong=0, max_gap=0.0)
        self.failures: list[dict[str, Any]] = []
        self.gaps: list[list[float]] = []
        self.wrongs: list[dict[str, Any]] = []
        self.longest = [0.0, 0.0, 0.0]      # the longest wait between successful ops: [seconds, start, end]
        self.last_ok: Optional[float] = None
        self.epoch_members: dict[int, frozenset[int]] = {}
        self.last_members: Optional[frozenset[int]] = None

    # -- what happened ---------------------------------------------------------------------------------
    def forget_membership(self) -> None:
        """After joining as a new peer: epochs and contributors seen so far no longer apply."""
        self.epoch_members.clear()
        self.last_members = None

    def wrong(self, step: int, what: str) -> None:
        self.c["wrong"] += 1
        if len(self.wrongs) < WRONG_DETAILS:  # a systematic bug would flood the reports; the counter has the rest
            record = {"step": step, "epoch": self.comm.epoch if self.comm else -1, "what": what}
            self.wrongs.append(record)
            self.on_event("wrong", **record)

    def op_ok(self) -> None:
        now = self.clock()
        if self.last_ok is not None:
            gap = now - self.last_ok
            self.c["max_gap"] = max(self.c["max_gap"], gap)
            if gap > self.longest[0]:
                self.longest = [gap, self.last_ok, now]
            if gap > GAP_REPORT:
                if len(self.gaps) < MAX_RECORDS:
                    self.gaps.append([self.last_ok, now])
                self.on_event("gap", start=self.last_ok, end=now)
        self.last_ok = now
        self.c["ops_ok"] += 1

    def record_failure(self, exc: BaseException, unchanged: bool = True) -> None:
        name = type(exc).__name__
        self.c["ops_failed"] += 1
        self.c["errors"][name] = self.c["errors"].get(name, 0) + 1
        if len(self.failures) < MAX_RECORDS:
            self.failures.append({"t": self.clock(), "error": name, "unchanged": unchanged})

    def retryable(self, exc: BaseException) -> bool:
        return isinstance(exc, (self.pccl.PeerLostError, self.pccl.TimeoutError))

    # -- running ops -----------------------------------------------------------------------------------
    def run_ops(self, step: int, ops: dict[str, Op], *, retry: bool = True) -> dict[str, Any]:
        """Runs named ops concurrently and returns their ReduceInfos; retries each failed one until it succeeds.

        Every start() is called before any handle is waited on, so async ops overlap the sync one that
        goes last. A failed op must leave its buffer unchanged (checked, recorded, then restored so the
        retry is fair). A non-retryable error is raised; with retry=False so is a retryable one, after
        the check.
        """
        infos: dict[str, Any] = {}
        todo = dict(ops)
        originals = {k: buf.copy() for k, (buf, _) in ops.items()}
        while todo:
            started: dict[str, Any] = {}
            errors: dict[str, BaseException] = {}
            for name, (_, start) in todo.items():
                try:
                    started[name] = start()
                except self.pccl.PCCLError as exc:
                    errors[name] = exc
            for name, h in started.items():
                if isinstance(h, self.pccl.AllReduceHandle):
                    try:
                        started[name] = h.wait()
                    except self.pccl.PCCLError as exc:
                        errors[name] = exc
            for name in list(todo):
                if name not in errors:
                    infos[name] = started[name]
                    self.op_ok()
                    del todo[name]
                    continue
                failure = errors[name]
                unchanged = bool(np.array_equal(todo[name][0], originals[name], equal_nan=True))
                self.record_failure(failure, unchanged)
                if not unchanged:
                    self.wrong(step, f"a failed {name} op ({type(failure).__name__}) modified its buffer")
                    todo[name][0][...] = originals[name]
                if not (retry and self.retryable(failure)):
                    raise failure
                self.c["retries"] += 1
        return infos

    def verify_exact(self, step: int, name: str, buf: np.ndarray, tag: int, info: Any) -> Optional[frozenset[int]]:
        """Checks an exact op's result (built by proof.exact_contribution for (seed, step, tag)); the contributors.

        Wrong when the result matches no set of contributors, misses this peer, disagrees with the
        reported world size, or names other contributors than an earlier op of the same epoch.
        """
        slots, why = check_exact(buf, self.seed, step, tag)
        if slots is None:
            self.wrong(step, f"{name}: {why}")
            return None
        if self.slot not in slots:
            self.wrong(step, f"{name}: own slot {self.slot} missing from contributors {sorted(slots)}")
        if len(slots) != info.world_size:
            self.wrong(step, f"{name}: {len(slots)} contributors but world_size {info.world_size}")
        known = self.epoch_members.setdefault(info.epoch, slots)
        if known != slots:
            self.wrong(step, f"{name}: contributors {sorted(slots)} in epoch {info.epoch}, "
                             f"which earlier had {sorted(known)}")
        if slots != self.last_members:
            self.last_members = slots
            self.on_event("members", step=step, epoch=info.epoch, slots=sorted(slots))
        return slots

    def exact_op(self, step: int, size: int, *, data_tag: int, tag: int = 0, retry: bool = True,
                 stop: Optional[bool] = None) -> tuple[np.ndarray, Any, Optional[frozenset[int]]]:
        """One verified exact SUM of ``size`` payload elements on the communicator's ``tag``: (result, info, contributors).

        stop: None, or this peer's vote in an extra last lane (1.0 for True) that the result sums up.
        """
        x = exact_contribution(self.slot, self.seed, step, data_tag, size)
        if stop is not None:
            x = np.append(x, 1.0 if stop else 0.0)
        info = self.run_ops(step, {"exact": (x, lambda: self.comm.all_reduce(x, op=self.pccl.ReduceOp.SUM, tag=tag))},
                            retry=retry)["exact"]
        slots = self.verify_exact(step, "exact", x if stop is None else x[:-1], data_tag, info)
        return x, info, slots

    def clear_details(self) -> float:
        """Empties failures, gaps, wrongs and longest (the counters in ``c`` keep counting); returns the
        clock's time, from which ``longest`` now counts."""
        now = self.clock()
        self.failures, self.gaps, self.wrongs, self.longest = [], [], [], [0.0, now, now]
        return now

    def reduce_until(self, until: float, *, size: int = 256, tag: int = 0) -> dict[str, Any]:
        """Exact ops back to back, as a training loop would, until the members agree that ``until`` (on
        ``clock``) has passed: the first result whose stop lane is set ends every member's loop. (A retry
        repeats the failed attempt's input, stop vote included, so a deadline passed during a retry costs
        one more op, on every member alike.)

        An op that fails with PeerLostError or TimeoutError is retried at once; any other error ends the
        loop and is reported as "end" (and, like every failure, in "failed"). The report: ops_ok, failed
        (stamp, error, whether the buffer was unchanged), wrong (the first WRONG_DETAILS) and wrong_count,
        end, longest ([seconds, start, end], counted from the loop's start), gaps over GAP_REPORT, the
        world sizes of the results that checked out, t0, t.
        """
        t0 = self.last_ok = self.clear_details()
        ok_before, wrong_before = self.c["ops_ok"], self.c["wrong"]
        worlds: set[int] = set()
        end: Optional[dict[str, Any]] = None
        step = 0
        while True:
            wrong_so_far = self.c["wrong"]
            try:
                x, _, slots = self.exact_op(step, size, data_tag=LOOP_DATA_TAG, tag=tag, stop=self.clock() >= until)
            except self.pccl.PCCLError as exc:
                end = {"t": self.clock(), "error": type(exc).__name__, "message": str(exc)}
                break
            if slots is not None and self.c["wrong"] == wrong_so_far:
                worlds.add(len(slots))
            step += 1
            if x[-1] > 0:
                break
        return {"ok": True, "ops_ok": self.c["ops_ok"] - ok_before, "failed": self.failures, "wrong": self.wrongs,
                "wrong_count": self.c["wrong"] - wrong_before, "end": end, "longest": self.longest, "gaps": self.gaps,
                "worlds": sorted(worlds), "t0": t0, "t": self.clock()}
