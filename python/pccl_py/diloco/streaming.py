"""StreamingDiLoCo: the parameters in F fragments, each synced once per H inner steps, staggered.

Why this exists: synchronous DiLoCo sends the whole model at once, so the link idles for H steps and
then carries every byte in a burst that stalls training. Here fragment f (a contiguous run of
parameter tensors, about 1/F of the bytes) is reduced at its own point of each cycle of H inner
steps: its reduce starts ``overlap`` (tau) inner steps before its update is applied, and runs in the
background meanwhile. Only one fragment's bytes are ever in flight, so the peak traffic per sync is
about 1/F of DiLoCo's.

A cycle end with nobody to admit does not block on the shared-state sync: it runs on the thread of
the next cycle's first reduce, before it (the global parameters and momentum stay untouched until
that reduce has been waited for).

Schedule, with p the position in the cycle (1..H): fragment f is applied at a_f = (f+1)*H//F and its
reduce starts at a_f - tau. The last fragment is applied at p = H, the cycle's end, where the outer
step counter advances and the group admits newcomers and syncs the shared state; nothing is in flight
then, because tau < H//F makes every reduce start after the previous fragment was applied.

The trap: the pseudo-gradient is taken when the reduce starts, but the fragment keeps training for
tau more steps. By default (``mixing=0``) the fragment is replaced by the new global values when
applied, so every peer holds the same fragment bits and those tau local steps are dropped; with
``mixing=m`` the fragment becomes m * local + (1 - m) * global (the Streaming DiLoCo paper's alpha),
which keeps some local progress but lets the peers' copies differ until the next sync.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, Optional

from ..errors import InvalidArgumentError
from .base import _OUTER, OuterLoop
from .reduce import PseudoGradientReduce
from .report import OuterStepReport


class StreamingDiLoCo(OuterLoop):
    """DiLoCo with the parameters in `fragments` fragments synced on a staggered schedule.

    Extra args (see DiLoCo for the rest):
        fragments: F, from 1 to the number of parameter tensors, at most sync_every.
        overlap: tau, inner steps between the start of a fragment's reduce and its application,
            0 <= tau < sync_every // fragments (0: reduce and apply at once, blocking).
        mixing: 0 <= m < 1, how much of the local fragment to keep when the global one is applied.
    """

    def __init__(self, model: Any, inner_optimizer: Any, comm: Any, sync_every: int = 50, outer_lr: float = 0.7,
                 outer_momentum: float = 0.9, nesterov: bool = True, quantization: Optional[str] = None,
                 error_feedback: bool = True, fragments: int = 4, overlap: int = 1, mixing: float = 0.0) -> None:
        if isinstance(sync_every, int) and isinstance(fragments, int) and not isinstance(fragments, bool) \
                and fragments > sync_every >= 1:
            raise InvalidArgumentError(f"fragments ({fragments}) cannot exceed sync_every ({sync_every}): each fragment "
                                       "is synced at its own inner step of the cycle")
        if isinstance(sync_every, int) and isinstance(fragments, int) and fragments >= 1:
            gap = sync_every // fragments
            if not isinstance(overlap, int) or isinstance(overlap, bool) or not 0 <= overlap < gap:
                raise InvalidArgumentError(
                    f"overlap must be an int with 0 <= overlap < sync_every // fragments = {gap}, not {overlap!r}: "
                    "a fragment's reduce must start after the previous fragment was applied")
        if not isinstance(mixing, (int, float)) or isinstance(mixing, bool) or not 0.0 <= mixing < 1.0:
            raise InvalidArgumentError(f"mixing must be a number in [0, 1), not {mixing!r}")
        super().__init__(model, inner_optimizer, comm, sync_every=sync_every, outer_lr=outer_lr,
                         outer_momentum=outer_momentum, nesterov=nesterov, quantization=quantization,
                         error_feedback=error_feedback, fragments=fragments)
        self.overlap = overlap
        self.mixing = float(mixing)
        count = len(self.fragments)
        self._apply_at = [(f + 1) * sync_every // count for f in range(count)]
        self._start_at = [a - overlap for a in self._apply_at]
        self._inflight: Dict[int, PseudoGradientReduce] = {}
        self._deferred: Optional[Callable[[], Any]] = None  # the last cycle end's sync, not run yet

    def _after_inner_step(self, inner_step: int) -> Optional[OuterStepReport]:
        p = inner_step % self.sync_every or self.sync_every
        for f, frag in enumerate(self.fragments):
            if self.overlap and p == self._start_at[f]:
                self._inflight[f] = self._start(frag)
        for f, frag in enumerate(self.fragments):
            if p != self._apply_at[f]:
                continue
            t0 = time.monotonic()
            reduce = self._inflight.pop(f, None) or self._start(frag)
            result = reduce.wait()
            self._check_repair(result)
            self._apply(frag, result)
            frag.mix_into_model(frag.global_, keep=self.mixing)
            boundary: tuple[int, int, int, float] = (0, 0, 0, 0.0)
            if f == len(self.fragments) - 1:
                self._counters[_OUTER] += 1
                if result.pending:
                    boundary = self._boundary(True)
                else:
                    self._deferred = self._deferred_boundary()
            return self._report(self.outer_step, result, boundary=boundary, blocked=time.monotonic() - t0, fragment=f)
        return None

    def _start(self, frag: Any) -> PseudoGradientReduce:
        """Starts frag's reduce; the cycle's deferred shared-state sync, if any, runs first on its thread."""
        before, self._deferred = self._deferred, None
        return self._start_reduce(frag, frag.global_, before=before)

    def state_dict(self) -> Dict[str, Any]:
        """As DiLoCo's. Taken with a fragment's reduce in flight, the checkpoint cannot hold its result:
        take it at a cycle boundary (when step() returned the last fragment's report)."""
        if self._inflight:
            raise InvalidArgumentError("a fragment's reduce is in flight; take the checkpoint at a cycle boundary "
                                       f"(inner_step a multiple of sync_every={self.sync_every})")
        return super().state_dict()

    def close(self) -> None:
        for reduce in self._inflight.values():
            try:
                reduce.wait()
            except Exception:  # noqa: BLE001 - closing: nothing will use the result
                pass
        self._inflight.clear()
        super().close()


__all__ = ["StreamingDiLoCo"]
