"""pccl against gloo on torch's distributed suite: counts, differences, and the CI verdict.

Why this exists: "every test gloo passes also passes with pccl, except the documented exclusions" is
only checkable from two runs of the same suite on the same machine. This module runs both backends
(run.py, one process each), or reads two saved runs, prints pass/fail/skip for each, and lists every
gloo-passing test that pccl does not pass and is not excluded (exclusions.json), every exclusion that
no longer fails, and every test pccl passes that gloo does not.

    python tests/torch_backend/torch_suite/compare.py                              # run both, fork start (about 3 min)
    python tests/torch_backend/torch_suite/compare.py --start-method spawn         # as torch's CI starts ranks (about 2 x 50 min)
    python tests/torch_backend/torch_suite/compare.py --gloo g.json --pccl p.json  # from saved runs

The trap: a skip is not a pass. A test that gloo passes must *pass* with pccl; a pccl skip there is a
problem like a failure (the suite skips silently for backend names it does not know, see suite.py).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
RUN = os.path.join(HERE, "run.py")
EXCLUSIONS = os.path.join(HERE, "exclusions.json")


def load_exclusions(path: str = EXCLUSIONS) -> dict[str, dict]:
    with open(path) as f:
        data = json.load(f)["exclusions"]
    for name, entry in data.items():
        if not name.startswith("test_") or not entry.get("category") or not entry.get("reason"):
            raise ValueError(f"{path}: exclusion {name!r} needs a test name, a category and a reason")
    return data


def run_backend(backend: str, json_path: str, *, start_method: str = "fork", test_timeout: int = 60,
                deadline: float = 1800.0, log_path: str | None = None, world_size: int = 3,
                tests: list[str] | None = None) -> dict:
    """Runs the suite (every test, or ``tests``) with ``backend`` in a process of its own; returns
    run.py's report. The process (and the ranks it started, in its session) is killed if it outlives
    ``deadline``."""
    cmd = [sys.executable, RUN, "--backend", backend, "--world-size", str(world_size), "--json", json_path,
           "--start-method", start_method, "--test-timeout", str(test_timeout)]
    if tests is None:
        cmd.append("--all")
    else:
        names_path = json_path + ".tests"
        with open(names_path, "w") as f:
            f.write("\n".join(tests) + "\n")
        cmd += ["--tests-file", names_path]
    log = open(log_path or os.devnull, "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        proc.wait(timeout=deadline)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the session run.py leads: it and the ranks it forked
        proc.wait()
        raise RuntimeError(f"the {backend} run did not finish within {deadline:.0f} s (log: {log_path})")
    finally:
        log.close()
    if proc.returncode != 0:
        raise RuntimeError(f"the {backend} run exited with {proc.returncode} (log: {log_path})")
    with open(json_path) as f:
        return json.load(f)


def counts(report: dict) -> dict[str, int]:
    out = {"pass": 0, "fail": 0, "skip": 0}
    for r in report["results"].values():
        out[r["outcome"]] += 1
    return out


def verdict(gloo: dict, pccl: dict, exclusions: dict[str, dict]) -> dict:
    """Problems (each a line of text) and the numbers behind them."""
    g, p = gloo["results"], pccl["results"]
    problems = []  # (pccl may have run only the tests gloo passes: a missing one is reported below)
    gloo_passes = sorted(n for n, r in g.items() if r["outcome"] == "pass")
    for name in sorted(exclusions):
        if name not in g:
            problems.append(f"{name}: excluded but not in this torch's suite (remove it from exclusions.json)")
        elif g[name]["outcome"] != "pass":
            problems.append(f"{name}: excluded but gloo does not pass it here ({g[name]['outcome']}); "
                            "exclusions are for tests gloo passes")
        elif name not in p:
            problems.append(f"{name}: excluded, but the pccl run did not include it")
        elif p[name]["outcome"] == "pass":
            problems.append(f"{name}: excluded ({exclusions[name]['category']}) but passes with pccl now "
                            "(remove it from exclusions.json)")
    unexpected = []
    for name in gloo_passes:
        if name in exclusions:
            continue
        r = p.get(name)
        if r is None or r["outcome"] != "pass":
            outcome = "missing" if r is None else r["outcome"]
            text = (r or {}).get("reason", "").split("To execute this test")[0]
            last = [ln.strip() for ln in text.strip().splitlines() if ln.strip()][-3:]
            unexpected.append(name)
            problems.append(f"{name}: gloo passes, pccl {outcome}: " + " | ".join(last))
    return {
        "problems": problems,
        "gloo_passes": len(gloo_passes),
        "pccl_passes_of_gloo": sum(1 for n in gloo_passes if p.get(n, {}).get("outcome") == "pass"),
        "excluded": len(exclusions),
        "unexpected": unexpected,
        "pccl_only_passes": sorted(n for n, r in p.items() if r["outcome"] == "pass"
                                   and g.get(n, {}).get("outcome") != "pass"),
        "lifted_name_gates": pccl.get("lifted_name_gates", {}),
    }


def summary(gloo: dict, pccl: dict, v: dict, exclusions: dict[str, dict]) -> str:
    lines = [f"torch {pccl.get('torch')}, world size {pccl.get('world_size')}, ranks started by "
             f"{pccl.get('start_method')}; {len(gloo['results'])} tests of torch's distributed_test run with gloo, "
             f"{len(pccl['results'])} with pccl"]
    for name, rep in (("gloo", gloo), ("pccl", pccl)):
        c = counts(rep)
        lines.append(f"  {name}: {c['pass']} passed, {c['fail']} failed, {c['skip']} skipped "
                     f"({rep.get('seconds')} s)")
    lines.append(f"  of the {v['gloo_passes']} tests gloo passes, pccl passes {v['pccl_passes_of_gloo']}; "
                 f"{v['excluded']} excluded:")
    by_cat: dict[str, list[str]] = {}
    for name, e in sorted(exclusions.items()):
        by_cat.setdefault(e["category"], []).append(name)
    for cat, names in sorted(by_cat.items()):
        lines.append(f"    {cat} ({len(names)}): {', '.join(names)}")
    lines.append(f"  name gates lifted for pccl: {len(v['lifted_name_gates'])}")
    if v["pccl_only_passes"]:
        lines.append(f"  pccl passes, gloo does not: {', '.join(v['pccl_only_passes'])}")
    lines.append("  problems: none" if not v["problems"] else "  PROBLEMS:")
    lines.extend(f"    {p}" for p in v["problems"])
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gloo", help="a saved gloo run (run.py --json); with --pccl, nothing is run")
    ap.add_argument("--pccl", help="a saved pccl run")
    ap.add_argument("--start-method", choices=("fork", "spawn"), default="fork")
    ap.add_argument("--test-timeout", type=int, default=60, help="seconds per test (default 60)")
    ap.add_argument("--out-dir", help="keep the JSON reports and logs here")
    args = ap.parse_args(argv)
    exclusions = load_exclusions()
    if args.gloo and args.pccl:
        with open(args.gloo) as f:
            gloo = json.load(f)
        with open(args.pccl) as f:
            pccl = json.load(f)
    else:
        out = args.out_dir or tempfile.mkdtemp(prefix="torch-suite-compare-")
        os.makedirs(out, exist_ok=True)
        deadline = 1800.0 if args.start_method == "fork" else 6 * 3600.0
        reports = {}
        for backend in ("gloo", "pccl"):
            started = time.monotonic()
            reports[backend] = run_backend(backend, os.path.join(out, f"{backend}.json"),
                                           start_method=args.start_method, test_timeout=args.test_timeout,
                                           deadline=deadline, log_path=os.path.join(out, f"{backend}.log"))
            print(f"{backend}: done in {time.monotonic() - started:.0f} s", file=sys.stderr)
        gloo, pccl = reports["gloo"], reports["pccl"]
        print(f"reports and logs in {out}", file=sys.stderr)
    v = verdict(gloo, pccl, exclusions)
    print(summary(gloo, pccl, v, exclusions))
    return 1 if v["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
