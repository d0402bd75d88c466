"""16-bit float kernels, bit for bit (csrc/kernels/half.hpp and their users).

float16 and bfloat16 conversions run eight lanes at a time with a scalar tail. These tests pin every
result bit to an independent reference: numpy's float16 arithmetic (which widens to float32 and rounds
to nearest even once) and torch's bfloat16 conversion. Inputs cover every float16 bit pattern, the ties
between neighbouring 16-bit values, the subnormal and overflow boundaries, and random float32 bit
patterns, at lengths that leave a scalar tail, so a vector lane that took the wrong branch shows here.
NaN payloads are not specified: a NaN only has to stay a NaN.
"""

from __future__ import annotations

import numpy as np
import pytest

import pccl_py
from support import run_concurrently

ALL_HALVES = np.arange(1 << 16, dtype=np.uint16).view(np.float16)
ALGORITHMS = ["ring", "star"]


def _float32_probes() -> np.ndarray:
    """float32 values around every float16 and bfloat16 rounding decision, plus random bit patterns."""
    halves = ALL_HALVES.astype(np.float32)
    finite = np.sort(halves[np.isfinite(halves)])
    mids = (finite[:-1].astype(np.float64) + finite[1:]) / 2  # exact ties for float16 (where representable)
    mids = mids.astype(np.float32)
    bits = np.concatenate([halves.view(np.uint32), mids.view(np.uint32)])
    around = np.concatenate([bits - 1, bits, bits + 1]).astype(np.uint32)
    bf16_ties = (np.arange(1 << 16, dtype=np.uint32) << 16) | np.uint32(0x8000)  # exact bfloat16 ties
    rng = np.random.default_rng(16)
    random = rng.integers(0, 1 << 32, size=300_000, dtype=np.uint64).astype(np.uint32)
    edges = np.array([65504, 65519, 65519.996, 65520, 65536, 6.0e-8, 2.98e-8, 2.9802322e-8, 6.1e-5,
                      6.1035156e-05, 3.4e38, np.inf, -np.inf, 0.0, -0.0], dtype=np.float32).view(np.uint32)
    out = np.concatenate([around, bf16_ties, bf16_ties - 1, bf16_ties + 1, random, edges]).view(np.float32)
    return out[: (len(out) // 8) * 8 + 5]  # a scalar tail


def _same_bits_or_both_nan(got: np.ndarray, want: np.ndarray, what: str) -> None:
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(got), nan), f"{what}: NaN where there should be none, or the reverse"
    bad = np.flatnonzero(got[~nan].view(np.uint16 if got.itemsize == 2 else np.uint32)
                         != want[~nan].view(np.uint16 if want.itemsize == 2 else np.uint32))
    assert bad.size == 0, (f"{what}: {bad.size} elements differ, first inputs at {bad[:5]}: "
                           f"got {got[~nan][bad[:5]]}, want {want[~nan][bad[:5]]}")


def _all_reduce_pair(local_group, xs: list, **kwargs) -> None:
    peers = local_group(2)
    run_concurrently(*[lambda p=p, x=x: p.all_reduce(x, **kwargs) for p, x in zip(peers, xs)], timeout=120)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_fp16_wire_rounds_every_float32_like_numpy(local_group, algorithm: str) -> None:
    """The other peer adds -0.0, which changes nothing, so the result is exactly the fp16 encoding of
    this peer's values, decoded: numpy's float32 -> float16 -> float32."""
    x = _float32_probes()
    xs = [x.copy(), np.full_like(x, -0.0)]
    _all_reduce_pair(local_group, xs, algorithm=algorithm, quantization="fp16")
    with np.errstate(over="ignore"):
        want = x.astype(np.float16).astype(np.float32)
    for r in xs:
        _same_bits_or_both_nan(r, want, f"fp16 wire, {algorithm}")


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_bf16_wire_rounds_every_float32_like_torch(local_group, algorithm: str) -> None:
    """With bf16 on the wire, every float32 probe value (NaN, infinities, signed zeros, subnormals, rounding
    ties) comes out of an all_reduce with exactly the bits torch's float32 -> bfloat16 -> float32 conversion
    gives, for every algorithm."""
    torch = pytest.importorskip("torch")
    x = _float32_probes()
    xs = [x.copy(), np.full_like(x, -0.0)]
    _all_reduce_pair(local_group, xs, algorithm=algorithm, quantization="bf16")
    want = torch.from_numpy(x).to(torch.bfloat16).to(torch.float32).numpy()
    for r in xs:
        _same_bits_or_both_nan(r, want, f"bf16 wire, {algorithm}")


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("op", ["SUM", "PROD", "MIN", "MAX", "AVG"])
def test_float16_reductions_match_numpy_for_every_bit_pattern(local_group, op: str, algorithm: str) -> None:
    """Every float16 value meets a shuffled copy of every float16 value; numpy computes the same
    widen-combine-round step."""
    a = np.concatenate([ALL_HALVES, ALL_HALVES[:5]])  # and a scalar tail
    b = np.random.default_rng(3).permutation(a)
    xs = [a.copy(), b.copy()]
    _all_reduce_pair(local_group, xs, op=getattr(pccl_py.ReduceOp, op), algorithm=algorithm)
    fa, fb = a.astype(np.float32), b.astype(np.float32)
    with np.errstate(all="ignore"):
        combined = {"SUM": fa + fb, "AVG": fa + fb, "PROD": fa * fb,
                    "MIN": np.minimum(fa, fb), "MAX": np.maximum(fa, fb)}[op].astype(np.float16)
        if op == "AVG":  # the sum is rounded to float16, then divided once
            combined = (combined.astype(np.float32) / np.float32(2)).astype(np.float16)
    for r in xs:
        _same_bits_or_both_nan(r, combined, f"float16 {op}, {algorithm}")
