"""Deterministic inputs and numpy reference results for the all-reduce tests."""

from __future__ import annotations

import numpy as np

INT_DTYPES = {"int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64"}


def make_input(dtype: str, count: int, seed: int, index: int, op: str) -> np.ndarray:
    """Contribution of peer `index`. bfloat16 is produced as float32 values exactly representable in bf16."""
    rng = np.random.default_rng([seed, index])
    if dtype in INT_DTYPES:
        info = np.iinfo(dtype)
        if op == "PROD":
            lo, hi = (-3, 4) if info.min < 0 else (0, 4)
        else:
            lo, hi = max(info.min, -1000), min(info.max, 1000)
        return rng.integers(lo, hi, size=count, endpoint=False).astype(dtype)
    vals = rng.standard_normal(count)
    if op == "PROD":
        vals = 1.0 + 0.1 * vals
    if dtype == "bfloat16":
        f = vals.astype(np.float32)
        return (f.view(np.uint32) & np.uint32(0xFFFF0000)).view(np.float32)
    return vals.astype(dtype)


def reference_result(dtype: str, count: int, seed: int, indices: list[int], op: str) -> np.ndarray:
    stack = [make_input(dtype, count, seed, i, op) for i in indices]
    n = len(indices)
    if dtype in INT_DTYPES:
        acc = stack[0].copy()
        for a in stack[1:]:
            if op in ("SUM", "AVG"):
                acc = np.add(acc, a, dtype=dtype)
            elif op == "PROD":
                acc = np.multiply(acc, a, dtype=dtype)
            elif op == "MIN":
                acc = np.minimum(acc, a)
            else:
                acc = np.maximum(acc, a)
        if op == "AVG":
            if np.issubdtype(acc.dtype, np.signedinteger):
                wide = acc.astype(np.int64)
                acc = (np.sign(wide) * (np.abs(wide) // n)).astype(dtype)
            else:
                acc = (acc.astype(np.uint64) // np.uint64(n)).astype(dtype)
        return acc
    wide = np.stack([s.astype(np.float64) for s in stack]) if count else np.zeros((n, 0))
    if op == "SUM":
        return wide.sum(axis=0)
    if op == "AVG":
        return wide.mean(axis=0)
    if op == "PROD":
        return wide.prod(axis=0)
    if op == "MIN":
        return wide.min(axis=0)
    return wide.max(axis=0)


_RTOL = {"float16": 1e-2, "bfloat16": 3e-2, "float32": 1e-5, "float64": 1e-12}


def results_match(dtype: str, got: np.ndarray, ref: np.ndarray, op: str, n: int) -> tuple[bool, str]:
    """Exact for integers; for floats, within the error a different summation order can cause."""
    if got.shape != ref.shape:
        return False, f"shape {got.shape} != {ref.shape}"
    if dtype in INT_DTYPES:
        bad = np.flatnonzero(got != ref)
        return (bad.size == 0), ("" if bad.size == 0 else f"{bad.size} mismatches, first at {bad[0]}: {got[bad[0]]} vs {ref[bad[0]]}")
    rtol = _RTOL[dtype]
    atol = rtol * n * 4  # inputs are O(1); sums of n of them carry absolute rounding error ~ n * eps
    ok = np.allclose(got.astype(np.float64), ref, rtol=rtol, atol=atol)
    if ok:
        return True, ""
    err = np.abs(got.astype(np.float64) - ref)
    i = int(np.argmax(err))
    return False, f"max abs error {err[i]} at {i}: {got[i]} vs {ref[i]}"
