"""The master process: admission, membership epochs, failure resolution. Never on the data path.

Run it with ``pccl-master --host 0.0.0.0 --port 48148 --secret-file job.secret [--encryption tls]`` or
embed it with ``pccl_py.Master``. The trap: a master without a job secret admits anyone who reaches its port; it says
so loudly when bound beyond loopback, and ``--require-secret`` makes that an error (docs/security.md).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from typing import Any, Dict, Optional, Sequence, Union

from . import _core
from ._core import LogLevel
from .errors import InvalidArgumentError
from .secret import ENCRYPTIONS, ENV_ENCRYPTION, ENV_SECRET, SecretLike, read_secret_file, resolve_encryption, resolve_secret

_LEVELS: Dict[str, LogLevel] = {level.name.lower(): level for level in LogLevel}


def set_log_level(level: str) -> None:
    """Sets the core's stderr log level: debug, info, warn (default), error or off."""
    _core.set_log_level(_LEVELS[level])


# Resource limits against connections that never join (floods, slowloris) and oversized groups; the
# defaults (the core's, csrc/coordinator/master.hpp) and their reasons are in docs/security.md
# ("Resource limits").
_LIMIT_NAMES = ("handshake_timeout", "max_unauthenticated", "max_unauthenticated_per_source", "max_preauth_bytes",
                "max_pending_per_group", "max_group_size")
_DEFAULTS = _core.MasterLimits()
DEFAULT_LIMITS: Dict[str, Union[int, float]] = {name: getattr(_DEFAULTS, name) for name in _LIMIT_NAMES}


def _check_limits(limits: Dict[str, Union[int, float, None]]) -> _core.MasterLimits:
    """The given limits (None: the default) checked, as the core's options struct."""
    out = dict(DEFAULT_LIMITS)
    for name, value in limits.items():
        if value is None:
            continue
        if name == "handshake_timeout":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.1 <= float(value) <= 3600:
                raise InvalidArgumentError(f"handshake_timeout must be a number of seconds within [0.1, 3600], got {value!r}")
            out[name] = float(value)
        else:
            top = (1 << 64) if name == "max_preauth_bytes" else (1 << 32)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value < top:
                raise InvalidArgumentError(f"{name} must be a positive integer, got {value!r}")
            out[name] = int(value)
    return _core.MasterLimits(
        handshake_timeout=float(out["handshake_timeout"]), max_unauthenticated=int(out["max_unauthenticated"]),
        max_unauthenticated_per_source=int(out["max_unauthenticated_per_source"]),
        max_preauth_bytes=int(out["max_preauth_bytes"]), max_pending_per_group=int(out["max_pending_per_group"]),
        max_group_size=int(out["max_group_size"]))


class Master:
    """A master serving in a background thread of this process.

    Args:
        host: interface to listen on.
        port: TCP port; 0 picks a free one (read it back from ``address``).
        secret: the job secret (str or bytes) every peer must prove it knows; default: the
            ``PCCL_SECRET`` environment variable; empty: no secret (anyone reaching the port may join).
        encryption: "tls" to encrypt every connection with TLS 1.3 keyed by the secret (peers must
            use it too; a plaintext peer is refused with AuthenticationError), "none"; default: the
            ``PCCL_ENCRYPTION`` environment variable, else "none".
        handshake_timeout: seconds from accepting a connection to its completed join (default 5).
        max_unauthenticated: connections that have not joined yet, in total (default 512).
        max_unauthenticated_per_source: the same, per source address (default 64).
        max_preauth_bytes: bytes of partial messages those connections may hold in total (default 16 MiB).
        max_pending_per_group: peers waiting for admission to one group (default 1024).
        max_group_size: members plus pending peers of one group (default and maximum 4096).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        secret: SecretLike = None,
        encryption: Optional[str] = None,
        handshake_timeout: Optional[float] = None,
        max_unauthenticated: Optional[int] = None,
        max_unauthenticated_per_source: Optional[int] = None,
        max_preauth_bytes: Optional[int] = None,
        max_pending_per_group: Optional[int] = None,
        max_group_size: Optional[int] = None,
    ) -> None:
        limits = _check_limits({
            "handshake_timeout": handshake_timeout,
            "max_unauthenticated": max_unauthenticated,
            "max_unauthenticated_per_source": max_unauthenticated_per_source,
            "max_preauth_bytes": max_preauth_bytes,
            "max_pending_per_group": max_pending_per_group,
            "max_group_size": max_group_size,
        })
        key = resolve_secret(secret)
        self.encrypted = resolve_encryption(encryption, key)
        self._core = _core.Master(host, int(port), secret=key, encrypt=self.encrypted, limits=limits)
        self._started = False

    def start(self) -> "Master":
        """Binds and starts serving; returns at once."""
        if not self._started:
            self._core.start()
            self._started = True
        return self

    @property
    def address(self) -> str:
        """"host:port" with the real port (valid after start())."""
        return f"{self._core.host}:{self._core.port}"

    @property
    def port(self) -> int:
        return self._core.port

    def stop(self) -> None:
        """Stops serving and closes every connection (peers then raise MasterLostError)."""
        self._core.stop()
        self._started = False

    def __enter__(self) -> "Master":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="pccl-master", description="Run a pccl_py master.")
    parser.add_argument("--host", default="0.0.0.0", help="interface to listen on (default 0.0.0.0)")
    parser.add_argument("--port", type=int, default=48148, help="TCP port (default 48148; 0 picks one)")
    parser.add_argument("--log-level", default="info", choices=list(_LEVELS), help="log verbosity (default info)")
    parser.add_argument("--secret-file", metavar="PATH",
                        help=f"file holding the job secret every peer must know (default: ${ENV_SECRET}, else none)")
    parser.add_argument("--require-secret", action="store_true",
                        help="refuse to start without a job secret (from --secret-file or $" + ENV_SECRET + ")")
    parser.add_argument("--encryption", choices=list(ENCRYPTIONS), default=None,
                        help=f"'tls': encrypt every connection, keyed by the secret (default: ${ENV_ENCRYPTION}, else none)")
    limits = parser.add_argument_group("resource limits (docs/security.md)")
    limits.add_argument("--handshake-timeout", type=float, metavar="SECONDS",
                        help="from connecting to a completed join (default 5)")
    limits.add_argument("--max-unauthenticated", type=int, metavar="N",
                        help="connections that have not joined yet, in total (default 512)")
    limits.add_argument("--max-unauthenticated-per-source", type=int, metavar="N",
                        help="connections that have not joined yet, per source address (default 64)")
    limits.add_argument("--max-preauth-bytes", type=int, metavar="BYTES",
                        help="partial messages those connections may hold, in total (default 16 MiB)")
    limits.add_argument("--max-pending", type=int, metavar="N",
                        help="peers waiting for admission to one group (default 1024)")
    limits.add_argument("--max-group-size", type=int, metavar="N",
                        help="members plus pending peers of one group (default and maximum 4096)")
    args = parser.parse_args(argv)
    set_log_level(args.log_level)
    try:
        secret = read_secret_file(args.secret_file) if args.secret_file else resolve_secret(None)
        if args.require_secret and not secret:
            raise InvalidArgumentError(f"--require-secret: no job secret given; pass --secret-file PATH or set {ENV_SECRET}")
        master = Master(args.host, args.port, secret=secret, encryption=args.encryption, handshake_timeout=args.handshake_timeout,
                        max_unauthenticated=args.max_unauthenticated,
                        max_unauthenticated_per_source=args.max_unauthenticated_per_source,
                        max_preauth_bytes=args.max_preauth_bytes, max_pending_per_group=args.max_pending,
                        max_group_size=args.max_group_size)
        master.start()
    except Exception as exc:  # noqa: BLE001 - report and exit non-zero
        print(f"pccl-master: {exc}", file=sys.stderr)
        return 2
    # The address stays the line's last word: scripts and tests parse it.
    print("pccl-master " + ("(TLS) " if master.encrypted else "") + f"listening on {master.address}", flush=True)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    while not done.wait(0.5):
        pass
    master.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
