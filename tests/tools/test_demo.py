"""The user-facing entry points work end to end: ``pccl-demo`` (training under churn), ``pccl-demo
--allreduce``, examples/basic_allreduce.py and examples/shared_state.py.

All run as subprocesses, exactly as a user would start them, each with a timeout. The demos' own
output is the evidence: the training demo must show a SIGKILL and a newcomer joining, and end with
every peer's final eval loss and the verdict that the parameters are bitwise identical on every peer;
the all-reduce demo must show the PeerLostError, its recovery and the admission.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

import pccl_py
from support import REPO_ROOT

ROOT = REPO_ROOT
EXAMPLE = os.path.join(ROOT, "examples", "basic_allreduce.py")


def _env() -> dict:
    """The subprocess imports the same pccl_py as this test does."""
    env = dict(os.environ)
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(pccl_py.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(x for x in (package_root, env.get("PYTHONPATH")) if x)
    return env


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, env=_env(), cwd=ROOT)


def test_demo_trains_through_a_kill_and_a_join() -> None:
    """pccl-demo trains through at least one kill and one newcomer's join, every finisher ends with the same eval
    loss and bitwise identical parameters, and it reports PASSED."""
    pytest.importorskip("torch")
    # The default run with kills about every 6 s instead of 20. Kills stop at 45 s and everyone stops at
    # 56 s, which leaves time for the founders' start and a newcomer's join on a loaded machine (at load 13
    # on 2 cores, 4 peers took 18 s to import torch and join).
    r = _run(["-m", "pccl_py.tools.demo", "--time-limit", "70", "--churn-every", "6", "--progress", "plain"], timeout=150)
    out = r.stdout
    assert r.returncode == 0, f"exit code {r.returncode}\n--- stdout\n{out}\n--- stderr\n{r.stderr[-3000:]}"
    assert re.search(r"SIGKILL pid \d+ at inner step \d+", out), out        # a kill...
    assert re.search(r"newcomer pid \d+ joined at inner step \d+", out), out  # ...and a join into the running group
    kills = int(re.search(r"churn: (\d+) kill\(s\), (\d+) join\(s\)", out).group(1))
    assert kills >= 1, out
    done = re.findall(r"done\s+final eval loss (\d+\.\d+)", out)
    assert len(done) >= 2 and len(set(done)) == 1, out                      # every finisher's eval loss, all equal
    assert "parameters bitwise identical on every peer" in out, out
    assert "PASSED" in out and "Traceback" not in out, out


def test_demo_fails_cleanly_when_out_of_time() -> None:
    """pccl-demo with too little time exits with status 1, says FAILED, claims nothing, and leaves no process
    behind."""
    pytest.importorskip("torch")
    # Too short to even start training: the demo must fail with exit code 1, without claiming success,
    # and leave no process behind.
    r = _run(["-m", "pccl_py.tools.demo", "--time-limit", "3"], timeout=60)
    assert r.returncode == 1, r.stdout
    assert "FAILED" in r.stdout, r.stdout
    assert "bitwise identical" not in r.stdout, r.stdout
    assert "could not reap" not in r.stdout, r.stdout


def test_demo_without_torch_says_what_to_install() -> None:
    """pccl-demo without torch exits with status 2 and says which extra to install."""
    code = "import sys, pccl_py.tools.demo as d; d._torch_available = lambda: False; sys.exit(d.main([]))"
    r = _run(["-c", code], timeout=60)
    assert r.returncode == 2, r.stdout + r.stderr
    assert 'pip install "pccl_py[torch]"' in r.stderr, r.stderr


def test_allreduce_demo_survives_kill_and_admits_a_peer() -> None:
    """pccl-demo --allreduce shows a kill surfacing as PeerLostError, a successful retry, an admission through
    are_peers_pending(), and results that stayed correct."""
    r = _run(["-m", "pccl_py.tools.demo", "--allreduce"], timeout=60)
    out = r.stdout
    assert r.returncode == 0, f"exit code {r.returncode}\n--- stdout\n{out}\n--- stderr\n{r.stderr}"
    assert "SIGKILL" in out, out                              # the kill
    assert "PeerLostError" in out, out                        # ...surfaced on the survivors
    assert "attempt 2" in out, out                            # ...and the retry succeeded
    assert "are_peers_pending()" in out and "admitted" in out, out  # the admission
    assert "every result stayed correct" in out, out
    assert "Traceback" not in out + r.stderr, r.stderr


def test_allreduce_demo_reports_failure_with_exit_code_1() -> None:
    """pccl-demo --allreduce with too little time exits with status 1 and RESULT: FAILED, claiming nothing, with
    no process left behind."""
    # A time limit too short to finish: the demo must fail cleanly, without claiming success.
    r = _run(["-m", "pccl_py.tools.demo", "--allreduce", "--time-limit", "0.5"], timeout=60)
    assert r.returncode == 1, r.stdout
    assert "every result stayed correct" not in r.stdout, r.stdout
    assert "RESULT: FAILED" in r.stdout, r.stdout
    assert "could not reap" not in r.stdout, r.stdout


def test_basic_allreduce_example() -> None:
    """examples/basic_allreduce.py runs and both peers hold the expected sum."""
    r = _run([EXAMPLE], timeout=60)
    assert r.returncode == 0, f"exit code {r.returncode}\n--- stdout\n{r.stdout}\n--- stderr\n{r.stderr}"
    assert "both peers hold the expected sum" in r.stdout, r.stdout


def test_shared_state_example() -> None:
    """examples/shared_state.py runs, and its newcomer receives the whole state in its first sync."""
    r = _run([os.path.join(ROOT, "examples", "shared_state.py")], timeout=120)
    assert r.returncode == 0, f"exit code {r.returncode}\n--- stdout\n{r.stdout}\n--- stderr\n{r.stderr}"
    assert "received 400400 bytes in its first sync" in r.stdout, r.stdout
    assert "example OK" in r.stdout, r.stdout
