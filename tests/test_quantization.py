"""Wire quantization (fp16, bf16, q8) of float32/float64 all-reduces, docs/quantization.md.

One cluster per world size (2, 3, 4 peers), reused by every test of that size. For each format x dtype x
algorithm (ring, star) the tests check, on standard-normal inputs:

* the result is bitwise identical on every peer (sha256), even when it holds NaN or infinities;
* its relative L2 error against the exact float64 sum stays below the documented value with margin
  (docs: ~3e-4 fp16, ~2.4e-3 bf16, ~9e-3 q8 for 3 peers, growing slowly with the peer count);
* fp16/bf16 results consist of decoded 16-bit values only (the owner of a chunk adopts what it sends);
* each peer sends what the format's size predicts (ReduceInfo.tx_bytes): 2 bytes per element for
  fp16/bf16, 1 + 8/256 for q8, against 4 (float32) or 8 (float64) unquantized;
* NaN and +-Inf: fp16 and bf16 keep them where they are (and fp16 turns finite values beyond 65504 into
  +-Inf); q8 turns exactly the 256-element block holding a non-finite value into NaN and keeps every other
  block finite and accurate;
* non-float dtypes with quantization raise InvalidArgumentError without sending anything;
* AVG/MIN/MAX/PROD and odd counts (0, 1, 3, 255, 257, 65537) stay identical and accurate;
* peers that disagree on quantization all raise MismatchError - also one that calls the op only after
  the others already failed it.

The measured errors are printed at the end of the module (visible with -s) and written to
$PCCL_QUANT_STATS if set.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest

from fault_helpers import join
from harness import Cluster, Peer
from support import assert_within

WORLDS = [2, 3, 4]
FORMATS = ["fp16", "bf16", "q8"]
DTYPES = ["float32", "float64"]
ALGORITHMS = ["ring", "star"]
COMM = dict(timeout=30.0, heartbeat_timeout=3.0)
# A multiple of 256 * lcm(2, 3, 4): every ring chunk starts on a q8 block boundary for every world size,
# so the q8 blocks are exactly [256 b, 256 b + 256). 1.2 MiB of float32: several 256 KiB ring pieces.
COUNT = 307_200
# docs/quantization.md (3 peers): fp16 ~3e-4, bf16 ~2.4e-3, q8 ~9e-3; about 3x margin for 4 peers and noise.
MAX_REL_L2 = {"fp16": 1e-3, "bf16": 6e-3, "q8": 2.5e-2}
WIRE_BYTES_PER_ELEMENT = {"fp16": 2.0, "bf16": 2.0, "q8": 1.0 + 8.0 / 256}
ESIZE = {"float32": 4, "float64": 8}
Q8_BLOCK = 256

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
        # q8: each block holding a non-finite value decodes as NaN throughout (never as a finite value),
        # and no other element is touched.
        blocks = sorted({i // Q8_BLOCK for i, *_ in specials})
        want_nan = [i for b in blocks for i in range(b * Q8_BLOCK, min(COUNT, (b + 1) * Q8_BLOCK))]
        assert r["n_inf"] == 0, f"q8 produced infinities at {r['posinf_idx'] + r['neginf_idx']}"
        assert r["n_nan"] == len(want_nan) and r["nan_idx"] == want_nan, (
            f"q8 NaN blocks: got {r['n_nan']} NaN starting {r['nan_idx'][:3]}..., want blocks {blocks}")
        assert r["finite_compared"] == COUNT - len(want_nan)
    # The finite part stays as accurate as without special values.
    assert r["rel_l2"] < MAX_REL_L2[fmt], f"{fmt}: finite part has relative L2 error {r['rel_l2']:.3e}"


def test_q8_nan_block_follows_ring_chunks_when_unaligned(group) -> None:
    """With a count that does not split into block-aligned chunks, the NaN region is still one block of
    its ring chunk: a contiguous run of at most 256 elements around the NaN, never spilling further."""
    cluster, members = group
    count = COUNT + 1
    nan_at = [1000, COUNT // 2 + 7, count - 2]
    res = _run(cluster, members, dtype="float32", count=count, seed=71, algorithm="ring", quantization="q8",
               expect_from=[m.index for m in members], specials=[[i, "nan", members[-1].index] for i in nan_at],
               tag=5)
    assert len({r["sha"] for r in res}) == 1
    r = res[0]
    nan = np.array(r["nan_idx"])
    assert r["n_inf"] == 0 and r["n_nan"] == len(nan)
    runs = np.split(nan, np.flatnonzero(np.diff(nan) != 1) + 1)
    assert len(runs) == len(nan_at), runs
    for run, i in zip(runs, nan_at):
        assert run[0] <= i <= run[-1] and len(run) <= Q8_BLOCK, (i, run[0], len(run))
        # Only a block cut short by a chunk end (or the array end) may be shorter than 256.
    assert sum(len(x) == Q8_BLOCK for x in runs) >= len(runs) - 1, [len(x) for x in runs]
    assert r["rel_l2"] < MAX_REL_L2["q8"]


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
            assert r["max_abs_err"] <= 0.05 * len(members), (fmt, op, count, algorithm, r["max_abs_err"])


def test_peers_disagreeing_on_quantization_fail_with_mismatch(group) -> None:
    """The last peer quantizes with q8, the others do not; it starts 0.2 s after them, so every peer's op
    is running when the difference shows: every peer raises MismatchError with unchanged buffers (the
    quantization is part of the op descriptor), and the group keeps working afterwards."""
    cluster, members = group
    start = time.time() + 0.3
    for i, m in enumerate(members):
        last = i == len(members) - 1
        m.send("all_reduce_at", dtype="float32", count=100_000, seed=81, algorithm="ring", tag=8, use_out=True,
               start_at=start + (0.2 if last else 0.0), **({"quantization": "q8"} if last else {}))
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
