"""The flood scenario: members all-reduce while connection floods hit the master
and a member's mesh listener, and a newcomer joins in the middle of it.

Why this exists: tests/security/test_flood.py runs it for about 20 s with firm bounds, stress/pccl_flood.py for as
long as asked, reporting the figures (peak RSS of every process from /proc/PID/status VmHWM, the longest
wait between two successful ops of any member, the newcomers' join times). All processes are real: a
pccl-master, worker peers (tests/helpers/worker.py) and flooder processes (tests/helpers/flooder.py), on loopback, with
a job secret the flooders do not have. The trap: a newcomer on the flooders' source address competes
with them for the per-source slots, so the flooders use 127.0.0.2 and up and the members 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import time
from typing import Optional

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from harness import Cluster, Peer  # noqa: E402
from support import admit, join  # noqa: E402


def vm_kb(pid: int, field: str) -> int:
    """VmHWM (peak resident set) or VmRSS of a process, in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} for pid {pid}")


def _listen_port(master_log: str, peer_id: int) -> int:
    """A member's listen port, from the master's join line "peer <id> (<host>:<port>) ..."."""
    with open(master_log, errors="replace") as f:
        m = re.search(rf"peer {peer_id} \([^)]*:(\d+)\)", f.read())
    if not m:
        raise RuntimeError(f"no join line for peer {peer_id} in {master_log}")
    return int(m.group(1))


def _start_flooder(targets: list[str], duration: float, rate: float, max_open: int, seed: int,
                   sources: str) -> subprocess.Popen:
    args = [sys.executable, os.path.join(HERE, "flooder.py"), "--duration", str(duration), "--rate", str(rate),
            "--max-open", str(max_open), "--seed", str(seed), "--sources", sources]
    for t in targets:
        args += ["--target", t]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={k: v for k, v in os.environ.items() if k != "PCCL_SECRET"})


def _reduce_loop(peers: list[Peer], until: float, tag: int, timeout: float) -> list[dict]:
    for p in peers:
        p.send("reduce_loop", until=until, count=256, seed=tag * 1000 + 1, tag=tag)
    return [p.recv(timeout) for p in peers]


def run(duration: float, log_dir: str, *, peers: int = 3, newcomers: int = 1, rate: float = 400.0,
        max_open: int = 3000, seed: int = 1) -> dict:
    """Runs the scenario for about `duration` seconds; returns its figures (see the module docstring).
    Raises AssertionError for a crash, an eviction, a failed or wrong op, or a newcomer not admitted."""
    secret = secrets.token_hex(16)
    old_secret = os.environ.get("PCCL_SECRET")
    os.environ["PCCL_SECRET"] = secret  # the master and the workers inherit it; the flooders do not
    flooders: list[subprocess.Popen] = []
    try:
        with Cluster(log_dir=log_dir) as cluster:
            members = join(cluster, peers, timeout=60.0)
            master_log = os.path.join(log_dir, "master.log")
            victim = members[-1]
            victim_port = _listen_port(master_log, victim.peer_id)
            waiting = [cluster.spawn() for _ in range(newcomers)]
            for w in waiting:
                assert w.call("state", timeout=60)["ok"] is False  # warmed up (no communicator yet)
            before = {"master": vm_kb(cluster.master.pid, "VmHWM"),
                      **{f"peer{p.index}": vm_kb(p.pid, "VmHWM") for p in members}}
            t0 = time.time()
            flooders = [
                _start_flooder([cluster.master.address], duration, rate, max_open, seed, "127.0.0.2-127.0.0.9"),
                _start_flooder([f"127.0.0.1:{victim_port}"], duration, rate, max_open, seed + 1,
                               "127.0.0.10-127.0.0.17"),
            ]
            loops, joins = [], []
            stops = [t0 + duration * (k + 1) / (newcomers + 1) for k in range(newcomers + 1)]
            group = list(members)
            for k, stop in enumerate(stops):
                time.sleep(0.5 if k == 0 else 0)  # the flood is under way before the first op
                results = _reduce_loop(group, stop, tag=k, timeout=duration + 60)
                loops.append({"world": len(group), "results": results})
                if k < newcomers:
                    t_join = time.time()  # from its connect() to admission (and a rank query per member)
                    group = admit(cluster, group, [waiting[k]], timeout=30.0)
                    joins.append(time.time() - t_join)
            flood_stats = []
            for f in flooders:
                out, err = f.communicate(timeout=60)
                flood_stats.append(json.loads(out.strip().splitlines()[-1]) if out.strip() else {"error": err[-2000:]})
            # Zero crashes: every process still alive and answering.
            assert cluster.master.proc.poll() is None, "the master died"
            for p in group:
                assert p.alive(), f"peer {p.index} died"
                st = p.call("state", timeout=30)
                assert st["ok"] and st["world_size"] == len(group), st
            peak = {"master": vm_kb(cluster.master.pid, "VmHWM"), **{f"peer{p.index}": vm_kb(p.pid, "VmHWM") for p in group}}
            with open(master_log, errors="replace") as f:
                log = f.read()
            evictions = re.findall(r"evicting peer .*", log)
            longest, ops, problems = 0.0, 0, []
            for phase in loops:
                for r in phase["results"]:
                    assert r["ok"], r
                    ops += r["ops_ok"]
                    longest = max(longest, r["longest"][0])
                    if r["failed"] or r["wrong"] or r["end"] or r["worlds"] != [phase["world"]]:
                        problems.append({k: r[k] for k in ("failed", "wrong", "end", "worlds")})
            return {
                "duration": round(time.time() - t0, 1),
                "ops_ok": ops,
                "longest_stall_s": round(longest, 3),
                "newcomer_join_s": [round(j, 3) for j in joins],
                "vmhwm_kb_before": before,
                "vmhwm_kb_peak": peak,
                "evictions": evictions,
                "problems": problems,
                "flood": flood_stats,
            }
    finally:
        for f in flooders:
            if f.poll() is None:
                f.kill()
                f.wait(10)
        if old_secret is None:
            os.environ.pop("PCCL_SECRET", None)
        else:
            os.environ["PCCL_SECRET"] = old_secret


def main(argv: Optional[list[str]] = None) -> int:
    import argparse
    import tempfile

    p = argparse.ArgumentParser(description="flood the master and a member's listener during a run")
    p.add_argument("--duration", type=float, default=300.0)
    p.add_argument("--peers", type=int, default=3)
    p.add_argument("--newcomers", type=int, default=3)
    p.add_argument("--rate", type=float, default=400.0, help="new connections a second, per flooder")
    p.add_argument("--max-open", type=int, default=3000, help="sockets each flooder holds at once")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--log-dir")
    p.add_argument("--json")
    a = p.parse_args(argv)
    log_dir = a.log_dir or tempfile.mkdtemp(prefix="pccl-flood-")
    os.makedirs(log_dir, exist_ok=True)
    report = run(a.duration, log_dir, peers=a.peers, newcomers=a.newcomers, rate=a.rate, max_open=a.max_open,
                 seed=a.seed)
    text = json.dumps(report, indent=2)
    print(text)
    print(f"logs: {log_dir}", file=sys.stderr)
    if a.json:
        with open(a.json, "w") as f:
            f.write(text)
    ok = not report["evictions"] and not report["problems"]
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
