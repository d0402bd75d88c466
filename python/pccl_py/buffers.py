"""Turns numpy arrays and CPU torch tensors into (pointer, count, dtype) without copying.

torch is recognised by duck typing so that numpy users never import it. Every check runs before any
network traffic, and each failure says what was wrong and how to fix it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict

import numpy as np

from ._core import DataType
from .errors import InvalidArgumentError

# numpy/torch dtype name -> the core's element type (its IntEnum, defined in csrc/kernels/dtype.hpp).
DTYPE_CODES: Dict[str, DataType] = {d.name.lower(): d for d in DataType}


@dataclass(frozen=True)
class Buffer:
    obj: Any
    ptr: int
    count: int
    dtype: str
    nbytes: int
    writeable: bool


def _is_torch_tensor(x: Any) -> bool:
    t = type(x)
    return t.__module__.startswith("torch") and hasattr(x, "data_ptr") and hasattr(x, "is_contiguous")


def describe(x: Any, name: str) -> Buffer:
    """Validates x and returns a zero-copy view of it, or raises InvalidArgumentError."""
    if isinstance(x, np.ndarray):
        dtype = x.dtype.name
        if dtype not in DTYPE_CODES:
            raise InvalidArgumentError(
                f"{name} has dtype {x.dtype}, which all_reduce does not support; "
                f"use one of {', '.join(k for k in DTYPE_CODES if k != 'bfloat16')} (bfloat16 via torch)")
        if not x.flags.c_contiguous:
            raise InvalidArgumentError(
                f"{name} is not C-contiguous (strides {x.strides}); pass np.ascontiguousarray({name}) "
                "and copy the result back")
        if x.dtype.byteorder not in ("=", "|") and not (x.dtype.byteorder == "<" and np.little_endian):
            raise InvalidArgumentError(f"{name} is not in native byte order; use {name}.astype({name}.dtype.newbyteorder('='))")
        return Buffer(x, x.ctypes.data, int(x.size), dtype, int(x.nbytes), bool(x.flags.writeable))
    if _is_torch_tensor(x):
        device = x.device.type
        if device != "cpu":
            raise InvalidArgumentError(
                f"{name} is on device '{device}'; pccl_py all_reduce takes CPU tensors. Move it with "
                f"{name}.cpu() (the torch backend stages CUDA tensors itself)")
        if x.is_sparse if hasattr(x, "is_sparse") else False:
            raise InvalidArgumentError(f"{name} is a sparse tensor; pass {name}.to_dense()")
        if not x.is_contiguous():
            raise InvalidArgumentError(f"{name} is not contiguous; pass {name}.contiguous() and copy the result back")
        dtype = str(x.dtype).replace("torch.", "")
        aliases = {"half": "float16", "float": "float32", "double": "float64"}
        dtype = aliases.get(dtype, dtype)
        if dtype not in DTYPE_CODES:
            raise InvalidArgumentError(
                f"{name} has dtype {x.dtype}, which all_reduce does not support; supported: {', '.join(DTYPE_CODES)}")
        count = int(x.numel())
        return Buffer(x, int(x.data_ptr()), count, dtype, count * int(x.element_size()), True)
    raise InvalidArgumentError(
        f"{name} must be a numpy.ndarray or a CPU torch.Tensor, not {type(x).__module__}.{type(x).__name__}")


def check_output(src: Buffer, out: Buffer) -> None:
    """out must match src in dtype and element count, be writeable, and not partially overlap it."""
    if out.dtype != src.dtype:
        raise InvalidArgumentError(f"out has dtype {out.dtype} but the input has {src.dtype}; they must match")
    if out.count != src.count:
        raise InvalidArgumentError(f"out has {out.count} elements but the input has {src.count}; they must match")
    if not out.writeable:
        raise InvalidArgumentError("out is read-only; pass a writeable array")
    if out.ptr != src.ptr and out.nbytes and src.nbytes:
        if out.ptr < src.ptr + src.nbytes and src.ptr < out.ptr + out.nbytes:
            raise InvalidArgumentError("out partially overlaps the input; pass the same array (in place) or a separate one")
