"""Control-plane frames built by hand, for tests that speak the master's protocol directly.

Layout from csrc/protocol/messages.cpp: u32 little-endian body length, u8 message type, then the fields.
Every connection opens with the authentication exchange of csrc/auth/control_auth.hpp; auth_socket()
plays the peer's half of it (the proofs are recomputed here from that header's description, with
Python's hmac module), so a test can then send any join frame, well-formed or not.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import socket
import struct
import time

PROTOCOL_MAGIC = 0x4C434350
PROTOCOL_VERSION = 4
AUTH_HELLO, AUTH_CHALLENGE, AUTH_PROOF, AUTH_OK, AUTH_REFUSED = 15, 16, 17, 18, 19
PEER_LABEL = b"pccl/3 peer->master"
MASTER_LABEL = b"pccl/3 master->peer"


def frame(msg_type: int, body: bytes = b"") -> bytes:
    b = bytes([msg_type]) + body
    return struct.pack("<I", len(b)) + b


def hello_body(group=0, hb_ms=5000, host="127.0.0.1", port=1, conns=1, magic=PROTOCOL_MAGIC, version=PROTOCOL_VERSION,
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


# -- authentication ------------------------------------------------------------------------------
def mac(key: bytes, *parts: bytes) -> bytes:
    """HMAC-SHA256 over length-prefixed parts, as csrc/auth/crypto.cpp computes it."""
    return hmac.new(key, b"".join(struct.pack("<I", len(p)) + p for p in parts), hashlib.sha256).digest()


def auth_hello(has_secret: bool, nonce: bytes, magic=PROTOCOL_MAGIC, version=PROTOCOL_VERSION) -> bytes:
    return frame(AUTH_HELLO, struct.pack("<IHB", magic, version, int(has_secret)) + nonce)


def recv_one_frame(s: socket.socket, timeout: float = 5.0) -> tuple[int, bytes]:
    """Reads exactly one frame (and nothing after it): later frames stay on the socket."""
    s.settimeout(timeout)

    def exact(n: int) -> bytes:
        got = b""
        while len(got) < n:
            chunk = s.recv(n - len(got))
            if not chunk:
                raise ConnectionError(f"connection closed after {len(got)} of {n} bytes")
            got += chunk
        return got

    (n,) = struct.unpack("<I", exact(4))
    body = exact(n)
    return body[0], body[1:]


def auth_socket(port: int, join: bytes, secret: bytes = b"", *, wait_ok: bool = True, timeout: float = 5.0,
                record: list | None = None) -> socket.socket:
    """Connects to the master, authenticates with `secret` and sends the complete frame `join` (a
    HELLO or REJOIN, possibly malformed) under the proof. With wait_ok, reads and checks AUTH_OK (the
    master's proof) so the socket is positioned at the master's answer to the join. record, if given,
    receives every byte sent, for replay tests."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    nonce = os.urandom(32)
    first = auth_hello(bool(secret), nonce)
    s.sendall(first)
    t, body = recv_one_frame(s, timeout)
    assert t == AUTH_CHALLENGE, f"expected auth-challenge, got type {t}: {body!r}"
    master_nonce = body[1:33]
    proof = frame(AUTH_PROOF, mac(secret, PEER_LABEL, nonce, master_nonce, join[4:]))
    s.sendall(proof + join)
    if record is not None:
        record += [first, proof + join]
    if wait_ok:
        t, body = recv_one_frame(s, timeout)
        assert t == AUTH_OK, f"expected auth-ok, got type {t}: {body!r}"
        assert body == mac(secret, MASTER_LABEL, nonce, master_nonce, join[4:]), "the master's proof is wrong"
    return s


# -- a member spoken by hand (tests/security/test_mesh_identity.py) -------------------------------
WELCOME, PENDING, RECOVER, EPOCH = 2, 6, 8, 10
HANDSHAKE_MAGIC = 0x48434350
HANDSHAKE_VERSION = 2


def vote(epoch: int, timeout_ms: int = 20_000) -> bytes:
    return frame(4, struct.pack("<QI", epoch, timeout_ms))


def status(epoch: int) -> bytes:
    """A STATUS with no op in flight and no tag committed (a member that never ran an op)."""
    return frame(9, struct.pack("<QII", epoch, 0, 0))


def parse_epoch(body: bytes) -> dict:
    """The fields of an EPOCH body (csrc/protocol/messages.cpp, decode_epoch). "mesh" is what follows
    the pending count: the material of the epoch's mesh keys."""
    group, epoch, cause, n = struct.unpack_from("<IQBI", body, 0)
    i, members = 17, []
    for _ in range(n):
        (pid, hl) = struct.unpack_from("<QH", body, i)
        host = body[i + 10:i + 10 + hl].decode()
        port, conns = struct.unpack_from("<HH", body, i + 10 + hl)
        members.append((pid, host, port, conns))
        i += 14 + hl
    (d,) = struct.unpack_from("<I", body, i)
    i += 4 + 14 * d
    (pending,) = struct.unpack_from("<I", body, i)
    return dict(group=group, epoch=epoch, cause=cause, members=members, pending=pending, mesh=body[i + 4:])


def mesh_handshake(group: int, epoch: int, from_peer: int, to_peer: int, conn_index: int = 0,
                   version: int = HANDSHAKE_VERSION) -> bytes:
    """The fixed fields a mesh dialer sends first (csrc/protocol/frame.hpp, Handshake)."""
    return struct.pack("<IHHIIQQQ", HANDSHAKE_MAGIC, version, conn_index, group, 0, epoch, from_peer, to_peer)
