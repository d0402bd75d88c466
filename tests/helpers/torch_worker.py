"""One rank of a multi-process torch.distributed test; run by tests/torch_backend/test_torch_backend.py.

Usage: ``python torch_worker.py SCENARIO RANK WORLD PORT OUT_JSON``. The rank initialises the default
group with the pccl backend (tcp:// rendezvous on 127.0.0.1:PORT) and runs SCENARIO; it writes what it
observed to OUT_JSON, and the test asserts on that. Scenarios:

* ``ops``: every collective on pccl and on a gloo group over the same ranks, with the same inputs; plus
  subgroups, async work, and DDP training on both backends.
* ``kill``: a subgroup with a 2 s timeout shows the timeout is honoured; then the last rank is SIGKILLed
  inside an all_reduce and the survivors time how long their Work takes to fail.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import threading
import time
import traceback
from datetime import timedelta

import torch
import torch.distributed as dist

import pccl_py
import pccl_py.torch  # noqa: F401 - registers the backend

R = dist.ReduceOp


def digest(tensors) -> str:
    h = hashlib.sha256()
    for t in tensors if isinstance(tensors, (list, tuple)) else [tensors]:
        t = t.detach().contiguous().reshape(-1)
        if t.dtype.is_complex:
            t = torch.view_as_real(t).reshape(-1)
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def inputs(dtype: torch.dtype, n: int, rank: int, seed: int) -> torch.Tensor:
    """Per-rank values small enough that PRODUCT of 3 stays in range for every dtype."""
    g = torch.Generator().manual_seed(seed * 101 + rank)
    if dtype == torch.bool:
        return torch.rand(n, generator=g) > 0.5
    if dtype.is_complex:
        return torch.complex(torch.rand(n, generator=g), torch.rand(n, generator=g)).to(dtype)
    if dtype.is_floating_point:
        return (torch.rand(n, generator=g) + 0.5).to(dtype)
    return torch.randint(1, 4, (n,), generator=g).to(dtype)


def tolerance(dtype: torch.dtype, op) -> tuple[float, float]:
    if op in (R.MIN, R.MAX) or not (dtype.is_floating_point or dtype.is_complex):
        return 0.0, 0.0
    return {torch.float16: (1e-2, 1e-2), torch.bfloat16: (2e-2, 2e-2), torch.float64: (1e-12, 1e-12)}.get(
        dtype, (1e-5, 1e-6))


class Checks:
    def __init__(self) -> None:
        self.items: list[dict] = []

    def add(self, name: str, pccl_out, gloo_out=None, rtol: float = 0.0, atol: float = 0.0, note: str = "",
            per_rank: bool = False) -> None:
        """per_rank: the output legitimately differs between ranks (a slice, a root-only result), so the
        test does not compare its hash across ranks."""
        p = pccl_out if isinstance(pccl_out, (list, tuple)) else [pccl_out]
        ok, detail = True, note
        if gloo_out is not None:
            g = gloo_out if isinstance(gloo_out, (list, tuple)) else [gloo_out]
            for a, b in zip(p, g):
                if a.dtype == torch.bool or (rtol == 0 and atol == 0):
                    same = torch.equal(a, b)
                else:
                    same = torch.allclose(a.to(torch.complex128 if a.is_complex() else torch.float64),
                                          b.to(torch.complex128 if b.is_complex() else torch.float64),
                                          rtol=rtol, atol=atol)
                if not same:
                    ok, detail = False, f"pccl {a.reshape(-1)[:4].tolist()} vs gloo {b.reshape(-1)[:4].tolist()}"
        self.items.append({"name": name, "ok": ok, "detail": detail, "hash": digest(p), "per_rank": per_rank})


TIMINGS: dict[str, float] = {}


def run(name: str, fn, checks: Checks) -> None:
    t0 = time.monotonic()
    try:
        fn()
    except Exception:  # noqa: BLE001 - reported to the test
        checks.items.append({"name": name, "ok": False, "detail": traceback.format_exc(), "hash": "", "per_rank": False})
    finally:
        prefix = name.split("/")[0]
        TIMINGS[prefix] = TIMINGS.get(prefix, 0.0) + time.monotonic() - t0


def scenario_ops(rank: int, world: int) -> dict:
    pccl = dist.group.WORLD
    gloo = dist.new_group(backend="gloo")
    checks = Checks()
    dtypes = [torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int8, torch.uint8, torch.int32,
              torch.int64, torch.complex64, torch.bool]
    ops = {"SUM": R.SUM, "AVG": R.AVG, "PRODUCT": R.PRODUCT, "MIN": R.MIN, "MAX": R.MAX}

    # all_reduce: every dtype and op; gloo has no AVG, so AVG is checked against gloo's SUM / world.
    for i, dtype in enumerate(dtypes):
        for op_name, op in ops.items():
            if dtype.is_complex and op not in (R.SUM, R.AVG):
                continue
            if dtype == torch.bool and op == R.AVG:
                continue

            def one(dtype=dtype, op=op, op_name=op_name, i=i):
                x = inputs(dtype, 1000, rank, seed=i)
                p, g = x.clone(), x.clone()
                dist.all_reduce(p, op=op, group=pccl)
                if op == R.AVG:
                    dist.all_reduce(g, op=R.SUM, group=gloo)
                    g = torch.div(g, world, rounding_mode="trunc") if not (
                        dtype.is_floating_point or dtype.is_complex) else (g / world).to(dtype)
                else:
                    dist.all_reduce(g, op=op, group=gloo)
                checks.add(f"all_reduce/{dtype}/{op_name}", p, g, *tolerance(dtype, op))
            run(f"all_reduce/{dtype}/{op_name}", one, checks)

    def ring_sized():  # above 64 KiB: pccl's ring algorithm
        x = inputs(torch.float32, 50_000, rank, seed=99)
        p, g = x.clone(), x.clone()
        dist.all_reduce(p, group=pccl)
        dist.all_reduce(g, group=gloo)
        checks.add("all_reduce/ring/float32", p, g, 1e-5, 1e-5)
    run("all_reduce/ring", ring_sized, checks)

    def non_contiguous():
        x = inputs(torch.float32, 200, rank, seed=7).view(10, 20).t()
        p, g = x.clone().t().contiguous().t(), x.clone()
        dist.all_reduce(p, group=pccl)
        dist.all_reduce(g, group=gloo)
        checks.add("all_reduce/non_contiguous", p, g, 1e-5, 1e-6)
    run("all_reduce/non_contiguous", non_contiguous, checks)

    for dtype in (torch.float32, torch.bfloat16, torch.int64, torch.complex64, torch.bool, torch.uint8):
        def bcast(dtype=dtype):
            x = inputs(dtype, 333, rank, seed=11)
            p, g = x.clone(), x.clone()
            dist.broadcast(p, src=1, group=pccl)
            dist.broadcast(g, src=1, group=gloo)
            checks.add(f"broadcast/{dtype}", p, g)
        run(f"broadcast/{dtype}", bcast, checks)

    for dtype in (torch.float32, torch.float16, torch.int8, torch.complex64):
        def gather_list(dtype=dtype):
            x = inputs(dtype, 17, rank, seed=12)
            p = [torch.empty_like(x) for _ in range(world)]
            g = [torch.empty_like(x) for _ in range(world)]
            dist.all_gather(p, x, group=pccl)
            dist.all_gather(g, x, group=gloo)
            checks.add(f"all_gather/{dtype}", p, g)
        run(f"all_gather/{dtype}", gather_list, checks)

        def gather_tensor(dtype=dtype):
            x = inputs(dtype, 6, rank, seed=13).view(2, 3)
            p = torch.empty(world * 2, 3, dtype=dtype)
            g = torch.empty_like(p)
            dist.all_gather_into_tensor(p, x, group=pccl)
            dist.all_gather_into_tensor(g, x, group=gloo)
            checks.add(f"all_gather_into_tensor/{dtype}", p, g)
        run(f"all_gather_into_tensor/{dtype}", gather_tensor, checks)

    for dtype in (torch.float32, torch.bfloat16, torch.int32):
        for op_name in ("SUM", "MAX"):
            def rs(dtype=dtype, op=ops[op_name], op_name=op_name):
                x = inputs(dtype, 4 * world, rank, seed=14)
                p, g = torch.empty(4, dtype=dtype), torch.empty(4, dtype=dtype)
                dist.reduce_scatter_tensor(p, x, op=op, group=pccl)
                dist.reduce_scatter_tensor(g, x, op=op, group=gloo)
                checks.add(f"reduce_scatter_tensor/{dtype}/{op_name}", p, g, *tolerance(dtype, op), per_rank=True)
                # Each rank's slice must be bitwise the matching slice of pccl's all_reduce (identical everywhere).
                full = x.clone()
                dist.all_reduce(full, op=op, group=pccl)
                checks.add(f"reduce_scatter_tensor/{dtype}/{op_name}/slice_of_all_reduce", full,
                           note="" if torch.equal(p, full[4 * rank:4 * rank + 4]) else "slice differs")
                if not torch.equal(p, full[4 * rank:4 * rank + 4]):
                    checks.items[-1]["ok"] = False
            run(f"reduce_scatter_tensor/{dtype}/{op_name}", rs, checks)

    def rs_list():
        xs = [inputs(torch.float32, 5, rank, seed=15 + j) for j in range(world)]
        p, g = torch.empty(5), torch.empty(5)
        dist.reduce_scatter(p, xs, group=pccl)
        dist.reduce_scatter(g, xs, group=gloo)
        checks.add("reduce_scatter/list", p, g, 1e-5, 1e-6, per_rank=True)
    run("reduce_scatter/list", rs_list, checks)

    def coalesced():
        xs = [inputs(torch.float32, 10 + j, rank, seed=20 + j) for j in range(3)]
        p, g = [x.clone() for x in xs], [x.clone() for x in xs]
        dist.all_reduce_coalesced(p, group=pccl)
        dist.all_reduce_coalesced(g, group=gloo)
        checks.add("all_reduce_coalesced", p, g, 1e-5, 1e-6)
        from torch.distributed.distributed_c10d import _coalescing_manager
        p2, g2 = [x.clone() for x in xs], [x.clone() for x in xs]
        for grp, ts in ((pccl, p2), (gloo, g2)):
            with _coalescing_manager(group=grp, async_ops=True) as cm:
                for t in ts:
                    dist.all_reduce(t, group=grp)
            cm.wait()
        checks.add("coalescing_manager/all_reduce", p2, g2, 1e-5, 1e-6)
        ins = [inputs(torch.float32, 4, rank, seed=30 + j) for j in range(2)]
        po = [torch.empty(4 * world) for _ in ins]
        go = [torch.empty(4 * world) for _ in ins]
        for grp, outs in ((pccl, po), (gloo, go)):
            with _coalescing_manager(group=grp, async_ops=True) as cm:
                for o, x in zip(outs, ins):
                    dist.all_gather_into_tensor(o, x, group=grp)
            cm.wait()
        checks.add("coalescing_manager/all_gather_into_tensor", po, go)
    run("coalesced", coalesced, checks)

    def objects():
        obj = {"rank": rank, "payload": "x" * (rank * 37)}
        p, g = [None] * world, [None] * world
        dist.all_gather_object(p, obj, group=pccl)
        dist.all_gather_object(g, obj, group=gloo)
        same = p == g and p[2]["payload"] == "x" * 74
        pl, gl = ([rank, "only root's survives"] for _ in range(2))
        dist.broadcast_object_list(pl, src=2, group=pccl)
        dist.broadcast_object_list(gl, src=2, group=gloo)
        same = same and pl == gl == [2, "only root's survives"]
        enc = torch.tensor(list(json.dumps([p, pl]).encode()), dtype=torch.uint8)
        checks.add("objects", enc, note="" if same else f"pccl {p} {pl} vs gloo {g} {gl}")
        if not same:
            checks.items[-1]["ok"] = False
    run("objects", objects, checks)

    def rooted():
        x = inputs(torch.float32, 8, rank, seed=40)
        p, g = x.clone(), x.clone()
        dist.reduce(p, dst=1, group=pccl)
        dist.reduce(g, dst=1, group=gloo)
        checks.add("reduce", p if rank == 1 else x, g if rank == 1 else x, 1e-5, 1e-6, per_rank=True)
        gp = [torch.empty(8) for _ in range(world)] if rank == 0 else None
        gg = [torch.empty(8) for _ in range(world)] if rank == 0 else None
        dist.gather(x, gp, dst=0, group=pccl)
        dist.gather(x, gg, dst=0, group=gloo)
        checks.add("gather", gp if rank == 0 else [x], gg if rank == 0 else [x], per_rank=True)
        sl = [inputs(torch.float32, 8, 100 + j, seed=41) for j in range(world)] if rank == 2 else None
        sp, sg = torch.empty(8), torch.empty(8)
        dist.scatter(sp, sl, src=2, group=pccl)
        dist.scatter(sg, sl, src=2, group=gloo)
        checks.add("scatter", sp, sg, per_rank=True)
        a = inputs(torch.float32, 2 * world, rank, seed=42)
        ap, ag = torch.empty_like(a), torch.empty_like(a)
        dist.all_to_all_single(ap, a, group=pccl)
        dist.all_to_all_single(ag, a, group=gloo)
        checks.add("all_to_all_single", ap, ag, per_rank=True)
    run("rooted", rooted, checks)

    def barrier_and_async():
        t0 = time.monotonic()
        if rank == 0:
            time.sleep(0.3)
        dist.barrier(group=pccl)
        waited = time.monotonic() - t0
        checks.add("barrier", torch.tensor([1]), note=f"waited {waited:.3f}", per_rank=True)
        if waited < 0.25:  # everyone must have waited for rank 0's sleep
            checks.items[-1]["ok"] = False
        xs = [inputs(torch.float32, 64, rank, seed=50 + j) for j in range(4)]
        gs = [x.clone() for x in xs]
        works = [dist.all_reduce(x, group=pccl, async_op=True) for x in xs]
        futs = [w.get_future() for w in works]
        for w in works:
            w.wait()
        for g in gs:
            dist.all_reduce(g, group=gloo)
        done = all(w.is_completed() for w in works) and all(f.done() for f in futs)
        values_match = all(torch.equal(f.value()[0], x) for f, x in zip(futs, xs))
        checks.add("async", xs, gs, 1e-5, 1e-6, note=f"completed={done} future_values={values_match}")
        if not (done and values_match):
            checks.items[-1]["ok"] = False
    run("barrier_and_async", barrier_and_async, checks)

    # Subgroups: a subset (rank 1 excluded) and the full world, each pccl and gloo.
    sub_p = dist.new_group(ranks=[0, 2], backend="pccl")
    sub_g = dist.new_group(ranks=[0, 2], backend="gloo")
    full_p = dist.new_group(ranks=list(range(world)), backend="pccl")
    excluded = {"rank1_is_non_member": None}

    def subgroups():
        x = inputs(torch.float32, 100, rank, seed=60)
        if rank in (0, 2):
            p, g = x.clone(), x.clone()
            dist.all_reduce(p, group=sub_p)
            dist.all_reduce(g, group=sub_g)
            checks.add("subgroup[0,2]/all_reduce", p, g, 1e-5, 1e-6)
            b = x.clone()
            dist.broadcast(b, group_src=1, group=sub_p)  # group rank 1 is global rank 2
            checks.add("subgroup[0,2]/broadcast", b, inputs(torch.float32, 100, 2, seed=60))
            checks.add("subgroup[0,2]/size", torch.tensor([dist.get_world_size(sub_p)]), torch.tensor([2]))
        else:
            excluded["rank1_is_non_member"] = sub_p == dist.GroupMember.NON_GROUP_MEMBER
        p, g = x.clone(), x.clone()
        dist.all_reduce(p, group=full_p)
        dist.all_reduce(g, group=gloo)
        checks.add("subgroup[all]/all_reduce", p, g, 1e-5, 1e-6)
    run("subgroups", subgroups, checks)

    ddp = {}

    def ddp_train():
        from torch.nn.parallel import DistributedDataParallel as DDP
        finals = {}
        for name, grp in (("pccl", pccl), ("gloo", gloo)):
            t_start = time.monotonic()
            torch.manual_seed(0)
            model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
            if rank != 0:  # DDP must broadcast rank 0's parameters at construction
                for prm in model.parameters():
                    prm.data.add_(1.0)
            m = DDP(model, process_group=grp)
            opt = torch.optim.SGD(m.parameters(), lr=0.05)
            g = torch.Generator().manual_seed(1000 + rank)
            for _ in range(20):
                xb = torch.randn(16, 8, generator=g)
                yb = xb.sum(dim=1, keepdim=True)
                opt.zero_grad()
                torch.nn.functional.mse_loss(m(xb), yb).backward()
                opt.step()
            finals[name] = [prm.detach().clone() for prm in model.parameters()]
            TIMINGS[f"ddp_{name}"] = time.monotonic() - t_start
        ddp["max_diff"] = max(float((a - b).abs().max()) for a, b in zip(finals["pccl"], finals["gloo"]))
        checks.add("ddp/parameters", finals["pccl"], finals["gloo"], 1e-4, 1e-5)
    run("ddp", ddp_train, checks)

    return {"checks": checks.items, "timings": TIMINGS, "excluded": excluded, "ddp": ddp, "backend": dist.get_backend(),
            "pg_type": type(pccl).__name__}


def scenario_kill(rank: int, world: int) -> dict:
    store = dist.distributed_c10d._get_default_store()
    out: dict = {}
    # Timeout: rank 0 calls all_reduce in a 2 s subgroup, rank 1 only calls it 4 s later.
    sub = dist.new_group(ranks=[0, 1], backend="pccl", timeout=timedelta(seconds=2))
    if rank == 0:
        t0 = time.monotonic()
        try:
            dist.all_reduce(torch.ones(4), group=sub)
            out["timeout_error"] = None
        except Exception as exc:  # noqa: BLE001
            out["timeout_error"] = type(exc).__name__
        out["timeout_after"] = time.monotonic() - t0
        store.set("timeout_done", "1")
    elif rank == 1:
        store.wait(["timeout_done"])
    dist.barrier()

    # Kill: every rank enters a large all_reduce; the last rank SIGKILLs itself while it is running.
    x = torch.ones(16_000_000)
    work = dist.all_reduce(x, async_op=True)
    fut = work.get_future()
    if rank != world - 1:
        store.set(f"issued{rank}", "1")
    else:
        # Only once the others have issued theirs: a rank that died first would fail their next
        # op at issue instead of mid-flight. 64 MB cannot go round the ring within the few ms
        # the store takes, so the op is still running.
        store.wait([f"issued{r}" for r in range(world - 1)])
        store.set("killed_at", repr(time.time()))
        os.kill(os.getpid(), signal.SIGKILL)
    try:
        work.wait()
        out["error"] = None
    except Exception as exc:  # noqa: BLE001
        out["error"] = type(exc).__name__
        out["is_peer_lost"] = isinstance(exc, pccl_py.PeerLostError)
    out["failed_at"] = time.time()
    store.wait(["killed_at"])
    out["killed_at"] = float(store.get("killed_at").decode())
    out["future_failed"] = fut.done() and _future_raises(fut)
    out["work_completed"] = work.is_completed()
    # A static group with a member lost refuses further ops at once instead of producing wrong results.
    out["next_op_start"] = time.time()
    try:
        dist.all_reduce(torch.ones(2))
        out["next_op"] = None
    except Exception as exc:  # noqa: BLE001
        out["next_op"] = type(exc).__name__
    out["next_op_end"] = time.time()
    return out


def _future_raises(fut) -> bool:
    try:
        fut.wait()
    except Exception:  # noqa: BLE001
        return True
    return False


def main() -> int:
    scenario, rank, world, port, out_path = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
    # A hard bound, in case a bug makes this rank hang: the test also kills it by PID.
    threading.Timer(float(os.environ.get("TORCH_WORKER_LIMIT", "50")), lambda: os._exit(3)).start()
    dist.init_process_group("pccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=20))
    result = {"ops": scenario_ops, "kill": scenario_kill}[scenario](rank, world)
    result["rank"] = rank
    with open(out_path + ".tmp", "w") as f:
        json.dump(result, f)
    os.replace(out_path + ".tmp", out_path)
    # Rank 0 serves the TCPStore: it stays until every surviving rank has reported.
    store = dist.distributed_c10d._get_default_store()
    store.add("reported", 1)
    survivors = world - 1 if scenario == "kill" else world
    deadline = time.monotonic() + 15
    while rank == 0 and store.add("reported", 0) < survivors and time.monotonic() < deadline:
        time.sleep(0.02)
    sys.stdout.flush()
    # Skip the graceful teardown on purpose: ranks finish at different times, and a rank that stopped
    # its hosted master early would turn the others' close() into MasterLostError noise.
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
