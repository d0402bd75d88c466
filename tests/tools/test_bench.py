"""The benchmark CLI end to end: real peer processes, tiny sizes, JSON output checked field by field."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

import pccl_py

# Run the CLI against the same pccl_py copy this test imports.
_PKG_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(pccl_py.__file__)))
_FIELDS = ("median_s", "p10_s", "p90_s", "algbw_GBps", "busbw_GBps", "cpu_util")


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([_PKG_PARENT] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


def _run_bench(tmp_path, *extra: str, timeout: float = 50.0) -> dict:
    out = tmp_path / "bench.json"
    env = _env()
    cmd = [sys.executable, "-m", "pccl_py.tools.bench", "--sizes", "1KiB,64KiB", "--iters", "3", "--peers", "2",
           "--json", str(out), "--timeout", "20", "--quiet", *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, f"bench failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    assert "busbw" in proc.stdout  # the table
    with open(out) as f:
        return json.load(f)


def _check_results(data: dict, backends: list[str]) -> None:
    assert data["world_size"] == 2
    assert data["config"]["dtype"] == "float32"
    results = data["results"]
    assert sorted((r["backend"], r["size_bytes"]) for r in results) == sorted(
        (b, s) for b in backends for s in (1024, 65536))
    for r in results:
        assert r["iters"] == 3
        assert r["count"] == r["size_bytes"] // 4
        assert len(r["times_s"]) == 3 and all(t > 0 for t in r["times_s"])
        for name in _FIELDS:
            assert r[name] > 0, (name, r)
        assert r["p10_s"] <= r["median_s"] <= r["p90_s"]
        assert r["busbw_GBps"] == pytest.approx(r["algbw_GBps"])  # 2(n-1)/n == 1 for n == 2
        # None when the size ran for less than one scheduler tick (10 ms): too short to tell
        assert r["steal"] is None or 0.0 <= r["steal"] <= 1.0, r
        assert r["algbw_GBps"] == pytest.approx(r["size_bytes"] / r["median_s"] / 1e9)


def test_bench_pccl_json(tmp_path):
    """pccl-bench on pccl alone writes a JSON report with every field filled, no comparison, and ring or star
    results."""
    data = _run_bench(tmp_path)
    _check_results(data, ["pccl"])
    assert data["comparison"] == []
    assert {r["algorithm"] for r in data["results"]} <= {"ring", "star"}


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed: no gloo to compare with")
def test_bench_compare_gloo_json(tmp_path):
    """--compare gloo runs both backends in one invocation and reports a positive bandwidth and latency ratio for
    every size."""
    data = _run_bench(tmp_path, "--compare", "gloo")
    _check_results(data, ["pccl", "gloo"])
    assert [c["size_bytes"] for c in data["comparison"]] == [1024, 65536]
    for c in data["comparison"]:
        assert c["busbw_ratio"] > 0 and c["latency_ratio"] > 0


def test_bench_compare_tls_json(tmp_path):
    """--compare tls: a second, encrypting master and Communicator per peer; pccl-tls rows beside pccl,
    with their ratios and intervals, and the report's TLS table."""
    data = _run_bench(tmp_path, "--compare", "tls")
    _check_results(data, ["pccl", "pccl-tls"])
    assert [c["size_bytes"] for c in data["comparison"]] == [1024, 65536]
    for c in data["comparison"]:
        assert c["tls_ratio"] > 0 and c["tls_latency_ratio"] > 0
        lo, hi = c["tls_ratio_interval"]
        assert 0 < lo <= hi


def test_bench_encryption_tls_only(tmp_path):
    """--encryption tls benchmarks pccl under TLS and says so in the report's config."""
    data = _run_bench(tmp_path, "--encryption", "tls")
    _check_results(data, ["pccl-tls"])
    assert data["config"]["encryption"] == "tls"


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed: no gloo to compare with")
def test_bench_p2p_rows_against_gloo(tmp_path):
    """--p2p adds a send/recv round trip for pccl and gloo; its busbw counts the message both ways."""
    data = _run_bench(tmp_path, "--compare", "gloo", "--p2p", timeout=80.0)
    assert data["config"]["p2p"] is True
    by = {(r["backend"], r["size_bytes"]): r for r in data["results"]}
    assert {b for b, _ in by} == {"pccl", "gloo", "p2p", "gloo-p2p"}
    for b in ("p2p", "gloo-p2p"):
        for size in (1024, 65536):
            r = by[(b, size)]
            assert r["algorithm"] == "p2p" and len(r["times_s"]) == 3 and r["median_s"] > 0
            assert r["busbw_GBps"] == pytest.approx(2 * r["size_bytes"] / r["median_s"] / 1e9)
    for c in data["comparison"]:
        assert c["p2p_ratio"] > 0 and c["p2p_latency_ratio"] > 0 and len(c["p2p_ratio_interval"]) == 2


def test_bench_schedule_alternates_backends_abba_and_settles_after_a_switch():
    """The benchmark schedule alternates backends ABBA with equal iteration counts, and every block that follows
    another backend starts with an untimed op."""
    from pccl_py.tools.bench.cli import _schedule

    assert _schedule(1, 50) == [(0, 50, False)]  # alone: one plain loop
    blocks = _schedule(2, 10)
    assert [b[0] for b in blocks] == [0, 1, 1, 0, 0, 1, 1, 0]
    assert sum(n for i, n, _ in blocks if i == 0) == sum(n for i, n, _ in blocks if i == 1) == 10
    assert all(n > 0 for _, n, _ in blocks)
    # every block that follows the other backend (or its warmup) starts with an untimed op, no other
    prev = 1
    for i, _, settle in blocks:
        assert settle == (i != prev)
        prev = i
    assert [b[0] for b in _schedule(3, 2)] == [0, 1, 2, 2, 1, 0]  # fewer iterations than rounds


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="steal is read from Linux's /proc/stat")
def test_bench_steal_is_a_share_of_cpu_time():
    """The hypervisor steal the bench reads from /proc/stat is a share between 0 and 1, and -1 when it cannot be
    measured."""
    from pccl_py.tools.bench.cli import _cpu_ticks, _steal_since

    steal, total = _cpu_ticks()
    assert 0 <= steal <= total
    assert 0.0 <= _steal_since((0, 0)) <= 1.0  # since boot
    assert _steal_since(None) == -1.0
    assert _steal_since((steal, total + 10**12)) == -1.0  # no time has passed since that start


def test_bench_report_flags_sizes_that_ran_under_steal():
    """The bench report names the sizes that ran under noticeable steal, with the share, and says nothing about
    steal otherwise."""
    import argparse

    from pccl_py.tools.bench.cli import Result
    from pccl_py.tools.bench.report import format_report

    def data(steal):
        rs = [Result("pccl", "ring", size, size // 4, "float32", 2, 1, 2, [0.01, 0.02], 0.5, steal)
              for size in (1024, 1 << 24)]
        return {"world_size": 2, "results": [r.__dict__ for r in rs]}

    args = argparse.Namespace(dtype="float32", algorithm="auto", quantization="none", connections=1)
    noisy = format_report(data(0.2), args)
    assert "steal" in noisy and "16 MiB (20%)" in noisy and "1 KiB (20%)" in noisy
    for quiet in (0.01, None):
        assert "steal" not in format_report(data(quiet), args)


def test_bench_plot_without_matplotlib_is_a_clear_error(tmp_path):
    """--plot without matplotlib exits with status 2 naming matplotlib."""
    if importlib.util.find_spec("matplotlib") is not None:
        pytest.skip("matplotlib is installed, so --plot works")
    proc = subprocess.run([sys.executable, "-m", "pccl_py.tools.bench", "--plot", str(tmp_path / "x.png")],
                          capture_output=True, text=True, timeout=30, env=_env())
    assert proc.returncode == 2
    assert "matplotlib" in proc.stderr


def test_bench_does_not_import_torch_without_compare():
    """The bench CLI does not import torch unless asked to compare with gloo."""
    code = "import sys, pccl_py.tools.bench.cli as b; b.build_parser().parse_args([]); assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30, env=_env())


def test_bench_ratio_interval_separates_a_real_difference_from_noise():
    """The ratio's confidence interval excludes 1 for a real 1.5x difference, includes it for equal backends, is
    reproducible (seeded), and is NaN without samples."""
    from pccl_py.tools.bench.report import ratio_interval

    rng = np.random.default_rng(1)
    gloo = 0.030 * (1 + 0.05 * rng.standard_normal(40))
    faster = 0.020 * (1 + 0.05 * rng.standard_normal(40))
    lo, hi = ratio_interval(faster, gloo)
    assert 1.0 < lo < 0.030 / 0.020 < hi  # 1.5x, clearly apart
    same = 0.030 * (1 + 0.05 * rng.standard_normal(40))
    lo, hi = ratio_interval(same, gloo)
    assert lo < 1.0 < hi
    assert ratio_interval(same, gloo) == (lo, hi)  # seeded: the report can be rebuilt from its JSON
    assert all(math.isnan(v) for v in ratio_interval([], gloo))


def test_bench_report_says_when_a_slower_size_is_within_noise():
    """The report says pccl is slower at a size, and adds "within noise" only when the ratio's interval includes
    1."""
    import argparse

    from pccl_py.tools.bench.cli import Result
    from pccl_py.tools.bench.report import compare, format_report

    def report(pccl_times, gloo_times):
        rs = [Result(b, "ring", 1 << 24, 1 << 22, "float32", 3, 1, len(t), list(t), 0.5, 0.0)
              for b, t in (("pccl", pccl_times), ("gloo", gloo_times))]
        data = {"world_size": 3, "results": [r.__dict__ for r in rs]}
        data["comparison"] = compare(data["results"])
        args = argparse.Namespace(dtype="float32", algorithm="auto", quantization="none", connections=1)
        return data["comparison"][0], format_report(data, args)

    rng = np.random.default_rng(2)
    gloo = list(0.030 * (1 + 0.2 * rng.standard_normal(8)))
    row, text = report([t * 1.02 for t in gloo], gloo)  # 2% slower, iterations spread by 20%
    assert row["busbw_ratio_interval"][0] < 1.0 < row["busbw_ratio_interval"][1]
    assert "pccl slower than gloo at: 16 MiB" in text and "within noise" in text
    row, text = report([t * 1.5 for t in gloo], gloo)  # far slower
    assert row["busbw_ratio_interval"][1] < 1.0
    assert "pccl slower than gloo at: 16 MiB" in text and "within noise" not in text
