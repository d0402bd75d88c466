"""What the three DiLoCo variants share: arguments, buffers, the shared state, checkpoints.

Why this exists: DiLoCo, AsyncDiLoCo and StreamingDiLoCo differ only in *when* a fragment's
pseudo-gradient reduce starts and when its result is applied. Everything else (validating the
arguments before any traffic, building the fragments and the shared state, the constructor's sync
that hands a newcomer the group's parameters, admission at boundaries, checkpoints) lives here once.

The trap: the constructor talks to the group. Founders must all be members before they construct
(see ``admit_until``), and a newcomer constructs right after ``connect()`` returns, while the
members are in the boundary sync that admitted it.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Dict, List, Optional

import torch

from ..communicator import Communicator
from ..errors import InvalidArgumentError
from .membership import GroupState
from .outer import OuterSGD, check_quantization, pseudo_gradient
from .params import Fragment, ModelBuffers, model_parameters, partition
from .reduce import PseudoGradientReduce, ReduceResult, average_into
from .report import OuterStepReport

log = logging.getLogger("pccl_py.diloco")

_OUTER, _INNER = 0, 1  # indices into the counters tensor


def communicator_of(comm: Any) -> Communicator:
    """A Communicator, or the communicator under a "pccl" torch ProcessGroup."""
    if isinstance(comm, Communicator):
        return comm
    inner = getattr(comm, "communicator", None)
    if isinstance(inner, Communicator):
        return inner
    raise InvalidArgumentError(
        f"comm must be a pccl_py.Communicator or a torch ProcessGroup of backend 'pccl' "
        f"(init_process_group('pccl') or pccl_py.torch.wrap_communicator), not {type(comm).__name__}")


class OuterLoop:
    """Base of the DiLoCo variants; see DiLoCo for the arguments."""

    def __init__(self, model: Any, inner_optimizer: Any, comm: Any, sync_every: int = 50, outer_lr: float = 0.7,
                 outer_momentum: float = 0.9, nesterov: bool = True, quantization: Optional[str] = None,
                 error_feedback: bool = True, *, fragments: int = 1) -> None:
        # Everything is checked before any traffic.
        if not isinstance(sync_every, int) or isinstance(sync_every, bool) or sync_every < 1:
            raise InvalidArgumentError(f"sync_every must be an int >= 1 (inner steps per outer step), not {sync_every!r}")
        if inner_optimizer is not None and not isinstance(inner_optimizer, torch.optim.Optimizer):
            raise InvalidArgumentError(f"inner_optimizer must be a torch.optim.Optimizer, not {type(inner_optimizer).__name__}")
        if not isinstance(error_feedback, bool):
            raise InvalidArgumentError(f"error_feedback must be True or False, not {error_feedback!r}")
        self._quant = check_quantization(quantization)
        self._outer = OuterSGD(outer_lr, outer_momentum, nesterov)
        params = model_parameters(model)
        buffers = ModelBuffers(params, momentum=self._outer.momentum > 0)
        ranges = partition(buffers.numel, len(params), fragments)
        self._comm = communicator_of(comm)
        if self._comm.world_size <= 0:
            raise InvalidArgumentError("comm is not a member of a group yet: call comm.connect() before creating DiLoCo")
        self.sync_every = sync_every
        self.model = model
        self.inner_optimizer = inner_optimizer
        self.error_feedback = error_feedback
        self.fragments: List[Fragment] = [
            Fragment(i, buffers, lo, hi, residual=self._quant is not None and error_feedback)
            for i, (lo, hi) in enumerate(ranges)]
        self._counters = torch.zeros(2, dtype=torch.int64)
        # The counters as of the last boundary: what the shared state holds. step() advances _counters
        # while a deferred sync may be hashing the snapshot on another thread.
        self._snapshot = torch.zeros(2, dtype=torch.int64)
        entries: Dict[str, torch.Tensor] = {f"params/{n}": v for n, v in buffers.views(buffers.global_).items()}
        if buffers.momentum is not None:
            entries.update({f"momentum/{n}": v for n, v in buffers.views(buffers.momentum).items()})
        self._group = GroupState(self._comm, entries, self._snapshot)
        # Founders elect one initialisation; a newcomer receives the group's parameters and counters.
        self._group.sync()
        self._counters.copy_(self._snapshot)
        for frag in self.fragments:
            frag.write_model(frag.global_)
        self._closed = False

    # -- counters ---------------------------------------------------------------------------------
    @property
    def outer_step(self) -> int:
        """Outer steps the group has applied (the same on every member)."""
        return int(self._counters[_OUTER])

    @property
    def inner_step(self) -> int:
        """Inner steps of the group's schedule; a newcomer starts at the group's value."""
        return int(self._counters[_INNER])

    @property
    def communicator(self) -> Communicator:
        return self._comm

    def step(self) -> Optional[OuterStepReport]:
        """Call once after every inner optimizer step. Returns an OuterStepReport when this call ran
        an outer step (or, for StreamingDiLoCo, a fragment's sync), else None.

        Raises only EvictedError, MasterLostError, ClosedError (and MismatchError/InvalidArgumentError
        for a program error such as peers using different quantization); lost peers are handled."""
        if self._closed:
            from ..errors import ClosedError
            raise ClosedError("this DiLoCo was closed")
        self._counters[_INNER] += 1
        return self._after_inner_step(self.inner_step)

    def _after_inner_step(self, inner_step: int) -> Optional[OuterStepReport]:
        raise NotImplementedError

    # -- pieces the variants combine -----------------------------------------------------------------
    def _start_reduce(self, frag: Fragment, start: Optional[torch.Tensor], weight: int = 1,
                      before: Optional[Callable[[], Any]] = None) -> PseudoGradientReduce:
        """Computes frag.send (start - model, error feedback applied; zeros if start is None or the
        weight is 0) and starts its reduce, after `before` (a deferred sync) on the same thread."""
        if start is None or weight == 0:
            frag.send.zero_()
        else:
            pseudo_gradient(frag, start, self._quant, self.error_feedback)
        return PseudoGradientReduce(self._comm, frag, weight, self._quant, before)

    def _apply(self, frag: Fragment, result: ReduceResult) -> None:
        """global -= outer step of the mean pseudo-gradient (nothing if nobody contributed)."""
        if result.contributors > 0:
            self._outer.apply(frag, average_into(frag, result))

    def _boundary(self, pending: bool) -> tuple[int, int, int, float]:
        """Admission and the shared-state sync, now: (joined, tx, rx, seconds)."""
        t0 = time.monotonic()
        self._snapshot.copy_(self._counters)
        joined = self._group.admit(pending)
        info = self._group.sync()
        return joined, info.total_tx_bytes, info.total_rx_bytes, time.monotonic() - t0

    def _deferred_boundary(self) -> Callable[[], Any]:
        """A boundary with nobody to admit, for the asynchronous variants: the shared-state sync is
        returned as a job for the next reduce's thread. Until that reduce is waited for, the caller
        must not write the global parameters or the momentum (the job hashes them)."""
        self._snapshot.copy_(self._counters)
        return self._group.sync

    @staticmethod
    def _check_repair(result: ReduceResult) -> None:
        if result.repaired:
            # Only a CPU that rounds the outer update differently from the group's gets here: this peer
            # trained the last round from its own global parameters, now replaced by the group's.
            log.warning("the shared-state sync replaced this peer's global parameters with the group's; "
                        "its last pseudo-gradient was measured from its own and it sits out the next reduce")

    # -- checkpoints --------------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        """The outer state: counters, and per fragment the global parameters, momentum and residual. Checkpoint the model and the inner optimizer alongside it as usual."""
        return {
            "algorithm": type(self).__name__,
            "outer_step": self.outer_step,
            "inner_step": self.inner_step,
            "fragments": [{role: t.clone() for role, t in frag.buffers().items()} for frag in self.fragments],
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restores state_dict() output. Call it on every member (the next shared-state sync would
        otherwise replace a lone peer's values with the group's)."""
        if not isinstance(state, dict) or state.get("algorithm") != type(self).__name__:
            raise InvalidArgumentError(
                f"not a {type(self).__name__} state_dict (algorithm {state.get('algorithm') if isinstance(state, dict) else None!r})")
        frags = state.get("fragments")
        if not isinstance(frags, list) or len(frags) != len(self.fragments):
            raise InvalidArgumentError(f"the state_dict has {len(frags) if isinstance(frags, list) else 'no'} fragments, "
                                       f"this {type(self).__name__} has {len(self.fragments)}")
        for frag, saved in zip(self.fragments, frags):
            mine = frag.buffers()
            if set(saved) != set(mine):
                raise InvalidArgumentError(f"fragment {frag.index}: the state_dict holds {sorted(saved)}, this run needs "
                                           f"{sorted(mine)} (different outer_momentum, quantization or error_feedback?)")
            for role, t in mine.items():
                src = saved[role]
                if not isinstance(src, torch.Tensor) or src.shape != t.shape or src.dtype != t.dtype:
                    raise InvalidArgumentError(f"fragment {frag.index} {role}: expected {t.dtype} {tuple(t.shape)}, "
                                               f"got {getattr(src, 'dtype', type(src).__name__)} {tuple(getattr(src, 'shape', ()))}")
        for frag, saved in zip(self.fragments, frags):
            for role, t in frag.buffers().items():
                t.copy_(saved[role])
        self._counters[_OUTER] = int(state["outer_step"])
        self._counters[_INNER] = int(state["inner_step"])
        self._snapshot.copy_(self._counters)

    def flush(self) -> Optional[OuterStepReport]:
        """Applies whatever reduce is still in flight, so that the global parameters include every
        round trained (call it on every member at the same inner step, at the end of training, before
        evaluating or saving the final model). DiLoCo has nothing in flight: returns None."""
        return None

    def close(self) -> None:
        """Waits for a reduce still in flight (its result is dropped). The communicator stays open."""
        self._closed = True

    def __enter__(self) -> "OuterLoop":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @staticmethod
    def _report(outer_step: int, result: ReduceResult, *, boundary: tuple[int, int, int, float], blocked: float,
                fragment: Optional[int] = None) -> OuterStepReport:
        joined, tx, rx, seconds = boundary
        return OuterStepReport(
            outer_step=outer_step, world_size=result.world_size, tx_bytes=result.tx_bytes + result.before_tx + tx,
            rx_bytes=result.rx_bytes + result.before_rx + rx, comm_seconds=result.seconds + seconds, blocked_seconds=blocked,
            retries=result.retries, joined=joined, lost=result.lost, contributors=result.contributors,
            fragment=fragment)


__all__ = ["OuterLoop", "communicator_of"]
