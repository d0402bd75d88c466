"""A user-space WAN emulator: a loopback TCP relay with latency, per-flow and per-link rate caps.

Why this exists: pccl_py is meant for training across the internet, where a single TCP connection
is limited by its window (throughput ~ window / RTT) long before the link is full, which is why a
Communicator stripes one op over ``connections_per_peer`` connections. None of that shows on
loopback, and this machine has no ``tc netem`` (nor the privileges for it). So the WAN is emulated
in user space instead: every member advertises a relay port (``advertise_address``) and listens on
another port; the relay forwards each accepted connection to the member and imposes, per
connection and direction,

* a one-way delay of RTT/2: bytes read at time t are written at t + RTT/2, in order;
* a per-flow rate cap (a token bucket): the window-limited rate of one TCP flow, window / RTT;
* a shared link cap: the flows of one link and direction share one token bucket, so K flows get
  min(K x flow cap, link cap) between them, roughly fairly.

The model is a flow shaper in tandem with a FIFO link. Per chunk of n bytes read from the source
at time t::

    f = max(t, flow_free) + n / flow_rate             # leaves the flow's bucket; flow_free := f
    at time f, in order of f over all flows of the link:
    d = max(f, link_free) + n / link_rate             # leaves the link;          link_free := d
    written to the destination at d + RTT / 2

Both clocks only move forward, so each direction stays in order; neither bucket lets more than its
rate through over any interval longer than one chunk; and the link serves flows in the order their
bytes become eligible, so flows that want more than their share split the link about evenly.
Buffering is bounded: a direction stops reading from its source once ``buffer_bytes`` are queued
(waiting or "on the wire"), which pushes back on the sender through TCP like a full window. The
default bound holds two bandwidth-delay products, so it never limits the configured rate itself.

Not modelled: loss, jitter, reordering, and the handshake's round trip (a client's connect()
completes at once against the relay; its first bytes still take RTT/2). If the target refuses, the
relay resets the accepted connection.

Implementation: one thread runs a single epoll loop over every socket (non-blocking, TCP_NODELAY
on both sides). Reads are large (a few ms of the flow's rate, 16-256 KiB), due chunks are written
with one ``sendmsg`` each, and timers are a heap, so the relay costs a few syscalls per chunk and
carries well over 1 Gbit/s per direction on one core. Delays are accurate to about a millisecond
(epoll's timeout resolution).

Use it as a library (:class:`WanRelay`), through ``python -m pccl_py.tools.bench --wan RTT,FLOW,LINK``,
or from the command line: ``python stress/wan_relay.py --listen 127.0.0.1:9000=127.0.0.1:9001
--rtt-ms 50 --flow-mbit 100 --link-mbit 1000``.
"""

from __future__ import annotations

import errno
import heapq
import itertools
import math
import selectors
import socket
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

Address = Tuple[str, int]

__all__ = ["WanProfile", "WanRelay", "parse_address", "parse_mapping", "parse_wan"]

_MIN_READ = 16 << 10
_MAX_READ = 256 << 10
_MAX_SENDMSG_BUFFERS = 64  # well under IOV_MAX (1024)
_EARLY = 0.0005  # write chunks due within this many seconds now, rather than waking up again
_CONNECT_TIMEOUT = 10.0
_BURST_S = 0.005  # token bucket depth, in seconds of its rate


@dataclass(frozen=True)
class WanProfile:
    """What the emulated WAN looks like. Rates are in Mbit/s (10**6 bits); 0 means unlimited.

    Args:
        rtt_ms: round-trip time added to every connection (each direction gets half).
        flow_mbit: rate cap of one connection in one direction (a window-limited TCP flow).
        link_mbit: rate cap shared by all connections of one link in one direction.
        buffer_bytes: bytes one direction of one connection may hold before the relay stops
            reading from its source (backpressure). None: two bandwidth-delay products of the
            flow's effective rate plus a few reads, at least 1 MiB (16 MiB if nothing is capped).
        link_scope: "mapping" (default): each listen->target mapping is its own link, i.e. the
            access link of the member behind it; "relay": one link shared by every mapping.
    """

    rtt_ms: float = 0.0
    flow_mbit: float = 0.0
    link_mbit: float = 0.0
    buffer_bytes: Optional[int] = None
    link_scope: str = "mapping"

    def __post_init__(self) -> None:
        for name in ("rtt_ms", "flow_mbit", "link_mbit"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, not {value!r}")
        if self.buffer_bytes is not None and (not isinstance(self.buffer_bytes, int) or self.buffer_bytes < 1):
            raise ValueError(f"buffer_bytes must be a positive int or None, not {self.buffer_bytes!r}")
        if self.link_scope not in ("mapping", "relay"):
            raise ValueError(f"link_scope must be 'mapping' or 'relay', not {self.link_scope!r}")

    @property
    def one_way_delay(self) -> float:
        """Seconds added to each direction."""
        return self.rtt_ms / 2000.0

    @property
    def flow_rate(self) -> float:
        """Bytes per second of one flow (inf: unlimited)."""
        return self.flow_mbit * 1e6 / 8 if self.flow_mbit > 0 else math.inf

    @property
    def link_rate(self) -> float:
        """Bytes per second of one link direction (inf: unlimited)."""
        return self.link_mbit * 1e6 / 8 if self.link_mbit > 0 else math.inf

    @property
    def read_size(self) -> int:
        """Bytes asked for per read: about 8 ms of one flow's rate, within [16 KiB, 256 KiB]."""
        rate = min(self.flow_rate, self.link_rate)
        if math.isinf(rate):
            return _MAX_READ
        return int(min(_MAX_READ, max(_MIN_READ, rate * 0.008)))

    @property
    def buffer_limit(self) -> int:
        """Bytes one direction of one connection may hold (see buffer_bytes)."""
        if self.buffer_bytes is not None:
            return self.buffer_bytes
        rate = min(self.flow_rate, self.link_rate)
        if math.isinf(rate):
            return 16 << 20
        return max(1 << 20, int(2 * rate * self.one_way_delay) + 4 * self.read_size)

    def ideal_mbit(self, flows: int) -> float:
        """What `flows` connections of one link direction can carry at most: min(flows x flow, link)."""
        return min(flows * (self.flow_mbit or math.inf), self.link_mbit or math.inf)

    def describe(self) -> str:
        def mbit(v: float) -> str:
            return f"{v:g} Mbit/s" if v > 0 else "unlimited"
        return f"RTT {self.rtt_ms:g} ms, per-flow {mbit(self.flow_mbit)}, link {mbit(self.link_mbit)}"


def parse_address(text: str, default_host: str = "127.0.0.1") -> Address:
    """'host:port' or 'port' -> (host, port)."""
    host, sep, port = text.strip().rpartition(":")
    if not sep:
        host, port = default_host, text.strip()
    host = host.strip("[]") or default_host
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"bad address {text!r}; use host:port")
    return host, int(port)


def parse_mapping(text: str) -> Tuple[Address, Address]:
    """'LISTEN=TARGET', e.g. '127.0.0.1:9000=127.0.0.1:9001' -> ((host, port), (host, port))."""
    listen, sep, target = text.partition("=")
    if not sep:
        raise ValueError(f"bad mapping {text!r}; use LISTEN_HOST:PORT=TARGET_HOST:PORT")
    return parse_address(listen), parse_address(target)


def parse_wan(text: str) -> WanProfile:
    """'RTT_MS,FLOW_MBIT,LINK_MBIT' (e.g. '50,100,1000'; 0 = unlimited) -> WanProfile."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 3:
        raise ValueError(f"bad WAN profile {text!r}; use RTT_MS,FLOW_MBIT,LINK_MBIT, e.g. 50,100,1000")
    try:
        rtt, flow, link = (float(p) for p in parts)
    except ValueError:
        raise ValueError(f"bad WAN profile {text!r}; use numbers, e.g. 50,100,1000") from None
    return WanProfile(rtt, flow, link)


class _Bucket:
    """A token bucket kept as a virtual clock: the time its last reserved byte leaves.

    The bucket holds _BURST_S seconds of tokens, so a relay thread that wakes up a little late
    catches up instead of losing that time; over any interval T it passes at most
    rate x (T + _BURST_S) bytes.
    """

    __slots__ = ("rate", "free_at")

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.free_at = 0.0

    def reserve(self, now: float, nbytes: int) -> float:
        """Reserves nbytes that are ready at `now`; returns when they have passed (never before now)."""
        if self.rate == math.inf:
            return now
        start = now - _BURST_S
        if self.free_at > start:
            start = self.free_at
        self.free_at = start + nbytes / self.rate
        return self.free_at if self.free_at > now else now


class _Stats:
    __slots__ = ("connections", "active", "bytes_fwd", "bytes_bwd", "refused")

    def __init__(self) -> None:
        self.connections = 0
        self.active = 0
        self.bytes_fwd = 0  # client -> target, written
        self.bytes_bwd = 0  # target -> client, written
        self.refused = 0  # upstream connects that failed


class _Mapping:
    def __init__(self, listener: socket.socket, target: Address, links: Tuple[_Bucket, _Bucket]) -> None:
        self.listener = listener
        self.target = target
        self.links = links  # (forward, backward)
        self.address: Address = listener.getsockname()[:2]


class _Pipe:
    """One direction of one relayed connection: src -> queue (rate, delay) -> dst."""

    __slots__ = ("conn", "src", "dst", "forward", "flow", "link", "queue", "queued", "head_off", "eof_read",
                 "eof_sent", "blocked", "timer_at", "waiting_link", "last_release")

    def __init__(self, conn: "_Conn", src: socket.socket, dst: socket.socket, forward: bool, flow_rate: float,
                 link: _Bucket) -> None:
        self.conn = conn
        self.src = src
        self.dst = dst
        self.forward = forward
        self.flow = _Bucket(flow_rate)
        self.link = link
        # [release_time or None while waiting for the link, bytes (None: EOF), time it left the flow bucket]
        self.queue: Deque[List[Any]] = deque()
        self.waiting_link = 0  # chunks at the tail of queue that have no release time yet
        self.last_release = 0.0
        self.queued = 0
        self.head_off = 0
        self.eof_read = False
        self.eof_sent = False
        self.blocked = False  # dst's send buffer is full: wait for EPOLLOUT
        self.timer_at: Optional[float] = None

    def wants_read(self, limit: int) -> bool:
        return not self.eof_read and self.queued < limit

    @property
    def done(self) -> bool:
        return self.eof_sent and not self.queue


class _Conn:
    """A relayed connection: the accepted client socket and its upstream socket to the target."""

    def __init__(self, relay: "WanRelay", client: socket.socket, upstream: socket.socket, mapping: _Mapping) -> None:
        self.relay = relay
        self.client = client
        self.upstream = upstream
        self.mapping = mapping
        self.connecting = True
        self.closed = False
        p = relay.profile
        self.fwd = _Pipe(self, client, upstream, True, p.flow_rate, mapping.links[0])
        self.bwd = _Pipe(self, upstream, client, False, p.flow_rate, mapping.links[1])
        self.masks: Dict[int, int] = {}


class WanRelay:
    """Relays TCP connections between listen addresses and targets through an emulated WAN.

    Call :meth:`add_mapping` (before or after :meth:`start`) for each listen->target pair; every
    connection accepted on the listen address gets its own upstream connection to the target.
    ``with WanRelay(profile) as relay:`` starts and stops it.
    """

    def __init__(self, profile: Optional[WanProfile] = None) -> None:
        self.profile = profile or WanProfile()
        self._limit = self.profile.buffer_limit
        self._read_size = self.profile.read_size
        self._delay = self.profile.one_way_delay
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._lock = threading.Lock()
        self._pending: List[_Mapping] = []
        self._mappings: List[_Mapping] = []
        self._conns: Dict[int, _Conn] = {}  # id(conn) -> conn
        self._timers: List[Tuple[float, int, Callable[[float], None]]] = []
        self._seq = itertools.count()
        self._shared_links = (_Bucket(self.profile.link_rate), _Bucket(self.profile.link_rate))
        self._stats = _Stats()
        self._stop = False
        self._thread: Optional[threading.Thread] = None
        self._cpu_s = 0.0
        self._started_at = 0.0
        self._stopped_at = 0.0
        self._error: Optional[BaseException] = None

    # -- public API ----------------------------------------------------------------------------
    def add_mapping(self, listen: Address, target: Address) -> Address:
        """Listens on `listen` (port 0: any free port) and forwards to `target`; returns the bound address."""
        lsock = socket.socket(socket.AF_INET6 if ":" in listen[0] else socket.AF_INET, socket.SOCK_STREAM)
        try:
            lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            lsock.bind(listen)
            lsock.listen(512)
            lsock.setblocking(False)
        except OSError:
            lsock.close()
            raise
        if self.profile.link_scope == "relay":
            links = self._shared_links
        else:
            links = (_Bucket(self.profile.link_rate), _Bucket(self.profile.link_rate))
        mapping = _Mapping(lsock, (target[0], int(target[1])), links)
        with self._lock:
            self._pending.append(mapping)
        self._wake()
        return mapping.address

    @property
    def addresses(self) -> List[Address]:
        """Bound listen addresses, in the order the mappings were added."""
        with self._lock:
            return [m.address for m in self._mappings + self._pending]

    def start(self) -> "WanRelay":
        """Starts the relay thread; returns at once."""
        if self._thread is None:
            self._started_at = time.monotonic()
            self._thread = threading.Thread(target=self._run, name="wan-relay", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stops the thread, resets every relayed connection and closes the listeners."""
        if self._stop and (self._thread is None or not self._thread.is_alive()) and self._wake_w.fileno() < 0:
            return  # already stopped
        self._stop = True
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise RuntimeError(f"WAN relay thread did not stop within {timeout:.0f} s")
        else:
            self._close_all()
        self._wake_r.close()
        self._wake_w.close()
        self._sel.close()

    def __enter__(self) -> "WanRelay":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def stats(self) -> Dict[str, Any]:
        """Counters so far: connections, bytes written each way, and the relay thread's CPU use."""
        end = self._stopped_at or time.monotonic()
        wall = end - self._started_at if self._started_at else 0.0
        s = self._stats
        return {"connections": s.connections, "active": s.active, "refused": s.refused,
                "bytes_forward": s.bytes_fwd, "bytes_backward": s.bytes_bwd,
                "cpu_s": self._cpu_s, "wall_s": wall, "cpu_util": self._cpu_s / wall if wall > 0 else 0.0,
                "error": repr(self._error) if self._error else None}

    # -- the loop ------------------------------------------------------------------------------
    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except (BlockingIOError, OSError):
            pass  # already woken, or stopped

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # noqa: BLE001 - recorded; stats() shows it
            self._error = exc
        finally:
            self._cpu_s = time.thread_time()
            self._stopped_at = time.monotonic()
            self._close_all()

    def _loop(self) -> None:
        sel = self._sel
        timers = self._timers
        while not self._stop:
            timeout: Optional[float] = None
            if timers:
                timeout = max(0.0, timers[0][0] - time.monotonic())
            for key, mask in sel.select(timeout):
                data = key.data
                if data is None:
                    self._drain_wake()
                elif isinstance(data, _Mapping):
                    self._accept(data)
                else:
                    self._on_event(key.fileobj, data, mask)  # type: ignore[arg-type]
            if timers:
                now = time.monotonic() + _EARLY
                while timers and timers[0][0] <= now:
                    _, _, callback = heapq.heappop(timers)
                    callback(time.monotonic())
            self._cpu_s = time.thread_time()

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass
        with self._lock:
            pending, self._pending = self._pending, []
            self._mappings.extend(pending)
        for m in pending:
            self._sel.register(m.listener, selectors.EVENT_READ, m)

    def _add_timer(self, at: float, callback: Callable[[float], None]) -> None:
        heapq.heappush(self._timers, (at, next(self._seq), callback))

    def _accept(self, mapping: _Mapping) -> None:
        for _ in range(64):
            try:
                client, _addr = mapping.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # e.g. EMFILE; try again on the next event
            client.setblocking(False)
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            family = socket.AF_INET6 if ":" in mapping.target[0] else socket.AF_INET
            upstream = socket.socket(family, socket.SOCK_STREAM)
            upstream.setblocking(False)
            upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Conn(self, client, upstream, mapping)
            self._conns[id(conn)] = conn
            self._stats.connections += 1
            self._stats.active += 1
            rc = upstream.connect_ex(mapping.target)
            if rc not in (0, errno.EINPROGRESS):
                self._stats.refused += 1
                self._abort(conn)
                continue
            self._update(conn)  # waits for EPOLLOUT on upstream: the connect's outcome

            def expire(now: float, c: _Conn = conn) -> None:
                self._connect_timeout(c)
            self._add_timer(time.monotonic() + _CONNECT_TIMEOUT, expire)

    def _connect_timeout(self, conn: _Conn) -> None:
        if conn.connecting and not conn.closed:
            self._stats.refused += 1
            self._abort(conn)

    def _update(self, conn: _Conn) -> None:
        """Re-registers both sockets for the events the connection currently needs."""
        if conn.closed:
            return
        for sock, out_pipe, in_pipe in ((conn.client, conn.fwd, conn.bwd), (conn.upstream, conn.bwd, conn.fwd)):
            mask = 0
            if conn.connecting:
                if sock is conn.upstream:
                    mask = selectors.EVENT_WRITE
            else:
                if out_pipe.wants_read(self._limit):
                    mask |= selectors.EVENT_READ
                if in_pipe.blocked:
                    mask |= selectors.EVENT_WRITE
            fd = sock.fileno()
            old = conn.masks.get(fd, 0)
            if mask == old:
                continue
            if old == 0:
                self._sel.register(sock, mask, conn)
            elif mask == 0:
                self._sel.unregister(sock)
            else:
                self._sel.modify(sock, mask, conn)
            conn.masks[fd] = mask

    def _on_event(self, sock: socket.socket, conn: _Conn, mask: int) -> None:
        if conn.closed:
            return
        now = time.monotonic()
        if conn.connecting:
            err = conn.upstream.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self._stats.refused += 1
                self._abort(conn)
                return
            conn.connecting = False
            self._update(conn)
            return
        if sock is conn.client:
            out_pipe, in_pipe = conn.fwd, conn.bwd
        else:
            out_pipe, in_pipe = conn.bwd, conn.fwd
        if mask & selectors.EVENT_WRITE and in_pipe.blocked:
            in_pipe.blocked = False
            self._flush(in_pipe, now)
        if conn.closed:
            return
        if mask & selectors.EVENT_READ:
            self._read(out_pipe, now)
        if not conn.closed:
            self._update(conn)

    def _read(self, pipe: _Pipe, now: float) -> None:
        size = self._read_size
        limit = self._limit
        was_empty = not pipe.queue
        for _ in range(4):  # a few reads per wakeup, then the other sockets' turn
            if pipe.eof_read or pipe.queued >= limit:
                break
            try:
                data = pipe.src.recv(size)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._abort(pipe.conn)
                return
            n = len(data)
            item: list[Any] = [None, data or None, pipe.flow.reserve(now, n)]
            pipe.queue.append(item)
            pipe.queued += n
            if pipe.link.rate == math.inf or (not pipe.waiting_link and item[2] <= now + _EARLY):
                self._enter_link(pipe, item)  # its turn at the link is now
            else:
                pipe.waiting_link += 1

                def turn(now: float, p: _Pipe = pipe, it: list[Any] = item) -> None:
                    self._link_turn(p, it)
                self._add_timer(item[2], turn)
            if not data:
                pipe.eof_read = True
                break
            if n < size:
                break  # drained the socket
        if was_empty and pipe.queue:
            self._schedule(pipe)

    def _enter_link(self, pipe: _Pipe, item: List[Any]) -> None:
        """The chunk has left its flow's bucket (at item[2]): reserve the link, fix its release time."""
        n = len(item[1]) if item[1] is not None else 0
        release = pipe.link.reserve(item[2], n) + self._delay
        if release < pipe.last_release:
            release = pipe.last_release
        pipe.last_release = item[0] = release

    def _link_turn(self, pipe: _Pipe, item: List[Any]) -> None:
        if pipe.conn.closed:
            return
        pipe.waiting_link -= 1
        self._enter_link(pipe, item)
        if pipe.queue and pipe.queue[0] is item:
            self._schedule(pipe)

    def _schedule(self, pipe: _Pipe) -> None:
        if pipe.timer_at is None and pipe.queue and not pipe.blocked and pipe.queue[0][0] is not None:
            at = pipe.queue[0][0]
            pipe.timer_at = at

            def fire(now: float, p: _Pipe = pipe) -> None:
                self._on_timer(p, now)
            self._add_timer(at, fire)

    def _on_timer(self, pipe: _Pipe, now: float) -> None:
        pipe.timer_at = None
        if pipe.conn.closed:
            return
        self._flush(pipe, now)
        self._update(pipe.conn)

    def _flush(self, pipe: _Pipe, now: float) -> None:
        """Writes every chunk that is due, in one sendmsg where possible."""
        queue = pipe.queue
        due_by = now + _EARLY
        while queue and queue[0][0] is not None and queue[0][0] <= due_by:
            bufs: List[Any] = []
            total = 0
            for item in queue:
                if item[0] is None or item[0] > due_by or item[1] is None or len(bufs) >= _MAX_SENDMSG_BUFFERS:
                    break
                data = item[1]
                if not bufs and pipe.head_off:
                    data = memoryview(data)[pipe.head_off:]
                bufs.append(data)
                total += len(data)
            if not bufs:  # the head is the EOF marker
                queue.popleft()
                pipe.eof_sent = True
                try:
                    pipe.dst.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                self._maybe_finish(pipe.conn)
                return
            try:
                sent = pipe.dst.sendmsg(bufs) if len(bufs) > 1 else pipe.dst.send(bufs[0])
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self._abort(pipe.conn)
                return
            if pipe.forward:
                self._stats.bytes_fwd += sent
            else:
                self._stats.bytes_bwd += sent
            left = sent
            while left:
                head_len = len(queue[0][1]) - pipe.head_off
                if left >= head_len:
                    left -= head_len
                    pipe.queued -= len(queue[0][1])
                    pipe.head_off = 0
                    queue.popleft()
                else:
                    pipe.head_off += left
                    left = 0
            if sent < total:
                pipe.blocked = True  # the receiver is slow: wait until dst is writable
                return
        self._schedule(pipe)

    def _maybe_finish(self, conn: _Conn) -> None:
        if conn.fwd.done and conn.bwd.done:
            self._close(conn, abortive=False)

    def _abort(self, conn: _Conn) -> None:
        self._close(conn, abortive=True)

    def _close(self, conn: _Conn, abortive: bool) -> None:
        if conn.closed:
            return
        conn.closed = True
        self._stats.active -= 1
        self._conns.pop(id(conn), None)
        for sock in (conn.client, conn.upstream):
            fd = sock.fileno()
            if fd >= 0:
                if conn.masks.get(fd):
                    try:
                        self._sel.unregister(sock)
                    except (KeyError, ValueError):
                        pass
                if abortive:  # reset, so the other end notices at once, as it would without the relay
                    try:
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    except OSError:
                        pass
            sock.close()
        conn.masks.clear()
        for pipe in (conn.fwd, conn.bwd):
            pipe.queue.clear()
            pipe.queued = 0

    def _close_all(self) -> None:
        for conn in list(self._conns.values()):
            self._abort(conn)
        with self._lock:
            mappings = self._mappings + self._pending
            self._pending = []
        for m in mappings:
            try:
                self._sel.unregister(m.listener)
            except (KeyError, ValueError):
                pass
            m.listener.close()
