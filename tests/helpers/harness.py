"""Real processes for the multi-process tests: a master subprocess and command-driven peer workers.

Every process started here is tracked by PID and killed in Cluster.close(), so a failing test never
leaves peers behind. Every wait has a deadline.
"""

from __future__ import annotations

import itertools
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Iterable, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "worker.py")
_ids = itertools.count(1)


def _env(extra: Optional[dict] = None) -> dict:
    env = dict(os.environ)
    env.setdefault("PCCL_LOG_LEVEL", "warn")
    env.update(extra or {})
    return env


class MasterProcess:
    """`python -m pccl_py.master` on a free loopback port."""

    def __init__(self, port: int = 0, log_path: Optional[str] = None, args: Iterable[str] = (),
                 env: Optional[dict] = None) -> None:
        self.log_path = log_path
        log = open(log_path, "ab") if log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pccl_py.master", "--host", "127.0.0.1", "--port", str(port), "--log-level", "info",
             *args], stdout=subprocess.PIPE, stderr=log, env=_env(env), text=True)
        line = self.proc.stdout.readline()
        if "listening on" not in line:
            self.kill()
            raise RuntimeError(f"master did not start: {line!r}")
        self.address = line.strip().rsplit(" ", 1)[-1]
        self.port = int(self.address.rsplit(":", 1)[1])

    @property
    def pid(self) -> int:
        return self.proc.pid

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, sig)
            except ProcessLookupError:
                pass
        if sig in (signal.SIGKILL, signal.SIGTERM):
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass


class Peer:
    """One worker process; call() sends a command and waits for its reply."""

    def __init__(self, index: int, stderr_path: Optional[str] = None, env: Optional[dict] = None) -> None:
        self.index = index
        err = open(stderr_path, "ab") if stderr_path else subprocess.DEVNULL
        self.proc = subprocess.Popen([sys.executable, WORKER, str(index)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=err, env=_env(env), text=True, bufsize=1)
        self._replies: "queue.Queue[dict]" = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.peer_id = 0

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                self._replies.put(json.loads(line))
            except json.JSONDecodeError:
                pass

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def send(self, cmd: str, **kwargs: Any) -> int:
        msg_id = next(_ids)
        self.proc.stdin.write(json.dumps({"cmd": cmd, "id": msg_id, **kwargs}) + "\n")
        self.proc.stdin.flush()
        return msg_id

    def recv(self, timeout: float = 60.0) -> dict:
        try:
            return self._replies.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"peer {self.index} (pid {self.pid}) gave no reply within {timeout} s") from None

    def call(self, cmd: str, timeout: float = 60.0, **kwargs: Any) -> dict:
        self.send(cmd, **kwargs)
        return self.recv(timeout)

    def kill(self, sig: int = signal.SIGKILL) -> float:
        """Sends sig; returns the time it was sent."""
        t = time.time()
        try:
            os.kill(self.proc.pid, sig)
        except ProcessLookupError:
            pass
        if sig == signal.SIGKILL:
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        return t


class Cluster:
    """A master and a set of peers; a context manager that kills every process it started."""

    def __init__(self, log_dir: Optional[str] = None, master_args: Iterable[str] = (),
                 master_env: Optional[dict] = None) -> None:
        self.log_dir = log_dir
        self.master = MasterProcess(log_path=self._log("master.log"), args=master_args, env=master_env)
        self.peers: list[Peer] = []
        self._next_index = 0

    def _log(self, name: str) -> Optional[str]:
        return os.path.join(self.log_dir, name) if self.log_dir else None

    def spawn(self, env: Optional[dict] = None) -> Peer:
        p = Peer(self._next_index, stderr_path=self._log(f"peer{self._next_index}.log"), env=env)
        self._next_index += 1
        self.peers.append(p)
        return p

    def members(self) -> list[Peer]:
        return [p for p in self.peers if p.alive()]

    def join(self, n: int, timeout: float = 60.0, **connect_kwargs: Any) -> list[Peer]:
        """Spawns n peers and admits them all to connect_kwargs' peer_group; returns them in rank order."""
        group = connect_kwargs.get("peer_group", 0)
        current = [p for p in self.members() if p.peer_id and getattr(p, "group", 0) == group]
        new = [self.spawn() for _ in range(n)]
        for p in new:
            p.group = group
        deadline = time.time() + timeout
        if not current:
            first = new.pop(0)
            r = first.call("connect", master=self.master.address, kwargs=connect_kwargs, timeout=timeout)
            assert r["ok"], r
            first.peer_id = r["peer_id"]
            current = [first]
        for p in new:
            p.send("connect", master=self.master.address, kwargs=connect_kwargs)
        joined: set[int] = set()
        while len(joined) < len(new):
            assert time.time() < deadline, "peers were not admitted in time"
            # Members poll until the master has told them that someone is pending, then all vote.
            while not current[0].call("pending")["pending"]:
                assert time.time() < deadline, "joining peers never became pending"
                time.sleep(0.02)
            for m in current:
                m.send("update_topology")
            for m in current:
                r = m.recv(timeout)
                assert r["ok"], r
            for p in new:
                if p.index in joined:
                    continue
                try:
                    r = p.recv(timeout=0.5)
                except TimeoutError:
                    continue
                assert r["ok"], r
                p.peer_id = r["peer_id"]
                joined.add(p.index)
                current.append(p)
        return self.ranked(current)

    def ranked(self, peers: Iterable[Peer]) -> list[Peer]:
        peers = list(peers)
        ranks = {p.index: p.call("state")["rank"] for p in peers}
        return sorted(peers, key=lambda p: ranks[p.index])

    def all_reduce(self, peers: list[Peer], timeout: float = 60.0, **kwargs: Any) -> list[dict]:
        """Issues the same all_reduce on every peer concurrently; returns the replies in order."""
        kwargs.setdefault("expect_from", [p.index for p in peers])
        for p in peers:
            p.send("all_reduce", **kwargs)
        return [p.recv(timeout) for p in peers]

    def close(self) -> None:
        for p in self.peers:
            if p.alive():
                try:
                    p.proc.stdin.close()
                except Exception:  # noqa: BLE001
                    pass
                p.kill(signal.SIGKILL)
        self.master.kill(signal.SIGKILL)

    def __enter__(self) -> "Cluster":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
