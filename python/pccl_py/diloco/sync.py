"""DiLoCo: every ``sync_every`` inner steps, average the pseudo-gradients and take one outer step.

Why this exists: it is the algorithm the other two variants refine, and the one to start with. Each
peer trains alone for H inner steps from the group's global parameters; then the group averages
``global - local`` (the pseudo-gradient), applies one outer SGD step with Nesterov momentum to the
global parameters, syncs the shared state (admitting newcomers first) and every peer restarts from
the new global parameters, bitwise identical everywhere. Communication blocks the caller.

The trap: the outer step must never apply a partial average. The reduce is retried among the
survivors until one attempt completes on every member (see reduce.py), so a peer killed mid-reduce
costs one retry, not a wrong step.
"""

from __future__ import annotations

import time
from typing import Optional

from .base import _OUTER, OuterLoop
from .report import OuterStepReport


class DiLoCo(OuterLoop):
    """Synchronous DiLoCo on a pccl_py Communicator (or a "pccl" ProcessGroup's communicator).

    Args:
        model: a torch.nn.Module; its float32 (or float64) parameters that require a gradient are
            synchronised, in place.
        inner_optimizer: the torch optimizer the caller steps every inner step (its state stays local).
        comm: a connected pccl_py.Communicator, or a torch ProcessGroup of backend "pccl".
        sync_every: H, inner steps per outer step.
        outer_lr, outer_momentum, nesterov: the outer SGD step on the averaged pseudo-gradient.
        quantization: None, "fp16", "bf16", "q8" or "q4": the pseudo-gradient's wire format.
        error_feedback: with quantization, carry what quantization dropped into the next round.

    Creating it talks to the group: founders elect one initialisation; a peer joining a running
    group receives the group's parameters, momentum and counters into its model.
    """

    def _after_inner_step(self, inner_step: int) -> Optional[OuterStepReport]:
        if inner_step % self.sync_every:
            return None
        t0 = time.monotonic()
        frag = self.fragments[0]
        result = self._start_reduce(frag, frag.global_).wait()
        self._apply(frag, result)
        self._counters[_OUTER] += 1
        boundary = self._boundary(result.pending)
        frag.write_model(frag.global_)
        return self._report(self.outer_step, result, boundary=boundary, blocked=time.monotonic() - t0)


__all__ = ["DiLoCo"]
