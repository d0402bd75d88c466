"""AsyncDiLoCo: the reduce of round t runs behind round t+1's compute; its update lands one round late.

Why this exists: on a slow link the synchronous reduce leaves every peer idle for as long as the
network needs. Here, at the end of round t, a peer starts reducing round t's pseudo-gradient in the
background and immediately trains round t+1; at the end of round t+1 it collects round t's average
(by then usually complete), applies it, and starts round t+1's reduce. The caller blocks only for
what is left of the reduce and the outer update (and, when a peer is waiting to join, for admission
and the shared-state sync).

The pseudo-gradient of a round is measured from the global parameters *after* the update applied at
its end (global - local), not from where the round started. Measured from the round's start, it
repeats the progress of the update it did not yet contain, and the outer momentum amplifies the
echo: on the character-level transformer of tools/diloco_train (4 peers, outer lr 0.7, Nesterov
momentum 0.9) that variant diverged (final eval loss 3.8-16 nats), this one ends at 2.03 against
synchronous DiLoCo's 1.79. With outer lr 1 and no momentum it sets the global parameters to the mean
of the peers' previous round, one round late.

The traps:
- The lag costs loss, and more the longer the round: every round starts from global parameters that
  lack the previous round's progress. On the example's default model (1000 inner steps) it ended
  9-11% behind DiLoCo at H = 50 and 4.0% behind at H = 10 (DiLoCo at the same H), and level with
  DiLoCo over 2400 steps at H = 10 (docs/diloco.md). Use a small H whose reduce still fits in one
  round of compute (below 10, retune the outer lr), or StreamingDiLoCo, which lags only ``overlap``
  inner steps.
- Admission must not change the membership under a reduce in flight: the in-flight reduce is
  finished first, then the group votes and syncs, then the next reduce starts, with the newcomer.
- The newcomer trained nothing for the reduce that starts right after its admission: it joins it
  with weight 0 (zeros), so it does not dilute the average (see reduce.py). The founders do the same
  right after they construct, which keeps every member's op sequence identical.
- A boundary with nobody to admit does not block on the shared-state sync: the sync runs on the
  next reduce's thread, before it, while the caller trains. It only reads the global parameters and
  momentum, which the caller leaves alone until it has waited for that reduce.
"""

from __future__ import annotations

import time
from typing import Any, Dict, Optional

import torch

from ..errors import InvalidArgumentError
from .base import _OUTER, OuterLoop
from .reduce import FinishedReduce, ReduceResult
from .report import OuterStepReport


class AsyncDiLoCo(OuterLoop):
    """DiLoCo with the outer update of round t applied at the end of round t+1 (same arguments as
    DiLoCo); the reduce runs in the background meanwhile."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Nothing trained yet: a zero-weight reduce keeps every member's op sequence the same as a
        # newcomer's, which starts the same way right after its admission.
        self._inflight: Any = self._start_reduce(self.fragments[0], None, weight=0)

    def _after_inner_step(self, inner_step: int) -> Optional[OuterStepReport]:
        if inner_step % self.sync_every:
            return None
        return self._round_end(flush=False)

    def flush(self) -> Optional[OuterStepReport]:
        """Applies the last round's reduce now instead of one round later, loads the new global
        parameters into the model, and restarts the pipeline with a zero-weight reduce (as after
        construction), so training may go on. Every member must call it at the same inner step: it is
        a boundary. Without it, the final global parameters lack the last round's update."""
        return self._round_end(flush=True)

    def _round_end(self, flush: bool) -> OuterStepReport:
        """Collects and applies the reduce in flight, then starts the next one: this round's
        pseudo-gradient (weight 0 if the sync just repaired this peer), or zeros when flushing."""
        t0 = time.monotonic()
        frag = self.fragments[0]
        result = self._inflight.wait()
        self._inflight = None
        self._check_repair(result)
        self._apply(frag, result)
        if result.contributors > 0:
            self._counters[_OUTER] += 1
        start = None if flush else frag.global_
        weight = 0 if flush or result.repaired else 1
        if result.pending or flush:
            boundary = self._boundary(result.pending)
            self._inflight = self._start_reduce(frag, start, weight)
        else:
            boundary = (0, 0, 0, 0.0)
            self._inflight = self._start_reduce(frag, start, weight, before=self._deferred_boundary())
        frag.write_model(frag.global_)
        return self._report(self.outer_step, result, boundary=boundary, blocked=time.monotonic() - t0)

    def state_dict(self) -> Dict[str, Any]:
        """As DiLoCo's, plus the reduce of the last round: waited for, so the checkpoint holds its
        result and a restored run applies exactly what this one would have."""
        state = super().state_dict()
        result = self._inflight.wait()
        state["inflight"] = {"sum": self.fragments[0].recv.clone(), "contributors": result.contributors,
                             "pending": result.pending, "world_size": result.world_size}
        return state

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        saved = state.get("inflight") if isinstance(state, dict) else None
        recv = self.fragments[0].recv
        if not isinstance(saved, dict) or not isinstance(saved.get("sum"), torch.Tensor) \
                or saved["sum"].shape != recv.shape or saved["sum"].dtype != recv.dtype:
            raise InvalidArgumentError("not an AsyncDiLoCo state_dict of this model: the in-flight reduce is missing or "
                                       "has another shape")
        self._inflight.wait()  # our own zero-weight reduce must not write recv after the copy below
        super().load_state_dict(state)
        recv.copy_(saved["sum"])
        now = time.monotonic()
        self._inflight = FinishedReduce(ReduceResult(
            contributors=int(saved["contributors"]), pending=bool(saved["pending"]),
            world_size=int(saved["world_size"]), epoch=self._comm.epoch, tx_bytes=0, rx_bytes=0, retries=0, lost=0,
            started=now, finished=now))

    def close(self) -> None:
        """Waits for the reduce in flight (its result is dropped; errors are swallowed)."""
        if self._inflight is not None:
            try:
                self._inflight.wait()
            except Exception:  # noqa: BLE001 - closing: nothing will use the result
                pass
        super().close()


__all__ = ["AsyncDiLoCo"]
