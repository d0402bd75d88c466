"""All-reduce benchmark for pccl_py: ``python -m pccl_py.tools.bench``.

Why this exists: pccl_py trades some raw speed for fault tolerance (membership epochs, abortable
ops, a master on the side), and that trade is only acceptable if we know what it costs. This CLI
measures latency and bandwidth of ``Communicator.all_reduce`` over a sweep of message sizes, in the
same way nccl-tests does (algbw and busbw), and with ``--compare gloo`` runs
``torch.distributed``'s gloo backend on the very same processes and sizes so that the ratio between
the two is measured under identical conditions rather than guessed.

Two ways to run it:

* local (default): this process starts a master and ``--peers N`` worker processes
  (``python -m pccl_py.tools.bench --worker ...``) on 127.0.0.1, collects their results and prints them.
* joining (``--master host:port``): this process is one peer of a group of ``--world-size`` peers
  started the same way on other processes or machines (``--peers`` is ignored). Rank 0 prints.

Method, per size: every backend does its warmup iterations, then the timed iterations run in
rounds that alternate between the backends in ABBA order (pccl, gloo, gloo, pccl, ...), so that a
burst of noise on the machine (another process, or a hypervisor taking the CPU away) lands on both
rather than on whichever happened to run at the time. A backend that takes over from another first
runs one untimed operation, so that every timed one follows one of its own, as in a plain loop.
Before every iteration the peers align on a cheap barrier (a one-element all-reduce of the same
backend); each peer then times its own all-reduce, and the per-iteration time reported is that of
the SLOWEST peer (the per-peer times are combined with an all-reduce MAX over pccl after the timed
loop, outside the measurement). CPU use is process CPU time (all threads) divided by wall time over
the timed operations, averaged over peers; 100% is one core. Steal is the share of the machine's CPU
time that its hypervisor gave to someone else during the size's timed rounds (Linux /proc/stat; the
largest any peer saw); the report warns when it passes 5%, since those numbers measure the host's
other tenants as much as the backends. The input is all zeros and reduced in place (SUM), so values
never overflow or become denormal and both backends do exactly the same arithmetic.

WAN emulation (``--wan RTT_MS,FLOW_MBIT,LINK_MBIT``, local mode only): this process also runs a
:class:`pccl_py.tools.wan.WanRelay` in a thread. Each peer listens on a port chosen here and advertises a
relay port that forwards to it (``listen_port`` / ``advertise_address``), so every data connection
between peers crosses the relay, which adds RTT/2 per direction, caps each connection at FLOW_MBIT
(a window-limited TCP flow) and each peer's link at LINK_MBIT per direction. The report then also
gives the fraction of min(K x FLOW, LINK) that busbw reached, and the relay's CPU use. gloo cannot be
routed through the relay (it picks and exchanges its own ports), so ``--wan`` excludes ``--compare``.

Encryption: ``--encryption tls`` runs pccl over TLS (docs/security.md). ``--compare tls`` measures
what TLS costs: this process starts a second master with encryption, every peer joins it with a second
Communicator (with ``--wan`` through its own relay mappings), and the "pccl-tls" backend alternates
with plain "pccl" in the same ABBA rounds; the report gives pccl-tls/pccl ratios. Both masters use
the job secret (``PCCL_SECRET``, or one generated for the run).

torch is imported only when ``--compare gloo`` is given, and only in the peer processes.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .._process import die_with_parent
from ..harness import Children, package_env
from .backends import (BenchError, GlooBackend, GlooP2PBackend, P2PBackend, PcclBackend, StateSyncBackend,
                             time_ops, warm_up)
from .report import compare, fmt_size, format_report, write_plot

_DTYPES = ["float32", "float64", "float16", "int32", "int64", "int8", "uint8"]
_DEFAULT_SIZES = [1024 * 4**i for i in range(10)]  # 1 KiB .. 256 MiB by 4x
_ITER_BUDGET_BYTES = 1 << 30  # big sizes get fewer iterations: iters * size stays under 1 GiB...
_MIN_AUTO_ITERS = 5  # ...but never fewer than this (unless --iters asks for fewer)
_ROUNDS = 4  # timed rounds per size when several backends alternate
_MARK = "@@pccl-bench "  # prefix of worker->parent messages on the worker's stdout
_UNITS = {"": 1, "b": 1, "k": 1024, "kib": 1024, "m": 1024**2, "mib": 1024**2, "g": 1024**3, "gib": 1024**3,
          "kb": 1000, "mb": 1000**2, "gb": 1000**3}

Emit = Callable[[Dict[str, Any]], None]


# ------------------------------------------------------------------------------------------------
# sizes and formatting
# ------------------------------------------------------------------------------------------------
def parse_size(text: str) -> int:
    """'64MiB' -> 67108864. K/M/G and KiB/MiB/GiB are powers of 1024, KB/MB/GB powers of 1000."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"bad size {text!r}; use e.g. 1024, 4KiB, 64MiB, 1GiB")
    value = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    if value <= 0:
        raise ValueError(f"size {text!r} must be positive")
    return value


def parse_sizes(text: str) -> List[int]:
    sizes = [parse_size(part) for part in text.split(",") if part.strip()]
    if not sizes:
        raise ValueError("--sizes is empty")
    return sizes


# ------------------------------------------------------------------------------------------------
# the plan: which sizes, how many iterations (identical on every peer: derived from the arguments)
# ------------------------------------------------------------------------------------------------
def plan_iters(nbytes: int, iters: int, warmup: int, fixed: bool) -> Tuple[int, int]:
    """(warmup, timed iterations) for one message size."""
    if fixed:
        return warmup, iters
    timed = max(min(iters, _MIN_AUTO_ITERS), min(iters, _ITER_BUDGET_BYTES // max(nbytes, 1)))
    return max(1, min(warmup, math.ceil(timed / 4))), timed


@dataclass
class Result:
    """One (backend, size) measurement; times are the slowest peer's, per timed iteration."""

    backend: str
    algorithm: str
    size_bytes: int
    count: int
    dtype: str
    world_size: int
    warmup: int
    iters: int
    times_s: List[float]
    cpu_util: float  # process CPU time / wall time of the timed ops, averaged over peers (1.0 = one core)
    steal: Optional[float] = None  # hypervisor steal, share of all CPU time during the size's rounds
    median_s: float = 0.0
    p10_s: float = 0.0
    p90_s: float = 0.0
    algbw_GBps: float = 0.0
    busbw_GBps: float = 0.0

    def __post_init__(self) -> None:
        if self.times_s and not self.median_s:
            p10, med, p90 = np.percentile(np.asarray(self.times_s, dtype=np.float64), [10, 50, 90])
            self.median_s, self.p10_s, self.p90_s = float(med), float(p10), float(p90)
            self.algbw_GBps = self.size_bytes / self.median_s / 1e9
            n = self.world_size
            # A state sync's "bus" is the newcomer's link: it receives every byte once. A p2p op is a round
            # trip: the message crosses the link once each way.
            if self.backend == "state":
                factor = 1.0
            elif self.backend in ("p2p", "gloo-p2p"):
                factor = 2.0
            else:
                factor = 2.0 * (n - 1) / n if n > 0 else 0.0
            self.busbw_GBps = self.algbw_GBps * factor


def _cpu_ticks() -> Optional[Tuple[int, int]]:
    """(steal, total) CPU ticks of the whole machine so far; None where /proc/stat does not say."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
        ticks = [int(v) for v in fields[1:9]]  # user nice system idle iowait irq softirq steal
    except (OSError, ValueError):
        return None
    return (ticks[7], sum(ticks)) if fields[0] == "cpu" and len(ticks) == 8 else None


def _steal_since(start: Optional[Tuple[int, int]]) -> float:
    """Share of the machine's CPU time stolen by the hypervisor since `start`; -1 when unknown."""
    end = _cpu_ticks()
    if start is None or end is None or end[1] <= start[1]:
        return -1.0
    return (end[0] - start[0]) / (end[1] - start[1])


def _schedule(backends: int, iters: int) -> List[Tuple[int, int, bool]]:
    """The timed blocks of one size, in order: (backend index, timed iterations, settle first).

    With several backends the iterations are split into up to _ROUNDS rounds that visit the backends
    in ABBA order; `settle` asks for one untimed op first whenever another backend ran just before
    (the backends warm up in index order, so the last one warmed up counts as having run)."""
    rounds = max(1, min(_ROUNDS, iters)) if backends > 1 else 1
    blocks, last = [], backends - 1
    for r in range(rounds):
        n = iters * (r + 1) // rounds - iters * r // rounds
        for i in range(backends) if r % 2 == 0 else reversed(range(backends)):
            blocks.append((i, n, i != last))
            last = i
    return blocks


def _join(comm: Any, world: int, timeout: float) -> None:
    """Connects and admits peers until the group has `world` members (every member votes)."""
    comm.connect()
    deadline = time.monotonic() + timeout
    while comm.world_size < world:
        if time.monotonic() > deadline:
            raise BenchError(f"only {comm.world_size} of {world} peers joined within {timeout:.0f} s")
        if comm.are_peers_pending():
            comm.update_topology()
        else:
            time.sleep(0.01)
    if comm.world_size > world:
        raise BenchError(f"the group has {comm.world_size} members, more than the {world} expected")


def _local_ip_towards(host: str) -> str:
    """The address of this machine's interface that routes to host (no packet is sent)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((host, 9))
            return str(s.getsockname()[0])
    except OSError:
        return "127.0.0.1"


def run_peer(args: argparse.Namespace, master: str, world: int, emit: Emit) -> Dict[str, Any]:
    """Runs the whole sweep as one peer; returns the results (identical on every peer)."""
    import pccl_py  # noqa: PLC0415 - keeps `--help` fast and the parent light

    pccl_py.set_log_level(args.log_level)
    comm = pccl_py.Communicator(master, connections_per_peer=args.connections, timeout=args.timeout,
                                join_timeout=args.timeout, listen_host=args.listen_host,
                                listen_port=args.listen_port, advertise_address=args.advertise_address,
                                encryption=args.encryption)
    tls_comm = None
    backends: List[Any] = []
    try:
        emit({"type": "status", "message": f"waiting for {world} peers to join"})
        _join(comm, world, args.timeout)
        rank = comm.rank
        emit({"type": "joined", "rank": rank, "world_size": world})
        quant = None if args.quantization == "none" else args.quantization
        backends.append(PcclBackend(comm, args.dtype, args.algorithm, quant,
                                    name="pccl-tls" if args.encryption == "tls" else "pccl"))
        if args.compare == "tls":
            if not args.tls_master:
                raise BenchError("--compare tls in join mode needs --tls-master HOST:PORT (a master started with "
                                 "--encryption tls and the same secret)")
            tls_comm = pccl_py.Communicator(args.tls_master, connections_per_peer=args.connections,
                                            timeout=args.timeout, join_timeout=args.timeout,
                                            listen_host=args.listen_host, listen_port=args.tls_listen_port,
                                            advertise_address=args.tls_advertise_address, encryption="tls")
            _join(tls_comm, world, args.timeout)
            backends.append(PcclBackend(tls_comm, args.dtype, args.algorithm, quant, name="pccl-tls"))
        if args.shared_state:
            if world < 2:
                raise BenchError("--shared-state needs at least 2 peers (holders and a newcomer)")
            backends.append(StateSyncBackend(comm, rank, world, args.dtype))
        if args.p2p:
            if world < 2:
                raise BenchError("--p2p needs at least 2 peers (ranks 0 and 1 exchange the messages)")
            backends.append(P2PBackend(comm, rank, args.dtype))
        if args.compare == "gloo":
            if rank == 0:
                emit({"type": "status", "message": "importing torch, starting gloo"})
            store_host = "127.0.0.1" if args.listen_host == "127.0.0.1" else _local_ip_towards(master.rsplit(":", 1)[0])
            backends.append(GlooBackend(comm, rank, world, args.dtype, args.timeout, store_host))
            if args.p2p:
                backends.append(GlooP2PBackend(backends[-1], rank))
        last_emit = [time.monotonic()]

        def tick() -> None:  # a sign of life for the parent's watchdog during long steps
            if rank == 0 and time.monotonic() - last_emit[0] > 5.0:
                last_emit[0] = time.monotonic()
                emit({"type": "tick"})

        itemsize = np.dtype(args.dtype).itemsize
        results: List[Result] = []
        plan = []  # per size: element count, bytes, warmup, timed iterations, timed blocks
        for size in args.sizes:
            count = max(1, size // itemsize)
            warmup, iters = plan_iters(count * itemsize, args.iters, args.warmup, args.fixed_iters)
            plan.append((count, count * itemsize, warmup, iters, _schedule(len(backends), iters)))
        step, steps = 0, sum(len(blocks) for *_, blocks in plan)
        for count, nbytes, warmup, iters, blocks in plan:
            buffers = [warm_up(b, count, warmup, tick) for b in backends]
            times: List[List[float]] = [[] for _ in backends]
            cpu = [0.0] * len(backends)
            ticks = _cpu_ticks()
            for i, n, settle in blocks:
                step += 1
                if rank == 0:
                    emit({"type": "progress", "step": step, "steps": steps, "backend": backends[i].name,
                          "size_bytes": nbytes, "iters": n})
                last_emit[0] = time.monotonic()
                if settle:
                    time_ops(backends[i], buffers[i], 1, tick)
                t, c = time_ops(backends[i], buffers[i], n, tick)
                times[i] += t
                cpu[i] += c
            steal = np.array([_steal_since(ticks)], dtype=np.float64)
            del buffers
            comm.all_reduce(steal, op=pccl_py.ReduceOp.MAX)  # -1 (unknown) only if no peer could tell
            for i, b in enumerate(backends):
                agg = np.ascontiguousarray(times[i], dtype=np.float64)
                comm.all_reduce(agg, op=pccl_py.ReduceOp.MAX)  # slowest peer, per iteration
                wall = sum(times[i])
                cpu_sum = np.array([cpu[i] / wall if wall > 0 else 0.0], dtype=np.float64)
                comm.all_reduce(cpu_sum)
                results.append(Result(b.name, b.last_algorithm, nbytes, count, args.dtype, world, warmup, iters,
                                      [float(t) for t in agg], float(cpu_sum[0]) / world,
                                      float(steal[0]) if steal[0] >= 0 else None))
        for b in reversed(backends):
            b.close()
        backends.clear()
        comm.all_reduce(np.zeros(1, dtype=np.float32))  # everyone is done before anyone leaves
        return {"rank": rank, "world_size": world, "results": [asdict(r) for r in results]}
    finally:
        for b in backends:
            try:
                b.close(graceful=False)  # a peer may be gone: no barrier that could only time out
            except Exception:  # noqa: BLE001 - already failing; the original error matters
                pass
        if tls_comm is not None:
            tls_comm.close()
        comm.close()


# ------------------------------------------------------------------------------------------------
# local mode: a master in this process, N worker subprocesses
# ------------------------------------------------------------------------------------------------
def _worker_argv(args: argparse.Namespace, master: str, world: int, listen_port: int = 0,
                 advertise_address: Optional[str] = None) -> List[str]:
    argv = [sys.executable, "-m", "pccl_py.tools.bench", "--worker", "--master", master, "--world-size", str(world),
            "--parent-pid", str(os.getpid()), "--sizes", ",".join(str(s) for s in args.sizes),
            "--dtype", args.dtype, "--iters", str(args.iters), "--warmup", str(args.warmup),
            "--connections", str(args.connections), "--algorithm", args.algorithm,
            "--quantization", args.quantization, "--encryption", args.encryption,
            "--timeout", str(args.timeout), "--log-level", args.log_level, "--listen-host", args.listen_host,
            "--listen-port", str(listen_port)]
    if advertise_address:
        argv += ["--advertise-address", advertise_address]
    if args.fixed_iters:
        argv.append("--fixed-iters")
    if args.compare:
        argv += ["--compare", args.compare]
    if args.shared_state:
        argv.append("--shared-state")
    if args.p2p:
        argv.append("--p2p")
    return argv


class _Workers(Children):
    """The worker subprocesses, started and reaped by the harness; their reports arrive on ``events``."""

    def __init__(self) -> None:
        super().__init__()
        self.events: "queue.Queue[Tuple[int, Optional[Dict[str, Any]]]]" = queue.Queue()

    def spawn_worker(self, argv: List[str], env: Dict[str, str]) -> None:
        index = len(self.all)
        # Lines without the marker (a traceback, say) are passed on, labelled.
        self.spawn(argv, key=index, inbox=self.events, env=env, stdin=False, marker=_MARK,
                   on_other_line=lambda line: sys.stderr.write(f"[peer {index}] {line}"))

    def close(self, grace: float = 3.0) -> List[int]:
        stuck = super().close(grace)
        for pid in stuck:
            sys.stderr.write(f"pccl-bench: worker pid {pid} did not exit after SIGKILL\n")
        return stuck


class _Progress:
    """One line on stderr per step (overwritten in place on a terminal)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.tty = enabled and sys.stderr.isatty()
        self.t0 = time.monotonic()
        self._dirty = False
        self._last_status = ""

    def __call__(self, ev: Dict[str, Any]) -> None:
        if not self.enabled or ev.get("type") not in ("progress", "status"):
            return
        elapsed = f"({time.monotonic() - self.t0:5.1f} s elapsed)"
        if ev["type"] == "status":
            if ev["message"] == self._last_status:  # every local peer says it once
                return
            self._last_status = ev["message"]
            line = f"{ev['message']} {elapsed}"
        else:
            line = (f"[{ev['step']}/{ev['steps']}] {ev['backend']:<4} {fmt_size(ev['size_bytes']):>8} "
                    f"x{ev['iters']:<3} {elapsed}")
        if self.tty:
            sys.stderr.write("\r\033[K" + line)
            self._dirty = True
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def done(self) -> None:
        if self._dirty:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()
            self._dirty = False


def run_local(args: argparse.Namespace, progress: _Progress) -> Dict[str, Any]:
    """Starts a master and args.peers workers, waits (boundedly) for their results."""
    from ...master import Master  # noqa: PLC0415
    from ...secret import ENV_SECRET, generate_secret, resolve_secret  # noqa: PLC0415

    env = package_env()  # the workers must import this very copy of pccl_py
    secret = resolve_secret(None)
    if not secret and (args.encryption == "tls" or args.compare == "tls"):
        secret = generate_secret().encode()  # TLS is keyed by the secret: make one for this run
        env[ENV_SECRET] = secret.decode()
    master = Master("127.0.0.1", 0, secret=secret, encryption=args.encryption).start()
    tls_master = Master("127.0.0.1", 0, secret=secret, encryption="tls").start() if args.compare == "tls" else None
    workers = _Workers()
    relay = None
    if args.compare == "gloo" and "GLOO_SOCKET_IFNAME" not in env and os.path.exists("/sys/class/net/lo"):
        env["GLOO_SOCKET_IFNAME"] = "lo"  # same loopback path as pccl's 127.0.0.1
    stall = 2 * args.timeout + 60  # no message from any worker for this long: give up
    try:
        if args.wan is not None:
            relay = _start_relay(args, master, workers, env, tls_master)
        else:
            for _ in range(args.peers):
                argv = _worker_argv(args, master.address, args.peers)
                if tls_master is not None:
                    argv += ["--tls-master", tls_master.address]
                workers.spawn_worker(argv, env)
        results: Dict[int, Dict[str, Any]] = {}
        finished: set[Any] = set()
        last = time.monotonic()
        while len(finished) < args.peers:
            try:
                index, ev = workers.events.get(timeout=0.5)
            except queue.Empty:
                if time.monotonic() - last > stall:
                    raise BenchError(f"no word from the peers for {stall:.0f} s; giving up") from None
                continue
            last = time.monotonic()
            if ev is None:  # a worker's stdout closed: it is exiting
                proc = workers.all[index].proc
                try:
                    rc = proc.wait(timeout=30.0)
                except subprocess.TimeoutExpired:
                    raise BenchError(f"peer {index} (pid {proc.pid}) closed its output but did not exit") from None
                if index not in results:
                    how = f"was killed by signal {-rc}" if rc < 0 else f"exited with code {rc}"
                    raise BenchError(f"peer {index} (pid {proc.pid}) {how} before reporting results"
                                     + ("; its error is above" if rc > 0 else ""))
                finished.add(index)
            elif ev.get("type") == "result":
                results[index] = ev["data"]
            elif ev.get("type") == "error":
                raise BenchError(f"peer {index} failed: {ev['message']}")
            else:
                progress(ev)
        by_rank = sorted(results.values(), key=lambda r: r["rank"])
        data = by_rank[0]
        if relay is not None:
            data["wan"] = {"rtt_ms": args.wan.rtt_ms, "flow_mbit": args.wan.flow_mbit,
                           "link_mbit": args.wan.link_mbit, "ideal_mbit": _finite(args.wan.ideal_mbit(args.connections)),
                           "buffer_bytes": args.wan.buffer_limit, "relay": relay.stats()}
        return data
    finally:
        progress.done()
        workers.close()
        if relay is not None:
            relay.stop()
        master.stop()
        if tls_master is not None:
            tls_master.stop()


def _finite(x: float) -> Optional[float]:
    return x if math.isfinite(x) else None


def _free_port(host: str) -> int:
    """A port that is free on host right now (the peer binds it moments later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _start_relay(args: argparse.Namespace, master: Any, workers: "_Workers", env: Dict[str, str],
                 tls_master: Any = None) -> Any:
    """--wan: a relay in this process, one mapping per peer (and per Communicator: --compare tls
    gives each peer a second one); each peer advertises its relay port."""
    from ..wan import WanRelay  # noqa: PLC0415

    relay = WanRelay(args.wan).start()
    try:
        for _ in range(args.peers):
            port = _free_port(args.listen_host)
            relay_host, relay_port = relay.add_mapping((args.listen_host, 0), (args.listen_host, port))
            argv = _worker_argv(args, master.address, args.peers, port, f"{relay_host}:{relay_port}")
            if tls_master is not None:
                tls_port = _free_port(args.listen_host)
                tls_host, tls_relay_port = relay.add_mapping((args.listen_host, 0), (args.listen_host, tls_port))
                argv += ["--tls-master", tls_master.address, "--tls-listen-port", str(tls_port),
                         "--tls-advertise-address", f"{tls_host}:{tls_relay_port}"]
            workers.spawn_worker(argv, env)
    except BaseException:
        relay.stop()
        raise
    return relay


def worker_main(args: argparse.Namespace) -> int:
    """`--worker`: one peer, reporting to the parent over stdout."""
    die_with_parent(args.parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is the parent's to handle: it stops us by PID
    lock = threading.Lock()

    def emit(ev: Dict[str, Any]) -> None:
        with lock:
            sys.stdout.write(_MARK + json.dumps(ev) + "\n")
            sys.stdout.flush()

    try:
        data = run_peer(args, args.master, args.world_size, emit)
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which fails with it
        emit({"type": "error", "message": f"{type(exc).__name__}: {exc}"})
        return 1
    emit({"type": "result", "data": data})
    return 0


# ------------------------------------------------------------------------------------------------
# command line
# ------------------------------------------------------------------------------------------------
def _wan_profile(text: str) -> Any:
    from ..wan import parse_wan  # noqa: PLC0415 - the relay module is small and pure Python

    try:
        return parse_wan(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pccl_py.tools.bench",
        description="Benchmark pccl_py all-reduce over a sweep of sizes, optionally against torch.distributed gloo.",
        epilog="Example: python -m pccl_py.tools.bench --peers 4 --sizes 1KiB,1MiB,64MiB --compare gloo")
    p.add_argument("--peers", type=int, default=2, help="local peer processes to start (default 2)")
    p.add_argument("--master", metavar="HOST:PORT",
                   help="join this existing master as one peer instead (--peers is then ignored)")
    p.add_argument("--world-size", type=int, default=2,
                   help="with --master: number of peers in the group to wait for (default 2)")
    p.add_argument("--sizes", type=parse_sizes, default=list(_DEFAULT_SIZES),
                   help="comma-separated message sizes, e.g. 1KiB,1MiB,64MiB (default 1KiB..256MiB by 4x)")
    p.add_argument("--dtype", default="float32", choices=_DTYPES, help="element type (default float32)")
    p.add_argument("--iters", type=int, default=50,
                   help="timed iterations per size (default 50); reduced for big sizes so iters*size "
                        "stays under 1 GiB (at least 5) unless --fixed-iters")
    p.add_argument("--warmup", type=int, default=5, help="untimed iterations per size (default 5; reduced with --iters)")
    p.add_argument("--fixed-iters", action="store_true", help="run exactly --iters/--warmup at every size")
    p.add_argument("--connections", type=int, default=1, metavar="K", help="TCP connections per peer pair (default 1)")
    p.add_argument("--algorithm", default="auto", choices=["auto", "ring", "star"], help="pccl algorithm (default auto)")
    p.add_argument("--quantization", default="none", choices=["none", "fp16", "bf16", "q8", "q4"],
                   help="pccl wire quantization for float32/float64 (default none)")
    p.add_argument("--shared-state", action="store_true",
                   help="also time sync_shared_state of each size to a newcomer (the last rank) from the other "
                        "peers, and report its throughput against pccl's all-reduce busbw")
    p.add_argument("--p2p", action="store_true",
                   help="also time Communicator.send/recv: a round trip of each size between ranks 0 and 1 "
                        "(with --compare gloo, also torch.distributed send/recv on gloo)")
    p.add_argument("--compare", choices=["gloo", "tls"],
                   help="also run torch.distributed gloo (gloo), or pccl with encryption='tls' (tls), on the same "
                        "processes and sizes")
    p.add_argument("--encryption", default="none", choices=["none", "tls"],
                   help="pccl's encryption (default none; tls needs PCCL_SECRET, or a local run makes one)")
    p.add_argument("--tls-master", metavar="HOST:PORT", default=None,
                   help="--compare tls in join mode: the master started with --encryption tls")
    p.add_argument("--tls-listen-port", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--tls-advertise-address", default=None, help=argparse.SUPPRESS)
    p.add_argument("--json", metavar="FILE", help="write all results to FILE as JSON")
    p.add_argument("--plot", metavar="FILE.png", help="plot busbw and latency vs size (needs matplotlib)")
    p.add_argument("--timeout", type=float, default=120.0,
                   help="seconds any single collective, join or rendezvous may take (default 120)")
    p.add_argument("--listen-host", default=None,
                   help="interface for peer connections (default 127.0.0.1 locally, 0.0.0.0 with --master)")
    p.add_argument("--listen-port", type=int, default=0,
                   help="with --master: port for peer connections (default 0: any free port)")
    p.add_argument("--advertise-address", metavar="HOST[:PORT]", default=None,
                   help="with --master: address the other peers should dial instead (NAT, port forwarding, "
                        "a relay such as stress/wan_relay.py)")
    p.add_argument("--wan", metavar="RTT_MS,FLOW_MBIT,LINK_MBIT", type=_wan_profile, default=None,
                   help="local mode: route all peer traffic through an emulated WAN (pccl_py.tools.wan relay in this "
                        "process), e.g. 50,100,1000 = 50 ms RTT, 100 Mbit/s per connection, 1 Gbit/s per link "
                        "and direction (0 = unlimited); not with --compare")
    p.add_argument("--log-level", default="error", choices=["debug", "info", "warn", "error", "off"],
                   help="pccl core log level in the peers (default error)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--parent-pid", type=int, default=0, help=argparse.SUPPRESS)
    return p


def _validate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    if args.peers < 1:
        parser.error("--peers must be at least 1")
    if args.world_size < 1:
        parser.error("--world-size must be at least 1")
    if args.iters < 1 or args.warmup < 0:
        parser.error("--iters must be >= 1 and --warmup >= 0")
    if not 1 <= args.connections <= 64:
        parser.error("--connections must be in [1, 64]")
    if args.timeout <= 0:
        parser.error("--timeout must be positive")
    if args.worker and not args.master:
        parser.error("--worker needs --master")
    if args.listen_host is None:
        args.listen_host = "0.0.0.0" if args.master else "127.0.0.1"
    if args.master and ":" not in args.master:
        parser.error("--master must be host:port")
    if not 0 <= args.listen_port <= 65535:
        parser.error("--listen-port must be in [0, 65535]")
    if args.wan is not None and args.master and not args.worker:
        parser.error("--wan starts its relay in local mode only; with --master, run stress/wan_relay.py "
                     "yourself and pass --listen-port and --advertise-address")
    if args.compare == "tls" and args.encryption == "tls":
        parser.error("--compare tls measures TLS against plain pccl: drop --encryption tls")
    if args.wan is not None and args.compare == "gloo":
        parser.error("--wan cannot be combined with --compare gloo: gloo opens its own connections on ports it "
                     "picks itself, which the relay cannot intercept, so gloo would run unemulated; "
                     "run the gloo comparison without --wan")
    if not args.worker and not args.master and (args.listen_port or args.advertise_address):
        parser.error("--listen-port and --advertise-address are for --master (join) mode; "
                     "in local mode use --wan to route peers through a relay")
    if args.worker:
        return
    if args.compare == "gloo" and importlib.util.find_spec("torch") is None:
        parser.error("--compare gloo needs torch (pip install 'pccl_py[torch]')")
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        parser.error("--plot needs matplotlib, which is not installed (pip install matplotlib); "
                     "or drop --plot and use --json")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _validate(args, parser)
    if args.worker:
        return worker_main(args)

    progress = _Progress(not args.quiet)
    load_start = list(os.getloadavg())
    old_term = None
    if threading.current_thread() is threading.main_thread():
        def _on_term(signum: int, frame: Any) -> None:
            raise KeyboardInterrupt
        old_term = signal.signal(signal.SIGTERM, _on_term)  # SIGTERM cleans up like Ctrl-C
    try:
        if args.master:
            try:
                data = run_peer(args, args.master, args.world_size, progress)
            finally:
                progress.done()
            if data["rank"] != 0:
                print(f"pccl-bench: rank {data['rank']} done; rank 0 prints the results", file=sys.stderr)
                return 0
        else:
            data = run_local(args, progress)
    except KeyboardInterrupt:
        print("pccl-bench: interrupted; peers stopped", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - a CLI reports and exits non-zero
        print(f"pccl-bench: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)

    data["config"] = {"mode": "join" if args.master else "local", "dtype": args.dtype, "op": "SUM",
                      "algorithm": args.algorithm, "quantization": args.quantization,
                      "connections_per_peer": args.connections,
                      "sizes": args.sizes, "iters": args.iters, "warmup": args.warmup,
                      "fixed_iters": args.fixed_iters, "compare": args.compare, "shared_state": args.shared_state, "p2p": args.p2p,
                      "encryption": args.encryption,
                      "wan": [args.wan.rtt_ms, args.wan.flow_mbit, args.wan.link_mbit] if args.wan else None}
    data["host"] = {"cpus": os.cpu_count(), "loadavg_start": load_start, "loadavg_end": list(os.getloadavg())}
    data["comparison"] = compare(data["results"])
    data.pop("rank", None)
    print(format_report(data, args), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(data, f, indent=2)
    if args.plot:
        write_plot(data, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
