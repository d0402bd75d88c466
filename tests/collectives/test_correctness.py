"""All-reduce results: every dtype and op, edge-case sizes, world sizes 1 to 5, both algorithms, out=.

Each result is checked by the worker against the numpy reference (reference.py) and compared by
SHA-256 across peers, since the library promises results that are bitwise identical on every peer.
One cluster is built per world size (module-scoped fixture) and reused by every test of that size,
which keeps this file within a few minutes on two cores.
"""

from __future__ import annotations

import importlib.util
import zlib
from dataclasses import dataclass

import pytest

from harness import Cluster, Peer
from reference import INT_DTYPES
from support import join, reduce_all

WORLD_SIZES = [1, 2, 3, 4, 5]
OPS = ["SUM", "AVG", "PROD", "MIN", "MAX"]
HAS_TORCH = importlib.util.find_spec("torch") is not None
NEEDS_TORCH = pytest.mark.skipif(not HAS_TORCH, reason="bfloat16 inputs need torch")
BF16 = pytest.param("bfloat16", marks=NEEDS_TORCH)
DTYPES = ["int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float16", BF16,
          "float32", "float64"]
STAR_MAX_BYTES = 64 << 10  # documented in pccl_py.Algorithm: AUTO picks STAR up to 64 KiB
MIB = 1 << 20


@dataclass
class World:
    cluster: Cluster
    peers: list[Peer]  # rank order

    @property
    def size(self) -> int:
        return len(self.peers)


@pytest.fixture(scope="module", params=WORLD_SIZES, ids=lambda n: f"world{n}")
def world(request, tmp_path_factory) -> World:
    """A cluster of request.param peers, shared by every test of this module with that world size."""
    with Cluster(log_dir=str(tmp_path_factory.mktemp(f"world{request.param}"))) as c:
        yield World(c, join(c, request.param))


def seed_for(*parts: object) -> int:
    """A distinct, reproducible seed per case, so no two cases share inputs by accident."""
    return zlib.crc32(repr(parts).encode())


def reduce_checked(world: World, dtype: str, count: int, op: str = "SUM", timeout: float = 60.0,
                   **kwargs) -> list[dict]:
    """One all_reduce on every peer of the world, checked by support.reduce_all."""
    return reduce_all(world.peers, dtype=dtype, count=count, op=op, seed=seed_for(dtype, count, op, kwargs),
                      timeout=timeout, **kwargs)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_every_dtype_and_op(world, dtype, op):
    """Each (dtype, op) kernel matches numpy and is bitwise identical on every peer.

    1001 elements: odd, so chunking never divides evenly, and small enough to run 60 cases per world.
    """
    reduce_checked(world, dtype, 1001, op)


SIZES = [0, 1, "half_the_peers", "one_less_than_peers", 1001, 65537, MIB // 4]


def resolve_count(count, world: World) -> int:
    """Sizes relative to the world size: fewer elements than peers leaves some ring chunks empty."""
    if count == "half_the_peers":
        return max(world.size // 2, 1)
    if count == "one_less_than_peers":
        return max(world.size - 1, 1)
    return count


@pytest.mark.parametrize("algorithm", ["ring", "star"])
@pytest.mark.parametrize("dtype", ["float32", "uint8"])
@pytest.mark.parametrize("count", SIZES, ids=str)
def test_sizes(world, count, dtype, algorithm):
    """Empty, single-element, fewer elements than peers (e.g. 2 among 4, so some ring chunks are empty),
    odd, and 1 MiB (float32) inputs, with both algorithms forced, since auto would never run a ring on
    the tiny ones."""
    replies = reduce_checked(world, dtype, resolve_count(count, world), algorithm=algorithm)
    assert {r["algorithm"] for r in replies} == {algorithm}


@pytest.mark.parametrize("dtype,op", [("float32", "SUM"), ("int32", "MAX")])
def test_64_mib(cluster, dtype, op):
    """64 MiB (16 Mi four-byte elements) among three peers: many pieces per ring chunk. Slow on two cores,
    so only two cases, on a cluster of its own."""
    replies = reduce_all(join(cluster, 3), dtype=dtype, count=64 * MIB // 4, op=op, seed=seed_for(dtype, op),
                         timeout=300)
    assert {r["algorithm"] for r in replies} == {"ring"}


EXACT_CASES = [("int32", "SUM"), ("uint16", "PROD"), ("int64", "AVG"), ("float32", "MIN"), ("float64", "MAX")]
INEXACT_CASES = [("float32", "SUM"), ("float16", "AVG"), ("float64", "PROD")]


@pytest.mark.parametrize("dtype,op", EXACT_CASES + INEXACT_CASES)
def test_ring_and_star_agree(world, dtype, op):
    """Forcing ring or star both give correct, peer-identical results, and the reply names the algorithm
    that ran. Where the result does not depend on reduction order (integers, MIN, MAX) the two algorithms
    must also agree bitwise."""
    shas = {}
    for algorithm in ("ring", "star"):
        replies = reduce_all(world.peers, dtype=dtype, count=4099, op=op, seed=seed_for(dtype, op), algorithm=algorithm)
        assert {r["algorithm"] for r in replies} == {algorithm}
        shas[algorithm] = replies[0]["sha"]
    if dtype in INT_DTYPES or op in ("MIN", "MAX"):
        assert shas["ring"] == shas["star"]


@pytest.mark.parametrize("dtype,count,expected", [
    ("float32", 1, "star"),
    ("float32", STAR_MAX_BYTES // 4, "star"),
    ("float32", STAR_MAX_BYTES // 4 + 1, "ring"),
    ("uint8", STAR_MAX_BYTES, "star"),
    ("uint8", STAR_MAX_BYTES + 1, "ring"),
    ("float64", MIB // 8, "ring"),
])
def test_auto_picks_star_up_to_64_kib(world, dtype, count, expected):
    """algorithm="auto" runs star for inputs of at most 64 KiB and ring above, exactly at the boundary
    (a world of one reports the algorithm it would have used)."""
    replies = reduce_checked(world, dtype, count, algorithm="auto")
    assert {r["algorithm"] for r in replies} == {expected}


@pytest.mark.parametrize("dtype,op", [("float32", "SUM"), ("int16", "MAX"), ("float64", "AVG"),
                                      pytest.param("bfloat16", "SUM", marks=NEEDS_TORCH)])
@pytest.mark.parametrize("count", [1001, 65537])
def test_out_argument(world, dtype, op, count):
    """With out=, the result lands in out (the worker checks out, pre-filled with other data) and the
    input stays bitwise unchanged."""
    replies = reduce_checked(world, dtype, count, op, use_out=True)
    assert all(r["input_unchanged"] for r in replies)
