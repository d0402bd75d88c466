"""The model's parameters as flat float buffers, cut into fragments.

Why this exists: every variant moves parameters in and out of the same few buffers (the global
parameters, the outer momentum, the pseudo-gradient, the reduced result, the quantization residual),
and a reduce of one contiguous buffer is far cheaper than one op per tensor. The global parameters
and the momentum are one flat buffer each for the whole model; a fragment is a range of elements of
that concatenation (tensors may straddle two fragments), with its own pseudo-gradient, result and
residual buffers. DiLoCo and AsyncDiLoCo use one fragment, StreamingDiLoCo several of equal size.

The trap: the global parameters must be views the shared state can hash and overwrite in place, with
each parameter's own shape (so that a model whose shapes differ between peers fails the sync with a
MismatchError naming the tensor), yet stay flat for the reduce. Per-parameter views into one
contiguous buffer give both, whatever the fragment boundaries.
"""

from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple

import torch

from ..errors import InvalidArgumentError

_DTYPES = (torch.float32, torch.float64)


def model_parameters(model: Any) -> List[Tuple[str, torch.nn.Parameter]]:
    """The parameters DiLoCo synchronises: every parameter that requires a gradient, in model order."""
    if not isinstance(model, torch.nn.Module):
        raise InvalidArgumentError(f"model must be a torch.nn.Module, not {type(model).__name__}")
    params = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if not params:
        raise InvalidArgumentError("the model has no parameters that require a gradient; nothing to train")
    dtype = params[0][1].dtype
    for name, p in params:
        if p.dtype not in _DTYPES:
            raise InvalidArgumentError(
                f"parameter {name!r} is {p.dtype}; DiLoCo needs float32 or float64 parameters (keep master "
                "weights in float32 for mixed precision)")
        if not p.is_contiguous():
            raise InvalidArgumentError(f"parameter {name!r} is not contiguous; DiLoCo copies parameters as flat runs")
        if p.dtype != dtype:
            raise InvalidArgumentError(
                f"parameter {name!r} is {p.dtype} but {params[0][0]!r} is {dtype}; all parameters must share one dtype")
    return params


def partition(numel: int, tensors: int, fragments: int) -> List[Tuple[int, int]]:
    """Element ranges [lo, hi) of `fragments` equal parts of a flat buffer of `numel` elements."""
    if not isinstance(fragments, int) or isinstance(fragments, bool) or not 1 <= fragments <= tensors:
        raise InvalidArgumentError(
            f"fragments must be an int from 1 to the number of parameter tensors ({tensors}), not {fragments!r}")
    cuts = [numel * k // fragments for k in range(fragments + 1)]
    return [(cuts[k], cuts[k + 1]) for k in range(fragments)]


class ModelBuffers:
    """The global parameters (and outer momentum) of the whole model, flat, in CPU memory."""

    def __init__(self, params: Sequence[Tuple[str, torch.nn.Parameter]], *, momentum: bool) -> None:
        self.names = [name for name, _ in params]
        self.params = [p for _, p in params]
        self.dtype = self.params[0].dtype
        self.offsets: List[int] = []
        off = 0
        for p in self.params:
            self.offsets.append(off)
            off += p.numel()
        self.numel = off
        self.global_ = torch.zeros(off, dtype=self.dtype)
        self.momentum = torch.zeros(off, dtype=self.dtype) if momentum else None

    def views(self, flat: torch.Tensor) -> Dict[str, torch.Tensor]:
        """name -> view of `flat` (a whole-model buffer) with that parameter's shape."""
        return {name: flat[off:off + p.numel()].view(p.shape)
                for name, p, off in zip(self.names, self.params, self.offsets)}


class Fragment:
    """Elements [lo, hi) of the model's flat parameters, and the buffers DiLoCo keeps for them."""

    def __init__(self, index: int, model: ModelBuffers, lo: int, hi: int, *, residual: bool) -> None:
        self.index = index
        self.lo, self.hi = lo, hi
        self.numel = hi - lo
        self.dtype = model.dtype
        # (parameter, first element of it in this fragment, elements, where they go in the fragment)
        self._pieces = []
        for p, off in zip(model.params, model.offsets):
            a, b = max(lo, off), min(hi, off + p.numel())
            if a < b:
                self._pieces.append((p, a - off, b - a, a - lo))
        self.global_ = model.global_[lo:hi]        # views: the shared state's entries are views too
        self.momentum = model.momentum[lo:hi] if model.momentum is not None else None

        def buf() -> torch.Tensor:
            return torch.zeros(self.numel, dtype=self.dtype)

        self.send = buf()                          # this peer's pseudo-gradient (never written by a reduce)
        self.recv = buf()                          # the reduced sum
        self.residual = buf() if residual else None  # quantization error carried into the next round
        self.read_model(self.global_)

    @torch.no_grad()
    def read_model(self, flat: torch.Tensor) -> None:
        for p, start, n, at in self._pieces:
            flat[at:at + n].copy_(p.detach().reshape(-1)[start:start + n])

    @torch.no_grad()
    def write_model(self, flat: torch.Tensor) -> None:
        for p, start, n, at in self._pieces:
            p.view(-1)[start:start + n].copy_(flat[at:at + n])

    @torch.no_grad()
    def mix_into_model(self, flat: torch.Tensor, keep: float) -> None:
        """param = keep * param + (1 - keep) * flat; keep = 0 copies flat exactly."""
        if keep == 0.0:
            self.write_model(flat)
            return
        for p, start, n, at in self._pieces:
            p.view(-1)[start:start + n].mul_(keep).add_(flat[at:at + n].to(p.device), alpha=1.0 - keep)

    def buffers(self) -> Dict[str, torch.Tensor]:
        """The buffers a checkpoint must keep, by role."""
        out = {"global": self.global_}
        for role, t in (("momentum", self.momentum), ("residual", self.residual)):
            if t is not None:
                out[role] = t
        return out


__all__ = ["Fragment", "ModelBuffers", "model_parameters", "partition"]
