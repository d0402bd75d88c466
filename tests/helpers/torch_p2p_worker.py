"""One rank of tests/torch_backend/test_torch_p2p.py: torch point-to-point ops and the p2p-based collectives on the
"pccl" backend, checked against values every rank can compute (inputs are seeded by sender and receiver).

Usage: ``python torch_p2p_worker.py SCENARIO RANK WORLD PORT OUT_JSON`` (SCENARIO is ignored: the launcher
of tests/torch_backend/test_torch_backend.py passes one). Writes {check name: "ok" or what was
wrong} for the test to assert on. Every rank is bounded in time (and killed by PID by the test).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from datetime import timedelta

import torch
import torch.distributed as dist

import pccl_py
import pccl_py.torch  # noqa: F401 - registers the backend


def value(src: int, dst: int, n: int, dtype: torch.dtype, salt: int = 0) -> torch.Tensor:
    """The message rank src sends rank dst: random bits (any bit pattern of the dtype)."""
    g = torch.Generator().manual_seed(1000 * salt + 31 * src + dst)
    if dtype == torch.bool:
        return torch.rand(n, generator=g) > 0.5
    raw = torch.randint(0, 256, (n * torch.empty(0, dtype=dtype).element_size(),), dtype=torch.uint8, generator=g)
    return raw.view(dtype)


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equality (NaN payloads included)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype == torch.bool:
        return torch.equal(a, b)
    return torch.equal(a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))


def run(rank: int, world: int) -> dict:
    out: dict = {}

    def check(name: str, ok: bool, detail: str = "") -> None:
        out[name] = "ok" if ok else (detail or "mismatch")

    nxt, prv = (rank + 1) % world, (rank - 1) % world
    # send/recv: a ring, every dtype the backend must carry (complex goes as its real view, bool as bytes).
    for i, dtype in enumerate([torch.float32, torch.bfloat16, torch.float64, torch.int8, torch.bool, torch.complex64]):
        x = value(rank, nxt, 1000 + i, dtype, 1)
        y = torch.zeros(1000 + i, dtype=dtype)
        if rank % 2 == 0:
            dist.send(x, nxt, tag=i)
            dist.recv(y, prv, tag=i)
        else:
            dist.recv(y, prv, tag=i)
            dist.send(x, nxt, tag=i)
        check(f"send_recv_{dtype}", same(y, value(prv, rank, 1000 + i, dtype, 1)))
    # isend/irecv: three messages on tag 5 and one on tag 6, received tag 6 first; order kept per tag.
    sends = [dist.isend(value(rank, nxt, 300, torch.float32, 10 + k), nxt, tag=5) for k in range(3)]
    sends.append(dist.isend(value(rank, nxt, 300, torch.float32, 20), nxt, tag=6))
    y6 = torch.zeros(300)
    r6 = dist.irecv(y6, prv, tag=6)
    ys = [torch.zeros(300) for _ in range(3)]
    rs = [dist.irecv(y, prv, tag=5) for y in ys]
    for w in sends + [r6] + rs:
        w.wait()
    check("irecv_order", all(same(y, value(prv, rank, 300, torch.float32, 10 + k)) for k, y in enumerate(ys))
          and same(y6, value(prv, rank, 300, torch.float32, 20)))
    # batch_isend_irecv: both neighbours at once, non-contiguous receive buffer.
    a, b = value(rank, nxt, 64, torch.float32, 30), value(rank, prv, 64, torch.float32, 31)
    ya = torch.zeros(64, 2)[:, 0]
    yb = torch.zeros(64)
    ops = [dist.P2POp(dist.isend, a, nxt), dist.P2POp(dist.isend, b, prv),
           dist.P2POp(dist.irecv, ya, prv), dist.P2POp(dist.irecv, yb, nxt)]
    for w in dist.batch_isend_irecv(ops):
        w.wait()
    check("batch_isend_irecv", same(ya, value(prv, rank, 64, torch.float32, 30))
          and same(yb, value(nxt, rank, 64, torch.float32, 31)))
    # Errors: any-source receive, own rank, reserved tag.
    for name, fn in [("anysource", lambda: dist.recv(torch.zeros(3))),
                     ("self_send", lambda: dist.send(torch.zeros(3), rank)),
                     ("reserved_tag", lambda: dist.send(torch.zeros(3), nxt, tag=1 << 20))]:
        try:
            fn()
            check(f"error_{name}", False, "no error")
        except (pccl_py.InvalidArgumentError, ValueError, RuntimeError) as exc:
            check(f"error_{name}", "src" in str(exc) or "rank" in str(exc) or "tag" in str(exc), str(exc))
    # all_to_all_single with unequal splits: rank r sends (r + 2j) % 3 + 1 rows of 5 to rank j.
    rows = lambda r, j: (r + 2 * j) % 3 + 1  # noqa: E731
    in_splits = [rows(rank, j) for j in range(world)]
    out_splits = [rows(r, rank) for r in range(world)]
    inp = torch.cat([value(rank, j, rows(rank, j) * 5, torch.float32, 40).view(-1, 5) for j in range(world)])
    outp = torch.full((sum(out_splits), 5), -1.0)
    dist.all_to_all_single(outp, inp, out_splits, in_splits)
    ref = torch.cat([value(r, rank, rows(r, rank) * 5, torch.float32, 40).view(-1, 5) for r in range(world)])
    check("all_to_all_single_unequal", same(outp, ref))
    # Equal splits.
    inp = torch.cat([value(rank, j, 8, torch.int64, 41) for j in range(world)])
    outp = torch.zeros(8 * world, dtype=torch.int64)
    dist.all_to_all_single(outp, inp)
    check("all_to_all_single_equal", same(outp, torch.cat([value(r, rank, 8, torch.int64, 41) for r in range(world)])))
    # all_to_all (lists, unequal sizes).
    ins = [value(rank, j, rows(rank, j) * 3, torch.float16, 42) for j in range(world)]
    outs = [torch.zeros(rows(r, rank) * 3, dtype=torch.float16) for r in range(world)]
    dist.all_to_all(outs, ins)
    check("all_to_all", all(same(o, value(r, rank, rows(r, rank) * 3, torch.float16, 42)) for r, o in enumerate(outs)))
    # gather and scatter, root 1 (not rank 0: torch and pccl ranks must not be confused).
    root = 1 % world
    g_in = value(rank, root, 777, torch.float32, 50)
    g_out = [torch.zeros(777) for _ in range(world)] if rank == root else None
    dist.gather(g_in, g_out, dst=root)
    if rank == root:
        check("gather", all(same(o, value(r, root, 777, torch.float32, 50)) for r, o in enumerate(g_out)))
    s_in = [value(root, r, 555, torch.float64, 51) for r in range(world)] if rank == root else None
    s_out = torch.zeros(555, dtype=torch.float64)
    dist.scatter(s_out, s_in, src=root)
    check("scatter", same(s_out, value(root, rank, 555, torch.float64, 51)))
    # A collective after all of it still lines up.
    t = torch.ones(4)
    dist.all_reduce(t)
    check("all_reduce_after", bool(torch.all(t == world)))
    return out


def main() -> int:
    rank, world, port, out_path = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
    threading.Timer(float(os.environ.get("TORCH_WORKER_LIMIT", "50")), lambda: os._exit(3)).start()
    dist.init_process_group("pccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=20))
    try:
        result = run(rank, world)
    except Exception as exc:  # noqa: BLE001 - reported to the test
        import traceback
        result = {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()}
    with open(out_path + ".tmp", "w") as f:
        json.dump(result, f)
    os.replace(out_path + ".tmp", out_path)
    store = dist.distributed_c10d._get_default_store()
    store.add("reported", 1)
    deadline = time.monotonic() + 15
    while rank == 0 and store.add("reported", 0) < world and time.monotonic() < deadline:
        time.sleep(0.05)
    dist.destroy_process_group()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
