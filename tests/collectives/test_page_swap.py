"""Publishing results by swapping memory pages (csrc/collectives/page_swap.*).

A large result is moved into the caller's array by exchanging page-table entries instead of copying.
These tests check that the swap really happens where it may (ordinary private memory), never where
it may not (shared memory, file-backed arrays, when turned off), and that either way the result is
exact and nothing outside the array changes: the partial pages at its ends hold other data.

Two peers run in this process on real sockets: the swap acts on the address space of the process
that calls all_reduce, so both sides of every check are visible here.
"""

from __future__ import annotations

import mmap
import sys
from multiprocessing import shared_memory

import numpy as np
import pytest

import pccl_py
from support import run_concurrently

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="page swapping is Linux-only")

ELEMS = (8 << 20) // 4 + 3  # a little over 8 MiB of float32, so neither end is page-aligned


def kernel_supports_swap() -> bool:
    """PROCMAP_QUERY (Linux 6.11) is what lets the core check a mapping cheaply."""
    release = tuple(int(p) for p in __import__("platform").release().split("-")[0].split(".")[:2])
    return release >= (6, 11)


needs_swap = pytest.mark.skipif(not kernel_supports_swap(), reason="kernel lacks PROCMAP_QUERY (< 6.11): results are copied")


@pytest.fixture
def pair(local_group):
    """Groups of two in-process peers; kwargs go to Communicator."""
    return lambda **kwargs: local_group(2, **kwargs)


def reduce_pair(peers, xs, outs=(None, None)):
    return run_concurrently(*[lambda p=p, x=x, o=o: p.all_reduce(x, out=o) for p, x, o in zip(peers, xs, outs)],
                            timeout=60)


def mappings_over(arrays) -> int:
    """How many of this process's mappings overlap the arrays' bytes. Only these can be split by a swap into
    the arrays; counting the whole process instead counts thread stacks and allocator arenas too."""
    spans = [(a.ctypes.data, a.ctypes.data + a.nbytes) for a in arrays]
    count = 0
    with open("/proc/self/maps") as f:
        for line in f:
            lo, hi = (int(v, 16) for v in line.split(None, 1)[0].split("-"))
            count += any(lo < end and start < hi for start, end in spans)
    return count


@needs_swap
def test_large_result_is_swapped_exactly_and_neighbours_survive(pair):
    """A large in-place result is published by swapping pages: the result is exact, the bytes sharing the view's
    first and last pages are untouched, and 30 repetitions do not keep splitting the arrays' mappings."""
    peers = pair()
    rng = np.random.default_rng(1)
    # Each array is a view one element into a larger allocation: the bytes just outside the view share
    # its first and last pages and must come out untouched.
    backing = [rng.standard_normal(ELEMS + 3).astype(np.float32) for _ in peers]
    guards = [(b[:1].copy(), b[-2:].copy()) for b in backing]
    xs = [b[1:-2] for b in backing]
    counts = []
    for step in range(30):
        expected = xs[0] + xs[1]
        infos = reduce_pair(peers, xs)
        for x, info in zip(xs, infos):
            assert x.tobytes() == expected.tobytes()
            # Every whole page inside the view moved by swapping; only the partial end pages were copied.
            assert info.swapped_bytes >= x.nbytes - 2 * mmap.PAGESIZE, info
        for b, (head, tail) in zip(backing, guards):
            assert b[:1].tobytes() == head.tobytes() and b[-2:].tobytes() == tail.tobytes()
        counts.append(mappings_over(backing))
        for x in xs:  # fresh contributions for the next step, written through the swapped pages
            x *= np.float32(0.5)
    # Swapping may split a mapping at the arrays' page boundaries: observed 3 or 4 mappings per array (the
    # partial end pages, the swapped middle, now and then the middle in two). Repeating it must not keep
    # splitting; a swap that left its pages unmerged would add up to 2,048 mappings per array and step.
    assert max(counts) <= 6 * len(backing), counts


@needs_swap
def test_out_of_place_leaves_the_input_alone(pair):
    """With out=, the result is swapped into the output array and the input keeps its values."""
    peers = pair()
    xs = [np.full(ELEMS, r + 1, dtype=np.float64) for r in range(2)]
    outs = [np.zeros(ELEMS, dtype=np.float64) for _ in range(2)]
    infos = reduce_pair(peers, xs, outs)
    for r, (x, out, info) in enumerate(zip(xs, outs, infos)):
        assert np.all(x == r + 1)
        assert np.all(out == 3.0)
        assert info.swapped_bytes > 0


def test_small_results_and_disabled_swap_copy(pair):
    """Results below the swap threshold, and any result with swap_result_pages=False, are copied (no bytes
    swapped) and are still exact."""
    small = pair()
    xs = [np.ones(1 << 18, dtype=np.float32) for _ in range(2)]  # 1 MiB: below the swap threshold
    for x, info in zip(xs, reduce_pair(small, xs)):
        assert info.swapped_bytes == 0 and np.all(x == 2)
    off = pair(swap_result_pages=False)
    xs = [np.ones(ELEMS, dtype=np.float32) for _ in range(2)]
    for x, info in zip(xs, reduce_pair(off, xs)):
        assert info.swapped_bytes == 0 and np.all(x == 2)


def test_swap_result_pages_must_be_a_bool():
    """swap_result_pages=1 (not a bool) is refused with InvalidArgumentError naming the option."""
    with pytest.raises(pccl_py.InvalidArgumentError, match="swap_result_pages"):
        pccl_py.Communicator("127.0.0.1:1", swap_result_pages=1)


def test_shared_memory_is_copied_and_stays_shared(pair):
    """An array in shared memory gets its result by copy, so another mapping of the same segment sees the result.
    An array in shared memory gets its result by copy, so another mapping of the same segment sees the result."""
    peers = pair()
    segments = [shared_memory.SharedMemory(create=True, size=ELEMS * 4) for _ in peers]
    try:
        xs = [np.ndarray((ELEMS,), dtype=np.float32, buffer=s.buf) for s in segments]
        for r, x in enumerate(xs):
            x[:] = r + 1
        infos = reduce_pair(peers, xs)
        for s, info in zip(segments, infos):
            assert info.swapped_bytes == 0
            # A second mapping of the same segment sees the result: the pages were written, not replaced.
            other = shared_memory.SharedMemory(name=s.name)
            try:
                assert np.all(np.ndarray((ELEMS,), dtype=np.float32, buffer=other.buf) == 3)
            finally:
                other.close()
        del xs
    finally:
        for s in segments:
            s.close()
            s.unlink()


def test_file_backed_arrays_are_copied_and_reach_the_file(pair, tmp_path):
    """A memory-mapped file array gets its result by copy, so the result reaches the file."""
    peers = pair()
    paths = [tmp_path / f"x{r}.bin" for r in range(2)]
    xs = [np.memmap(p, dtype=np.float32, mode="w+", shape=(ELEMS,)) for p in paths]
    for r, x in enumerate(xs):
        x[:] = r + 1
    infos = reduce_pair(peers, xs)
    for x, p, info in zip(xs, paths, infos):
        assert info.swapped_bytes == 0
        x.flush()
        assert np.all(np.fromfile(p, dtype=np.float32) == 3)


@needs_swap
def test_torch_tensor_is_swapped(pair):
    """A large CPU torch tensor gets its result by page swap, and the result is exact."""
    torch = pytest.importorskip("torch")
    peers = pair()
    ts = [torch.full((ELEMS,), float(r + 1)) for r in range(2)]
    infos = reduce_pair(peers, ts)
    for t, info in zip(ts, infos):
        assert bool((t == 3).all())
        assert info.swapped_bytes > 0
