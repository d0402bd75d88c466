"""All-reduce inputs whose exact sum proves who contributed: the check every self-verifying peer uses.

Why this exists: a peer that runs collectives under churn (a pccl-stress worker, a pccl-demo --allreduce
peer, a test worker's reduce_loop) cannot ask anyone who took part in an op: the membership may have
changed while it ran. So each contribution carries its author. Every exact tensor starts with a
membership block: 8 lanes of 32 bits, where the peer in slot ``i`` contributes ``2**(i % 32)`` to lane
``i // 32``, and a count lane (each contributes 1). The payload element j is
``w[j] + (slot + 1) * v[j]`` with ``w, v`` drawn from (seed, step, tag), so the sum is ``n * w + S * v``
for the decoded set (n members, S the sum of slot + 1). Any contribution lost, counted twice, reduced into the wrong place
or left over from another step breaks that identity.

The trap: every value must stay an integer below 2**53 so that float64 sums are exact whatever the
reduction order; the lanes hold at most 32 bits and w, v stay below 2**16 for that reason. Do not widen
them, and reduce with SUM in float64 only.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

SLOT_LANES = 8                      # membership lanes of 32 bits: slots 0..255
MAX_SLOTS = SLOT_LANES * 32
HEAD = SLOT_LANES + 1               # membership lanes + the count lane


def payload_bases(seed: int, step: int, tag: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(w, v): integers in [1, 2**16), the same on every peer for (seed, step, tag)."""
    r = np.random.default_rng([seed, step, tag])
    return (r.integers(1, 1 << 16, size=size).astype(np.float64),
            r.integers(1, 1 << 16, size=size).astype(np.float64))


def exact_contribution(slot: int, seed: int, step: int, tag: int, size: int) -> np.ndarray:
    """Slot's input to an exact op: membership block, count lane, then w + (slot + 1) * v."""
    w, v = payload_bases(seed, step, tag, size)
    x = np.empty(HEAD + size, dtype=np.float64)
    x[:HEAD] = 0.0
    x[slot // 32] = float(1 << (slot % 32))
    x[SLOT_LANES] = 1.0
    np.add(w, (slot + 1) * v, out=x[HEAD:])
    return x


def check_exact(result: np.ndarray, seed: int, step: int, tag: int) -> tuple[Optional[frozenset[int]], str]:
    """Decodes who took part and checks every element against that set; (slots, "") or (None, why)."""
    head = result[:HEAD]
    if not np.all(head == np.floor(head)) or np.any(head < 0) or np.any(head[:SLOT_LANES] >= 2.0**32):
        return None, f"membership lanes are not 32-bit integers: {head.tolist()}"
    slots = frozenset(lane * 32 + b for lane in range(SLOT_LANES) for b in range(32)
                      if int(head[lane]) >> b & 1)
    n = int(head[SLOT_LANES])
    if n != len(slots):
        return None, f"count lane says {n} contributions but the membership lanes name {len(slots)} slots"
    w, v = payload_bases(seed, step, tag, result.size - HEAD)
    expected = n * w + float(sum(s + 1 for s in slots)) * v
    bad = np.flatnonzero(result[HEAD:] != expected)
    if bad.size:
        j = int(bad[0])
        return None, (f"{bad.size} payload element(s) disagree with contributors {sorted(slots)}; "
                      f"first at {j}: {float(result[HEAD + j])!r} != {float(expected[j])!r}")
    return slots, ""
