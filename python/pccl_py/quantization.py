"""What a wire quantization does to a tensor, without a network: decode(encode(x)).

Error feedback needs the value a peer's encoding actually sends: residual = x - quantize_roundtrip(x, fmt)
is the part of x the wire dropped, to be added to the next step's input. The C++ core runs the same
encoder and decoder as all_reduce (csrc/kernels/codec.cpp), with the GIL released.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _core
from .buffers import DTYPE_CODES, check_output, describe
from .communicator import _quantization
from .errors import InvalidArgumentError


def quantize_roundtrip(x: Any, quantization: str, out: Any = None) -> Any:
    """Returns decode(encode(x)) in the wire format `quantization` ("fp16", "bf16", "q8" or "q4").

    x: a contiguous float32/float64 numpy array or CPU torch tensor. The result goes into out (same dtype
    and element count; out may be x itself) or a new array of x's kind, and is returned. Blocks (q8, q4)
    start at x's first element, so the result is bit for bit what all_reduce's first hop sends for a run
    of elements that starts on a block boundary - in particular for a buffer whose ring chunk starts at
    element 0, or for any buffer in the star algorithm's first hop. NaN/Inf follow docs/quantization.md
    (a q8/q4 block holding one becomes NaN throughout).

    Raises InvalidArgumentError for an unknown format, another dtype, or a bad out.
    """
    quant = _quantization(quantization)
    src = describe(x, "x")
    if quant and src.dtype not in ("float32", "float64"):
        raise InvalidArgumentError(
            f"quantization={quantization!r} applies to float32 and float64 tensors only, not {src.dtype}")
    if out is None:
        out = np.empty_like(x) if isinstance(x, np.ndarray) else x.new_empty(x.shape)
    dst = describe(out, "out")
    check_output(src, dst)
    _core.quantize_roundtrip(quant, DTYPE_CODES[src.dtype], src.ptr, dst.ptr, src.count)
    return out
