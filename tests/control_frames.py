"""Control-plane frames built by hand, for tests that speak the master's protocol directly.

Layout from csrc/protocol/messages.cpp: u32 little-endian body length, u8 message type, then the fields.
"""

from __future__ import annotations

import socket
import struct
import time

PROTOCOL_MAGIC = 0x4C434350


def frame(msg_type: int, body: bytes = b"") -> bytes:
    b = bytes([msg_type]) + body
    return struct.pack("<I", len(b)) + b


def hello_body(group=0, hb_ms=5000, host="127.0.0.1", port=1, conns=1, magic=PROTOCOL_MAGIC, version=2,
               host_len=None) -> bytes:
    h = host.encode()
    return (struct.pack("<IHII", magic, version, group, hb_ms) + struct.pack("<H", len(h) if host_len is None else host_len)
            + h + struct.pack("<HH", port, conns))


def hello(**kw) -> bytes:
    return frame(1, hello_body(**kw))


def read_frames(data: bytes) -> list[tuple[int, bytes]]:
    out, i = [], 0
    while i + 4 <= len(data):
        (n,) = struct.unpack_from("<I", data, i)
        if i + 4 + n > len(data):
            break
        out.append((data[i + 4], data[i + 5:i + 4 + n]))
        i += 4 + n
    return out


def recv_frames(s: socket.socket, count: int, timeout: float = 5.0) -> list[tuple[int, bytes]]:
    """Reads from s until `count` whole frames arrived (or the timeout passed); returns them all."""
    got = b""
    deadline = time.time() + timeout
    while len(read_frames(got)) < count and time.time() < deadline:
        s.settimeout(max(0.05, deadline - time.time()))
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            break
        if not chunk:
            break
        got += chunk
    return read_frames(got)


def recv_control(s: socket.socket, count: int, timeout: float = 5.0) -> list[tuple[int, bytes]]:
    """Like recv_frames, but skips the master's heartbeats (type 3), which arrive every 0.25 s."""
    got: list[tuple[int, bytes]] = []
    deadline = time.time() + timeout
    while len(got) < count and time.time() < deadline:
        got += [f for f in recv_frames(s, 1, max(0.05, deadline - time.time())) if f[0] != 3]
    return got
