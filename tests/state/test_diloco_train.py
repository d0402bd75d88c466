"""tools/diloco_train end to end: a short real run of each algorithm, DDP under churn, and the plot.

Each run is the tool as a user starts it (``python -m pccl_py.tools.diloco_train``), with a tiny model
(d=32, one layer), 2 peers and 60 inner steps, so that all of it takes about a minute on 2 cores. The
JSON record is the evidence: it must hold every field a comparison needs, the eval loss must have
fallen, and every algorithm that synchronises must end with bitwise identical parameters on every
peer. The churn run covers the elastic DDP baseline's admission path (the DiLoCo variants' is covered
by tests/state/test_diloco.py and by the demo in tests/tools/test_demo.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import pccl_py
from support import REPO_ROOT

pytest.importorskip("torch")

ROOT = REPO_ROOT
ALGOS = ["ddp", "diloco", "async", "streaming", "solo"]
TINY = ["--peers", "2", "--model", "tiny", "--sync-every", "20", "--fragments", "4", "--overlap", "2",
        "--warmup", "20", "--seed", "0", "--progress", "plain"]
REPORT_FIELDS = {"outer_step", "world_size", "tx_bytes", "rx_bytes", "comm_seconds", "blocked_seconds", "retries",
                 "joined", "lost", "fragment", "inner_step", "t"}
RECORDS: dict[str, str] = {}  # algo -> JSON written by test_each_algorithm, reused by the plot test


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(pccl_py.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(x for x in (package_root, env.get("PYTHONPATH")) if x)
    return subprocess.run([sys.executable, "-m", "pccl_py.tools.diloco_train", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT)


def _train(algo: str, path: Path, *extra: str, timeout: float = 120) -> dict:
    r = _run(["--algo", algo, "--inner-steps", "60", *TINY, "--json", str(path), *extra], timeout=timeout)
    assert r.returncode == 0, f"exit code {r.returncode}\n--- stdout\n{r.stdout}\n--- stderr\n{r.stderr[-3000:]}"
    assert "PASSED" in r.stdout and "Traceback" not in r.stdout, r.stdout
    return json.loads(path.read_text())


@pytest.mark.parametrize("algo", ALGOS)
def test_each_algorithm(algo: str, tmp_path: Path) -> None:
    """A short pccl_py.tools.diloco_train run of each algorithm passes, writes a complete JSON record, and its
    loss falls on the group's curve and on every peer's."""
    path = tmp_path / f"{algo}.json"
    rec = _train(algo, path)
    RECORDS[algo] = str(path)

    assert rec["tool"] == "pccl_py.tools.diloco_train" and rec["passed"] and rec["problems"] == []
    assert rec["config"]["algo"] == algo and rec["model"]["parameters"] > 0 and len(rec["text_sha256"]) == 64
    f = rec["final"]
    assert f["peers_done"] == 2 and f["inner_steps"] == 60
    assert set(f["tx_bytes_per_peer"]) == set(f["eval_loss_per_peer"]) and len(f["tx_bytes_per_peer"]) == 2
    assert f["longest_stall_s"] >= 0 and f["longest_stall_where"]
    assert rec["churn_events"] == [] and f["kills"] == 0

    # The loss fell, on the group's curve and on every peer's.
    curve = rec["curve"]
    assert [p["inner_step"] for p in curve] == [0, 20, 40, 60], curve
    assert curve[-1]["eval_loss"] < curve[0]["eval_loss"] - 0.5, curve
    for p in rec["peers"]:
        assert p["status"] == "done" and p["final_eval_loss"] is not None
        pts = p["eval_curve"]
        assert all({"inner_step", "eval_loss", "tx_bytes", "t"} <= set(pt) for pt in pts)
        assert pts[-1]["eval_loss"] < pts[0]["eval_loss"]
        assert [pt["tx_bytes"] for pt in pts] == sorted(pt["tx_bytes"] for pt in pts)  # bytes sent only grow

    if algo == "solo":
        assert f["params_identical"] is None and all(v == 0 for v in f["tx_bytes_per_peer"].values())
        # Each peer trained alone on its own data: different weights, and the record's loss is their mean.
        assert len({p["global_sha256"] for p in rec["peers"]}) == 2
        assert f["eval_loss"] == pytest.approx(sum(f["eval_loss_per_peer"].values()) / 2)
        return
    assert f["params_identical"] is True, f
    assert len({p["global_sha256"] for p in rec["peers"]}) == 1
    assert all(v > 0 for v in f["tx_bytes_per_peer"].values())
    if algo == "ddp":
        assert all(p["outer_reports"] == [] for p in rec["peers"])
        return
    for p in rec["peers"]:
        reports = p["outer_reports"]
        assert reports and all(REPORT_FIELDS <= set(r) for r in reports), reports
        assert all(r["world_size"] == 2 and r["lost"] == 0 for r in reports)
        if algo == "streaming":  # one report per fragment sync: 4 per outer step
            assert len(reports) == 4 * 3 and {r["fragment"] for r in reports} == {0, 1, 2, 3}
        elif algo == "async":  # round t's update lands at the end of round t+1; the first has nothing to apply
            assert [r["outer_step"] for r in reports] == [0, 1, 2]
        else:
            assert [r["outer_step"] for r in reports] == [1, 2, 3]
    if algo == "diloco" and "ddp" in RECORDS:
        ddp = json.loads(Path(RECORDS["ddp"]).read_text())
        # DiLoCo talks once per 20 inner steps, DDP every step: an order of magnitude fewer bytes.
        assert sum(f["tx_bytes_per_peer"].values()) * 5 < sum(ddp["final"]["tx_bytes_per_peer"].values())


def test_ddp_admits_newcomers_under_churn(tmp_path: Path) -> None:
    """DDP training under kills admits newcomers into the running group, and every peer that finishes ends with
    identical parameters."""
    # Time-limited: a peer is SIGKILLed about 2 s after the group is complete, then whenever no newcomer is
    # joining, until 22 s in; everyone is told to stop at 32 s. The newcomers must join the running group
    # and end with the members' exact weights.
    path = tmp_path / "ddp_churn.json"
    r = _run(["--algo", "ddp", *TINY, "--inner-steps", "1000000", "--eval-every", "500", "--time-limit", "40",
              "--churn", "--churn-every", "2", "--json", str(path)], timeout=120)
    assert r.returncode == 0, f"exit code {r.returncode}\n--- stdout\n{r.stdout}\n--- stderr\n{r.stderr[-3000:]}"
    rec = json.loads(path.read_text())
    f = rec["final"]
    assert f["kills"] >= 1 and f["joins"] >= 1, rec["churn_events"]
    assert f["params_identical"] is True and f["peers_done"] == 2
    assert any(p["role"] == "newcomer" and p["status"] == "done" for p in rec["peers"]), rec["peers"]
    kinds = [e["kind"] for e in rec["churn_events"]]
    assert kinds[:3] == ["kill", "start", "join"], rec["churn_events"]
    assert all(e["t"] > 0 for e in rec["churn_events"])


def test_plot_of_several_records(tmp_path: Path) -> None:
    """--plot --from with several records writes a PNG."""
    pytest.importorskip("matplotlib")
    sources = [RECORDS[a] for a in ALGOS if a in RECORDS]
    if len(sources) < 2:  # run alone: make two records here
        sources = [str(tmp_path / "solo.json"), str(tmp_path / "diloco.json")]
        _train("solo", Path(sources[0]))
        _train("diloco", Path(sources[1]))
    out = tmp_path / "cmp.png"
    r = _run(["--plot", str(out), "--from", *sources], timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000


def test_bad_flags_are_refused_before_anything_starts() -> None:
    """Flag combinations that make no sense exit with status 2 and a message naming the flag, before anything
    starts."""
    for args, words in ((["--algo", "ddp", "--quantization", "q8"], "--quantization is DiLoCo's"),
                        (["--algo", "diloco", "--inner-steps", "55", "--sync-every", "20"], "multiple of --sync-every"),
                        (["--algo", "solo", "--churn"], "does not communicate"),
                        (["--algo", "streaming", "--sync-every", "20", "--fragments", "4", "--overlap", "5"], "--overlap"),
                        (["--from", "x.json"], "only makes sense with --plot")):
        r = _run(args, timeout=60)
        assert r.returncode == 2 and words in r.stderr, (args, r.stderr)
