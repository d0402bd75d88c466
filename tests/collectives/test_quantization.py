"""Wire quantization (fp16, bf16, q8, q4) of float32/float64 all-reduces, docs/quantization.md.

One cluster per world size (2, 3, 4 peers), reused by every test of that size. For each format x dtype x
algorithm (ring, star) the tests check, on standard-normal inputs:

* the result is bitwise identical on every peer (sha256), even when it holds NaN or infinities;
* its relative L2 error against the exact float64 sum stays below the documented value with margin
  (docs: ~3e-4 fp16, ~2.4e-3 bf16, ~9e-3 q8, ~0.13 q4 for 3 peers, growing slowly with the peer count);
* fp16/bf16 results consist of decoded 16-bit values only (the owner of a chunk adopts what it sends);
* each peer sends what the format's size predicts (ReduceInfo.tx_bytes): 2 bytes per element for
  fp16/bf16, 1 + 8/256 for q8, 1/2 + 4/64 for q4, against 4 (float32) or 8 (float64) unquantized; q4
  sends less than q8;
* NaN and +-Inf: fp16 and bf16 keep them where they are (and fp16 turns finite values beyond 65504 into
  +-Inf); q8 (q4) turns exactly the 256-element (64-element) block holding a non-finite value into NaN and
  keeps every other block finite and accurate; so does a finite block whose scale overflows;
* non-float dtypes with quantization raise InvalidArgumentError without sending anything;
* AVG/MIN/MAX/PROD and odd counts (0, 1, 3, 255, 257, 65537) stay identical and accurate;
* peers that disagree on quantization (none vs q8, q8 vs q4) all raise MismatchError - also one that
  calls the op only after the others already failed it;
* pccl_py.quantize_roundtrip gives, bit for bit, a numpy reference of the q8 and q4 formats written here
  (including NaN/Inf blocks, overflowing scales, ties, subnormals and short tails), and exactly what the
  first hop of a ring or star all-reduce sends, for every op (decode_reduce equals decode, then reduce).

The measured errors are printed at the end of the module (visible with -s) and written to
$PCCL_QUANT_STATS if set.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest

import pccl_py
from harness import Cluster, Peer
from support import assert_within, join, run_concurrently

WORLDS = [2, 3, 4]
FORMATS = ["fp16", "bf16", "q8", "q4"]
DTYPES = ["float32", "float64"]
ALGORITHMS = ["ring", "star"]
COMM = dict(timeout=30.0, heartbeat_timeout=3.0)
# A multiple of 256 * lcm(2, 3, 4): every ring chunk starts on a q8 (and q4) block boundary for every world
# size, so the q8 blocks are exactly [256 b, 256 b + 256). 1.2 MiB of float32: several 256 KiB ring pieces.
COUNT = 307_200
# docs/quantization.md (3 peers): fp16 ~3e-4, bf16 ~2.4e-3, q8 ~9e-3, q4 ~0.13; about 3x margin for 4 peers
# and noise. q4 has less (0.2: 1.56x its 3-peer ring error, 1.39x at 4 peers), since a much looser bound
# would not notice a worse format; at 307200 elements its error varies by about 1% between seeds.
MAX_REL_L2 = {"fp16": 1e-3, "bf16": 6e-3, "q8": 2.5e-2, "q4": 0.2}
WIRE_BYTES_PER_ELEMENT = {"fp16": 2.0, "bf16": 2.0, "q8": 1.0 + 8.0 / 256, "q4": 0.5 + 4.0 / 64}
ESIZE = {"float32": 4, "float64": 8}
Q8_BLOCK = 256
BLOCK = {"q8": Q8_BLOCK, "q4": 64}

MEASURED: dict[str, dict] = {}


@pytest.fixture(scope="module", params=WORLDS, ids=lambda w: f"world{w}")
def group(request, tmp_path_factory):
    """(cluster, members in rank order) of request.param peers; pytest runs all tests of one world size
    together, so only one cluster is alive at a time."""
    world = request.param
    with Cluster(log_dir=str(tmp_path_factory.mktemp(f"quant{world}"))) as c:
        members = join(c, world, COMM)
        assert len(members) == world
        yield c, members


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    if not MEASURED:
        return
    print("\nrelative L2 error of quantized all-reduces (standard-normal inputs, "
          f"{COUNT} elements):")
    for key in sorted(MEASURED):
        m = MEASURED[key]
        print(f"  {key}: rel_l2={m['rel_l2']:.3e} tx_ratio={m['tx_ratio']:.4f}")
    path = os.environ.get("PCCL_QUANT_STATS")
    if path:
        with open(path, "w") as f:
            json.dump(MEASURED, f, indent=1, sort_keys=True)


def _run(cluster: Cluster, members: list[Peer], timeout: float = 60.0, **cmd) -> list[dict]:
    res = cluster.all_reduce(members, timeout=timeout, **cmd)
    for m, r in zip(members, res):
        assert r["ok"], f"peer {m.index}: {r}"
    return res


_baseline_tx: dict[tuple, list[int]] = {}


def _unquantized_tx(cluster: Cluster, members: list[Peer], dtype: str, algorithm: str) -> list[int]:
    key = (len(members), dtype, algorithm)
    if key not in _baseline_tx:
        res = _run(cluster, members, dtype=dtype, count=COUNT, seed=1, algorithm=algorithm, tag=9)
        assert all(r["algorithm"] == algorithm for r in res), res
        _baseline_tx[key] = [r["tx_bytes"] for r in res]
    return _baseline_tx[key]


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fmt", FORMATS)
def test_quantized_result_identical_accurate_and_smaller(group, fmt: str, dtype: str, algorithm: str) -> None:
    """For every wire format, dtype and algorithm, a quantized all-reduce leaves the input unchanged, gives every
    peer bitwise the same finite result within the format's error bound (and on its value grid for fp16/bf16),
    and sends fewer bytes than the unquantized op by the format's ratio."""
    cluster, members = group
    world = len(members)
    everyone = [m.index for m in members]
    res = _run(cluster, members, dtype=dtype, count=COUNT, seed=40 + world, algorithm=algorithm, quantization=fmt,
               expect_from=everyone, tag=3)

    assert all(r["algorithm"] == algorithm and r["world_size"] == world for r in res), res
    shas = {r["sha"] for r in res}
    assert len(shas) == 1, f"{fmt}/{dtype}/{algorithm}: peers hold different results"
    assert all(r["input_unchanged"] for r in res)
    # No element of standard-normal data may become NaN/Inf, and every element is compared.
    assert all(r["n_nan"] == 0 and r["n_inf"] == 0 and r["finite_compared"] == COUNT for r in res), res[0]
    errors = [r["rel_l2"] for r in res]
    assert len(set(errors)) == 1  # identical results, identical errors
    err = errors[0]
    assert err < MAX_REL_L2[fmt], f"{fmt}/{dtype}/{algorithm}, {world} peers: relative L2 error {err:.3e}"
    assert err > 0, "a quantized result cannot be exact on random data: was it quantized at all?"
    if fmt in ("fp16", "bf16"):
        assert all(r["quant_grid"] for r in res), f"{fmt} result holds values that are not decoded {fmt} values"

    base = _unquantized_tx(cluster, members, dtype, algorithm)
    want = WIRE_BYTES_PER_ELEMENT[fmt] / ESIZE[dtype]
    ratios = [r["tx_bytes"] / b for r, b in zip(res, base)]
    for m, r, b, ratio in zip(members, res, base, ratios):
        assert 0 < r["tx_bytes"] < b, (m.index, r["tx_bytes"], b)
        assert abs(ratio - want) < 0.01, (
            f"{fmt}/{dtype}/{algorithm}: peer {m.index} sent {r['tx_bytes']} bytes, {ratio:.4f} of the "
            f"unquantized {b}; expected about {want:.4f}")
    MEASURED[f"{fmt}/{dtype}/{algorithm}/world{world}"] = dict(rel_l2=err, tx_ratio=max(ratios))


def _specials(members: list[Peer]) -> list:
    """NaN and infinities in some peers' inputs (third field: the worker index whose input gets it) or in
    everyone's (no third field). Indices sit on and next to ring chunk boundaries and at both ends."""
    first, second, last = members[0].index, members[1].index, members[-1].index
    return [
        [5, "nan", first],
        [102_399, "inf", second],  # last element of chunk 0 for 3 peers
        [153_600, "-inf", last],  # first element of chunk 1 for 2 peers, chunk 2 for 4 peers
        [250_000, "inf", first], [250_000, "-inf", second],  # inf + -inf = NaN
        [300_000, "inf"],
        [COUNT - 1, "nan"],
    ]


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fmt", FORMATS)
def test_nan_and_inf(group, fmt: str, dtype: str, algorithm: str) -> None:
    """NaN and infinities in quantized all-reduces: fp16/bf16 keep NaN and +-Inf element for element; q8/q4 turn
    each block holding a non-finite value into NaN and touch no other element; every peer holds the same bits."""
    cluster, members = group
    everyone = [m.index for m in members]
    specials = _specials(members)
    res = _run(cluster, members, dtype=dtype, count=COUNT, seed=70, algorithm=algorithm, quantization=fmt,
               expect_from=everyone, specials=specials, tag=4)
    assert len({r["sha"] for r in res}) == 1, f"{fmt}/{dtype}/{algorithm}: peers differ on a result with NaN/Inf"
    r = res[0]
    # The float64 reference has NaN where a NaN or inf + -inf met, and +-Inf elsewhere.
    assert r["ref_nan_idx"] == [5, 250_000, COUNT - 1] and r["ref_posinf_idx"] == [102_399, 300_000], r
    assert r["ref_neginf_idx"] == [153_600], r
    if fmt in ("fp16", "bf16"):
        # NaN stays NaN, +-Inf stays +-Inf, element for element; everything else is finite.
        assert r["nan_idx"] == r["ref_nan_idx"], (fmt, r["nan_idx"])
        assert r["posinf_idx"] == r["ref_posinf_idx"], (fmt, r["posinf_idx"])
        assert r["neginf_idx"] == r["ref_neginf_idx"], (fmt, r["neginf_idx"])
        assert r["finite_compared"] == COUNT - 6
    else:
        # q8/q4: each block holding a non-finite value decodes as NaN throughout (never as a finite
        # value), and no other element is touched.
        block = BLOCK[fmt]
        blocks = sorted({i // block for i, *_ in specials})
        want_nan = [i for b in blocks for i in range(b * block, min(COUNT, (b + 1) * block))]
        assert r["n_inf"] == 0, f"{fmt} produced infinities at {r['posinf_idx'] + r['neginf_idx']}"
        assert r["n_nan"] == len(want_nan) and r["nan_idx"] == want_nan, (
            f"{fmt} NaN blocks: got {r['n_nan']} NaN starting {r['nan_idx'][:3]}..., want blocks {blocks}")
        assert r["finite_compared"] == COUNT - len(want_nan)
    # The finite part stays as accurate as without special values.
    assert r["rel_l2"] < MAX_REL_L2[fmt], f"{fmt}: finite part has relative L2 error {r['rel_l2']:.3e}"


@pytest.mark.parametrize("fmt", ["q8", "q4"])
def test_nan_block_follows_ring_chunks_when_unaligned(group, fmt: str) -> None:
    """With a count that does not split into block-aligned chunks, the NaN region is still one block of
    its ring chunk: a contiguous run of at most one block (256 elements for q8, 64 for q4) around the
    NaN, never spilling further."""
    cluster, members = group
    block = BLOCK[fmt]
    count = COUNT + 1
    nan_at = [1000, COUNT // 2 + 7, count - 2]
    res = _run(cluster, members, dtype="float32", count=count, seed=71, algorithm="ring", quantization=fmt,
               expect_from=[m.index for m in members], specials=[[i, "nan", members[-1].index] for i in nan_at],
               tag=5)
    assert len({r["sha"] for r in res}) == 1
    r = res[0]
    nan = np.array(r["nan_idx"])
    assert r["n_inf"] == 0 and r["n_nan"] == len(nan)
    runs = np.split(nan, np.flatnonzero(np.diff(nan) != 1) + 1)
    assert len(runs) == len(nan_at), runs
    for run, i in zip(runs, nan_at):
        assert run[0] <= i <= run[-1] and len(run) <= block, (i, run[0], len(run))
        # Only a block cut short by a chunk end (or the array end) may be shorter than a whole block.
    assert sum(len(x) == block for x in runs) >= len(runs) - 1, [len(x) for x in runs]
    assert r["rel_l2"] < MAX_REL_L2[fmt]


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("fmt", ["q8", "q4"])
def test_block_whose_scale_overflows_becomes_nan(group, fmt: str, algorithm: str) -> None:
    """Finite values whose block range (max - min) overflows float32 cannot be scaled: their block travels
    as NaN (never as finite values or infinities), and so does a q4 block whose min, rounded down to
    bfloat16, leaves float32's range. Every other element stays finite and accurate."""
    cluster, members = group
    block = BLOCK[fmt]
    first = members[0].index
    # Block 3: +-3e38 in one input (their sums with the others' standard-normal values stay finite).
    # Block 10: one input holds -3.4e38, whose bfloat16 rounding toward -inf is -inf (q4 only; q8 keeps
    # that block finite, as its f32 min is exact).
    specials = [[3 * block + 1, 3e38, first], [3 * block + 5, -3e38, first], [10 * block + 2, -3.4e38, first]]
    res = _run(cluster, members, dtype="float32", count=COUNT, seed=73, algorithm=algorithm, quantization=fmt,
               expect_from=[m.index for m in members], specials=specials, tag=6)
    assert len({r["sha"] for r in res}) == 1
    r = res[0]
    nan_blocks = [3, 10] if fmt == "q4" else [3]
    want_nan = [i for b in nan_blocks for i in range(b * block, (b + 1) * block)]
    assert r["n_inf"] == 0, f"{fmt} produced infinities at {r['posinf_idx'] + r['neginf_idx']}"
    assert r["nan_idx"] == want_nan, f"{fmt}: NaN at {r['nan_idx'][:5]}... ({r['n_nan']}), want blocks {nan_blocks}"
    # The finite part: everything but the NaN blocks, and for q8 block 10 (whose -3.4e38 dwarfs the rest).
    assert r["finite_compared"] == COUNT - len(want_nan)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("fmt", ["fp16", "bf16"])
def test_16_bit_range(group, fmt: str, algorithm: str) -> None:
    """fp16: finite sums beyond +-65504 become +-Inf (documented); bf16 has float32's range and keeps them
    finite and accurate."""
    cluster, members = group
    count = 12 * 1024
    big = [[100, 1e5, members[0].index], [7000, -7e4, members[-1].index], [9000, 3e38, members[-1].index]]
    res = _run(cluster, members, dtype="float32", count=count, seed=72, algorithm=algorithm, quantization=fmt,
               expect_from=[m.index for m in members], specials=big, probe=[100, 7000, 9000], tag=6)
    assert len({r["sha"] for r in res}) == 1
    r = res[0]
    assert r["n_nan"] == 0
    if fmt == "fp16":
        assert r["posinf_idx"] == [100, 9000] and r["neginf_idx"] == [7000], r["probe"]
    else:
        assert r["n_inf"] == 0, r["probe"]
        for i, got, ref in r["probe"]:
            assert abs(got - ref) <= 1e-2 * abs(ref), (i, got, ref)


def test_quantization_of_other_dtypes_is_refused_before_any_traffic(group) -> None:
    """Integer, float16 (and bfloat16) tensors with quantization raise InvalidArgumentError at once, on a
    single peer, sync and async, with the input unchanged; nothing was sent, so the group's next op on the
    same tag runs normally (a stray frame would make it fail with MismatchError or hang)."""
    cluster, members = group
    lone = members[0]
    dtypes = ["int8", "uint8", "int32", "int64", "uint64", "float16"]
    if len(members) == WORLDS[0]:
        dtypes.append("bfloat16")  # through torch; its import is slow, so once
    for dtype in dtypes:
        for fmt in FORMATS:
            for asynchronous in (False, True):
                r = lone.call("try_quantized_int", dtype=dtype, quantization=fmt, asynchronous=asynchronous,
                              count=70_000, algorithm="ring", tag=0, timeout=30)
                assert not r["ok"] and r["error"] == "InvalidArgumentError", (dtype, fmt, r)
                assert "float32 and float64" in r["message"], r
                assert r["input_unchanged"] and r["elapsed"] < 2.0, r  # at once, not after any network wait
    res = _run(cluster, members, dtype="int32", count=70_000, seed=5, algorithm="ring", tag=0,
               expect_from=[m.index for m in members], timeout=30)
    assert all(r["correct"] and r["world_size"] == len(members) for r in res), res
    assert len({r["sha"] for r in res}) == 1


@pytest.mark.parametrize("fmt", FORMATS)
def test_other_ops_and_odd_counts(group, fmt: str) -> None:
    """AVG (the owner divides, then encodes), MIN, MAX and PROD, and counts that leave ring chunks empty,
    shorter than a q8 block or not a multiple of it: identical on every peer and within the bound (three
    times it for tiny counts, where cancellation in a handful of sums dominates the relative error)."""
    cluster, members = group
    everyone = [m.index for m in members]
    cases = [(op, 100_000, "auto") for op in ("AVG", "MIN", "MAX", "PROD")]
    cases += [("SUM", n, algo) for n in (0, 1, 3, 255, 257, 65_537) for algo in ALGORITHMS]
    for op, count, algorithm in cases:
        bound = MAX_REL_L2[fmt] * (1 if count >= 1000 else 3)
        res = _run(cluster, members, dtype="float32", count=count, seed=80, op=op, algorithm=algorithm,
                   quantization=fmt, expect_from=everyone, max_rel_l2=bound, tag=7)
        assert len({r["sha"] for r in res}) == 1, (fmt, op, count, algorithm)
        r = res[0]
        assert r["n_nan"] == 0 and r["n_inf"] == 0, (fmt, op, count, algorithm)
        if count >= 1000:
            assert r["correct"], (fmt, op, count, algorithm, r["detail"])
        else:
            # With a few elements a sum can nearly cancel; bound the error against the inputs' scale.
            tiny = 0.5 if fmt == "q4" else 0.05  # q4's step is 17x q8's
            assert r["max_abs_err"] <= tiny * len(members), (fmt, op, count, algorithm, r["max_abs_err"])


@pytest.mark.parametrize("others,last_fmt", [(None, "q8"), ("q8", "q4")], ids=["none-vs-q8", "q8-vs-q4"])
def test_peers_disagreeing_on_quantization_fail_with_mismatch(group, others, last_fmt: str) -> None:
    """The last peer quantizes with last_fmt, the others with `others` (or not at all); it starts 0.2 s
    after them, so every peer's op is running when the difference shows: every peer raises MismatchError
    with unchanged buffers (the quantization is part of the op descriptor), and the group keeps working
    afterwards."""
    cluster, members = group
    start = time.time() + 0.3
    for i, m in enumerate(members):
        last = i == len(members) - 1
        fmt = last_fmt if last else others
        m.send("all_reduce_at", dtype="float32", count=100_000, seed=81, algorithm="ring", tag=8, use_out=True,
               start_at=start + (0.2 if last else 0.0), **({"quantization": fmt} if fmt else {}))
    res = [m.recv(30) for m in members]
    for m, r in zip(members, res):
        assert not r["ok"] and r["error"] == "MismatchError", (m.index, r)
        assert r["input_unchanged"] and r["out_unchanged"], (m.index, r)
        assert r["elapsed"] < 5, (m.index, r)
    res = _run(cluster, members, dtype="float32", count=100_000, seed=82, algorithm="ring", quantization="fp16",
               expect_from=[m.index for m in members], tag=8, timeout=30)
    assert all(r["correct"] for r in res) and len({r["sha"] for r in res}) == 1, res


def test_mismatch_reaches_a_peer_that_starts_late(cluster: Cluster) -> None:
    """Ranks 0 and 2 start an all_reduce on one tag, rank 2 with q8; rank 1 calls the same op only 0.5 s
    later, after ranks 0 and 2 already raised MismatchError. docs/protocol.md: a descriptor mismatch makes
    "the op fail everywhere with MismatchError" - so rank 1 must raise MismatchError too, promptly, not
    wait out its whole timeout alone (op timeout here: 3 s)."""
    members = join(cluster, 3, dict(timeout=3.0, heartbeat_timeout=3.0))
    start = time.time() + 0.3
    late = {0: 0.0, 1: 0.5, 2: 0.0}
    for rank, m in enumerate(members):
        m.send("all_reduce_at", dtype="float32", count=100_000, seed=83, algorithm="ring", tag=1,
               start_at=start + late[rank], **({"quantization": "q8"} if rank == 2 else {}))
    res = [m.recv(30) for m in members]
    outcome = {rank: (r.get("error"), round(r["elapsed"], 2), r.get("message", "")[:70]) for rank, r in enumerate(res)}
    for rank in (0, 2):
        assert res[rank]["error"] == "MismatchError", outcome
    assert res[1]["error"] == "MismatchError", f"the late peer did not learn of the mismatch: {outcome}"
    assert_within(res[1]["t0"], res[1]["t"], 1.0, f"the late peer's MismatchError {outcome}")


def test_q4_sends_less_than_q8(group) -> None:
    """The same float32 op with q4 moves about 0.5625 / 1.03 of q8's bytes from every peer, ring and star
    (ReduceInfo.tx_bytes), and q4's result is identical on every peer."""
    cluster, members = group
    everyone = [m.index for m in members]
    for algorithm in ALGORITHMS:
        tx = {}
        for fmt in ("q8", "q4"):
            res = _run(cluster, members, dtype="float32", count=COUNT, seed=84, algorithm=algorithm,
                       quantization=fmt, expect_from=everyone, tag=10)
            assert len({r["sha"] for r in res}) == 1
            tx[fmt] = [r["tx_bytes"] for r in res]
        for q8, q4 in zip(tx["q8"], tx["q4"]):
            assert q8 > 0, tx  # every peer sends, in a ring and in a star
            ratio = q4 / q8
            want = WIRE_BYTES_PER_ELEMENT["q4"] / WIRE_BYTES_PER_ELEMENT["q8"]
            assert q4 < q8 and abs(ratio - want) < 0.01, (algorithm, tx, ratio, want)


# --- quantize_roundtrip and the first hop, bit for bit -----------------------------------------------
# A numpy reference of the q8 and q4 formats (docs/quantization.md), written from the documentation with
# float32 arithmetic: every operation below is one IEEE float32 operation, as in csrc/kernels/codec.cpp.

F32 = np.float32


def _bf16(v: np.ndarray, up: bool) -> np.ndarray:
    """float32 -> bfloat16 (as float32), rounded toward +inf (up) or -inf."""
    bits = np.asarray(v, dtype=F32).view(np.uint32)
    trunc = bits & np.uint32(0xFFFF0000)
    negative = (bits >> np.uint32(31)) == 1
    away = ((bits & np.uint32(0xFFFF)) != 0) & (negative != up)
    return (trunc + np.where(away, np.uint32(0x10000), np.uint32(0))).astype(np.uint32).view(F32)


def reference_roundtrip(x: np.ndarray, fmt: str) -> np.ndarray:
    """decode(encode(x)) for q8 (256-element blocks, f32 min and step) and q4 (64-element blocks, bf16 min
    rounded down, bf16 step rounded up), blocks from x[0]; NaN blocks per docs/quantization.md."""
    block, levels = (256, F32(255)) if fmt == "q8" else (64, F32(15))
    f = np.asarray(x).astype(F32)
    out = np.empty_like(f)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for b in range(0, f.size, block):
            v = f[b:b + block]
            if not np.all(np.isfinite(v)):
                out[b:b + block] = np.nan
                continue
            lo, hi = v.min(), v.max()
            if fmt == "q4":
                lo = _bf16(lo, up=False)
            step = (hi - lo) / levels
            if fmt == "q4" and np.isfinite(step):
                step = _bf16(step, up=True)
            top = lo + levels * step if fmt == "q4" else step
            if not (np.isfinite(lo) and np.isfinite(step) and np.isfinite(top)):
                out[b:b + block] = np.nan
                continue
            inv = F32(1) / step if step > 0 else F32(0)
            q = (v - lo) * inv
            q = np.where(q > 0, q, F32(0))
            q = np.where(q < levels, q, levels)
            code = np.floor(q + F32(0.5)).astype(F32)  # round half up
            out[b:b + block] = lo + code * step
    return out.astype(np.asarray(x).dtype)


def _same_bits(got: np.ndarray, want: np.ndarray, what: str) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape, (what, got.dtype, want.dtype)
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(got), nan), f"{what}: NaN in different places"
    u = np.uint32 if got.itemsize == 4 else np.uint64
    bad = np.flatnonzero(got[~nan].view(u) != want[~nan].view(u))
    assert bad.size == 0, f"{what}: {bad.size} elements differ, first {bad[:5]}: {got[~nan][bad[:5]]} vs {want[~nan][bad[:5]]}"


def _roundtrip_inputs() -> list:
    rng = np.random.default_rng(99)
    normal = rng.standard_normal(70_000).astype(F32)
    cases = [("empty", np.zeros(0, F32))]
    for n in (1, 2, 3, 63, 64, 65, 127, 255, 256, 257, 16_384 + 5, 3 * 16_384 + 100):
        cases.append((f"normal{n}", normal[:n].copy()))
    for scale in (1e-38, 1e-30, 1e-6, 1e-3, 1e10, 1e30):
        cases.append((f"scale{scale:g}", (normal[:5000] * F32(scale)).astype(F32)))
    cases.append(("positive offset", (F32(1000) + normal[:5000] * F32(0.01)).astype(F32)))
    cases.append(("negative only", -np.abs(normal[:5000])))
    cases.append(("constant", np.full(300, 0.1, F32)))
    cases.append(("zeros and signed zeros", np.array([0.0, -0.0] * 100, F32)))
    ties = np.concatenate([[0.0, 15.0], np.arange(16) + 0.5, np.arange(16), np.arange(16) + 0.49999997]).astype(F32)
    cases.append(("ties", np.concatenate([ties, np.zeros(64 - ties.size % 64, F32)] * 3)[:192]))
    bits = rng.integers(0, 1 << 32, size=20_000, dtype=np.uint64).astype(np.uint32).view(F32)
    cases.append(("random bit patterns", np.where(np.isfinite(bits), bits, F32(1)).astype(F32)))
    cases.append(("random bit patterns with NaN/Inf", bits.copy()))
    subnormal = (rng.integers(-(1 << 23), 1 << 23, size=4096).astype(F32) * F32(2.0 ** -149)).astype(F32)
    cases.append(("subnormals", subnormal))
    near_max = np.array([3.39e38, 3.3e38, 3.4e38, 3.4028235e38] * 64 + [-3.39e38, -3.3e38] * 64 + [1.0e38, -1.0e38] * 64,
                        dtype=F32)
    cases.append(("near the float32 maximum", near_max))
    special = normal[:1024].copy()
    special[[5, 300, 700, 1023]] = [np.nan, np.inf, -np.inf, np.nan]
    cases.append(("NaN and Inf", special))
    return cases


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fmt", ["q8", "q4"])
def test_quantize_roundtrip_matches_the_reference_bit_for_bit(fmt: str, dtype: str) -> None:
    """pccl_py.quantize_roundtrip == the numpy reference above, every bit, on inputs that reach every
    branch: short tails (the scalar path) and whole blocks (the vector path), spans past the binding's
    internal 16384-element steps, ties, constant blocks, subnormals, overflowing ranges, NaN and Inf."""
    for name, x in _roundtrip_inputs():
        with np.errstate(invalid="ignore"):
            x = x.astype(dtype)
        want = reference_roundtrip(x, fmt)
        got = pccl_py.quantize_roundtrip(x, fmt)
        _same_bits(got, want, f"{fmt}/{dtype}/{name}")
        if x.size >= 63 and name.startswith("normal"):
            err = np.linalg.norm(got.astype(np.float64) - x) / np.linalg.norm(x.astype(np.float64))
            assert 0 < err < {"q8": 0.01, "q4": 0.15}[fmt], (fmt, name, err)
        inplace = x.copy()
        assert pccl_py.quantize_roundtrip(inplace, fmt, out=inplace) is inplace
        _same_bits(inplace, want, f"{fmt}/{dtype}/{name} in place")
    # The NaN rule, spelled out: the block holding a NaN or Inf is NaN throughout, the others are finite.
    x = _roundtrip_inputs()[-1][1].astype(dtype)  # NaN and Inf
    got = pccl_py.quantize_roundtrip(x, fmt)
    block = BLOCK[fmt]
    bad_blocks = {i // block for i in (5, 300, 700, 1023)}
    for b in range(x.size // block):
        part = got[b * block:(b + 1) * block]
        assert np.all(np.isnan(part)) if b in bad_blocks else np.all(np.isfinite(part)), (fmt, b)


def test_quantize_roundtrip_q4_properties() -> None:
    """What the q4 reference promises, checked on the library directly: every decoded value of a block is
    min' + k * step' for a bfloat16 min' <= min and step', codes 0..15, and |error| <= step' / 2 (plus
    float32 rounding); 16 distinct values at most per block; its relative L2 error on standard-normal data
    is ~0.09 (docs/quantization.md)."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal(64 * 1000).astype(F32)
    y = pccl_py.quantize_roundtrip(x, "q4")
    err = np.linalg.norm(y.astype(np.float64) - x) / np.linalg.norm(x.astype(np.float64))
    assert 0.08 < err < 0.1, err
    for b in range(0, x.size, 64):
        v, d = x[b:b + 64], y[b:b + 64]
        assert len(np.unique(d)) <= 16
        lo = _bf16(v.min(), up=False)
        step = _bf16((v.max() - lo) / F32(15), up=True)
        assert lo <= v.min() and lo + 15 * step >= v.max()
        assert np.max(np.abs(d.astype(np.float64) - v)) <= step / 2 * (1 + 1e-6), b
    # Torch tensors too, in and out of place.
    torch = pytest.importorskip("torch")
    t = torch.from_numpy(x.copy())
    out = pccl_py.quantize_roundtrip(t, "q4")
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    _same_bits(out.numpy(), y, "torch q4")
    pccl_py.quantize_roundtrip(t, "q4", out=t)
    _same_bits(t.numpy(), y, "torch q4 in place")


def test_quantize_roundtrip_rejects_bad_arguments() -> None:
    """Unknown formats, other dtypes and mismatched outputs raise InvalidArgumentError (the error names
    q4 among the formats); the core binding takes only its own enums (TypeError for a bare int code) and
    refuses a format the element type does not support itself."""
    x = np.ones(100, dtype=np.float32)
    with pytest.raises(pccl_py.InvalidArgumentError, match="'q4'"):
        pccl_py.quantize_roundtrip(x, "q3")
    with pytest.raises(pccl_py.InvalidArgumentError, match="float32 and float64"):
        pccl_py.quantize_roundtrip(np.ones(100, dtype=np.int32), "q4")
    with pytest.raises(pccl_py.InvalidArgumentError):
        pccl_py.quantize_roundtrip(x, "q4", out=np.ones(99, dtype=np.float32))
    with pytest.raises(pccl_py.InvalidArgumentError):
        pccl_py.quantize_roundtrip(x, "q4", out=np.ones(100, dtype=np.float64))
    from pccl_py import _core
    from pccl_py.ops import DataType, Quantization
    y = np.empty_like(x)
    # The binding takes the core's enums only: a bare code (valid or not) is refused before any work...
    for quant, dtype in ((5, DataType.FLOAT32), (-1, DataType.FLOAT32), (4, DataType.FLOAT32), (Quantization.Q4, 12),
                         (Quantization.Q4, -1), (Quantization.Q4, 10)):
        with pytest.raises(TypeError):
            _core.quantize_roundtrip(quant, dtype, x.ctypes.data, y.ctypes.data, x.size)
    # ...and a format the element type does not support is refused by the core itself.
    with pytest.raises(pccl_py.InvalidArgumentError, match="float32 and float64"):
        _core.quantize_roundtrip(Quantization.Q4, DataType.INT32, x.ctypes.data, y.ctypes.data, x.size)
    _core.quantize_roundtrip(Quantization.Q4, DataType.FLOAT32, x.ctypes.data, y.ctypes.data, x.size)
    assert np.all(y == 1.0)
    assert "quantize_roundtrip" in pccl_py.__all__


_NP_OPS = {"SUM": np.add, "MIN": np.minimum, "MAX": np.maximum, "PROD": np.multiply}


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("fmt", ["q8", "q4"])
def test_first_hop_sends_quantize_roundtrip(local_group, fmt: str, algorithm: str) -> None:
    """Two peers, x at rank 0 and y at rank 1; every block-aligned run is encoded where it starts, so
    quantize_roundtrip predicts the whole result bit for bit. Ring (chunks of n/2, block-aligned): rank 0
    sends chunk 0 encoded, rank 1 decodes and combines it with its own (decode_reduce) and, owning it,
    encodes the result once more; chunk 1 the other way round. Star: rank 1 sends all of y encoded, the
    root decodes it, combines it with x and encodes the result. For every op and both dtypes."""
    peers = sorted(local_group(2), key=lambda p: p.rank)
    rt = pccl_py.quantize_roundtrip
    rng = np.random.default_rng(5)
    n = 2 * 64 * 256 * 3  # 98304: chunk 1 starts at a multiple of 256
    h = n // 2
    for dtype in DTYPES:
        x = rng.standard_normal(n).astype(dtype)
        y = (rng.standard_normal(n) * 3).astype(dtype)
        for op, f in _NP_OPS.items():
            xs = [x.copy(), y.copy()]
            run_concurrently(*[lambda p=p, v=v: p.all_reduce(v, op=op, algorithm=algorithm, quantization=fmt)
                               for p, v in zip(peers, xs)], timeout=60)
            _same_bits(xs[0], xs[1], f"{fmt}/{algorithm}/{op}/{dtype}: peers differ")
            if algorithm == "ring":
                want = np.concatenate([rt(f(rt(x[:h], fmt), y[:h]), fmt), rt(f(rt(y[h:], fmt), x[h:]), fmt)])
            else:
                want = rt(f(x, rt(y, fmt)), fmt)
            _same_bits(xs[0], want, f"{fmt}/{algorithm}/{op}/{dtype}")
