"""The model's parameters as flat float buffers, one set per fragment.

Why this exists: every variant moves parameters in and out of the same few buffers (the global
parameters, the outer momentum, the pseudo-gradient, the reduced result, the quantization residual),
and a reduce of one contiguous buffer is far cheaper than one op per tensor. A fragment owns those
buffers for a contiguous run of the model's parameters; DiLoCo and AsyncDiLoCo use one fragment,
StreamingDiLoCo several.

The trap: the global parameters must be views the shared state can hash and overwrite in place, with
each parameter's own shape (so that a model whose shapes differ between peers fails the sync with a
MismatchError naming the tensor), yet stay one flat buffer for the reduce. Views into one contiguous
tensor give both.
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
        if p.dtype != dtype:
            raise InvalidArgumentError(
                f"parameter {name!r} is {p.dtype} but {params[0][0]!r} is {dtype}; all parameters must share one dtype")
    return params


def partition(params: Sequence[Tuple[str, torch.nn.Parameter]], fragments: int) -> List[List[int]]:
    """Splits parameter indices into `fragments` contiguous runs of about equal element counts."""
    if not isinstance(fragments, int) or isinstance(fragments, bool) or not 1 <= fragments <= len(params):
        raise InvalidArgumentError(
            f"fragments must be an int from 1 to the number of parameter tensors ({len(params)}), not {fragments!r}")
    sizes = [p.numel() for _, p in params]
    total = sum(sizes)
    groups: List[List[int]] = [[] for _ in range(fragments)]
    done = 0
    f = 0
    for i, n in enumerate(sizes):
        left_tensors = len(sizes) - i
        left_fragments = fragments - f
        # Move on once this fragment has its share, or when every later fragment needs one tensor.
        if groups[f] and f + 1 < fragments and (done >= total * (f + 1) / fragments or left_tensors < left_fragments):
            f += 1
        groups[f].append(i)
        done += n
    return groups


class Fragment:
    """A contiguous run of parameters and the flat buffers DiLoCo keeps for it (CPU memory)."""

    def __init__(self, index: int, params: Sequence[Tuple[str, torch.nn.Parameter]], *,
                 momentum: bool, residual: bool) -> None:
        self.index = index
        self.names = [name for name, _ in params]
        self.params = [p for _, p in params]
        self.dtype = self.params[0].dtype
        self.numel = sum(p.numel() for p in self.params)
        self.offsets: List[int] = []
        off = 0
        for p in self.params:
            self.offsets.append(off)
            off += p.numel()

        def buf() -> torch.Tensor:
            return torch.zeros(self.numel, dtype=self.dtype)

        self.global_ = buf()                       # the group's parameters (shared state)
        self.momentum = buf() if momentum else None  # outer momentum (shared state)
        self.send = buf()                          # this peer's pseudo-gradient (never written by a reduce)
        self.recv = buf()                          # the reduced sum
        self.residual = buf() if residual else None  # quantization error carried into the next round
        self.read_model(self.global_)

    @property
    def nbytes(self) -> int:
        return self.numel * self.global_.element_size()

    def views(self, flat: torch.Tensor) -> Dict[str, torch.Tensor]:
        """name -> view of `flat` with that parameter's shape."""
        return {name: flat[off:off + p.numel()].view(p.shape)
                for name, p, off in zip(self.names, self.params, self.offsets)}

    @torch.no_grad()
    def read_model(self, flat: torch.Tensor) -> None:
        for p, off in zip(self.params, self.offsets):
            flat[off:off + p.numel()].copy_(p.detach().reshape(-1))

    @torch.no_grad()
    def write_model(self, flat: torch.Tensor) -> None:
        for p, off in zip(self.params, self.offsets):
            p.copy_(flat[off:off + p.numel()].view(p.shape))

    @torch.no_grad()
    def mix_into_model(self, flat: torch.Tensor, keep: float) -> None:
        """param = keep * param + (1 - keep) * flat; keep = 0 copies flat exactly."""
        if keep == 0.0:
            self.write_model(flat)
            return
        for p, off in zip(self.params, self.offsets):
            p.mul_(keep).add_(flat[off:off + p.numel()].view(p.shape).to(p.device), alpha=1.0 - keep)

    def buffers(self) -> Dict[str, torch.Tensor]:
        """The buffers a checkpoint must keep, by role."""
        out = {"global": self.global_}
        for role, t in (("momentum", self.momentum), ("residual", self.residual)):
            if t is not None:
                out[role] = t
        return out


__all__ = ["Fragment", "model_parameters", "partition"]
