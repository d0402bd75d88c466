"""Starting, talking to and reaping the processes of a local run: one master and many peer processes.

Why this exists: the test suite, pccl-bench, pccl-stress, pccl-demo and the DiLoCo training tool all
start a master and peer processes on this machine, read what the peers report, and must never leave a
process behind. They share this one harness instead of five copies of the same subprocess plumbing.

The traps it handles:
- A child must import this very copy of pccl_py (a checkout run without installing, a virtualenv), so
  every child gets ``package_env()``: this package's parent directory first on PYTHONPATH.
- A child left running (a failed test, a tool stopped with Ctrl-C or killed with SIGKILL) keeps ports
  and CPU. Every child runs in a session of its own (a Ctrl-C reaches only the tool, which then kills
  its children), is tracked by PID, and is killed and reaped by ``Children.close()``. Children that
  must survive even ``kill -9`` of the tool call ``pccl_py.tools._process.die_with_parent`` first.
- Every wait is bounded: the master's first line, each reply, each reap.

A child reports on stdout, one JSON object per line (optionally after a marker, so that stray prints are
passed on instead of parsed); a reader thread puts ``(key, message)`` on the inbox the caller chose, and
``(key, None)`` at the end of the stream. Commands go the other way, one JSON object per line on stdin.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from typing import IO, Any, Callable, Iterable, List, Optional, Sequence, Union

_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def package_env(extra: Optional[dict[str, Any]] = None, base: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """An environment for a child: ``base`` (default: ours) with this pccl_py first on PYTHONPATH."""
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = os.pathsep.join(x for x in (_PACKAGE_PARENT, env.get("PYTHONPATH")) if x)
    env.update(extra or {})
    return env


def _kill(proc: subprocess.Popen[str], sig: int) -> None:
    if proc.poll() is None:
        try:
            os.kill(proc.pid, sig)
        except ProcessLookupError:
            pass


def _reap(proc: subprocess.Popen[str], timeout: float) -> bool:
    try:
        proc.wait(timeout=timeout)
        return True
    except subprocess.TimeoutExpired:
        return False


class MasterProcess:
    """``python -m pccl_py.master`` on a loopback port; ``restart()`` brings it back on the same port."""

    def __init__(self, log_path: Optional[str] = None, port: int = 0, args: Iterable[str] = (),
                 env: Optional[dict[str, Any]] = None, host: str = "127.0.0.1", start_timeout: float = 30.0) -> None:
        self.log_path = log_path
        self.host = host
        self.port = port
        self.args = list(args)
        self.env = package_env(env)
        self.start_timeout = start_timeout
        self.proc: Optional[subprocess.Popen[str]] = None
        self.address = ""
        self.start()

    def start(self) -> None:
        log: Union[int, IO[bytes]] = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pccl_py.master", "--host", self.host, "--port", str(self.port),
                 "--log-level", "info", *self.args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log,
                env=self.env, text=True, start_new_session=True)
        finally:
            if not isinstance(log, int):
                log.close()
        line = _first_line(self.proc, self.start_timeout)
        if "listening on" not in line:
            self.kill()
            where = f" (see {self.log_path})" if self.log_path else ""
            raise RuntimeError(f"the master did not start{where}: {line!r}")
        self.address = line.strip().rsplit(" ", 1)[-1]
        self.port = int(self.address.rsplit(":", 1)[1])

    def restart(self) -> None:
        """SIGKILL, then a new master on the same port (the core binds with SO_REUSEADDR)."""
        self.kill()
        self.start()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return int(self.proc.pid)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Sends sig; after SIGKILL or SIGTERM also reaps the process (at most 10 s)."""
        if self.proc is None:
            return
        _kill(self.proc, sig)
        if sig in (signal.SIGKILL, signal.SIGTERM):
            _reap(self.proc, 10.0)


def _first_line(proc: subprocess.Popen[str], timeout: float) -> str:
    """The child's first stdout line, or "" if none came within timeout (a hung start stays bounded)."""
    out: "queue.Queue[str]" = queue.Queue()
    assert proc.stdout is not None
    stdout = proc.stdout
    threading.Thread(target=lambda: out.put(stdout.readline()), daemon=True).start()
    try:
        return out.get(timeout=timeout)
    except queue.Empty:
        return ""


class Child:
    """One child process: JSON messages in on stdin, JSON reports out on stdout (see the module doc)."""

    def __init__(self, argv: Sequence[str], *, key: Any, inbox: Optional["queue.Queue[Any]"] = None, env: Optional[dict[str, Any]] = None,
                 log_path: Optional[str] = None, stdin: bool = True, marker: str = "",
                 on_other_line: Optional[Callable[[str], None]] = None,
                 on_stderr_line: Optional[Callable[[str], None]] = None, pass_fds: Sequence[int] = (),
                 capture_stdout: bool = True) -> None:
        if capture_stdout and inbox is None:
            raise ValueError("a child whose stdout is read needs an inbox for its reports")
        self.key = key
        self.log_path = log_path
        self.started_at = time.monotonic()
        if on_stderr_line is not None:
            err: Union[None, int, IO[bytes]] = subprocess.PIPE
        else:
            err = open(log_path, "ab") if log_path else None
        try:
            self.proc = subprocess.Popen(
                list(argv), stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                stdout=subprocess.PIPE if capture_stdout else subprocess.DEVNULL, stderr=err,
                env=package_env() if env is None else env, text=True, bufsize=1, start_new_session=True,
                pass_fds=tuple(pass_fds))
        finally:
            if err not in (None, subprocess.PIPE) and not isinstance(err, int):
                err.close()
        self._inbox = inbox
        self._marker = marker
        self._on_other_line = on_other_line
        if capture_stdout:
            threading.Thread(target=self._read, name=f"reader-{key}", daemon=True).start()
        if on_stderr_line is not None:
            threading.Thread(target=self._read_stderr, args=(on_stderr_line,), name=f"stderr-{key}",
                             daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None and self._inbox is not None
        for line in self.proc.stdout:
            if self._marker and not line.startswith(self._marker):
                if self._on_other_line is not None:
                    self._on_other_line(line)
                continue
            try:
                self._inbox.put((self.key, json.loads(line[len(self._marker):])))
            except ValueError:
                if self._on_other_line is not None:
                    self._on_other_line(line)
        self._inbox.put((self.key, None))

    def _read_stderr(self, on_line: Callable[[str], None]) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            on_line(line)

    @property
    def pid(self) -> int:
        return int(self.proc.pid)

    def alive(self) -> bool:
        return self.proc.poll() is None

    @property
    def exit_code(self) -> Optional[int]:
        return self.proc.poll()

    def send(self, message: dict[str, Any]) -> bool:
        """Writes one JSON line to the child's stdin; False if the child is gone."""
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(json.dumps(message) + "\n")
            self.proc.stdin.flush()
            return True
        except (OSError, ValueError):
            return False

    def signal(self, sig: int) -> float:
        """Sends sig (if the child still runs); returns when it was sent."""
        t = time.time()
        _kill(self.proc, sig)
        return t

    def wait(self, timeout: float) -> bool:
        """Waits up to timeout for the child to exit; True if it has."""
        return _reap(self.proc, max(0.0, timeout))

    def kill(self, timeout: float = 10.0) -> bool:
        """SIGKILL and reap; True if the child is gone."""
        self.signal(signal.SIGKILL)
        return self.wait(timeout)


class Children:
    """Every child a run started, so that ``close()`` kills and reaps each one by PID. A context manager."""

    def __init__(self) -> None:
        self.all: List[Child] = []

    def spawn(self, argv: Sequence[str], **kwargs: Any) -> Child:
        child = Child(argv, **kwargs)
        self.all.append(child)
        return child

    def alive(self) -> List[Child]:
        return [c for c in self.all if c.alive()]

    def close(self, grace: float = 0.0) -> List[int]:
        """Kills every child still running (SIGTERM first when grace > 0, then SIGKILL) and reaps it.
        Never raises; returns the PIDs that could not be reaped."""
        alive = self.alive()
        for c in alive:
            if c.proc.stdin is not None:
                try:
                    c.proc.stdin.close()
                except OSError:
                    pass
        if grace > 0:
            for c in alive:
                c.signal(signal.SIGTERM)
            deadline = time.monotonic() + grace
            for c in alive:
                c.wait(deadline - time.monotonic())
        return [c.pid for c in alive if not c.kill()]

    def __enter__(self) -> "Children":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
