"""The user-facing entry points work end to end: ``pccl-demo``, examples/basic_allreduce.py and
examples/shared_state.py.

Both run as subprocesses, exactly as a user would start them, each with a timeout. The demo's own
output is the evidence: it must show the SIGKILL, the PeerLostError and its recovery, and the
admission, and it must end with the verdict that every result stayed correct.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pccl_py

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "examples", "basic_allreduce.py")


def _env() -> dict:
    """The subprocess imports the same pccl_py as this test does."""
    env = dict(os.environ)
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(pccl_py.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(x for x in (package_root, env.get("PYTHONPATH")) if x)
    return env


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, env=_env(), cwd=ROOT)


def test_demo_survives_kill_and_admits_a_peer() -> None:
    r = _run(["-m", "pccl_py.demo"], timeout=60)
    out = r.stdout
    assert r.returncode == 0, f"exit code {r.returncode}\n--- stdout\n{out}\n--- stderr\n{r.stderr}"
    assert "SIGKILL" in out, out                              # the kill
    assert "PeerLostError" in out, out                        # ...surfaced on the survivors
    assert "attempt 2" in out, out                            # ...and the retry succeeded
    assert "are_peers_pending()" in out and "admitted" in out, out  # the admission
    assert "every result stayed correct" in out, out
    assert "Traceback" not in out + r.stderr, r.stderr


def test_demo_reports_failure_with_exit_code_1() -> None:
    # A time limit too short to finish: the demo must fail cleanly, without claiming success.
    r = _run(["-m", "pccl_py.demo", "--time-limit", "0.5"], timeout=60)
    assert r.returncode == 1, r.stdout
    assert "every result stayed correct" not in r.stdout, r.stdout
    assert "RESULT: FAILED" in r.stdout, r.stdout
    assert "could not reap" not in r.stdout, r.stdout


def test_basic_allreduce_example() -> None:
    r = _run([EXAMPLE], timeout=60)
    assert r.returncode == 0, f"exit code {r.returncode}\n--- stdout\n{r.stdout}\n--- stderr\n{r.stderr}"
    assert "both peers hold the expected sum" in r.stdout, r.stdout


def test_shared_state_example() -> None:
    r = _run([os.path.join(ROOT, "examples", "shared_state.py")], timeout=120)
    assert r.returncode == 0, f"exit code {r.returncode}\n--- stdout\n{r.stdout}\n--- stderr\n{r.stderr}"
    assert "received 400400 bytes in its first sync" in r.stdout, r.stdout
    assert "example OK" in r.stdout, r.stdout
