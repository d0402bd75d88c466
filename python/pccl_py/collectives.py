"""Collectives derived from all_reduce: broadcast, all_gather, reduce_scatter and barrier.

Why this exists: pccl_py's core has one collective, all_reduce, and promises a result that is bitwise
identical on every peer. Frameworks (the torch.distributed backend in :mod:`pccl_py.torch`, or plain
numpy code) also need data-movement collectives, and those must be *exact*: a broadcast that rounds
is a bug. Each function here moves bytes with an integer SUM in which exactly one peer contributes
non-zero words to every element: ``x + 0 + ... + 0 == x`` holds for every bit pattern (NaN payloads,
negative zero, padding), cannot overflow, and does not depend on the order of summation. So the
results are exact copies of the contributed bytes on every peer.

The inputs are flat, C-contiguous numpy arrays or CPU torch tensors (duck-typed, so numpy callers
never import torch). Every function comes in a blocking form and an ``*_async`` form: the async form
issues its all-reduces at once (so their order on a tag is the call order, as pccl requires) and
returns a :class:`Pending` whose ``wait()`` finishes the local post-processing.

The signatures name *what* moves, not *how*: a later point-to-point primitive in the core can replace
the internals without changing the callers. ``rank`` is the caller's index in the numbering that
``root`` and the output slots use; it defaults to ``comm.rank`` (pccl's ring order), and the torch
backend passes torch's group rank instead, so pccl's ring order never leaks into results.
"""

from __future__ import annotations

import sys
from typing import Any, Callable, Optional, Sequence

import numpy as np

from .communicator import AllReduceHandle, Communicator
from .errors import InvalidArgumentError
from .ops import ReduceOp

__all__ = [
    "Pending", "broadcast", "broadcast_async", "all_gather", "all_gather_async", "reduce_scatter",
    "reduce_scatter_async", "barrier", "barrier_async",
]


class Pending:
    """Collective issued in the background. ``wait()`` blocks until it is done and returns its result.

    Keeps every buffer alive until it is waited for. Errors (PeerLostError, TimeoutError, ...) are
    raised by ``wait()``; after a failure the output buffers are unchanged.
    """

    def __init__(self, handles: Sequence[AllReduceHandle], finish: Optional[Callable[[], Any]] = None,
                 result: Any = None) -> None:
        self._handles = list(handles)
        self._finish = finish
        self._result = result
        self._finished = False

    def done(self) -> bool:
        """True once every underlying all_reduce finished (wait() then does only local work)."""
        return all(h.done() for h in self._handles)

    def wait(self) -> Any:
        """Waits for every underlying all_reduce (all of them, even after a failure, so no buffer is
        still in use when this returns), runs the post-processing once and returns the result."""
        if not self._finished:
            error: Optional[BaseException] = None
            for h in self._handles:
                try:
                    h.wait()
                except BaseException as exc:  # noqa: BLE001 - re-raised below, after every handle ended
                    error = error or exc
            if error is not None:
                raise error
            if self._finish is not None:
                out = self._finish()
                if out is not None:
                    self._result = out
            self._finished = True
            self._handles = []
        return self._result


# -- array helpers: numpy and torch behave alike for slicing, differ for views and copies -----------

def _is_numpy(x: Any) -> bool:
    return isinstance(x, np.ndarray)


def _nbytes(x: Any) -> int:
    return int(x.nbytes) if _is_numpy(x) else int(x.numel()) * int(x.element_size())


def _ptr(x: Any) -> int:
    return int(x.ctypes.data) if _is_numpy(x) else int(x.data_ptr())


def _check_flat(x: Any, name: str) -> None:
    if _is_numpy(x):
        ok = x.flags.c_contiguous
    elif hasattr(x, "is_contiguous") and hasattr(x, "data_ptr"):
        ok = x.is_contiguous() and x.device.type == "cpu"
    else:
        raise InvalidArgumentError(f"{name} must be a numpy.ndarray or a CPU torch.Tensor, not {type(x).__name__}")
    if not ok:
        raise InvalidArgumentError(f"{name} must be C-contiguous (and on the CPU); pass a contiguous copy")


def _word_size(*arrays: Any) -> int:
    """Widest integer word (8, 4, 2 or 1 bytes) that evenly divides and aligns every buffer: fewer
    elements means less reduction work, and the bytes are the same either way."""
    for w in (8, 4, 2):
        if all(_nbytes(a) % w == 0 and _ptr(a) % w == 0 for a in arrays):
            return w
    return 1


_NP_WORDS = {8: np.int64, 4: np.int32, 2: np.int16, 1: np.uint8}
_TORCH_WORDS = {8: "int64", 4: "int32", 2: "int16", 1: "uint8"}


def _words(x: Any, w: int) -> Any:
    """x's bytes as a flat array of w-byte integers (no copy)."""
    if _is_numpy(x):
        return x.reshape(-1).view(np.uint8).view(_NP_WORDS[w])
    torch = sys.modules["torch"]  # x is a torch tensor, so torch is imported already
    flat = x.reshape(-1)
    if flat.dtype == torch.bool:  # view() refuses bool -> wider types only via uint8
        flat = flat.view(torch.uint8)
    if flat.dtype.is_complex:
        flat = torch.view_as_real(flat).reshape(-1)
    return flat.view(torch.uint8).view(getattr(torch, _TORCH_WORDS[w]))


def _zero(x: Any) -> None:
    if _is_numpy(x):
        x.fill(0)
    else:
        x.zero_()


def _copy(dst: Any, src: Any) -> None:
    if _is_numpy(dst):
        np.copyto(dst, src)
    else:
        dst.copy_(src)


def _empty_like(x: Any) -> Any:
    return np.empty_like(x) if _is_numpy(x) else x.new_empty(x.shape)


def _numel(x: Any) -> int:
    return int(x.size) if _is_numpy(x) else int(x.numel())


def _resolve(comm: Communicator, rank: Optional[int], world_size: Optional[int]) -> tuple[int, int]:
    rank = comm.rank if rank is None else rank
    world_size = comm.world_size if world_size is None else world_size
    if not 0 <= rank < world_size:
        raise InvalidArgumentError(f"rank {rank} is outside [0, {world_size}); is the communicator connected?")
    return rank, world_size


# -- broadcast ------------------------------------------------------------------------------------

def broadcast_async(comm: Communicator, array: Any, root: int, *, tag: int = 0,
                    rank: Optional[int] = None) -> Pending:
    """Starts copying root's ``array`` into every peer's ``array`` (in place, bit for bit).

    Root contributes its bytes, everyone else zeros, as integer words summed by all_reduce. The sum
    goes to ``out=``, which pccl writes only on success: after a failure every array is unchanged.
    """
    _check_flat(array, "array")
    rank = comm.rank if rank is None else rank
    if _nbytes(array) == 0:
        return Pending([], result=array)
    words = _words(array, _word_size(array))
    scratch = _empty_like(words)
    if rank == root:
        # Root needs no result; its array stays as it is.
        return Pending([comm.all_reduce_async(words, op=ReduceOp.SUM, out=scratch, tag=tag)], result=array)
    _zero(scratch)
    return Pending([comm.all_reduce_async(scratch, op=ReduceOp.SUM, out=words, tag=tag)], result=array)


def broadcast(comm: Communicator, array: Any, root: int, *, tag: int = 0, rank: Optional[int] = None) -> Any:
    """Copies root's ``array`` into every peer's ``array``, bit for bit; returns ``array``.

    Args:
        comm: a connected Communicator.
        array: flat C-contiguous numpy array or CPU torch tensor, same size and dtype on every peer.
        root: index of the sending peer, in the same numbering as ``rank``.
        tag: pccl tag to run on (ops on one tag run in call order).
        rank: this peer's index (default ``comm.rank``).
    """
    return broadcast_async(comm, array, root, tag=tag, rank=rank).wait()


# -- all_gather -----------------------------------------------------------------------------------

def all_gather_async(comm: Communicator, array: Any, out: Any, *, tag: int = 0, rank: Optional[int] = None,
                     world_size: Optional[int] = None) -> Pending:
    """Starts gathering every peer's ``array`` into ``out`` (slot i holds peer i's bytes).

    ``out`` has ``world_size`` times as many bytes as ``array``. A zeroed scratch buffer of that
    size gets this peer's bytes in its slot, and an integer SUM into ``out`` does the rest; ``out`` is
    written only on success.
    """
    _check_flat(array, "array")
    _check_flat(out, "out")
    rank, world_size = _resolve(comm, rank, world_size)
    size = _nbytes(array)
    if _nbytes(out) != size * world_size:
        raise InvalidArgumentError(
            f"out has {_nbytes(out)} bytes; all_gather of {size} bytes among {world_size} peers needs {size * world_size}")
    if size == 0:
        return Pending([], result=out)
    w = _word_size(array, out)
    src, dst = _words(array, w), _words(out, w)
    n = _numel(src)
    scratch = _empty_like(dst)
    _zero(scratch)
    _copy(scratch[rank * n:(rank + 1) * n], src)
    return Pending([comm.all_reduce_async(scratch, op=ReduceOp.SUM, out=dst, tag=tag)], result=out)


def all_gather(comm: Communicator, array: Any, out: Any, *, tag: int = 0, rank: Optional[int] = None,
               world_size: Optional[int] = None) -> Any:
    """Gathers every peer's ``array`` into ``out``, concatenated in rank order; returns ``out``.

    Args:
        comm: a connected Communicator.
        array: flat C-contiguous numpy array or CPU torch tensor, the same byte size on every peer.
        out: flat C-contiguous buffer of ``world_size`` times ``array``'s bytes (any dtype).
        tag: pccl tag to run on.
        rank: this peer's slot (default ``comm.rank``); world_size: number of slots (default
            ``comm.world_size``). Every peer must pass a distinct rank.
    """
    return all_gather_async(comm, array, out, tag=tag, rank=rank, world_size=world_size).wait()


# -- reduce_scatter -------------------------------------------------------------------------------

def reduce_scatter_async(comm: Communicator, array: Any, out: Any, *, op: ReduceOp = ReduceOp.SUM, tag: int = 0,
                         rank: Optional[int] = None, world_size: Optional[int] = None) -> Pending:
    """Starts reducing ``array`` across peers and leaving this peer's 1/world_size slice in ``out``.

    All peers reduce the whole array (into a scratch copy: ``array`` is not changed), then each keeps
    its slice, so every peer's slice is the bitwise-identical all_reduce result.
    """
    _check_flat(array, "array")
    _check_flat(out, "out")
    rank, world_size = _resolve(comm, rank, world_size)
    n = _numel(out)
    if _numel(array) != n * world_size:
        raise InvalidArgumentError(
            f"array has {_numel(array)} elements; reduce_scatter among {world_size} peers into {n} needs {n * world_size}")
    if n == 0:
        return Pending([], result=out)
    scratch = _empty_like(array)
    handle = comm.all_reduce_async(array, op=op, out=scratch, tag=tag)
    return Pending([handle], finish=lambda: _copy(out, scratch[rank * n:(rank + 1) * n]), result=out)


def reduce_scatter(comm: Communicator, array: Any, out: Any, *, op: ReduceOp = ReduceOp.SUM, tag: int = 0,
                   rank: Optional[int] = None, world_size: Optional[int] = None) -> Any:
    """Reduces ``array`` element-wise across peers; ``out`` receives slice ``rank`` of the result.

    Args:
        comm: a connected Communicator.
        array: flat C-contiguous input of ``world_size * len(out)`` elements (unchanged).
        out: flat C-contiguous output, same dtype as ``array``.
        op: the reduction (as in Communicator.all_reduce).
        tag, rank, world_size: as in :func:`all_gather`.
    """
    return reduce_scatter_async(comm, array, out, op=op, tag=tag, rank=rank, world_size=world_size).wait()


# -- barrier --------------------------------------------------------------------------------------

def barrier_async(comm: Communicator, *, tag: int = 0) -> Pending:
    """Starts a barrier: a one-byte all_reduce, which completes only once every member has issued it."""
    token = np.zeros(1, dtype=np.uint8)
    return Pending([comm.all_reduce_async(token, op=ReduceOp.MAX, tag=tag)])


def barrier(comm: Communicator, *, tag: int = 0) -> None:
    """Returns once every member of the group has called barrier on ``tag``."""
    barrier_async(comm, tag=tag).wait()
