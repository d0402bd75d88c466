"""DiLoCo, AsyncDiLoCo and StreamingDiLoCo: their math against single-process references, bitwise
agreement through a kill -9 and a newcomer, checkpoints, and argument checks.

Agreement alone proves nothing here (a shared-state sync makes peers agree on anything), so the
math tests compare values: each worker (tests/helpers/diloco_worker.py, real processes, real sockets)
reports its local parameters before every outer step and the global ones after, and the test
recomputes the global parameters from the locals.

Tolerances: the library computes in float32 and sums over a ring in rank order; the references
sum in float64. One outer step of lr 1 computes g - (g - l), which rounds twice at ~6e-8 relative
to |g| (about 1); the reductions add ~1e-7 per step. Parameters stay below 2 in magnitude, so an
absolute 1e-5 over a few steps is loose for rounding yet far below any error in the math (a missing
1/n, a wrong sign, a skipped or doubled update all move parameters by >= 1e-3 here).
"""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from typing import Any, Dict, List

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import pccl_py  # noqa: E402
from pccl_py.diloco import AsyncDiLoCo, DiLoCo, StreamingDiLoCo  # noqa: E402
from support import HELPERS_DIR

WORKER = os.path.join(HELPERS_DIR, "diloco_worker.py")
BASE = dict(seed=1, dim=8, hidden=16, H=4, outer_lr=0.7, momentum=0.9, nesterov=True)


class Run:
    """A master in this process and worker processes; every process is killed by PID on exit."""

    def __init__(self, tmp_path: Any, time_limit: float = 180.0) -> None:
        self.master = pccl_py.Master("127.0.0.1", 0).start()
        self.address = self.master.address
        self.tmp = tmp_path
        self.deadline = time.monotonic() + time_limit
        self.procs: Dict[str, subprocess.Popen] = {}
        self.events: Dict[str, List[dict]] = defaultdict(list)
        self.cond = threading.Condition()

    def spawn(self, name: str, **cfg: Any) -> None:
        cfg = {**BASE, "master": self.address, **cfg}
        err = open(os.path.join(str(self.tmp), f"{name}.stderr"), "w")
        proc = subprocess.Popen([sys.executable, WORKER, json.dumps(cfg)], stdout=subprocess.PIPE, stderr=err,
                                text=True)
        self.procs[name] = proc
        threading.Thread(target=self._read, args=(name, proc), daemon=True).start()

    def _read(self, name: str, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            with self.cond:
                self.events[name].append(json.loads(line))
                self.cond.notify_all()

    def wait_for(self, predicate: Any, what: str) -> None:
        with self.cond:
            while not predicate():
                left = self.deadline - time.monotonic()
                assert left > 0, f"timed out waiting for {what}; events: {dict(self.events)}"
                self.cond.wait(min(left, 0.5))

    def finish(self, *names: str) -> None:
        for name in names:
            left = max(0.1, self.deadline - time.monotonic())
            try:
                self.procs[name].wait(timeout=left)
            except subprocess.TimeoutExpired:
                raise AssertionError(f"{name} did not finish in time; events: {self.events[name][-3:]}")

    def outer(self, name: str) -> List[dict]:
        return [e for e in self.events[name] if e["event"] == "outer"]

    def stderr(self, name: str) -> str:
        with open(os.path.join(str(self.tmp), f"{name}.stderr")) as f:
            return f.read()

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
        for proc in self.procs.values():
            proc.wait(timeout=10)
        self.master.stop()


@pytest.fixture
def run(tmp_path):
    r = Run(tmp_path)
    try:
        yield r
    finally:
        r.close()


def run_group(run: Run, n: int, **cfg: Any) -> List[str]:
    names = [f"p{i}" for i in range(n)]
    for i, name in enumerate(names):
        run.spawn(name, slot=i, founders=n, **cfg)
    run.finish(*names)
    for name in names:
        assert run.procs[name].returncode == 0, f"{name} failed: {run.events[name][-1:]}\n{run.stderr(name)}"
    return names


def by_step(run: Run, names: List[str]) -> Dict[tuple, Dict[str, dict]]:
    """(outer_step, fragment) -> peer -> event."""
    table: Dict[tuple, Dict[str, dict]] = defaultdict(dict)
    for name in names:
        for e in run.outer(name):
            table[(e["outer_step"], e["fragment"], e["inner_step"])][name] = e
    return table


def assert_identical(table: Dict[tuple, Dict[str, dict]]) -> None:
    for key, peers in table.items():
        hashes = {e["hash"] for e in peers.values()}
        assert len(hashes) == 1, f"peers disagree after outer step {key}: {peers.keys()}"


# -- math against references -------------------------------------------------------------------------


def _batch(slot: int, step: int, dim: int = 8) -> tuple:
    g = torch.Generator().manual_seed(BASE["seed"] * 1_000_003 + slot * 10_007 + step)
    x = torch.randn(16, dim, generator=g)
    return x, torch.sin(x @ torch.linspace(-1.0, 1.0, dim).unsqueeze(1))


def _model() -> torch.nn.Module:
    torch.manual_seed(7)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))


def test_one_worker_with_outer_lr_1_and_no_momentum_is_plain_training(local_group) -> None:
    """DiLoCo on one worker with outer_lr=1 and no momentum ends where plain training with the inner optimizer
    ends, reporting one outer step every sync_every steps."""
    (comm,) = local_group(1)
    plain, model = _model(), _model()
    opt_plain = torch.optim.SGD(plain.parameters(), lr=0.05)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    algo = DiLoCo(model, opt, comm, sync_every=5, outer_lr=1.0, outer_momentum=0.0, nesterov=False)
    reports = []
    for step in range(40):
        for m, o in ((plain, opt_plain), (model, opt)):
            x, y = _batch(0, step)
            torch.nn.functional.mse_loss(m(x), y).backward()
            o.step()
            o.zero_grad()
        r = algo.step()
        if r is not None:
            reports.append(r)
    assert [r.outer_step for r in reports] == list(range(1, 9))
    assert all(r.world_size == 1 and r.contributors == 1 for r in reports)
    a = torch.cat([p.detach().reshape(-1) for p in plain.parameters()])
    b = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    moved = (a - torch.cat([p.detach().reshape(-1) for p in _model().parameters()])).abs().max().item()
    assert moved > 1e-2  # training did something, so agreement below is not trivial
    assert (a - b).abs().max().item() < 1e-5


def test_sync_every_1_with_outer_lr_1_gives_the_mean_of_the_peers(run: Run) -> None:
    """With sync_every=1, outer_lr=1 and no momentum, every peer's parameters after each outer step are the mean
    of the peers' locally trained parameters, identical on every peer."""
    names = run_group(run, 3, algo="diloco", H=1, outer_lr=1.0, momentum=0.0, nesterov=False, steps=6, dump=True)
    table = by_step(run, names)
    assert sorted(k[0] for k in table) == list(range(1, 7))
    assert_identical(table)
    for key, peers in table.items():
        assert len(peers) == 3
        locals_ = np.array([e["local"] for e in peers.values()], dtype=np.float64)
        mean = locals_.mean(axis=0)
        assert np.abs(locals_ - mean).max() > 1e-4, "peers trained on the same data: the mean proves nothing"
        for e in peers.values():
            assert np.abs(np.array(e["params"]) - mean).max() < 1e-5, f"outer step {key}"


def _nesterov(theta: np.ndarray, m: np.ndarray, g: np.ndarray, lr: float, mu: float) -> None:
    m *= mu
    m += g
    theta -= lr * (g + mu * m)


def test_diloco_matches_a_numpy_reference_with_nesterov_momentum(run: Run) -> None:
    """DiLoCo's outer steps with Nesterov momentum match a numpy reference of the mean pseudo-gradient update,
    identically on every peer."""
    names = run_group(run, 3, algo="diloco", steps=16, dump=True)
    start = np.array(run.events["p0"][0]["params"], dtype=np.float64)
    assert all(run.events[n][0]["hash"] == run.events["p0"][0]["hash"] for n in names), "founders start apart"
    theta, m = start.copy(), np.zeros_like(start)
    table = by_step(run, names)
    assert sorted(k[0] for k in table) == [1, 2, 3, 4]
    for key in sorted(table):
        peers = table[key]
        g = np.mean([theta - np.array(e["local"]) for e in peers.values()], axis=0)
        _nesterov(theta, m, g, BASE["outer_lr"], BASE["momentum"])
        for e in peers.values():
            assert np.abs(np.array(e["params"]) - theta).max() < 1e-5, f"outer step {key}"
    assert_identical(table)


def test_async_matches_the_one_round_delayed_reference(run: Run) -> None:
    """AsyncDiLoCo applies each round's mean pseudo-gradient one round late, matching a numpy reference; every
    peer holds the same parameters, and flush() applies the last round at once."""
    names = run_group(run, 3, algo="async", steps=20, dump=True, flush=True)
    start = np.array(run.events["p0"][0]["params"], dtype=np.float64)
    theta, m = start.copy(), np.zeros_like(start)
    pending = None                  # the mean pseudo-gradient of the previous round
    rounds = sorted({e["inner_step"] for n in names for e in run.outer(n)})
    assert rounds == [4, 8, 12, 16, 20]
    for inner in rounds:
        peers = {n: next(e for e in run.outer(n) if e["inner_step"] == inner) for n in names}
        if pending is not None:
            _nesterov(theta, m, pending, BASE["outer_lr"], BASE["momentum"])
        # measured from the global parameters after this boundary's update
        pending = np.mean([theta - np.array(e["local"]) for e in peers.values()], axis=0)
        for e in peers.values():
            assert np.abs(np.array(e["params"]) - theta).max() < 1e-5, f"round ending at inner step {inner}"
            assert e["outer_step"] == (inner // 4) - 1  # the first round's end applies nothing
        assert len({e["hash"] for e in peers.values()}) == 1
    assert np.abs(theta - start).max() > 1e-3
    # flush() applies the last round's reduce at once instead of a round later.
    _nesterov(theta, m, pending, BASE["outer_lr"], BASE["momentum"])
    for n in names:
        flushed = next(e for e in run.events[n] if e["event"] == "flush")
        assert flushed["applied"] and flushed["outer_step"] == 5
        assert np.abs(np.array(flushed["params"]) - theta).max() < 1e-5


def test_streaming_reduces_every_parameter_exactly_once_per_cycle(run: Run) -> None:
    """StreamingDiLoCo syncs one fragment at a time: each sync sets exactly that fragment to the peers' mean and
    leaves the others alone, and every fragment is synced once per cycle, identically on every peer."""
    names = run_group(run, 3, algo="streaming", H=8, fragments=2, overlap=0, outer_lr=1.0, momentum=0.0,
                      nesterov=False, steps=24, dump=True)
    sizes = run.events["p0"][0]["fragment_sizes"]
    bounds = np.cumsum([0] + sizes)
    prev = np.array(run.events["p0"][0]["params"], dtype=np.float64)
    seen = defaultdict(list)
    for inner in sorted({e["inner_step"] for e in run.outer("p0")}):
        peers = {n: next(e for e in run.outer(n) if e["inner_step"] == inner) for n in names}
        frag = peers["p0"]["fragment"]
        seen[(inner - 1) // 8].append(frag)
        lo, hi = bounds[frag], bounds[frag + 1]
        mean = np.mean([np.array(e["local"]) for e in peers.values()], axis=0)
        glob = np.array(peers["p0"]["glob"])
        assert np.abs(glob[lo:hi] - mean[lo:hi]).max() < 1e-5, f"fragment {frag} at inner step {inner}"
        other = np.ones(len(glob), dtype=bool)
        other[lo:hi] = False
        assert np.array_equal(glob[other], prev[other]), "a fragment changed outside its own sync"
        for e in peers.values():
            assert np.array_equal(np.array(e["glob"]), glob)
            assert np.array_equal(np.array(e["params"])[lo:hi], glob[lo:hi])
        prev = glob
    assert dict(seen) == {0: [0, 1], 1: [0, 1], 2: [0, 1]}
    ends = {e["inner_step"]: e["fragment"] for e in run.outer("p0")}
    assert ends == {4: 0, 8: 1, 12: 0, 16: 1, 20: 0, 24: 1}


# -- faults, newcomers, checkpoints --------------------------------------------------------------------


@pytest.mark.parametrize("algo", ["diloco", "async"])
def test_kill_during_the_reduce_and_a_newcomer_keep_every_peer_identical(run: Run, algo: str) -> None:
    """A peer killed inside the outer reduce and a newcomer admitted later: the group continues at world size 2
    and then 3, the newcomer starts from the members' exact parameters at an outer boundary, and all peers end
    bitwise identical."""
    # 2M parameters (8 MiB): the reduce takes long enough for the kill to land inside it.
    cfg = dict(algo=algo, dim=1024, hidden=2048, H=3, steps=3 * 200, rounds_after_join=3, heartbeat_timeout=2.0)
    for i in range(3):
        run.spawn(f"p{i}", slot=i, founders=3, kill_at_outer=2 if i == 2 else None, kill_delay=0.01, **cfg)
    run.finish("p2")
    assert run.procs["p2"].returncode == -signal.SIGKILL
    run.spawn("new", slot=2, founders=0, **cfg)
    run.finish("p0", "p1", "new")
    names = ["p0", "p1", "new"]
    for n in names:
        assert run.procs[n].returncode == 0, f"{n}: {run.events[n][-1:]}\n{run.stderr(n)}"
    table = by_step(run, names)
    assert_identical(table)
    worlds = [e["world"] for e in run.outer("p0")]
    assert 2 in worlds and worlds[-1] == 3, worlds
    ready = run.events["new"][0]
    assert ready["inner_step"] % 3 == 0 and ready["inner_step"] > 0
    first = run.outer("new")[0]
    other = next(e for e in run.outer("p0") if e["inner_step"] == first["inner_step"])
    assert first["hash"] == other["hash"]
    assert sum(e["joined"] for e in run.outer("p0")) == 1
    assert {e["hash"] for n in names for e in run.events[n] if e["event"] == "done"} == {run.outer("p0")[-1]["hash"]}


@pytest.mark.parametrize("algo", ["diloco", "async"])
def test_checkpoint_round_trip_continues_bitwise_identically(run: Run, tmp_path, algo: str) -> None:
    """A group restarted from checkpoints saved mid-run (state_dict of the algorithm, model and optimizer)
    continues with bitwise the same parameters as the run that was not interrupted."""
    # Two peers, unquantized: a sum of two values does not depend on which one is rank 0 (quantized,
    # the chunk owner's own part is not encoded, so the bits depend on the rank order, which the
    # restarted group may not reproduce; the in-process test below covers residuals).
    cfg = dict(algo=algo, steps=4 * 5)
    for i in range(2):
        run.spawn(f"a{i}", slot=i, founders=2, save_at=2, save_path=str(tmp_path / f"ckpt{i}.pt"), **cfg)
    run.finish("a0", "a1")
    final = {run.events[f"a{i}"][-1]["hash"] for i in range(2)}
    assert len(final) == 1
    for i in range(2):
        run.spawn(f"b{i}", slot=i, founders=2, load=str(tmp_path / f"ckpt{i}.pt"), **cfg)
    run.finish("b0", "b1")
    saved_at = next(e["inner_step"] for e in run.outer("a0") if e["outer_step"] == 2)
    for i in range(2):
        assert run.events[f"b{i}"][0]["inner_step"] == saved_at
        assert run.events[f"b{i}"][-1]["event"] == "done", run.stderr(f"b{i}")
        assert run.events[f"b{i}"][-1]["hash"] in final
        after = [e["hash"] for e in run.outer(f"a{i}") if e["inner_step"] > saved_at]
        assert after, "the checkpoint was taken at the end: nothing to compare"
        assert after == [e["hash"] for e in run.outer(f"b{i}")]


@pytest.mark.parametrize("cls", [DiLoCo, AsyncDiLoCo, StreamingDiLoCo])
def test_checkpoint_with_q4_residuals_continues_bitwise_identically(local_group, cls) -> None:
    """A checkpoint taken with q4 error-feedback residuals (for DiLoCo, AsyncDiLoCo and StreamingDiLoCo) keeps
    them, and training resumed from it continues bitwise identically."""
    (comm,) = local_group(1)

    def make() -> tuple:
        model = _model()
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        kwargs = dict(fragments=2, overlap=1) if cls is StreamingDiLoCo else {}
        return model, opt, cls(model, opt, comm, sync_every=4, quantization="q4", **kwargs)

    def train(model, opt, algo, until: int) -> None:
        while algo.inner_step < until:
            x, y = _batch(0, algo.inner_step)
            torch.nn.functional.mse_loss(model(x), y).backward()
            opt.step()
            opt.zero_grad()
            algo.step()

    model, opt, algo = make()
    train(model, opt, algo, 12)
    ckpt = copy.deepcopy({"algo": algo.state_dict(), "model": model.state_dict(), "opt": opt.state_dict()})
    residual = ckpt["algo"]["fragments"][0]["residual"]
    assert residual.abs().max() > 0, "q4 dropped nothing: the residual is not being kept"
    train(model, opt, algo, 24)
    expected = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    algo.close()
    model, opt, algo = make()
    algo.load_state_dict(ckpt["algo"])
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["opt"])
    assert algo.inner_step == 12
    train(model, opt, algo, 24)
    got = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    assert torch.equal(got, expected)
    algo.close()


@pytest.mark.parametrize("quantization", ["fp16", "q8", "q4"])
def test_quantized_pseudo_gradients_with_error_feedback_stay_identical(run: Run, quantization: str) -> None:
    """With fp16, q8 or q4 pseudo-gradients, every peer still holds bitwise the same parameters after each outer
    step, and training moves them."""
    names = run_group(run, 3, algo="diloco", steps=12, quantization=quantization, dump=True)
    table = by_step(run, names)
    assert_identical(table)
    start = np.array(run.events["p0"][0]["params"])
    last = np.array(run.outer("p0")[-1]["params"])
    assert np.abs(last - start).max() > 1e-3


def test_model_shapes_that_differ_between_peers_fail_with_mismatch_error(run: Run) -> None:
    """Peers whose models differ in shape both fail with MismatchError naming both shapes."""
    run.spawn("p0", slot=0, founders=2, algo="diloco", steps=8)
    run.spawn("p1", slot=1, founders=2, algo="diloco", steps=8, hidden=17)
    run.finish("p0", "p1")
    for n in ("p0", "p1"):
        last = run.events[n][-1]
        assert last["event"] == "error" and last["type"] == "MismatchError", last
        assert "float32[16]" in last["message"] and "float32[17]" in last["message"], last["message"]


# -- arguments ---------------------------------------------------------------------------------------


def _unconnected() -> pccl_py.Communicator:
    return pccl_py.Communicator("127.0.0.1:9")  # never connected: any traffic would fail


@pytest.mark.parametrize("kwargs, words", [
    (dict(sync_every=0), "sync_every"),
    (dict(quantization="q3"), "quantization"),
    (dict(outer_lr=-1.0), "outer_lr"),
    (dict(outer_momentum=1.0), "outer_momentum"),
    (dict(nesterov=True, outer_momentum=0.0), "nesterov"),
])
def test_bad_arguments_raise_before_any_traffic(kwargs: dict, words: str) -> None:
    """A bad DiLoCo argument (sync_every, quantization, outer_lr, ...) raises InvalidArgumentError naming it,
    before any traffic."""
    model = _model()
    with pytest.raises(pccl_py.InvalidArgumentError, match=words):
        DiLoCo(model, torch.optim.SGD(model.parameters(), lr=0.1), _unconnected(), **kwargs)


def test_bad_models_and_fragments_raise_before_any_traffic() -> None:
    """Bad fragment counts, overlap, parameter dtypes, a non-Communicator or an unconnected one raise
    InvalidArgumentError naming the problem, before any traffic."""
    comm = _unconnected()
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(pccl_py.InvalidArgumentError, match="fragments"):
        StreamingDiLoCo(model, opt, comm, sync_every=8, fragments=0)
    with pytest.raises(pccl_py.InvalidArgumentError, match="fragments"):
        StreamingDiLoCo(model, opt, comm, sync_every=50, fragments=5)  # 4 parameter tensors
    with pytest.raises(pccl_py.InvalidArgumentError, match="overlap"):
        StreamingDiLoCo(model, opt, comm, sync_every=8, fragments=2, overlap=4)
    half = _model().to(torch.float16)
    with pytest.raises(pccl_py.InvalidArgumentError, match="float32 or float64"):
        AsyncDiLoCo(half, None, comm)
    with pytest.raises(pccl_py.InvalidArgumentError, match="Communicator"):
        DiLoCo(model, opt, object())
    with pytest.raises(pccl_py.InvalidArgumentError, match="connect"):
        DiLoCo(model, opt, comm)
