#!/usr/bin/env python3
"""WAN emulator CLI: a loopback TCP relay with per-connection RTT, per-flow and per-link rate caps.

Why this exists: pccl_py targets training over the internet, where one TCP flow is window-limited
(window / RTT) and a Communicator stripes each op over several connections to fill the link. This
machine has no ``tc netem``, so the WAN is emulated in user space: each peer listens on one port
and advertises (``Communicator(advertise_address="127.0.0.1:RELAY_PORT", listen_port=PORT)``) the
relay's port instead, so every other member's data connection runs through the relay.

The relay itself lives in the package (``pccl_py.tools.wan``, so that ``python -m pccl_py.tools.bench --wan``
can use it); this script is its command-line front end. Example, two peers listening on 9001 and
9003 and advertising 9000 and 9002::

    python stress/wan_relay.py --listen 127.0.0.1:9000=127.0.0.1:9001 \\
        --listen 127.0.0.1:9002=127.0.0.1:9003 --rtt-ms 50 --flow-mbit 100 --link-mbit 1000

It runs until SIGINT/SIGTERM, printing its counters every --stats-interval seconds to stderr.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import sys
import threading
import time
from types import ModuleType
from typing import Any, List, Optional, Sequence


def _load_wan() -> ModuleType:
    """pccl_py.tools.wan, from the installed package or else from this checkout's python/ directory.

    Falls back to loading the module file by path, so the relay runs even where the compiled core
    (which ``import pccl_py`` loads) is not built.
    """
    try:
        from pccl_py.tools import wan  # noqa: PLC0415

        return wan
    except ImportError:
        pass
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "python", "pccl_py", "tools", "wan.py")
    spec = importlib.util.spec_from_file_location("pccl_py_wan", os.path.normpath(path))
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot find pccl_py/tools/wan.py (looked at {path})")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses need the module registered
    spec.loader.exec_module(module)
    return module


wan = _load_wan()


def _mapping(text: str) -> Any:
    try:
        return wan.parse_mapping(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="wan_relay.py",
        description="Relay TCP connections through an emulated WAN (delay, per-flow and per-link rate caps).")
    p.add_argument("--listen", action="append", required=True, metavar="LISTEN=TARGET", type=_mapping,
                   help="HOST:PORT=HOST:PORT: accept on the first, forward to the second (repeatable; "
                        "listen port 0 picks a free one, printed at start)")
    p.add_argument("--rtt-ms", type=float, default=0.0, help="round-trip time added to every connection (ms)")
    p.add_argument("--flow-mbit", type=float, default=0.0,
                   help="rate cap per connection and direction, Mbit/s (a window-limited TCP flow; 0: none)")
    p.add_argument("--link-mbit", type=float, default=0.0,
                   help="rate cap shared by the connections of a link, per direction, Mbit/s (0: none)")
    p.add_argument("--link-scope", choices=["mapping", "relay"], default="mapping",
                   help="what one link is: each --listen mapping (default) or the whole relay")
    p.add_argument("--buffer-kib", type=int, default=None,
                   help="KiB a connection's direction may queue before the relay stops reading "
                        "(default: two bandwidth-delay products, at least 1 MiB)")
    p.add_argument("--stats-interval", type=float, default=10.0,
                   help="seconds between counter lines on stderr (0: only at exit)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        profile = wan.WanProfile(args.rtt_ms, args.flow_mbit, args.link_mbit,
                                 args.buffer_kib * 1024 if args.buffer_kib else None, args.link_scope)
    except ValueError as exc:
        print(f"wan_relay: {exc}", file=sys.stderr)
        return 2
    relay = wan.WanRelay(profile)
    bound: List[Any] = []
    try:
        for listen, target in args.listen:
            bound.append((relay.add_mapping(listen, target), target))
    except OSError as exc:
        relay.stop()
        print(f"wan_relay: cannot listen: {exc}", file=sys.stderr)
        return 1
    relay.start()
    for (lh, lp), (th, tp) in bound:
        print(f"relay {lh}:{lp} -> {th}:{tp}", flush=True)
    print(f"profile: {profile.describe()}; buffer {profile.buffer_limit >> 10} KiB per connection and direction, "
          f"reads of {profile.read_size >> 10} KiB", flush=True)

    stop = threading.Event()

    def _on_signal(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    try:
        while not stop.wait(args.stats_interval if args.stats_interval > 0 else 3600.0):
            if args.stats_interval > 0:
                print(f"stats {json.dumps(relay.stats())}", file=sys.stderr, flush=True)
    finally:
        relay.stop()
        print(f"final {json.dumps(relay.stats())}", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
