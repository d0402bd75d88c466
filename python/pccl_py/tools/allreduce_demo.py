"""``pccl-demo --allreduce``: watch a peer group survive a SIGKILL and admit a newcomer, and check every result.

Why this exists: the claims pccl_py makes are about what happens when things go wrong. A peer
that dies mid-op makes the op fail on every survivor with PeerLostError and leaves their buffers
unchanged; the retry then runs among the survivors. A peer that joins is admitted when the members
call update_topology(), and the next result includes it. Every result is bitwise identical on every
peer. Unit tests check this piece by piece; this demo shows it happening in one short run that
anyone can start with a single command, using real processes and real sockets on this machine.

What it does: it starts a master in this process and ``--peers`` peer processes (each is
``python -m pccl_py.tools.allreduce_demo --peer ...``), and drives them over socketpairs through ``--steps``
all-reduce steps. Each step, peer ``i`` contributes the input :mod:`pccl_py.tools.proof` builds for slot
``i`` (the one pccl-stress's peers use): a bit ``i`` in a membership block, a count lane, and a payload of
random integers drawn from (``--seed``, step) that depends on ``i``. The sum names the set of peers that
took part and must then match that set element by element, so each result says exactly who took part,
and it is exact in float64 whatever order the sum is taken in. About a third of the way through, one peer is killed with SIGKILL while the others
are inside an all_reduce. About two thirds of the way through, a new peer connects and is admitted.

Each peer runs its op through :class:`pccl_py.tools.verified_peer.VerifiedPeer` (the peer pccl-stress
runs), which checks the result against the contributors it names and, after a failure, that the buffer
was left alone; it sends the parent what it found, its decoded mask and the SHA-256 of its result. The
parent computes the expected result itself and checks each hash against it. It prints "every result
stayed correct" only if every result of every peer matched the expected array, byte for byte. Exit code 0
means that, and that the kill and the admission went as described; anything else exits 1.

Every child is tracked by PID and SIGKILLed and reaped in a ``finally`` block, including on
Ctrl-C, SIGTERM or an error. Children run in sessions of their own, so a Ctrl-C in the terminal
reaches only the parent, which cleans up. On Linux they also die with the parent if the parent
itself is killed. Every wait has a timeout, and the whole run
has a hard limit (``--time-limit``, 30 s by default).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from multiprocessing import connection as mp_connection
from multiprocessing.connection import Connection
from typing import Any, Iterable, Optional, Sequence

import numpy as np

from ._process import die_with_parent
from .harness import Children
from .proof import HEAD, exact_contribution
from .verified_peer import VerifiedPeer

ELEMENTS = 32_768            # 256 KiB of float64: above the 64 KiB STAR limit, so AUTO runs the ring
DATA_TAG = 0                 # the proof's (seed, step, tag) stream for the demo's inputs
OP_TIMEOUT = 10.0            # Communicator(timeout=): per all_reduce / update_topology
HEARTBEAT_TIMEOUT = 3.0      # Communicator(heartbeat_timeout=)
JOIN_TIMEOUT = 15.0          # Communicator(join_timeout=)
REPLY_TIMEOUT = 20.0         # parent waiting for one child's reply (also capped by the time limit)
CHILD_IDLE_TIMEOUT = 120.0   # a child with no command for this long assumes the parent is gone
KILL_DELAY = 0.5             # time between "the survivors entered all_reduce" and the SIGKILL
MAX_ATTEMPTS = 3             # attempts per step before the demo gives up


# ------------------------------------------------------------------------------------------------
# The data: what each peer contributes, and what the sum must be.

def contribution(index: int, seed: int, step: int) -> np.ndarray:
    """Peer ``index``'s input (ELEMENTS float64): it and every sum of them are exact in float64."""
    return exact_contribution(index, seed, step, DATA_TAG, ELEMENTS - HEAD)


def expected_result(members: Sequence[int], seed: int, step: int) -> np.ndarray:
    """The exact sum of the members' inputs (integers below 2**53: the same bits in any order)."""
    total: np.ndarray = np.sum([contribution(i, seed, step) for i in members], axis=0)
    return total


def mask_of(indices: Iterable[int]) -> int:
    return sum(1 << i for i in indices)


def members_of(mask: int) -> list[int]:
    return [i for i in range(mask.bit_length()) if mask >> i & 1]


def sha256(a: np.ndarray) -> str:
    return hashlib.sha256(a.tobytes()).hexdigest()


# ------------------------------------------------------------------------------------------------
# The peer process: a Communicator driven by commands from the parent over a socketpair.

class _WelcomeWatcher:
    """Reports (once) that the master has welcomed this peer, while connect() blocks in another thread.

    Why: the members must not admit a newcomer before its own control thread has processed the
    master's welcome. Until then its mesh listener has no identity and turns away the members'
    connections ("this peer has not joined yet"), and the newcomer is evicted and its connect() fails.
    A vote that follows a hello within a millisecond or so can trigger this. peer_id becomes non-zero at
    the moment the listener learns its identity, so the parent waits for this report before anyone
    calls update_topology().
    """

    def __init__(self, comm: Any, report: Any) -> None:
        self._comm = comm
        self._report = report
        self._stop = threading.Event()
        self._reported = False
        self._thread = threading.Thread(target=self._run, name="welcome-watcher", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        deadline = time.monotonic() + JOIN_TIMEOUT
        while not self._stop.is_set() and time.monotonic() < deadline:
            if self._check():
                return
            self._stop.wait(0.002)

    def _check(self) -> bool:
        if not self._reported and self._comm.peer_id:
            self._reported = True
            self._report(self._comm.peer_id)
        return self._reported

    def stop(self) -> None:
        """Ends the watcher (reporting now if it has not yet); once this returns it sends nothing more."""
        self._stop.set()
        self._thread.join(timeout=JOIN_TIMEOUT + 1)
        self._check()


def peer_main(index: int, master_address: str, conn: Connection, seed: int, log_level: str, parent_pid: int) -> int:
    """A peer process (``--peer``): runs the parent's commands; replies with dicts that have "event" and "index"."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent owns our lifetime
    die_with_parent(parent_pid)

    import pccl_py

    pccl_py.set_log_level(log_level)
    comm: Optional[pccl_py.Communicator] = None
    peer = VerifiedPeer(index, seed)  # runs and checks each step's op (the loop pccl-stress's peers use)

    def reply(event: str, **fields: Any) -> None:
        conn.send({"event": event, "index": index, **fields})

    def state() -> dict[str, Any]:
        assert comm is not None
        return {"peer_id": comm.peer_id, "rank": comm.rank, "world_size": comm.world_size, "epoch": comm.epoch}

    try:
        while conn.poll(CHILD_IDLE_TIMEOUT):
            msg = conn.recv()
            cmd = msg["cmd"]
            try:
                if cmd == "connect":
                    comm = pccl_py.Communicator(master_address, listen_host="127.0.0.1", timeout=OP_TIMEOUT,
                                                heartbeat_timeout=HEARTBEAT_TIMEOUT, join_timeout=JOIN_TIMEOUT)
                    welcomed = _WelcomeWatcher(comm, lambda pid: reply("welcomed", peer_id=pid))
                    try:
                        comm.connect()  # returns once the members have admitted us
                    finally:
                        welcomed.stop()
                    reply("joined", ok=True, **state())
                elif cmd == "admit":
                    # What a training loop does between steps: if someone is waiting, every member admits them.
                    assert comm is not None
                    deadline = time.monotonic() + msg["wait"]
                    while not comm.are_peers_pending():
                        if time.monotonic() > deadline:
                            raise pccl_py.TimeoutError(f"no peer became pending within {msg['wait']:.1f} s")
                        time.sleep(0.01)
                    comm.update_topology()
                    reply("admitted", ok=True, **state())
                elif cmd == "step":
                    assert comm is not None
                    step = msg["step"]
                    peer.comm = comm
                    peer.clear_details()  # this step's findings only
                    reply("started", step=step)
                    try:  # one attempt: the parent decides about retries, so that it can show the failure
                        x, info, slots = peer.exact_op(step, ELEMENTS - HEAD, data_tag=DATA_TAG, retry=False)
                    except pccl_py.PCCLError as exc:
                        # The guarantee under test: the op was aborted everywhere and x is still our input.
                        reply("result", ok=False, error=type(exc).__name__, message=str(exc),
                              buffer_unchanged=peer.failures[-1]["unchanged"], **state())
                        continue
                    reply("result", ok=True, step=step, sha256=sha256(x), mask=None if slots is None else mask_of(slots),
                          world_size=info.world_size, epoch=info.epoch, algorithm=info.algorithm, rank=comm.rank,
                          wrong=[w["what"] for w in peer.wrongs])
                elif cmd == "exit":
                    if comm is not None:
                        comm.close()
                        comm = None
                    reply("bye", ok=True)
                    return 0
                else:
                    raise ValueError(f"unknown command {cmd!r}")
            except pccl_py.PCCLError as exc:
                event = {"connect": "joined", "admit": "admitted", "step": "result"}.get(cmd, "error")
                reply(event, ok=False, error=type(exc).__name__, message=str(exc))
    except (EOFError, OSError, KeyboardInterrupt):
        pass  # the parent is gone; fall through to close()
    finally:
        if comm is not None:
            try:
                comm.close()
            except Exception:  # noqa: BLE001 - best effort on the way out
                pass
    return 0


# ------------------------------------------------------------------------------------------------
# The parent: master, orchestration, verification, cleanup.

class DemoError(Exception):
    """Something the demo cannot continue after; reported and turned into exit code 1."""


class _Terminated(BaseException):
    """Raised from the SIGTERM handler so that the same cleanup as for Ctrl-C runs."""


@dataclass
class PeerHandle:
    index: int
    proc: subprocess.Popen[str]
    conn: Connection
    peer_id: int = 0

    @property
    def pid(self) -> int:
        return int(self.proc.pid)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def reap(self, timeout: float) -> bool:
        """Waits up to timeout for the process to exit; True if it has."""
        try:
            self.proc.wait(timeout=max(0.0, timeout))
            return True
        except subprocess.TimeoutExpired:
            return False

    @property
    def name(self) -> str:
        return f"peer {self.index} (pid {self.pid})"


@dataclass
class Stats:
    steps_done: int = 0
    results_verified: int = 0       # (step, peer) results that matched the expected bytes
    results_wrong: list[str] = field(default_factory=list)
    failures: int = 0               # attempts that failed with PeerLostError
    failures_recovered: int = 0     # ... and were followed by a successful retry
    killed: list[int] = field(default_factory=list)
    admitted_mid_run: list[int] = field(default_factory=list)


def _fmt(indices: Sequence[int]) -> str:
    return "[" + ", ".join(str(i) for i in indices) + "]"


class Demo:
    """The parent's side: runs the master, starts and drives the peers, and checks every result."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.master: Any = None
        self.address = ""
        self.peers: dict[int, PeerHandle] = {}   # every process ever started, by demo index
        self.children = Children()
        self.members: list[int] = []             # indices the parent believes are members, sorted
        self.stats = Stats()
        self.deadline: float = time.monotonic() + args.time_limit
        rng = random.Random(args.seed)
        self.victim = rng.randrange(args.peers)
        self.kill_step = 1 + args.steps // 3
        self.join_step = 1 + (2 * args.steps) // 3

    # -- plumbing ---------------------------------------------------------------------------------
    def say(self, text: str) -> None:
        print(text, flush=True)

    def remaining(self, cap: float) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise DemoError(f"the demo exceeded its time limit of {self.args.time_limit:.0f} s")
        return min(cap, left)

    def spawn(self, index: int) -> PeerHandle:
        """Starts `python -m pccl_py.tools.allreduce_demo --peer INDEX ...`, talking to us over one end of a socketpair."""
        ours, theirs = socket.socketpair()
        cmd = [sys.executable, "-m", "pccl_py.tools.allreduce_demo", "--peer", str(index), "--fd", str(theirs.fileno()),
               "--master", self.address, "--seed", str(self.args.seed), "--log-level", self.args.log_level,
               "--parent-pid", str(os.getpid())]
        try:
            # The harness gives it a session of its own: a Ctrl-C in the terminal reaches only this process,
            # which then kills the peers itself. stdout stays ours alone (the peer talks over the socket);
            # the core's log lines (stderr) are passed through.
            proc = self.children.spawn(cmd, key=index, inbox=None, stdin=False, capture_stdout=False,
                                       pass_fds=(theirs.fileno(),)).proc
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        handle = PeerHandle(index, proc, Connection(ours.detach()))
        self.peers[index] = handle
        return handle

    def send(self, p: PeerHandle, cmd: str, **fields: Any) -> None:
        try:
            p.conn.send({"cmd": cmd, **fields})
        except (OSError, EOFError) as exc:
            raise DemoError(f"{p.name} is gone (exit code {p.proc.poll()}): {exc}") from None

    def recv(self, p: PeerHandle, event: str, timeout: float = REPLY_TIMEOUT) -> dict[str, Any]:
        """The next message of the given event from p; fails on a timeout, an exit or an error reply."""
        end = time.monotonic() + self.remaining(timeout)
        while True:
            left = end - time.monotonic()
            try:
                ready = left > 0 and p.conn.poll(left)
                msg: Optional[dict[str, Any]] = p.conn.recv() if ready else None
            except (OSError, EOFError):
                raise DemoError(f"{p.name} exited unexpectedly (exit code {p.proc.poll()})") from None
            if msg is None:
                self.remaining(timeout)  # raises if it was the overall limit that ran out
                raise DemoError(f"{p.name} sent no '{event}' within {timeout:.0f} s")
            if msg["event"] == event:
                return msg
            if msg["event"] == "error" or msg.get("ok") is False:
                raise DemoError(f"{p.name}: {msg['error']}: {msg['message']}")

    # -- membership -------------------------------------------------------------------------------
    def admit(self, newcomers: list[int]) -> None:
        """newcomers connect(); members see are_peers_pending() and call update_topology() until all are in."""
        waiting = list(newcomers)
        for i in waiting:
            self.send(self.peers[i], "connect")
        for i in waiting:  # see _WelcomeWatcher: nobody votes before every newcomer has been welcomed
            self.recv(self.peers[i], "welcomed", timeout=JOIN_TIMEOUT)
        rounds = 0
        while waiting:
            rounds += 1
            if rounds > 5:
                raise DemoError(f"peers {_fmt(waiting)} were still not admitted after 5 rounds of update_topology()")
            voters = list(self.members)
            for i in voters:
                self.send(self.peers[i], "admit", wait=self.remaining(JOIN_TIMEOUT))
            world = 0
            for i in voters:
                r = self.recv(self.peers[i], "admitted", timeout=JOIN_TIMEOUT + OP_TIMEOUT)
                if not r["ok"]:
                    raise DemoError(f"update_topology() failed on {self.peers[i].name}: {r['error']}: {r['message']}")
                world = r["world_size"]
            # The vote admitted whoever was pending when it closed; a newcomer whose hello arrived later
            # stays pending for the next round. The members' new world size says how many got in.
            for _ in range(world - len(voters)):
                ready = mp_connection.wait([self.peers[i].conn for i in waiting], timeout=self.remaining(JOIN_TIMEOUT))
                if not ready:
                    raise DemoError(f"the members admitted {world - len(voters)} peer(s) but none of "
                                    f"{_fmt(waiting)} reported that connect() returned")
                p = next(self.peers[i] for i in waiting if self.peers[i].conn in ready)
                r = self.recv(p, "joined")
                if not r["ok"]:
                    raise DemoError(f"connect() failed on {p.name}: {r['error']}: {r['message']}")
                p.peer_id = r["peer_id"]
                waiting.remove(p.index)
                self.members.append(p.index)
            self.members.sort()

    def start(self) -> None:
        import pccl_py

        pccl_py.set_log_level(self.args.log_level)
        self.master = pccl_py.Master("127.0.0.1", 0).start()
        self.address = self.master.address
        a = self.args
        self.say(f"pccl-demo: master on {self.address}; {a.peers} peers, {a.steps} steps, seed {a.seed}")
        self.say(f"  each step peer i all-reduces {ELEMENTS} float64 that carry bit i and a payload drawn from "
                 "(seed, step, i);")
        self.say("  so every result names exactly who took part. "
                 f"Plan: SIGKILL peer {self.victim} in step {self.kill_step}, admit peer {a.peers} "
                 f"before step {self.join_step}.")
        for i in range(a.peers):
            self.spawn(i)
        self.say("  started " + ", ".join(self.peers[i].name for i in range(a.peers)))
        first = self.peers[0]
        self.send(first, "connect")
        r = self.recv(first, "joined", timeout=JOIN_TIMEOUT)
        if not r["ok"]:
            raise DemoError(f"connect() failed on {first.name}: {r['error']}: {r['message']}")
        first.peer_id = r["peer_id"]
        self.members.append(0)
        self.admit(list(range(1, a.peers)))
        self.say(f"  all {a.peers} peers admitted; world size {len(self.members)}")

    # -- steps ------------------------------------------------------------------------------------
    def collect_results(self, indices: list[int]) -> dict[int, dict[str, Any]]:
        return {i: self.recv(self.peers[i], "result", timeout=OP_TIMEOUT + 2 * HEARTBEAT_TIMEOUT + 5) for i in indices}

    def attempt_with_kill(self, step: int) -> dict[int, dict[str, Any]]:
        """The survivors enter step's all_reduce without the victim, which is then SIGKILLed."""
        victim = self.peers[self.victim]
        survivors = [i for i in self.members if i != self.victim]
        for i in survivors:
            self.send(self.peers[i], "step", step=step)
        for i in survivors:
            self.recv(self.peers[i], "started")
        time.sleep(KILL_DELAY)  # they are now blocked inside all_reduce, waiting for the victim's data
        self.say(f"  !! SIGKILL -> {victim.name}, while peers {_fmt(survivors)} are inside step {step}'s all_reduce")
        os.kill(victim.pid, signal.SIGKILL)
        if not victim.reap(self.remaining(5.0)):
            raise DemoError(f"{victim.name} did not die after SIGKILL")
        self.members.remove(self.victim)
        self.stats.killed.append(self.victim)
        return self.collect_results(survivors)

    def run_step(self, step: int) -> None:
        for attempt in range(1, MAX_ATTEMPTS + 1):
            if step == self.kill_step and attempt == 1:
                replies = self.attempt_with_kill(step)
            else:
                for i in self.members:
                    self.send(self.peers[i], "step", step=step)
                replies = self.collect_results(list(self.members))
            failed = {i: r for i, r in replies.items() if not r["ok"]}
            if not failed:
                self.verify(step, attempt, replies)
                if attempt > 1:
                    self.stats.failures_recovered += 1
                self.stats.steps_done += 1
                return
            errors = sorted({r["error"] for r in failed.values()})
            if errors != ["PeerLostError"] or len(failed) != len(replies):
                detail = "; ".join(f"peer {i}: {r['error']}: {r['message']}" for i, r in failed.items())
                raise DemoError(f"step {step}: {len(failed)} of {len(replies)} peers failed ({detail})")
            self.stats.failures += 1
            unchanged = all(r.get("buffer_unchanged") for r in failed.values())
            message = next(iter(failed.values()))["message"]
            self.say(f"step {step:3d}  FAILED: PeerLostError on peers {_fmt(sorted(failed))}; buffers unchanged: "
                     f"{'yes' if unchanged else 'NO'}")
            self.say(f"           \"{message}\"")
            if not unchanged:
                self.stats.results_wrong.append(f"step {step}: a failed op modified its input buffer")
            # Anyone else who died? Then the retry must not wait for them.
            self.members = [i for i in self.members if self.peers[i].alive()]
            self.say(f"           retrying step {step} among the survivors {_fmt(self.members)}")
        raise DemoError(f"step {step} failed {MAX_ATTEMPTS} times in a row")

    def verify(self, step: int, attempt: int, replies: dict[int, dict[str, Any]]) -> None:
        want_sha = sha256(expected_result(self.members, self.args.seed, step))
        problems: list[str] = []
        for i, r in sorted(replies.items()):
            problems.extend(f"peer {i} found its result wrong: {what}" for what in r["wrong"])
            if r["sha256"] != want_sha:
                decoded = "matching no set of contributors" if r["mask"] is None else f"contributors {_fmt(members_of(r['mask']))}"
                problems.append(f"peer {i} got a wrong result ({decoded})")
            if r["world_size"] != len(self.members):
                problems.append(f"peer {i} reports world size {r['world_size']}, expected {len(self.members)}")
        hashes = {r["sha256"] for r in replies.values()}
        if len(hashes) != 1:
            problems.append(f"results differ across peers ({len(hashes)} distinct hashes)")
        any_reply = replies[min(replies)]
        mask = any_reply["mask"]
        contributors = _fmt(members_of(mask)) if mask is not None else "?? (result matches no set of contributors)"
        status = "OK" if not problems else "WRONG"
        retry = f", attempt {attempt}" if attempt > 1 else ""
        digest = (f"sha256 {any_reply['sha256'][:12]} on {len(replies)} peers" if len(hashes) == 1
                  else f"{len(hashes)} different sha256 on {len(replies)} peers")
        self.say(f"step {step:3d}  world {any_reply['world_size']}  contributors {contributors:<16} "
                 f"epoch {any_reply['epoch']:<3} {any_reply['algorithm']:<5} {status}  ({digest}{retry})")
        for p in problems:
            self.say(f"           !! {p}")
        if problems:
            self.stats.results_wrong.extend(f"step {step}: {p}" for p in problems)
        else:
            self.stats.results_verified += len(replies)

    def run(self) -> None:
        self.start()
        for step in range(1, self.args.steps + 1):
            if step == self.join_step:
                newcomer = self.args.peers
                p = self.spawn(newcomer)
                self.say(f"  ++ {p.name} connect()s; members {_fmt(self.members)} see are_peers_pending() "
                         "and call update_topology()")
                before = len(self.members)
                self.admit([newcomer])
                self.stats.admitted_mid_run.append(newcomer)
                self.say(f"  ++ {p.name} admitted (master peer_id {p.peer_id}): world size {before} -> {len(self.members)}")
            self.run_step(step)

    def shutdown(self) -> None:
        """Graceful first (close() on every member), then SIGKILL by PID whatever is left. Never raises."""
        for i in list(self.members):
            p = self.peers[i]
            try:
                if p.alive():
                    p.conn.send({"cmd": "exit"})
            except (OSError, EOFError):
                pass
        end = time.monotonic() + 5.0
        for i in list(self.members):
            p = self.peers[i]
            try:
                if p.alive() and p.conn.poll(max(0.0, end - time.monotonic())):
                    p.conn.recv()  # "bye": close() returned
                p.reap(end - time.monotonic())
            except (OSError, EOFError):
                pass
        self.kill_all()

    def kill_all(self) -> None:
        """SIGKILL, by PID, every peer process that has not exited; reap them; stop the master."""
        self.children.close()
        for p in self.peers.values():
            try:
                p.conn.close()
            except OSError:
                pass
        if self.master is not None:
            master, self.master = self.master, None
            try:
                master.stop()
            except Exception as exc:  # noqa: BLE001 - cleanup must go on
                print(f"pccl-demo: stopping the master failed: {exc}", file=sys.stderr)

    def leftovers(self) -> list[str]:
        return [p.name for p in self.peers.values() if p.alive()]


def summarize(demo: Demo, error: Optional[str]) -> bool:
    s = demo.stats
    say = demo.say
    say("")
    say(f"summary: {s.steps_done} of {demo.args.steps} steps done; "
        f"{s.failures_recovered} failure(s) recovered ({s.failures} PeerLostError attempt(s)); "
        f"killed {_fmt(s.killed)}, admitted mid-run {_fmt(s.admitted_mid_run)}; final world size {len(demo.members)}")
    problems = list(s.results_wrong)
    if error:
        problems.append(error)
    if s.steps_done != demo.args.steps:
        problems.append(f"only {s.steps_done} of {demo.args.steps} steps completed")
    if not s.killed or s.failures_recovered < 1:
        problems.append("the SIGKILL did not produce a PeerLostError followed by a successful retry")
    if not s.admitted_mid_run:
        problems.append("no peer was admitted mid-run")
    if problems:
        say("RESULT: FAILED")
        for p in problems:
            say(f"  - {p}")
        return False
    say(f"every result stayed correct: {s.results_verified} results from {s.steps_done} steps matched the expected "
        "sum byte for byte and were bitwise identical on every peer")
    return True


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="pccl-demo --allreduce",
        description="A master and local peer processes all-reduce in a loop while one peer is SIGKILLed and a new "
                    "one joins; every result is checked.")
    parser.add_argument("--steps", type=int, default=12, help="all-reduce steps (default 12, at least 3)")
    parser.add_argument("--peers", type=int, default=4, help="initial peers (default 4, 2..16)")
    parser.add_argument("--seed", type=int, default=0, help="picks the victim and the tensor values (default 0)")
    parser.add_argument("--time-limit", type=float, default=30.0, help="hard limit for the whole run in s (default 30)")
    parser.add_argument("--log-level", default="error", choices=["debug", "info", "warn", "error", "off"],
                        help="pccl core log level on stderr (default error)")
    # Internal: how the demo starts its own peer processes.
    parser.add_argument("--peer", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--fd", type=int, default=-1, help=argparse.SUPPRESS)
    parser.add_argument("--master", default="", help=argparse.SUPPRESS)
    parser.add_argument("--parent-pid", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.peer is not None:
        return args
    if args.steps < 3:
        parser.error("--steps must be at least 3 (a step before the kill, the kill, the admission)")
    if not 2 <= args.peers <= 16:
        parser.error("--peers must be between 2 and 16")
    if args.seed < 0:
        parser.error("--seed must be non-negative")
    if args.time_limit <= 0:
        parser.error("--time-limit must be positive")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if args.peer is not None:
        return peer_main(args.peer, args.master, Connection(args.fd), args.seed, args.log_level, args.parent_pid)
    t0 = time.monotonic()

    def on_sigterm(signum: int, frame: Any) -> None:
        raise _Terminated()

    old_term = signal.signal(signal.SIGTERM, on_sigterm)
    demo = Demo(args)
    error: Optional[str] = None
    interrupted = False
    try:
        try:
            demo.run()
        except DemoError as exc:
            error = str(exc)
            demo.say(f"ERROR: {exc}")
        except (KeyboardInterrupt, _Terminated):
            interrupted = True
        if not interrupted:
            demo.shutdown()  # graceful close() on every member, then kill whatever is left
    except (KeyboardInterrupt, _Terminated):
        interrupted = True
    finally:
        # Whatever happened above, every child is reaped by PID here; a second Ctrl-C cannot cut this short.
        old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            demo.kill_all()
        finally:
            signal.signal(signal.SIGINT, old_int)
            signal.signal(signal.SIGTERM, old_term)
    if interrupted:
        left = demo.leftovers()
        demo.say("\ninterrupted: " + (f"could not reap {', '.join(left)}" if left else
                                        f"every peer process ({len(demo.peers)} started) was killed and reaped"))
        return 1
    ok = summarize(demo, error)
    left = demo.leftovers()
    if left:
        demo.say(f"ERROR: could not reap {', '.join(left)}")
        ok = False
    else:
        demo.say(f"cleanup: all {len(demo.peers)} peer processes exited; took {time.monotonic() - t0:.1f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
