"""The torch.distributed backend "pccl", checked against gloo on the same inputs in the same processes.

Multi-process runs use tests/helpers/torch_worker.py (one process per rank, each bounded in time and killed by
PID afterwards); in-process checks use Communicators in threads of the test process.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

torch = pytest.importorskip("torch", reason="the pccl torch backend needs torch (pip install '.[torch]')")
dist = pytest.importorskip("torch.distributed")

import pccl_py  # noqa: E402
import pccl_py.torch as pccl_torch  # noqa: E402
from support import HELPERS_DIR, REPO_ROOT, assert_within, connect_group, free_port, run_concurrently  # noqa: E402

ROOT = REPO_ROOT
WORKER = os.path.join(HELPERS_DIR, "torch_worker.py")


def _env() -> dict:
    env = dict(os.environ)
    # The ranks import the same pccl_py as this test (the installed one in CI, not the bare checkout).
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(pccl_py.__file__)))
    env["PYTHONPATH"] = os.pathsep.join([package_root, env.get("PYTHONPATH", "")])
    env.setdefault("PCCL_LOG_LEVEL", "error")
    env["OMP_NUM_THREADS"] = "1"
    return env


def _kill(procs: list) -> None:
    for p in procs:
        if p.poll() is None:
            try:
                os.kill(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


def run_ranks(scenario: str, world: int, tmp_path, timeout: float = 45.0) -> dict[int, dict]:
    """Runs every rank of scenario; returns {rank: result} for the ranks that wrote one."""
    port = free_port()
    outs = [str(tmp_path / f"{scenario}{r}.json") for r in range(world)]
    logs = [open(tmp_path / f"{scenario}{r}.log", "wb") for r in range(world)]
    procs = [subprocess.Popen([sys.executable, WORKER, scenario, str(r), str(world), str(port), outs[r]],
                              stdout=logs[r], stderr=subprocess.STDOUT, env=_env()) for r in range(world)]
    try:
        deadline = time.monotonic() + timeout
        for p in procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                break
    finally:
        _kill(procs)
        for f in logs:
            f.close()
    results = {}
    for r, path in enumerate(outs):
        if os.path.exists(path):
            with open(path) as f:
                results[r] = json.load(f)
    return results


def _logs(tmp_path, scenario: str) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(tmp_path.glob(f"{scenario}*.log")))


@pytest.fixture(scope="module")
def ops_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ops")
    results = run_ranks("ops", 3, tmp)
    assert sorted(results) == [0, 1, 2], f"ranks did not all finish:\n{_logs(tmp, 'ops')}"
    return results


def test_registered_and_default_group_is_pccl(ops_run):
    """The "pccl" backend is registered and the default group of every rank is a ProcessGroupPCCL."""
    assert "pccl" in dist.Backend.backend_list
    for r in ops_run.values():
        assert r["backend"] == "pccl" and r["pg_type"] == "ProcessGroupPCCL"


def _checks(ops_run, prefix: str) -> dict[str, list[dict]]:
    by_name: dict[str, list[dict]] = {}
    for r in sorted(ops_run):
        for c in ops_run[r]["checks"]:
            if c["name"].startswith(prefix):
                by_name.setdefault(c["name"], []).append(c)
    return by_name


@pytest.mark.parametrize("prefix", [
    "all_reduce/", "broadcast/", "all_gather/", "all_gather_into_tensor/", "reduce_scatter", "all_reduce_coalesced",
    "coalescing_manager/", "objects", "reduce", "gather", "scatter", "all_to_all_single", "barrier", "async",
])
def test_op_matches_gloo_and_is_bitwise_identical_across_ranks(ops_run, prefix):
    """Each torch collective on pccl gives gloo's result on the same inputs, and every rank holds bitwise the
    same result (except slices and root-only results)."""
    checks = _checks(ops_run, prefix)
    assert checks, f"no checks named {prefix}*"
    failed = {name: [c["detail"] for c in cs if not c["ok"]] for name, cs in checks.items()}
    failed = {k: v for k, v in failed.items() if v}
    assert not failed, failed
    for name, cs in checks.items():
        assert len(cs) == 3, name
        if not cs[0]["per_rank"]:  # slices and root-only results differ between ranks by design
            assert len({c["hash"] for c in cs}) == 1, f"{name}: pccl results differ between ranks"


def test_all_reduce_covers_every_dtype_and_op(ops_run):
    """all_reduce was checked for every dtype and reduce op torch offers on CPU, complex and bool included."""
    names = set(_checks(ops_run, "all_reduce/"))
    for dtype in ("float16", "bfloat16", "float32", "float64", "int8", "uint8", "int32", "int64"):
        for op in ("SUM", "AVG", "PRODUCT", "MIN", "MAX"):
            assert f"all_reduce/torch.{dtype}/{op}" in names
    assert "all_reduce/torch.complex64/AVG" in names and "all_reduce/torch.bool/MAX" in names


def test_subgroups(ops_run):
    """Collectives on subgroups are correct and identical on their members only, and a non-member rank is
    excluded."""
    checks = _checks(ops_run, "subgroup")
    assert not {n: c for n, cs in checks.items() for c in cs if not c["ok"]}
    assert len(checks["subgroup[0,2]/all_reduce"]) == 2, "exactly ranks 0 and 2 take part in the subgroup"
    assert len({c["hash"] for c in checks["subgroup[0,2]/all_reduce"]}) == 1
    assert len(checks["subgroup[all]/all_reduce"]) == 3
    assert ops_run[1]["excluded"]["rank1_is_non_member"] is True


def test_ddp_matches_gloo_after_20_steps(ops_run):
    """DDP on pccl ends 20 steps with the same parameters as on gloo, identical on every replica."""
    checks = _checks(ops_run, "ddp/")
    assert len(checks["ddp/parameters"]) == 3
    assert all(c["ok"] for c in checks["ddp/parameters"]), checks
    assert len({c["hash"] for c in checks["ddp/parameters"]}) == 1, "DDP replicas diverged under pccl"
    assert ops_run[0]["ddp"]["max_diff"] < 1e-4


def test_killed_rank_fails_survivors_work_within_1s_and_timeout_is_honoured(tmp_path):
    """When a rank is killed, the survivors' Work fails with PeerLostError within 1 s (future failed, work
    completed), their next op is refused at once, and a group timeout is honoured."""
    results = run_ranks("kill", 3, tmp_path)
    assert sorted(results) == [0, 1], f"survivors did not both report:\n{_logs(tmp_path, 'kill')}"
    r0 = results[0]
    assert r0["timeout_error"] == "TimeoutError"
    assert 1.5 <= r0["timeout_after"] < 6.0, r0
    for r in results.values():
        assert r["error"] == "PeerLostError" and r["is_peer_lost"], r
        assert_within(r["killed_at"], r["failed_at"], 1.0, f"the work's PeerLostError {r}")
        assert r["future_failed"] and r["work_completed"], r
        assert r["next_op"] == "PeerLostError", r
        assert_within(r["next_op_start"], r["next_op_end"], 0.5, f"the refusal of the next op {r}")


def test_torchrun_example(tmp_path):
    """examples/torch_backend.py runs under torchrun with three ranks, each printing example OK."""
    torchrun = shutil.which("torchrun")
    cmd = ([torchrun] if torchrun else [sys.executable, "-m", "torch.distributed.run"]) + [
        "--nproc-per-node", "3", "--master-port", str(free_port()), os.path.join(ROOT, "examples", "torch_backend.py")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=_env(), text=True,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=45)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"torchrun did not finish within 45 s:\n{output[-3000:]}")
    assert proc.returncode == 0, output[-3000:]
    assert output.count("example OK") == 3, output[-3000:]


# -- in-process: a dynamic group wrapped around Communicators, and argument errors ---------------

def _in_threads(fns, timeout=20.0):
    return run_concurrently(*fns, timeout=timeout)


def test_wrap_communicator_size_follows_live_world():
    """A group wrapping a Communicator follows the live world: after a graceful leave its size, ranks and
    all_gather slots shrink and results are over the remaining members."""
    master = pccl_py.Master().start()
    comms = connect_group(master.address, 3, timeout=10, heartbeat_timeout=2)
    try:
        pgs = [pccl_torch.wrap_communicator(c) for c in comms]
        assert [pg.size() for pg in pgs] == [3, 3, 3]
        assert sorted(pg.rank() for pg in pgs) == [0, 1, 2]
        xs = [torch.full((4,), float(i + 1)) for i in range(3)]
        _in_threads([lambda pg=pg, x=x: pg.allreduce([x]).wait() for pg, x in zip(pgs, xs)])
        assert all(torch.equal(x, torch.full((4,), 6.0)) for x in xs)
        comms[2].close()  # graceful leave: the others' next op runs among two
        ys = [torch.full((4,), float(i + 1)) for i in range(2)]
        _in_threads([lambda pg=pg, y=y: pg.allreduce([y]).wait() for pg, y in zip(pgs[:2], ys)])
        assert all(torch.equal(y, torch.full((4,), 3.0)) for y in ys)
        assert [pg.size() for pg in pgs[:2]] == [2, 2]
        # An all_gather's slots follow the live ranks too.
        outs = [torch.empty(2) for _ in range(2)]
        _in_threads([lambda pg=pg, o=o: pg.all_gather_single(o, torch.tensor([float(pg.rank())])).wait()
                     for pg, o in zip(pgs[:2], outs)])
        assert all(torch.equal(o, torch.tensor([0.0, 1.0])) for o in outs)
    finally:
        for c in comms:
            c.close()
        master.stop()


def test_unsupported_device_op_and_p2p_raise_clear_errors():
    """Unsupported devices, reduce ops, complex MAX, sends to oneself and receive-from-any-source raise
    InvalidArgumentError saying what is supported; a world of one still completes every op exactly."""
    master = pccl_py.Master().start()
    comm = pccl_py.Communicator(master.address, timeout=5).connect()
    try:
        pg = pccl_torch.wrap_communicator(comm)
        with pytest.raises(pccl_py.InvalidArgumentError, match="device 'meta'"):
            pg.allreduce([torch.empty(2, device="meta")], dist.AllreduceOptions())
        opts = dist.AllreduceOptions()
        opts.reduceOp = dist.ReduceOp.BAND
        with pytest.raises(pccl_py.InvalidArgumentError, match="SUM, AVG, PRODUCT, MIN, MAX and PREMUL_SUM, not .*BAND"):
            pg.allreduce([torch.ones(2)], opts)
        opts.reduceOp = dist.ReduceOp.MAX
        with pytest.raises(pccl_py.InvalidArgumentError, match="complex tensors support SUM and AVG"):
            pg.allreduce([torch.ones(2, dtype=torch.complex64)], opts)
        with pytest.raises(pccl_py.InvalidArgumentError, match="this rank"):
            pg.send([torch.ones(2)], 0, 0)
        with pytest.raises(pccl_py.InvalidArgumentError, match="any source"):
            pg.recv_anysource([torch.ones(2)], 0)
        # A world of one: every op still completes (and copies exactly).
        x = torch.tensor([1.5, -0.0, float("nan")])
        w = pg.allreduce([x])
        assert w.wait() and w.is_completed() and w.get_future().done()
        assert torch.equal(x[:2], torch.tensor([1.5, -0.0])) and torch.isnan(x[2])
    finally:
        comm.close()
        master.stop()


def test_work_future_is_done_when_wait_returns_and_callbacks_may_wait_on_their_own_work(monkeypatch):
    """A Work's future is done when wait() returns, and a callback may wait on its own Work without deadlocking
    the completer thread."""
    # Widen the window between "the op finished" and "its future is set", which a loaded machine opens.
    set_result = torch.futures.Future.set_result
    monkeypatch.setattr(torch.futures.Future, "set_result", lambda f, r: (time.sleep(0.02), set_result(f, r))[1])
    master = pccl_py.Master().start()
    comms = connect_group(master.address, 2, timeout=10)
    try:
        a, b = (pccl_torch.wrap_communicator(c) for c in comms)
        # The completer thread finishes each Work; wait() must not return before the future is done.
        for _ in range(5):
            wa, wb = a.allreduce([torch.ones(3)]), b.allreduce([torch.ones(3)])
            assert wa.wait() and wa.get_future().done() and wb.wait() and wb.get_future().done()
        # a's ops cannot finish before b issues its matching ones, so the callbacks below are
        # attached before completion and run on a's completer thread.
        own, gated, later = a.allreduce([torch.ones(3)]), a.allreduce([torch.ones(3)]), a.allreduce([torch.ones(3)])
        seen: list = []
        # A callback may wait on the Work whose future it hangs on: that Work is already settled.
        own_chain = own.get_future().then(lambda f: seen.append(own.wait()))
        # Waiting inside a callback on a Work not finished yet would deadlock the completer thread.
        gated_chain = gated.get_future().then(lambda f: later.wait())
        for _ in range(3):
            b.allreduce([torch.ones(3)])
        own_chain.wait()
        assert seen == [True]
        with pytest.raises(RuntimeError, match="would deadlock"):
            gated_chain.wait()
        assert later.wait() and torch.equal(later.result()[0], torch.full((3,), 2.0))
    finally:
        for c in comms:
            c.close()
        master.stop()


def test_premul_sum_coalesced_gather_and_torch_wording_of_errors():
    """PREMUL_SUM scales each rank's input by its own factor (also in reduce_scatter), coalesced gathers fill
    every rank's slots, misuse raises clear errors, and a timeout surfaces as torch's DistBackendError caused
    by pccl_py.TimeoutError."""
    master = pccl_py.Master().start()
    comms = connect_group(master.address, 3, timeout=1.5)
    try:
        pgs = [pccl_torch.wrap_communicator(c) for c in comms]

        def premul(factor):
            opts = dist.AllreduceOptions()
            opts.reduceOp = dist._make_nccl_premul_sum(factor)
            return opts

        # PREMUL_SUM: every rank scales its own input by its own factor (a number or a 1-element tensor).
        factors = [0.5, torch.tensor([2.0]), 4.0]
        xs = [torch.full((5,), float(pg.rank() + 1)) for pg in pgs]
        expected = sum(float(f) * (pg.rank() + 1) for f, pg in zip(factors, pgs))
        _in_threads([lambda pg=pg, x=x, f=f: pg.allreduce([x], premul(f)).wait() for pg, x, f in zip(pgs, xs, factors)])
        assert all(torch.equal(x, torch.full((5,), expected)) for x in xs), xs
        # ... and in reduce_scatter_tensor (each rank keeps its slice of the scaled sum).
        outs = [torch.empty(2) for _ in pgs]
        rs_opts = dist.ReduceScatterOptions()
        rs_opts.reduceOp = dist._make_nccl_premul_sum(3.0)
        _in_threads([lambda pg=pg, o=o: pg.reduce_scatter_tensor_coalesced([o], [torch.arange(6.0)], rs_opts).wait()
                     for pg, o in zip(pgs, outs)])
        for pg, o in zip(pgs, outs):
            r = pg.rank()
            assert torch.equal(o, 9.0 * torch.arange(6.0)[2 * r:2 * r + 2]), (r, o)
        with pytest.raises(pccl_py.InvalidArgumentError, match="PREMUL_SUM is defined for floating-point"):
            pgs[0].allreduce([torch.ones(2, dtype=torch.int32)], premul(2.0))

        # all_gather_coalesced: output_lists[rank][j] holds rank's input j (shapes may differ per j).
        ins = [[torch.full((2,), float(pg.rank())), torch.full((1, 3), 10.0 + pg.rank())] for pg in pgs]
        gathered = [[[torch.empty(2), torch.empty(1, 3)] for _ in pgs] for _ in pgs]
        _in_threads([lambda pg=pg, o=o, i=i: pg.allgather_coalesced(o, i).wait() for pg, o, i in zip(pgs, gathered, ins)])
        for out in gathered:
            for r in range(3):
                assert torch.equal(out[r][0], torch.full((2,), float(r)))
                assert torch.equal(out[r][1], torch.full((1, 3), 10.0 + r))
        with pytest.raises(pccl_py.InvalidArgumentError, match="one output list per rank"):
            pgs[0].allgather_coalesced([[torch.empty(2)]], [torch.ones(2)])

        # A timeout fails the Work as torch words it, is both pccl's and torch's error, and leaves
        # the input of a PREMUL_SUM (reduced from a scaled copy) as it was.
        x = torch.full((4,), 7.0)
        t0 = time.monotonic()
        with pytest.raises(dist.DistBackendError, match=r"pccl all_reduce: Timed out waiting ") as info:
            pgs[0].allreduce([x], premul(2.0)).wait()
        assert 1.2 <= time.monotonic() - t0 < 10.0
        assert isinstance(info.value, pccl_py.TimeoutError)
        assert isinstance(info.value.__cause__, pccl_py.TimeoutError)
        assert torch.equal(x, torch.full((4,), 7.0))
    finally:
        for c in comms:
            c.close()
        master.stop()
