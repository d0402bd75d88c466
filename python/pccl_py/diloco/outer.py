"""The outer optimizer and the pseudo-gradient, with error feedback for low-bit formats.

Why this exists: every variant computes a pseudo-gradient (where the round started minus where this
peer's training took it), averages it over the group, and takes one SGD step with (Nesterov)
momentum on the global parameters. Written once here, the three variants cannot drift apart.

The traps:
- Error feedback must add back exactly what quantization dropped. The residual is taken with the
  wire codec itself (``pccl_py.quantize_roundtrip``), which encodes a buffer the way the first hop of
  the reduce does, so what a peer carries into the next round is bit for bit what it did not send.
- The update must be the same arithmetic on every peer. Each peer applies it to bitwise-identical
  inputs (the same global parameters, momentum and reduced sum) with the same torch element-wise
  kernels; the shared-state sync after each outer step then verifies the result by hash and repairs
  any peer whose CPU rounded differently.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..errors import InvalidArgumentError
from .params import Fragment

QUANTIZATIONS = (None, "fp16", "bf16", "q8", "q4")


def check_quantization(value: Optional[str]) -> Optional[str]:
    if isinstance(value, str) and value.lower() in ("none", ""):
        return None
    if value is not None and (not isinstance(value, str) or value.lower() not in QUANTIZATIONS):
        raise InvalidArgumentError(f"quantization must be None, 'fp16', 'bf16', 'q8' or 'q4', not {value!r}")
    return value.lower() if isinstance(value, str) else None


class OuterSGD:
    """SGD with optional (Nesterov) momentum, as torch.optim.SGD with dampening 0 computes it:
    m = mu * m + g; step = g + mu * m (Nesterov) or m; theta -= lr * step."""

    def __init__(self, lr: float, momentum: float, nesterov: bool) -> None:
        for name, value, hi in (("outer_lr", lr, 100.0), ("outer_momentum", momentum, 1.0)):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value <= hi \
                    or (name == "outer_momentum" and value == 1.0):
                raise InvalidArgumentError(f"{name} must be a number in [0, {hi}{')' if name == 'outer_momentum' else ']'}, "
                                           f"not {value!r}")
        if not isinstance(nesterov, bool):
            raise InvalidArgumentError(f"nesterov must be True or False, not {nesterov!r}")
        if nesterov and momentum == 0:
            raise InvalidArgumentError("nesterov=True needs outer_momentum > 0 (as in torch.optim.SGD)")
        self.lr = float(lr)
        self.momentum = float(momentum)
        self.nesterov = nesterov

    @torch.no_grad()
    def apply(self, frag: Fragment, grad: torch.Tensor) -> None:
        """theta(frag.global_) -= lr * step(grad); updates frag.momentum. grad may be overwritten."""
        if frag.momentum is not None:
            frag.momentum.mul_(self.momentum).add_(grad)
            if self.nesterov:
                grad.add_(frag.momentum, alpha=self.momentum)
            else:
                grad.copy_(frag.momentum)
        frag.global_.sub_(grad, alpha=self.lr)


@torch.no_grad()
def pseudo_gradient(frag: Fragment, start: torch.Tensor, quantization: Optional[str], error_feedback: bool) -> None:
    """frag.send = start - (this peer's parameters) [+ residual]; with error feedback, the residual
    becomes what quantizing frag.send drops."""
    frag.read_model(frag.send)
    torch.sub(start, frag.send, out=frag.send)
    if quantization is None or not error_feedback or frag.residual is None:
        return
    from .. import quantize_roundtrip  # the wire codec, run on this peer

    frag.send.add_(frag.residual)
    quantize_roundtrip(frag.send, quantization, out=frag.residual)  # residual := Q(send)
    torch.sub(frag.send, frag.residual, out=frag.residual)          # residual := send - Q(send)


__all__ = ["OuterSGD", "pseudo_gradient", "check_quantization", "QUANTIZATIONS"]
