"""One pseudo-gradient reduce, carried to completion among whoever survives.

Why this exists: this is the sync step every variant shares. A reduce is two ops started together:
the data op (the fragment's pseudo-gradient, SUM, optionally quantized) and a small control op that
sums each member's weight (1 if it trained on what it sends, 0 for a peer admitted just before the
reduce) and whether it sees peers waiting to join. The average is the data sum divided by the
weight sum, so a newcomer with nothing to contribute does not dilute it, and every member decides
the same thing about admission because they all read the same reduced flag.

The traps:
- Both ops must describe one membership. Each is committed or aborted identically on every member
  (the engine's guarantee), but the two may land in different epochs (a graceful leave re-runs an op
  transparently in the next epoch). Only a pair whose two ops report the same epoch is used;
  otherwise both run again. Inputs are never written (results go to separate buffers), so a re-run
  starts from the same bytes.
- A lost or evicted peer must never surface as a partial average: PeerLostError and TimeoutError
  re-run the pair among the survivors, in the background for the asynchronous variants.
- Every wait is bounded: each op has the communicator's timeout, and the attempts are capped.

A reduce can carry a job to run first on its thread (``before``): the asynchronous variants defer a
steady-state shared-state sync there, so that it verifies the group's state while the caller trains
instead of while it waits. The job's ops come before the reduce's in every member's sequence, since
every member defers the same syncs (the decision comes from the reduced pending flag).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, List, Optional

import numpy as np
import torch

from ..communicator import AllReduceHandle, Communicator, internals
from ..errors import PeerLostError, TimeoutError
from ..ops import ReduceInfo, ReduceOp
from ..tags import DILOCO_CONTROL_TAG, DILOCO_DATA_TAG
from .params import Fragment

log = logging.getLogger("pccl_py.diloco")

# Each failed attempt follows a membership change (a loss or an eviction) or a deadline; a group that
# keeps failing this often is not making progress.
MAX_ATTEMPTS = 64


class _SplitEpochs(Exception):
    """The data op and the control op ran in different memberships: run both again."""


@dataclass
class ReduceResult:
    """A finished reduce: frag.recv holds the sum of `contributors` pseudo-gradients."""

    contributors: int
    pending: bool
    world_size: int
    epoch: int
    tx_bytes: int
    rx_bytes: int
    retries: int
    lost: int
    started: float     # time.monotonic() when the first attempt started
    finished: float    # ... and when the successful one completed
    before_tx: int = 0        # bytes of the job run before the reduce (a deferred shared-state sync)
    before_rx: int = 0
    repaired: bool = False    # that sync had to overwrite this peer's state (it differed from the group's)

    @property
    def seconds(self) -> float:
        return self.finished - self.started


class PseudoGradientReduce:
    """Reduces frag.send into frag.recv on a background thread; wait() returns the ReduceResult.

    Don't touch frag.send or frag.recv until wait() returned."""

    def __init__(self, comm: Communicator, frag: Fragment, weight: int, quantization: Optional[str],
                 before: Optional[Callable[[], Any]] = None) -> None:
        self._comm = comm
        self._before = before
        self._frag = frag
        self._weight = weight
        self._quant = quantization
        self._result: Optional[ReduceResult] = None
        self._error: Optional[BaseException] = None
        self.started = time.monotonic()
        self._thread = threading.Thread(target=self._run, name=f"pccl-diloco-reduce-{frag.index}", daemon=True)
        self._thread.start()

    def wait(self) -> ReduceResult:
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    def _attempt(self, ctrl_in: np.ndarray[Any, Any], ctrl_out: np.ndarray[Any, Any]) -> tuple[ReduceInfo, ReduceInfo]:
        comm = self._comm
        lib = internals(comm)
        ctrl_in[1] = 1 if comm.are_peers_pending() else 0
        handles: List[AllReduceHandle] = [
            lib.all_reduce_async(ctrl_in, op=ReduceOp.SUM, tag=DILOCO_CONTROL_TAG, out=ctrl_out),
            lib.all_reduce_async(self._frag.send, op=ReduceOp.SUM, tag=DILOCO_DATA_TAG, out=self._frag.recv,
                                 quantization=self._quant)]
        infos: List[ReduceInfo] = []
        error: Optional[BaseException] = None
        for h in handles:  # wait for both, so that neither buffer is still in use when we retry
            try:
                infos.append(h.wait())
            except BaseException as exc:  # noqa: BLE001 - the first error decides
                error = error or exc
        if error is not None:
            raise error
        if infos[0].epoch != infos[1].epoch:
            raise _SplitEpochs(f"control op in epoch {infos[0].epoch}, data op in epoch {infos[1].epoch}")
        return infos[0], infos[1]

    def _run(self) -> None:
        ctrl_in = np.array([self._weight, 0], dtype=np.int64)
        ctrl_out = np.zeros(2, dtype=np.int64)
        try:
            synced = self._before() if self._before is not None else None
            world_before = self._comm.world_size
            for attempt in range(MAX_ATTEMPTS):
                try:
                    ctrl, data = self._attempt(ctrl_in, ctrl_out)
                except (PeerLostError, TimeoutError, _SplitEpochs) as exc:
                    log.info("pseudo-gradient reduce of fragment %d: %s; re-running among the survivors",
                             self._frag.index, exc)
                    continue
                self._result = ReduceResult(
                    contributors=int(ctrl_out[0]), pending=bool(ctrl_out[1]), world_size=data.world_size,
                    epoch=data.epoch, tx_bytes=ctrl.tx_bytes + data.tx_bytes, rx_bytes=ctrl.rx_bytes + data.rx_bytes,
                    retries=attempt, lost=max(0, world_before - data.world_size), started=self.started,
                    finished=time.monotonic(),
                    before_tx=synced.total_tx_bytes if synced is not None else 0,
                    before_rx=synced.total_rx_bytes if synced is not None else 0,
                    repaired=bool(synced is not None and synced.received_keys))
                return
            self._error = PeerLostError(
                f"the pseudo-gradient reduce failed {MAX_ATTEMPTS} times in a row (membership kept changing or "
                "ops kept timing out); check the peers' logs")
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread by wait()
            self._error = exc


class FinishedReduce:
    """A reduce restored from a checkpoint: already complete, wait() returns at once."""

    def __init__(self, result: ReduceResult) -> None:
        self._result = result

    def wait(self) -> ReduceResult:
        return self._result


@torch.no_grad()
def average_into(frag: Fragment, result: ReduceResult) -> torch.Tensor:
    """frag.recv /= contributors (the mean pseudo-gradient); returns frag.recv."""
    frag.recv.div_(result.contributors)
    return frag.recv


__all__ = ["PseudoGradientReduce", "FinishedReduce", "ReduceResult", "average_into", "MAX_ATTEMPTS"]
