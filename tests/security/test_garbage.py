"""Garbage on the wire. Random bytes, truncated frames, a huge length prefix and
valid-looking frames with bad fields, sent to the master's port and to a peer's mesh listener:
each connection is closed (recv returns b'' or the connection is reset) within a few seconds, a log
line names the reason, and afterwards the master and the peers keep serving (an all_reduce succeeds and
a new peer can join).

Frames are built from csrc/protocol/messages.cpp (control: u32 little-endian body length, u8 type,
fields) and csrc/protocol/frame.hpp (mesh handshake: 40 bytes, magic 0x48434350, then 64 bytes of nonce
and proof, csrc/auth/mesh_auth.hpp).
"""

from __future__ import annotations

import random
import socket
import struct
import time

from control_frames import PROTOCOL_VERSION, auth_hello, auth_socket, frame, hello, hello_body, read_frames, recv_frames
from fault_helpers import listen_port_from_master_log, read_text
from support import admit, join, wait_until

COMM = dict(heartbeat_timeout=3.0, timeout=10.0)
HANDSHAKE_MAGIC = 0x48434350
HANDSHAKE_TIMEOUT = 5.0  # master and listener both give a connection 5 s to complete its handshake
CLOSE_WITHIN = HANDSHAKE_TIMEOUT + 3.0
# A well-formed handshake waits ("parks") for its epoch's mesh at most this long (mesh_listener.cpp).
PARKED_TIMEOUT = 10.0


# -- mesh handshake -------------------------------------------------------------------------------
def handshake(magic=HANDSHAKE_MAGIC, version=2, conn_index=0, group=0, epoch=1, from_peer=1, to_peer=1,
              tail: bytes = b"\x00" * 64) -> bytes:
    """The 40-byte handshake, then (version 2) the dialer's nonce and proof (zeros: a wrong proof)."""
    hs = struct.pack("<IHHIIQQQ", magic, version, conn_index, group, 0, epoch, from_peer, to_peer)
    assert len(hs) == 40
    return hs + tail


# -- helpers --------------------------------------------------------------------------------------
def after_auth(join: bytes):
    """A case that authenticates properly (no secret) and then sends `join` under the proof."""
    return lambda port: auth_socket(port, join, wait_ok=False)


def open_and_send(port: int, payload: bytes) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    if payload:
        s.sendall(payload)
    return s


def wait_closed(s: socket.socket, deadline: float) -> tuple[bool, bytes]:
    """Reads until EOF or reset; returns (closed, bytes received)."""
    got = b""
    while True:
        left = deadline - time.time()
        if left <= 0:
            return False, got
        s.settimeout(left)
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            return False, got
        except (ConnectionResetError, BrokenPipeError):
            return True, got
        if not chunk:
            return True, got
        got += chunk


def check_cases(cases: dict, port: int, log_reader) -> dict:
    """Sends every case at once (so the handshake timeouts overlap), then checks closure and logs.
    A case's payload is bytes sent on a fresh connection, or a function of the port that opens one
    and sends its own (a join frame after a valid authentication exchange, say)."""
    socks = {name: payload(port) if callable(payload) else open_and_send(port, payload)
             for name, (payload, _) in cases.items()}
    t0 = time.time()
    received = {}
    try:
        for name, s in socks.items():
            closed, got = wait_closed(s, t0 + CLOSE_WITHIN)
            assert closed, f"{name}: the connection is still open {CLOSE_WITHIN} s after the garbage"
            received[name] = got
    finally:
        for s in socks.values():
            s.close()

    def logged():
        text = log_reader()
        return all(reason in text for _, reason in cases.values())

    try:
        wait_until(logged, timeout=3.0, what="log lines")
    except AssertionError:
        text = log_reader()
        missing = {n: r for n, (_, r) in cases.items() if r not in text}
        raise AssertionError(f"no log line gives the reason for {missing}; log tail:\n{text[-3000:]}") from None
    return received


def still_serving(cluster, members) -> None:
    res = cluster.all_reduce(members, dtype="float32", count=10_000, seed=7)
    assert all(r["ok"] and r["correct"] for r in res), res
    newcomer = cluster.spawn()
    everyone = admit(cluster, members, [newcomer], COMM, timeout=20)
    res = cluster.all_reduce(everyone, dtype="float32", count=10_000, seed=8)
    assert all(r["ok"] and r["correct"] and r["world_size"] == len(members) + 1 for r in res), res


# -- tests ----------------------------------------------------------------------------------------
def test_garbage_to_master_port(cluster):
    """Each kind of garbage sent to the master's port (bad lengths, types, magics, versions, fields, truncated
    frames) gets its connection closed and a log line naming the reason; the group still all-reduces and
    admits a newcomer afterwards."""
    members = join(cluster, 2, COMM)
    rng = random.Random(11)
    random_bytes = bytes(rng.randrange(256) for _ in range(64))
    (rand_len,) = struct.unpack_from("<I", random_bytes)
    assert rand_len > 1 << 20  # this seed's bytes start with an impossible length
    cases = {
        "random bytes": (random_bytes, f"control frame length {rand_len} outside"),
        "huge length prefix": (struct.pack("<I", 0xFFFFFFF0) + b"\x01" * 32, "control frame length 4294967280 outside"),
        "zero length": (struct.pack("<I", 0), "control frame length 0 outside"),
        "truncated hello": (hello()[:12], "no completed handshake within 5.0 s of connecting"),
        "bad message type": (frame(200, b"\x00" * 8), "invalid message type value 200"),
        "bad auth magic": (auth_hello(False, b"\x00" * 32, magic=0xDEADBEEF), "bad magic in auth-hello"),
        "bad auth version": (auth_hello(False, b"\x00" * 32, version=99), "protocol version 99 is not supported"),
        "bad has-secret flag": (frame(15, struct.pack("<IHB", 0x4C434350, PROTOCOL_VERSION, 7) + b"\x00" * 32),
                                "invalid has-secret flag value 7"),
        "short nonce": (frame(15, struct.pack("<IHB", 0x4C434350, PROTOCOL_VERSION, 0) + b"\x00" * 5), "message truncated"),
        "hello before authentication": (hello(), "message 'hello' before authentication"),
        "bad hello magic": (after_auth(hello(magic=0xDEADBEEF)), "bad magic in hello"),
        "bad hello version": (after_auth(hello(version=99)), "protocol version 99 is not supported"),
        "bad connection count": (after_auth(hello(conns=0)), "connections per peer out of range"),
        "hello with trailing bytes": (after_auth(frame(1, hello_body() + b"\x00\x00\x00")), "message has 3 trailing bytes"),
        "oversized string length": (after_auth(frame(1, hello_body(host_len=300))), "string of 300 bytes exceeds the limit"),
        "vote after the proof": (after_auth(frame(4, struct.pack("<QI", 1, 1000))),
                                 "message 'vote' after the proof (expected hello or rejoin)"),
        "vote before authentication": (frame(4, struct.pack("<QI", 1, 1000)), "message 'vote' before authentication"),
    }
    check_cases(cases, cluster.master.port, lambda: read_text(cluster.master.log_path))
    still_serving(cluster, members)


def test_bad_enum_from_an_admitted_connection(cluster):
    """A raw client that really joins (its own group, so it is admitted at once) and then sends a
    well-formed failure report with an invalid enum value gets an error frame and is disconnected."""
    members = join(cluster, 2, COMM)
    s = auth_socket(cluster.master.port, hello(group=77, hb_ms=10_000, port=9))
    try:
        types = [t for t, _ in recv_frames(s, 2)]
        assert types[:2] == [2, 10], f"expected welcome and epoch frames, got types {types}"
        s.sendall(frame(7, struct.pack("<QBQ", 1, 9, 0)))  # failure: epoch 1, kind 9 (valid: 0..2)
        closed, rest = wait_closed(s, time.time() + CLOSE_WITHIN)
        assert closed, "the master kept the connection open after an invalid failure kind"
        errors = [b for t, b in read_frames(rest) if t == 13]
        assert errors and b"invalid failure kind value 9" in errors[0], read_frames(rest)
    finally:
        s.close()
    wait_until(lambda: "invalid failure kind value 9" in read_text(cluster.master.log_path), 3.0, what="log line")
    still_serving(cluster, members)


def test_garbage_to_peer_mesh_listener(cluster):
    """Each kind of garbage sent to a member's mesh listener (bad magic, version, group, addressee, index, epoch
    or token, truncated or empty) gets its connection closed and a log line naming the reason; the group keeps
    working afterwards."""
    members = join(cluster, 2, COMM)
    target = members[1]
    st = target.call("state")
    port = listen_port_from_master_log(read_text(cluster.master.log_path), st["peer_id"])
    assert port, "the master log has no 'peer N (host:port)' line for the target peer"
    me, epoch, other = st["peer_id"], st["epoch"], members[0].peer_id
    rng = random.Random(12)
    good = dict(group=0, epoch=epoch, from_peer=other, to_peer=me)
    cases = {
        "random bytes": (bytes(rng.randrange(256) for _ in range(100)), "bad handshake magic"),
        "truncated handshake": (handshake(**good)[:10], "no handshake within the deadline"),
        "bad version": (handshake(version=7, **good), "unsupported protocol version"),
        "wrong group": (handshake(**dict(good, group=5)), "wrong peer group"),
        "addressed to another peer": (handshake(**dict(good, to_peer=me + 1000)), "handshake addressed to another peer"),
        "connection index out of range": (handshake(conn_index=999, **good), "connection index out of range"),
        "stale epoch": (handshake(**dict(good, epoch=0)), "stale epoch"),
        "wrong mesh key": (handshake(**good), "mesh handshake without the key of its slot"),
    }
    log = cluster._log(f"peer{target.index}.log")
    # A connection that closes before sending anything is logged too.
    s = open_and_send(port, b"")
    s.close()
    check_cases(cases, port, lambda: read_text(log))
    wait_until(lambda: "closed during handshake" in read_text(log), 3.0, what="log line for an empty connection")
    still_serving(cluster, members)


def test_peer_listener_drops_far_future_handshake(cluster):
    """A well-formed handshake for an epoch far in the future (no such epoch will come soon) followed by
    garbage must not hold a connection on the peer forever."""
    members = join(cluster, 2, COMM)
    target = members[1]
    st = target.call("state")
    port = listen_port_from_master_log(read_text(cluster.master.log_path), st["peer_id"])
    assert port
    payload = handshake(group=0, epoch=st["epoch"] + 1_000_000, from_peer=members[0].peer_id,
                        to_peer=st["peer_id"]) + b"\xff" * 200
    s = open_and_send(port, payload)
    try:
        closed, _ = wait_closed(s, time.time() + PARKED_TIMEOUT + 3.0)
        assert closed, (f"the peer still holds a connection {PARKED_TIMEOUT + 3.0} s after a handshake for epoch "
                        f"{st['epoch'] + 1_000_000} (current {st['epoch']}) followed by garbage")
    finally:
        s.close()
    still_serving(cluster, members)


def rejoin_frame(group: int, peer_id: int, members: list[int], hb_ms: int = 10_000) -> bytes:
    """A well-formed REJOIN (messages.cpp, encode_rejoin): `peer_id` was a member of `members` in epoch 3."""
    def member(pid: int, port: int) -> bytes:
        h = b"127.0.0.1"
        return struct.pack("<QH", pid, len(h)) + h + struct.pack("<HH", port, 1)
    body = hello_body(group=group, hb_ms=hb_ms, port=40000 + members.index(peer_id))
    body += struct.pack("<QQBI", peer_id, 3, 1, len(members))
    body += b"".join(member(m, 40000 + i) for i, m in enumerate(members)) + struct.pack("<I", 0)
    return frame(14, body)


def test_rejoin_with_an_id_from_the_connection_range(cluster):
    """Found by the fuzz target fuzz_master (docs/fuzzing.md): a REJOIN claiming an id from the range the
    master numbers fresh connections by (from 2^62) was taken back, and the connection that later drew the
    same number replaced the member's entry, until the group's next recovery dereferenced the missing
    member and the master crashed. Such a claim is now refused (no earlier master can have handed that id
    out), fresh connections skip every id in use anyway, and the master serves on."""
    port = cluster.master.port
    claimed = (1 << 62) + 40  # the 41st connection's number
    try:  # the decoder refuses the id: the master closes the connection, at the latest after the exchange
        a = auth_socket(port, rejoin_frame(91, claimed, [claimed, 7]))
    except ConnectionError:
        pass
    else:
        try:
            closed, rest = wait_closed(a, time.time() + 5.0)
            assert closed, "the master kept a claim of an id from the connection range"
            assert all(t in (12, 13) for t, _ in read_frames(rest)), read_frames(rest)  # EVICTED or ERROR
        finally:
            a.close()
    wait_until(lambda: "invalid member entry" in read_text(cluster.master.log_path), 5.0,
               what="the refusal in the master's log")
    for _ in range(60):  # connections numbered past the claimed id, each closed at once
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    time.sleep(0.5)
    assert cluster.master.proc.poll() is None, f"the master died; log tail:\n{read_text(cluster.master.log_path)[-2000:]}"
    still_serving(cluster, join(cluster, 2, COMM))


def test_rejoin_claim_of_a_dead_claimant_is_not_honoured_for_another_peer(cluster):
    """Found by the fuzz target fuzz_master (docs/fuzzing.md): a claimant that rejoined a rebuilding
    group and then died left its claim behind; a peer of another group that later took the same id
    (free again once the claimant was gone) was counted back for the first group when its window
    closed. Its loss then removed it from its own group only, and the first group's next recovery
    dereferenced the missing member: the master crashed (null Peer in finish_recovery). A claim now
    goes with its claimant."""
    port = cluster.master.port
    log = lambda: read_text(cluster.master.log_path)  # noqa: E731
    a = auth_socket(port, rejoin_frame(92, 1001, [1001, 1002], hb_ms=3000))
    assert [t for t, _ in recv_frames(a, 1)][:1] == [2]
    a.close()  # the claimant of 1001 in group 92 dies during the rebuild window
    wait_until(lambda: "peer 1001 lost from group 92" in log(), 5.0, what="the claimant's loss")
    b = auth_socket(port, rejoin_frame(93, 1001, [1001]))  # id 1001 is free again: group 93 takes it
    c = auth_socket(port, rejoin_frame(92, 1002, [1001, 1002], hb_ms=3000))
    try:
        for s in (b, c):
            assert [t for t, _ in recv_frames(s, 1)][:1] == [2]
        # The claims' windows wait for the members they list up to their heartbeat timeout: heartbeats
        # keep the raw claimants from being evicted for silence meanwhile.
        def heartbeat_then_log() -> str:
            for sock in (b, c):
                sock.sendall(frame(3))
            return log()

        wait_until(heartbeat_then_log, 15.0, "both rebuilds in the master's log",
                   until=lambda text: "group 93 rebuilt" in text and "group 92 rebuilt" in text, interval=0.25)
        assert "group 92 rebuilt at epoch 3 with members [1002]" in log(), (
            "group 92 counted peer 1001 of group 93 as its own member:\n" + log()[-2000:])
    finally:
        b.close()
        time.sleep(0.3)
        c.close()  # group 92's recovery (before the fix, over the missing 1001)
    wait_until(lambda: "peer 1002 lost from group 92" in log(), 5.0, what="the last member's loss")
    time.sleep(2.5)  # a recovery waits at least 1 s for members that do not answer
    assert cluster.master.proc.poll() is None, f"the master died; log tail:\n{log()[-2000:]}"
    still_serving(cluster, join(cluster, 2, COMM))
