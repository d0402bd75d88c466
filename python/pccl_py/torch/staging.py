"""Moves torch tensors to and from the flat, contiguous CPU buffers that pccl reduces.

Why this exists: pccl's core reads and writes host memory only, and only contiguous buffers of the
dtypes in :data:`pccl_py.buffers.DTYPE_CODES`. torch hands the backend tensors that may be strided,
on a CUDA device, complex or bool. This module is the single place that decides how such a tensor
reaches the wire and how the result gets back, so the collectives themselves only see flat CPU
buffers:

* contiguous CPU tensors are used in place (no copy);
* non-contiguous CPU tensors are copied to a contiguous buffer and the result copied back;
* CUDA tensors are copied to *pinned* host memory (fast device-to-host DMA) and back after the
  collective; the copy is synchronous, so the CUDA stream has produced the data before pccl reads it;
* any other device raises InvalidArgumentError naming the device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ..errors import InvalidArgumentError


def cuda_available() -> bool:
    """True when torch can use CUDA here (CUDA tensors are then staged through pinned memory)."""
    return torch.cuda.is_available()


@dataclass
class Staged:
    """A flat contiguous CPU view of ``original``; ``unstage()`` writes results back if they differ."""

    original: torch.Tensor
    flat: torch.Tensor
    copied: bool

    def unstage(self) -> None:
        """Copies the flat buffer back into the caller's tensor (no-op when it was used in place)."""
        if self.copied:
            self.original.copy_(self.flat.view(self.original.shape))


def stage(t: torch.Tensor, *, read: bool = True) -> Staged:
    """Returns a flat contiguous CPU buffer holding t's values (unless read=False: its contents are
    then undefined, for outputs that are overwritten completely)."""
    if not isinstance(t, torch.Tensor):
        raise InvalidArgumentError(f"expected a torch.Tensor, not {type(t).__name__}")
    if t.is_sparse:
        raise InvalidArgumentError("the pccl backend does not support sparse tensors; pass tensor.to_dense()")
    device = t.device.type
    if device == "cpu":
        if t.is_contiguous():
            return Staged(t, t.view(-1), False)
        flat = t.contiguous().view(-1) if read else torch.empty(t.numel(), dtype=t.dtype)
        return Staged(t, flat, True)
    if device == "cuda":
        if not cuda_available():
            raise InvalidArgumentError("a CUDA tensor was passed but torch reports no usable CUDA device")
        host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        if read:
            host.copy_(t)  # synchronous: waits for the producing stream
        return Staged(t, host.view(-1), True)
    raise InvalidArgumentError(
        f"the pccl backend takes CPU tensors, and CUDA tensors when torch has CUDA (staged through pinned "
        f"host memory); got a tensor on device '{t.device}'. Move it with tensor.cpu()")


def stage_all(tensors: list[torch.Tensor], *, read: bool = True) -> list[Staged]:
    return [stage(t, read=read) for t in tensors]


def empty_cpu(numel: int, dtype: torch.dtype, like: Optional[torch.Tensor] = None) -> torch.Tensor:
    """A flat CPU scratch buffer; pinned when the tensors involved live on a CUDA device."""
    pin = like is not None and like.device.type == "cuda" and cuda_available()
    return torch.empty(numel, dtype=dtype, pin_memory=pin)
