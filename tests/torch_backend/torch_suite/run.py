"""Runs tests of torch's distributed suite (suite.py) with one backend and writes each outcome to JSON.

Why this exists: the suite's gates are fixed when it is imported, from the ``BACKEND`` environment
variable, so every backend needs a process of its own; this is that process. Each test spawns
``--world-size`` ranks (torch's MultiProcessTestCase), and a test that outlives ``--test-timeout`` has
its ranks terminated by torch's harness and counts as a failure.

    python tests/torch_backend/torch_suite/run.py --backend pccl --json out.json --all
    python tests/torch_backend/torch_suite/run.py --backend gloo --json out.json test_barrier test_all_gather

The trap: the environment must be complete before ``suite`` is imported, here and in every rank (the
ranks inherit it), and TEMP_DIR must hold a ``barrier`` directory at import time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import unittest


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", required=True, help='"pccl" or "gloo"')
    p.add_argument("--world-size", type=int, default=3)
    p.add_argument("--json", required=True, help="where to write the outcomes")
    p.add_argument("--test-timeout", type=int, default=180,
                   help="seconds before torch's harness terminates a test's ranks (default 180)")
    p.add_argument("--start-method", choices=("spawn", "fork"), default="spawn",
                   help="how ranks start: spawn (as torch's CI does) or fork (several times faster)")
    p.add_argument("--all", action="store_true", help="run every test of the suite")
    p.add_argument("--tests-file", help="a file with one test name per line (# comments allowed)")
    p.add_argument("tests", nargs="*", help="test names (test_...)")
    return p.parse_args(argv)


def _read_names(path: str) -> list[str]:
    with open(path) as f:
        return [ln.split("#")[0].strip() for ln in f if ln.split("#")[0].strip()]


class _Recorder(unittest.TextTestResult):
    """Keeps (outcome, reason, seconds) for every test, printing one line per test as it ends."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.outcomes: dict[str, dict] = {}
        self._started = 0.0

    def startTest(self, test) -> None:  # noqa: N802 - unittest's name
        self._started = time.monotonic()
        super().startTest(test)

    def _record(self, test, outcome: str, reason: str = "") -> None:
        name = test.id().split(".")[-1]
        seconds = round(time.monotonic() - self._started, 2)
        self.outcomes[name] = {"outcome": outcome, "reason": reason[-4000:], "seconds": seconds}
        print(f"[torch-suite] {outcome:4s} {seconds:7.1f}s {name}", file=sys.__stdout__, flush=True)

    def addSuccess(self, test) -> None:  # noqa: N802
        super().addSuccess(test)
        self._record(test, "pass")

    def addFailure(self, test, err) -> None:  # noqa: N802
        super().addFailure(test, err)
        self._record(test, "fail", self._exc_info_to_string(err, test))

    def addError(self, test, err) -> None:  # noqa: N802
        super().addError(test, err)
        self._record(test, "fail", self._exc_info_to_string(err, test))

    def addSkip(self, test, reason) -> None:  # noqa: N802
        super().addSkip(test, reason)
        self._record(test, "skip", str(reason))

    def addExpectedFailure(self, test, err) -> None:  # noqa: N802
        super().addExpectedFailure(test, err)
        self._record(test, "pass", "expected failure")

    def addUnexpectedSuccess(self, test) -> None:  # noqa: N802
        super().addUnexpectedSuccess(test)
        self._record(test, "fail", "unexpected success")


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    temp = tempfile.TemporaryDirectory(prefix="torch-suite-")
    try:
        return _run(args, temp.name)
    finally:
        temp.cleanup()


def _run(args: argparse.Namespace, temp: str) -> int:
    os.makedirs(os.path.join(temp, "barrier"))
    # torch's harness leaves a store file per test in the temporary directory: keep them all in ours.
    tempfile.tempdir = temp
    env = {
        "TMPDIR": temp,
        "BACKEND": args.backend,
        "WORLD_SIZE": str(args.world_size),
        "TEMP_DIR": temp,
        # file:// as in torch's CI, so the tests that re-initialise the default group run.
        "INIT_METHOD": "file://" + os.path.join(temp, "shared_init_file"),
        "DISTRIBUTED_TESTS_DEFAULT_TIMEOUT": str(args.test_timeout),
        "PCCL_LOG_LEVEL": os.environ.get("PCCL_LOG_LEVEL", "error"),
        "OMP_NUM_THREADS": "1",
        "TORCH_SUITE_START_METHOD": args.start_method,
    }
    os.environ.update(env)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import suite  # noqa: E402 - needs the environment above
    from torch.testing._internal import common_distributed

    for name in list(common_distributed.TIMEOUT_OVERRIDE):
        common_distributed.TIMEOUT_OVERRIDE[name] = min(common_distributed.TIMEOUT_OVERRIDE[name],
                                                         2 * args.test_timeout)

    lifted = suite.lift_name_gates()
    known = suite.test_names()
    names = list(args.tests)
    if args.tests_file:
        names += _read_names(args.tests_file)
    if args.all:
        names = known
    unknown = sorted(set(names) - set(known))
    if unknown:
        print(f"unknown tests (not in this torch's distributed_test): {', '.join(unknown)}", file=sys.stderr)
        return 2
    if not names:
        print("no tests selected (give names, --tests-file or --all)", file=sys.stderr)
        return 2

    tests = unittest.TestSuite(suite.TorchDistributedSuite(n) for n in names)
    runner = unittest.TextTestRunner(stream=sys.stderr, verbosity=0, resultclass=_Recorder)
    started = time.monotonic()
    result = runner.run(tests)
    import torch

    report = {
        "backend": args.backend,
        "world_size": args.world_size,
        "start_method": args.start_method,
        "torch": torch.__version__,
        "seconds": round(time.monotonic() - started, 1),
        "lifted_name_gates": lifted,
        "results": result.outcomes,
    }
    with open(args.json, "w") as f:
        json.dump(report, f, indent=1, sort_keys=True)
    counts = {k: sum(1 for r in result.outcomes.values() if r["outcome"] == k) for k in ("pass", "fail", "skip")}
    print(f"[torch-suite] {args.backend}: {counts['pass']} passed, {counts['fail']} failed, "
          f"{counts['skip']} skipped in {report['seconds']} s", file=sys.__stdout__, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
