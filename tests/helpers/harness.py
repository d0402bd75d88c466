"""Real processes for the multi-process tests: a master subprocess and command-driven peer workers.

Built on pccl_py.tools.harness, the process harness the tools use too. Every process started here is
tracked by PID and killed in Cluster.close(), so a failing test never leaves peers behind. Every wait
has a deadline.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import queue
import signal
import sys
from typing import Any, Iterable, Iterator, Optional

from pccl_py.tools.harness import Child, Children, package_env
from pccl_py.tools.harness import MasterProcess as _MasterProcess

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "worker.py")
_ids = itertools.count(1)


def _env(extra: Optional[dict] = None) -> dict:
    env = package_env()
    env.setdefault("PCCL_LOG_LEVEL", "warn")
    env.update(extra or {})
    return env


class MasterProcess(_MasterProcess):
    """`python -m pccl_py.master` on a free loopback port (its log level is info; peers default to warn)."""

    def __init__(self, port: int = 0, log_path: Optional[str] = None, args: Iterable[str] = (),
                 env: Optional[dict] = None) -> None:
        super().__init__(log_path=log_path, port=port, args=args, env=_env(env))


class Peer:
    """One worker process (tests/helpers/worker.py); call() sends a command and waits for its reply."""

    def __init__(self, index: int, children: Children, stderr_path: Optional[str] = None,
                 env: Optional[dict] = None) -> None:
        self.index = index
        self._replies: "queue.Queue[tuple]" = queue.Queue()
        self._child: Child = children.spawn([sys.executable, WORKER, str(index)], key=index, inbox=self._replies,
                                            env=_env(env), log_path=stderr_path)
        self.proc = self._child.proc
        self.peer_id = 0

    @property
    def pid(self) -> int:
        return self._child.pid

    def alive(self) -> bool:
        return self._child.alive()

    def send(self, cmd: str, **kwargs: Any) -> int:
        msg_id = next(_ids)
        self._child.send({"cmd": cmd, "id": msg_id, **kwargs})
        return msg_id

    def recv(self, timeout: float = 60.0) -> dict:
        try:
            _, reply = self._replies.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"peer {self.index} (pid {self.pid}) gave no reply within {timeout} s") from None
        if reply is None:  # end of its output: put it back so that every later recv sees it too
            self._replies.put((self.index, None))
            raise TimeoutError(f"peer {self.index} (pid {self.pid}) exited (code {self._child.exit_code}) "
                               "before replying")
        return reply

    def call(self, cmd: str, timeout: float = 60.0, **kwargs: Any) -> dict:
        self.send(cmd, **kwargs)
        return self.recv(timeout)

    def kill(self, sig: int = signal.SIGKILL) -> float:
        """Sends sig; returns the time it was sent (after SIGKILL the process is also reaped)."""
        t = self._child.signal(sig)
        if sig == signal.SIGKILL:
            self._child.wait(10.0)
        return t


class Cluster:
    """A master and a set of peers; a context manager that kills every process it started."""

    def __init__(self, log_dir: Optional[str] = None, master_args: Iterable[str] = (),
                 master_env: Optional[dict] = None) -> None:
        self.log_dir = log_dir
        self.children = Children()
        self.master = MasterProcess(log_path=self._log("master.log"), args=master_args, env=master_env)
        self.peers: list[Peer] = []
        self._next_index = 0

    def _log(self, name: str) -> Optional[str]:
        return os.path.join(self.log_dir, name) if self.log_dir else None

    def spawn(self, env: Optional[dict] = None) -> Peer:
        p = Peer(self._next_index, self.children, stderr_path=self._log(f"peer{self._next_index}.log"), env=env)
        self._next_index += 1
        self.peers.append(p)
        return p

    def members(self) -> list[Peer]:
        return [p for p in self.peers if p.alive()]

    def ranked(self, peers: Iterable[Peer]) -> list[Peer]:
        """peers sorted by the rank each one reports (support.admit() and join() admit peers)."""
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
        self.children.close()
        self.master.kill(signal.SIGKILL)

    def __enter__(self) -> "Cluster":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


@contextlib.contextmanager
def keyed_cluster(tmp_path: Any, secret: Optional[str], comm: dict) -> Iterator[Cluster]:
    """A Cluster whose master runs with job secret `secret` (None: without one). The cluster carries
    c.comm (the Communicator options, `secret` added) and c.key (the secret's bytes, b"" without one),
    which tests that play a member by hand need for their handshakes."""
    args: list[str] = []
    if secret is not None:
        path = tmp_path / "job.secret"
        path.write_text(secret)
        args, comm = ["--secret-file", str(path)], dict(comm, secret=secret)
    with Cluster(log_dir=str(tmp_path), master_args=args) as c:
        c.comm, c.key = dict(comm), (secret or "").encode()
        yield c
