"""torch ``Work`` objects for pccl collectives, completed by a background thread per process group.

Why this exists: torch expects every collective to return a ``Work`` whose ``wait()`` raises the
collective's error and whose ``get_future()`` completes on its own, even if nobody calls ``wait()``
(DistributedDataParallel chains callbacks on the future). pccl's async handles complete only when
waited for, and most collectives need local post-processing afterwards (copying staged results back
into the caller's tensors). So each process group owns one :class:`Completer` thread that waits for
its operations in submission order, runs their post-processing, and then completes the Work and its
future, with the result or with the pccl exception.
"""

from __future__ import annotations

import queue
import threading
from datetime import timedelta
from typing import Any, Callable, Optional, Union

import torch
from torch.distributed.distributed_c10d import Work

from .errors import timed_out


_on_completer = threading.local()


class PcclWork(Work):
    """One collective of the pccl backend.

    ``wait()`` blocks until it completes and re-raises its error (e.g. ``pccl_py.PeerLostError``);
    ``get_future()`` returns a ``torch.futures.Future`` that is set with the output tensors or with
    that error; ``is_completed()`` and ``is_success()`` never block.
    """

    def __init__(self, result: list[torch.Tensor]) -> None:
        super().__init__()
        self._result = result
        self._future: torch.futures.Future[list[torch.Tensor]] = torch.futures.Future()
        self._done = threading.Event()
        self._settled = False
        self._error: Optional[BaseException] = None

    # Called once by the Completer. The future is completed before _done is set, so that a wait()
    # that returned implies a done future; callbacks on that future, which run inside set_result on
    # the completer thread, see the Work as settled and may call wait() on it without blocking.
    def _complete(self, error: Optional[BaseException]) -> None:
        self._error = error
        self._settled = True
        if error is None:
            self._future.set_result(self._result)
        else:
            # torch annotates set_exception's argument with the future's result type (a stub defect:
            # it takes an exception).
            self._future.set_exception(error)  # type: ignore[arg-type]
        self._done.set()

    def wait(self, timeout: Union[timedelta, float, None] = None) -> bool:
        """Blocks until the collective completes; raises its error. A non-zero timeout bounds the wait
        (torch's kNoTimeout, a zero timedelta, means no bound; pccl's own op timeout always applies)."""
        seconds = timeout.total_seconds() if isinstance(timeout, timedelta) else timeout
        if getattr(_on_completer, "active", False):
            if not self._settled:
                # Future callbacks run on the completer thread, which would be waiting for itself.
                raise RuntimeError("waiting for a pccl Work inside a future callback would deadlock; "
                                   "chain it with get_future().then(...) instead")
        elif not self._done.wait(seconds if seconds else None):
            # The operation itself goes on (pccl's op timeout bounds it); only this wait gives up.
            raise timed_out("Work.wait()", seconds, "the operation is still running; its Work completes or "
                            "fails by pccl's op timeout")
        if self._error is not None:
            raise self._error
        return True

    def is_completed(self) -> bool:
        return self._done.is_set()

    def is_success(self) -> bool:
        return self._done.is_set() and self._error is None

    def exception(self) -> Optional[BaseException]:
        return self._error

    def result(self) -> list[torch.Tensor]:
        self.wait()
        return self._result

    def get_future(self) -> torch.futures.Future[list[torch.Tensor]]:
        return self._future

    def synchronize(self) -> None:
        self.wait()


class Completer:
    """A daemon thread that finishes submitted operations in order and completes their Work."""

    def __init__(self, name: str) -> None:
        self._queue: "queue.Queue[Optional[tuple[PcclWork, Callable[[], Any]]]]" = queue.Queue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, work: PcclWork, finish: Callable[[], Any]) -> PcclWork:
        """finish() waits for the operation and post-processes it; its exception fails the Work."""
        self._queue.put((work, finish))
        return work

    def _run(self) -> None:
        _on_completer.active = True
        while True:
            item = self._queue.get()
            if item is None:
                return
            work, finish = item
            try:
                finish()
            except BaseException as exc:  # noqa: BLE001 - handed to wait() and the future
                work._complete(exc)
            else:
                work._complete(None)

    def stop(self, timeout: float = 5.0) -> None:
        """Lets queued operations finish (they end by their own deadline), then ends the thread."""
        self._queue.put(None)
        self._thread.join(timeout)
