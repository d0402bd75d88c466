"""A member cannot take another member's mesh slot (docs/security.md, "Mesh identity").

Real processes and sockets: a master subprocess, two worker peers (A and B, real Communicators), and a
member played by hand in this process (the rogue): it authenticates (with the job secret, when there is
one), founds the group, votes A and B in, answers the master's RECOVER like any member, and reads its
own EPOCH message, so it holds exactly the mesh keys the master gives a member. It then builds its own
part of the mesh (it is rank 0, the dialer of both), which both accept: its keys are legitimate. Then it
dials B claiming A's slot, with every key it holds. B must refuse that connection, with a logged
reason, without answering; before per-pair mesh keys, one key per epoch was shared by all members and
B accepted the impostor (and could hand it A's data).
"""

from __future__ import annotations

import os
import socket
import struct
import time

import pytest

from control_frames import (EPOCH, PENDING, RECOVER, WELCOME, auth_socket, hello, mac, mesh_handshake,
                            parse_epoch, recv_control, status, vote)
from fault_helpers import read_text
from support import wait_until
from harness import Cluster, keyed_cluster

SECRET = "mesh identity tests secret"
COMM = dict(heartbeat_timeout=3.0, timeout=10.0)


@pytest.fixture(params=["secret", "no-secret"])
def id_cluster(request, tmp_path):
    with keyed_cluster(tmp_path, SECRET if request.param == "secret" else None, COMM) as c:
        yield c


def member_keys(ep: dict, secret: bytes, me: int) -> dict[int, bytes]:
    """Every mesh key the master's EPOCH gives member `me`, by the other member's id (what a member
    computes in csrc/peer/control_plane.cpp; the derivation is in csrc/auth/mesh_auth.hpp)."""
    n = len(ep["members"])
    (count,) = struct.unpack_from("<I", ep["mesh"], 0)
    assert count == n and len(ep["mesh"]) == 4 + 32 * n, "one pair token per member"
    keys = {}
    for k, (pid, *_) in enumerate(ep["members"]):
        token = ep["mesh"][4 + 32 * k:36 + 32 * k]
        if pid == me:
            assert token == bytes(32), "a member's token at its own place is zero"
            continue
        lo, hi = min(me, pid), max(me, pid)
        keys[pid] = mac(secret, b"pccl/4 mesh pair key", token, struct.pack("<IQQQ", ep["group"], ep["epoch"], lo, hi))
    return keys


def exact(s: socket.socket, n: int) -> bytes:
    got = b""
    while len(got) < n:
        chunk = s.recv(n - len(got))
        if not chunk:
            break
        got += chunk
    return got


class Dial:
    """One mesh connection dialed by hand: the listener's nonce, our handshake and proof."""

    def __init__(self, member: tuple, hs: bytes, key: bytes) -> None:
        _, host, port, _ = member
        self.s = socket.create_connection((host, port), timeout=5)
        self.s.settimeout(5)
        nl = exact(self.s, 32)
        assert len(nl) == 32, "the listener sent no nonce"
        nd = os.urandom(32)
        self.expect = mac(key, b"pccl/3 mesh accept", hs, nl, nd)
        self.s.sendall(hs + nd + mac(key, b"pccl/3 mesh dial", hs, nl, nd))

    def answer(self, timeout: float = 5.0) -> bytes:
        """The listener's proof (32 bytes), or b"" when it closed the connection without one."""
        self.s.settimeout(timeout)
        try:
            return exact(self.s, 32)
        except (ConnectionResetError, OSError):
            return b""


def _become_member_with(c: Cluster, listen_port: int):
    """The rogue founds the group, then admits two real peers; returns its socket, id, EPOCH and peers."""
    s = auth_socket(c.master.port, hello(hb_ms=30_000, port=listen_port), c.key)
    got = recv_control(s, 2)
    assert [t for t, _ in got] == [WELCOME, EPOCH], got
    rogue = struct.unpack_from("<Q", got[0][1])[0]
    peers = [c.spawn(), c.spawn()]
    for p in peers:
        p.send("connect", master=c.master.address, kwargs=c.comm)
    deadline = time.time() + 60
    while True:  # the master tells its members how many peers are pending
        assert time.time() < deadline, "the two peers never became pending"
        f = recv_control(s, 1, timeout=1)
        if f and f[0][0] == PENDING and struct.unpack("<I", f[0][1])[0] == 2:
            break
    s.sendall(vote(1))
    while True:
        assert time.time() < deadline, "no new epoch after the vote"
        for t, body in recv_control(s, 1, timeout=1):
            if t == RECOVER:
                s.sendall(status(struct.unpack("<Q", body)[0]))
            elif t == EPOCH:
                ep = parse_epoch(body)
                if len(ep["members"]) == 3:
                    return s, rogue, ep, peers


def test_a_member_cannot_dial_into_another_members_slot(id_cluster):
    c = id_cluster
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(8)  # its advertised mesh port (as rank 0 it dials everyone, nobody dials it)
    s, rogue, ep, peers = _become_member_with(c, lst.getsockname()[1])
    try:
        ids = [m[0] for m in ep["members"]]
        assert ids[0] == rogue, f"the founder is not rank 0: {ids}"
        claimed, victim = ep["members"][1], ep["members"][2]
        keys = member_keys(ep, c.key, rogue)
        group, epoch = ep["group"], ep["epoch"]

        # Its own slots: both members accept, so the keys it holds are a member's.
        own = [Dial(m, mesh_handshake(group, epoch, rogue, m[0]), keys[m[0]]) for m in (claimed, victim)]
        for d in own:
            assert d.answer() == d.expect, "a member refused the rogue's own, legitimate slot"

        # B's slot for A, with every key the rogue holds: refused, without an answer.
        for other, key in keys.items():
            forged = Dial(victim, mesh_handshake(group, epoch, claimed[0], victim[0]), key)
            t0 = time.time()
            got = forged.answer()
            forged.s.close()
            assert got == b"", (f"member {victim[0]} accepted a connection claiming member {claimed[0]}'s slot "
                                f"from member {rogue} (signed with its key for {other})")
            assert time.time() - t0 < 2.0, "the refusal took too long"
        # The honest peers' mesh was built meanwhile (the impostor never displaced A's connection).
        for p in peers:
            r = p.recv(30)
            assert r["ok"], r
            p.peer_id = r["peer_id"]
        victim_peer = next(p for p in peers if p.peer_id == victim[0])
        wait_until(lambda: f"without the key of its slot (it claims peer {claimed[0]} of epoch {epoch})" in
                   read_text(c._log(f"peer{victim_peer.index}.log")), 3.0, "the victim's log line")
        for d in own:
            d.s.close()
    finally:
        s.close()
        lst.close()
