"""A connection flood against one or more TCP ports, for the flood acceptance test and stress/pccl_flood.py.

Why this exists: the master and every peer's mesh listener must keep serving while anyone who can reach
their ports opens thousands of connections that never authenticate. This process is that anyone: it
opens connections from several loopback source addresses at a steady rate, each in one of these modes:

- idle: connects and holds the socket, sending nothing;
- slowloris: sends one byte of a long frame every half second, forever;
- garbage: sends random bytes at once, then holds the socket;
- churn: connects and closes at once;
- bad-auth: a complete control-plane opening (AUTH_HELLO, a made-up proof, a REJOIN claiming a group)
  without the job secret, which the master must refuse.

It keeps at most --max-open sockets (closing its own oldest to open more) and prints a JSON summary on
stdout when --duration is over. Two traps: a single-threaded flooder that blocks on one connect() stops
flooding (everything here is non-blocking); and hundreds of thousands of connections from ephemeral
ports crowd the machine's ephemeral range, so other programs' "pick a free port" collides with them
(torch's TCPStore failed with EADDRINUSE next to a 5-minute run). Source ports therefore come from
--source-ports, below the ephemeral range, and sockets close with a reset (no TIME_WAIT here).

    python tests/helpers/flooder.py --target 127.0.0.1:48148 --duration 20 --rate 400
"""

from __future__ import annotations

import argparse
import errno
import json
import random
import selectors
import socket
import struct
import time

from control_frames import PROTOCOL_VERSION  # this script's directory is on sys.path when run by path

MODES = ("idle", "slowloris", "garbage", "churn", "bad-auth")
WEIGHTS = (40, 25, 20, 10, 5)


def _frame(msg_type: int, body: bytes) -> bytes:
    b = bytes([msg_type]) + body
    return struct.pack("<I", len(b)) + b


def _bad_auth(rng: random.Random) -> bytes:
    """AUTH_HELLO (claims a secret), a random proof, and a REJOIN for group 0 listing one member."""
    nonce = rng.randbytes(32)
    hello = _frame(15, struct.pack("<IHB", 0x4C434350, PROTOCOL_VERSION, 1) + nonce)
    proof = _frame(17, rng.randbytes(32))
    host = b"127.0.0.1"
    fields = (struct.pack("<IHII", 0x4C434350, PROTOCOL_VERSION, 0, 5000) + struct.pack("<H", len(host)) + host
              + struct.pack("<HH", 1, 1))
    peer_id = rng.randrange(1, 1 << 62)
    member = struct.pack("<Q", peer_id) + struct.pack("<H", len(host)) + host + struct.pack("<HH", 1, 1)
    rejoin = _frame(14, fields + struct.pack("<QQB", peer_id, 5, 1) + struct.pack("<I", 1) + member
                    + struct.pack("<I", 0))
    return hello + proof + rejoin


class Flood:
    def __init__(self, targets: list[tuple[str, int]], sources: list[str], rate: float, max_open: int,
                 seed: int, ports: tuple[int, int] = (20000, 31999)) -> None:
        self.targets, self.sources, self.rate, self.max_open = targets, sources, rate, max_open
        self.ports = ports
        self.next_port = {src: ports[0] + (seed * 977) % (ports[1] - ports[0]) for src in sources}
        self.rng = random.Random(seed)
        self.sel = selectors.DefaultSelector()
        self.open: dict[int, dict] = {}  # fd -> {sock, mode, since, next_byte}
        self.stats = {m: 0 for m in MODES}
        self.stats.update(opened=0, connect_failed=0, closed_by_target=0, closed_by_us=0, max_open=0, bytes_sent=0)
        self.n = 0

    def _open_one(self) -> None:
        host, port = self.targets[self.n % len(self.targets)]
        source = self.sources[self.n % len(self.sources)]
        self.n += 1
        mode = self.rng.choices(MODES, WEIGHTS)[0]
        s = socket.socket()
        s.setblocking(False)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = reset
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        err = -1
        for _ in range(32):
            lo, hi = self.ports
            sport = self.next_port[source]
            self.next_port[source] = lo if sport >= hi else sport + 1
            try:
                s.bind((source, sport))
                err = s.connect_ex((host, port))
                break
            except OSError:
                continue
        if err not in (0, errno.EINPROGRESS):
            s.close()
            self.stats["connect_failed"] += 1
            return
        self.stats["opened"] += 1
        self.stats[mode] += 1
        entry = {"sock": s, "mode": mode, "since": time.monotonic(), "next": time.monotonic() + 0.5, "sent": False}
        self.open[s.fileno()] = entry
        self.sel.register(s, selectors.EVENT_READ | selectors.EVENT_WRITE, entry)

    def _close(self, entry: dict, by_target: bool) -> None:
        s = entry["sock"]
        try:
            self.sel.unregister(s)
        except (KeyError, ValueError):
            pass
        self.open.pop(s.fileno(), None)
        s.close()
        self.stats["closed_by_target" if by_target else "closed_by_us"] += 1

    def _send(self, entry: dict, data: bytes) -> None:
        try:
            n = entry["sock"].send(data)
            self.stats["bytes_sent"] += n
        except BlockingIOError:
            pass
        except OSError:
            self._close(entry, True)

    def _on_writable(self, entry: dict) -> None:
        """The connect completed: send what this mode sends at once, then wait for reads only."""
        s = entry["sock"]
        if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            self.stats["connect_failed"] += 1
            self._close(entry, True)
            return
        self.sel.modify(s, selectors.EVENT_READ, entry)
        mode = entry["mode"]
        if mode == "churn":
            self._close(entry, False)
        elif mode == "garbage":
            self._send(entry, self.rng.randbytes(self.rng.randrange(1, 512)))
        elif mode == "bad-auth":
            self._send(entry, _bad_auth(self.rng))
        elif mode == "slowloris":
            self._send(entry, struct.pack("<I", 200))  # a plausible length, then the body a byte at a time

    def _on_readable(self, entry: dict) -> None:
        try:
            data = entry["sock"].recv(65536)
        except BlockingIOError:
            return
        except OSError:
            self._close(entry, True)
            return
        if not data:
            self._close(entry, True)

    def _trickle(self, now: float) -> None:
        for entry in list(self.open.values()):
            if entry["mode"] == "slowloris" and now >= entry["next"]:
                entry["next"] = now + 0.5
                self._send(entry, b"\x0f")

    def run(self, duration: float) -> dict:
        t0 = time.monotonic()
        opened_goal = 0.0
        last_trickle = t0
        while (now := time.monotonic()) - t0 < duration:
            opened_goal = (now - t0) * self.rate
            while self.stats["opened"] + self.stats["connect_failed"] < opened_goal:
                if len(self.open) >= self.max_open:
                    oldest = min(self.open.values(), key=lambda e: e["since"])
                    self._close(oldest, False)
                self._open_one()
            self.stats["max_open"] = max(self.stats["max_open"], len(self.open))
            for key, events in self.sel.select(timeout=0.01):
                entry = key.data
                if entry["sock"].fileno() not in self.open:
                    continue
                if events & selectors.EVENT_WRITE:
                    self._on_writable(entry)
                elif events & selectors.EVENT_READ:
                    self._on_readable(entry)
            if now - last_trickle >= 0.1:
                last_trickle = now
                self._trickle(now)
        for entry in list(self.open.values()):
            self._close(entry, False)
        self.stats["seconds"] = round(time.monotonic() - t0, 2)
        return self.stats


def _sources(spec: str) -> list[str]:
    """'127.0.0.2-127.0.0.9' or a comma-separated list."""
    if "-" in spec:
        lo, hi = spec.split("-")
        base, a = lo.rsplit(".", 1)
        b = hi.rsplit(".", 1)[1]
        return [f"{base}.{i}" for i in range(int(a), int(b) + 1)]
    return spec.split(",")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", action="append", required=True, help="host:port (repeat for several)")
    p.add_argument("--duration", type=float, default=20.0)
    p.add_argument("--rate", type=float, default=400.0, help="new connections a second (default 400)")
    p.add_argument("--max-open", type=int, default=3000, help="sockets held at once (default 3000)")
    p.add_argument("--sources", default="127.0.0.2-127.0.0.9", help="source addresses (default 127.0.0.2-127.0.0.9)")
    p.add_argument("--source-ports", default="20000-31999",
                   help="source port range, below the ephemeral range (default 20000-31999)")
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args()
    lo, hi = (int(x) for x in a.source_ports.split("-"))
    targets = [(t.rsplit(":", 1)[0], int(t.rsplit(":", 1)[1])) for t in a.target]
    stats = Flood(targets, _sources(a.sources), a.rate, a.max_open, a.seed, (lo, hi)).run(a.duration)
    print(json.dumps(stats), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
