"""Resource limits against connections that never join, oversized groups and idle-socket floods
(docs/security.md, "Resource limits").

Each test first mounts the attack the limit answers (a slowloris trickle, idle sockets from one address, an
oversized first frame, a crowd of pending peers...) and then checks the limit held and that a legitimate
peer is still served. Sockets come from 127.0.0.2 and up where a test needs a source address other than the
legitimate peers' 127.0.0.1 (Linux routes all of 127/8 to loopback).
"""

from __future__ import annotations

import socket
import struct
import time

import numpy as np
import pytest

import pccl_py
from control_frames import AUTH_CHALLENGE, auth_hello, frame, recv_one_frame
from support import (Background, admit_pending, assert_within, connect_group, free_port, new_comm,
                     run_concurrently, wait_until)


def _dial(port: int, source: str = "127.0.0.2") -> socket.socket:
    s = socket.socket()
    s.bind((source, 0))
    s.connect(("127.0.0.1", port))
    return s


def _closed(s: socket.socket, wait: float = 0.05) -> bool:
    """Whether the other end closed s (reads and discards whatever it sent before)."""
    s.settimeout(wait)
    try:
        while True:
            if not s.recv(65536):
                return True
    except socket.timeout:
        return False
    except OSError:
        return True


def _close_all(socks: list[socket.socket]) -> None:
    for s in socks:
        s.close()


def test_slowloris_is_closed_at_the_absolute_handshake_deadline():
    """A connection that trickles one byte every 0.2 s used to keep its handshake slot forever (the timer
    restarted on every byte); it is closed handshake_timeout after it connected, bytes or not."""
    with pccl_py.Master(handshake_timeout=1.0) as m:
        s = _dial(m.port)
        t0 = time.time()
        closed_at = None
        # A 200-byte AUTH_HELLO frame, never completed: its length prefix, then one byte at a time.
        trickle = struct.pack("<I", 200) + b"\x0f" * 200
        for b in trickle:
            try:
                s.send(bytes([b]))
            except OSError:
                closed_at = time.time()
                break
            if _closed(s, 0.2):
                closed_at = time.time()
                break
            if time.time() - t0 > 6:
                break
        s.close()
        assert closed_at is not None, "the trickling connection was still open after 6 s"
        assert 0.9 <= closed_at - t0 <= 3.0, f"closed after {closed_at - t0:.2f} s; handshake_timeout is 1 s"


def test_unauthenticated_connections_are_capped_per_source_and_in_total():
    """Idle connections from one address keep at most max_unauthenticated_per_source slots (the oldest go);
    over max_unauthenticated in total the busiest source loses its oldest; a legitimate peer from another
    address joins at once all the same."""
    with pccl_py.Master(handshake_timeout=30.0, max_unauthenticated=12, max_unauthenticated_per_source=5) as m:
        one = [_dial(m.port, "127.0.0.2") for _ in range(20)]
        time.sleep(0.3)
        open_one = [s for s in one if not _closed(s)]
        assert len(open_one) == 5, f"{len(open_one)} of 20 idle connections from one address stayed open (cap 5)"
        assert open_one == one[-5:], "the per-source cap must close the oldest connections, not the newest"
        # Three more sources of 5 each: 20 idle connections in all, over the total cap of 12.
        more = [_dial(m.port, f"127.0.0.{3 + i // 5}") for i in range(15)]
        time.sleep(0.3)
        still = [s for s in open_one + more if not _closed(s)]
        assert len(still) <= 12, f"{len(still)} idle connections open at once (total cap 12)"
        t0 = time.time()
        c = new_comm(m.address).connect()
        try:
            assert_within(t0, time.time(), 2.0, "joining next to 12 idle connections")
            assert c.world_size == 1
        finally:
            c.close()
        _close_all(one + more)


def test_oversized_first_frame_is_refused_at_once():
    """Before authentication a frame is at most 256 bytes: a 1 MiB length prefix (accepted before, then
    waited for) closes the connection as soon as it arrives, long before the handshake deadline."""
    with pccl_py.Master(handshake_timeout=30.0) as m:
        s = _dial(m.port)
        s.sendall(struct.pack("<I", 1 << 20) + b"\x0f" * 1000)
        t0 = time.time()
        wait_until(lambda: _closed(s, 0.1), 3.0, "the master to close a connection announcing a 1 MiB auth frame")
        assert time.time() - t0 < 3.0
        s.close()
        # A well-formed first message is still answered.
        s = _dial(m.port)
        s.sendall(auth_hello(False, b"\x01" * 32))
        t, _ = recv_one_frame(s, 5.0)
        assert t == AUTH_CHALLENGE
        s.close()


def _past_the_proof(port: int) -> socket.socket:
    """A connection that completed AUTH_HELLO and sent an AUTH_PROOF (any 32 bytes): the master now
    waits for the join message, the one pre-authentication frame allowed to be large."""
    s = _dial(port)
    s.sendall(auth_hello(False, b"\x02" * 32))
    t, _ = recv_one_frame(s, 5.0)
    assert t == AUTH_CHALLENGE
    s.sendall(frame(17, b"\x00" * 32))
    return s


def test_partial_join_messages_share_a_memory_budget():
    """Connections that have not joined may hold max_preauth_bytes of partial messages in total: without
    the budget, every such connection could park a 1 MiB join message for the whole handshake timeout."""
    budget = (1 << 20) + 4
    with pccl_py.Master(handshake_timeout=30.0, max_preauth_bytes=budget) as m:
        a, b = _past_the_proof(m.port), _past_the_proof(m.port)
        a.sendall(struct.pack("<I", 1 << 20) + b"\x01" * (400 << 10))
        time.sleep(0.3)
        assert not _closed(a), "400 KiB of a join message is within the budget"
        b.sendall(struct.pack("<I", 1 << 20) + b"\x01" * (800 << 10))
        wait_until(lambda: _closed(b, 0.1), 3.0, "the master to close the connection holding the most bytes")
        assert not _closed(a), "the smaller partial message should have been kept"
        _close_all([a, b])


def test_pending_peers_per_group_are_capped():
    """A group holds at most max_pending_per_group peers waiting for admission: one more is refused with
    a clear error at connect() (before, the pending list grew with every HELLO)."""
    with pccl_py.Master(max_pending_per_group=1) as m:
        first = new_comm(m.address, peer_group=5).connect()
        waiting = new_comm(m.address, peer_group=5)
        bg = Background(waiting.connect)
        try:
            wait_until(first.are_peers_pending, 10.0, "the second peer to be pending")
            extra = new_comm(m.address, peer_group=5)
            with pytest.raises(pccl_py.MasterLostError, match="waiting for admission"):
                extra.connect()
            extra.close()
            first.update_topology()
            bg.result(30.0)
            assert first.world_size == 2 and waiting.world_size == 2
        finally:
            waiting.close()
            first.close()


def test_group_size_is_capped():
    """Members plus pending peers of a group stay within max_group_size (at most what an EPOCH message can
    carry, 4096); a peer over it is refused at connect() saying so."""
    with pytest.raises(pccl_py.InvalidArgumentError, match="max_group_size"):
        pccl_py.Master(max_group_size=4097)
    with pccl_py.Master(max_group_size=2) as m:
        members = connect_group(m.address, 2, peer_group=9)
        try:
            extra = new_comm(m.address, peer_group=9)
            with pytest.raises(pccl_py.MasterLostError, match="is full"):
                extra.connect()
            extra.close()
            # Another group is not affected.
            other = new_comm(m.address, peer_group=10).connect()
            other.close()
        finally:
            for c in members:
                c.close()


def test_idle_groups_are_forgotten():
    """A group nobody belongs to any more is removed (every HELLO naming a new group id used to leave an
    entry behind for good): a peer naming it later starts it afresh, at epoch 1."""
    with pccl_py.Master() as m:
        members = connect_group(m.address, 2, peer_group=7)
        assert members[0].epoch == 2
        for c in members:
            c.close()
        time.sleep(1.5)  # the master sweeps idle groups once a second
        c = new_comm(m.address, peer_group=7).connect()
        try:
            assert c.epoch == 1, f"group 7 was not forgotten: the new peer starts at epoch {c.epoch}"
        finally:
            c.close()


def test_limits_are_validated_with_clear_errors():
    """Out-of-range or mistyped resource limits given to Master() raise InvalidArgumentError naming the limit.
    Out-of-range or mistyped resource limits given to Master() raise InvalidArgumentError naming the limit."""
    for kwargs, match in (({"handshake_timeout": 0}, "handshake_timeout"), ({"max_unauthenticated": 0}, "max_unauthenticated"),
                          ({"max_unauthenticated_per_source": -1}, "max_unauthenticated_per_source"),
                          ({"max_preauth_bytes": 1000}, "max_preauth_bytes"),
                          ({"max_pending_per_group": "10"}, "max_pending_per_group")):
        with pytest.raises(pccl_py.InvalidArgumentError, match=match):
            pccl_py.Master(**kwargs)


def test_idle_sockets_at_a_peer_listener_do_not_block_a_mesh_rebuild():
    """1100 idle sockets at a member's mesh listener used to fill all 1024 handshake slots, so no mesh
    could be built again (the next epoch's connections were refused). Now one address holds at most 256
    slots, its oldest go first, and a newcomer's epoch builds its mesh as usual."""
    with pccl_py.Master() as m:
        port = free_port()
        a = new_comm(m.address).connect()
        b = new_comm(m.address, listen_port=port)
        run = Background(b.connect)
        admit_pending([a])
        run.result(30.0)
        idle = []
        try:
            for _ in range(1100):
                idle.append(_dial(port, "127.0.0.2"))
            time.sleep(0.5)
            c = new_comm(m.address)
            run = Background(c.connect)
            t0 = time.time()
            admit_pending([a, b])
            run.result(30.0)
            bufs = [np.ones(1000, np.float32) for _ in range(3)]
            run_concurrently(*[lambda comm=comm, x=x: comm.all_reduce(x) for comm, x in zip((a, b, c), bufs)],
                             timeout=30.0)
            assert all((x == 3.0).all() for x in bufs)
            assert_within(t0, time.time(), 10.0, "admitting a peer and all-reducing next to 1100 idle sockets")
            open_now = sum(not _closed(s, 0.001) for s in idle)
            assert open_now <= 256, f"{open_now} idle sockets from one address still hold handshake slots"
            c.close()
        finally:
            _close_all(idle)
            b.close()
            a.close()


def test_router_counts_zero_length_early_frames():
    """Frames for operations not started here are held up to 65536 of them, zero-length completion
    notices included: those used to cost the byte cap nothing, so a member far ahead (or a hostile one)
    could make a peer hold them without bound. Payload frames still meet the byte cap."""
    held, why = pccl_py._core._router_hold_probe(70_000, 0)
    assert held == 65_536 and "frames held" in why, (held, why)
    held, why = pccl_py._core._router_hold_probe(1_000, 4096)
    assert held == 1_000 and why == ""


def test_a_group_stops_growing_before_its_epoch_message_would_not_decode():
    """Members advertising 255-character host names: about 2000 of them made an EPOCH message over the 1 MiB
    frame cap, which no member can decode. The master refuses the peer that would cross half of it
    (leaving the rest for op decisions), saying why."""
    from control_frames import auth_socket, hello, recv_control

    host = "h" * 255
    socks = []
    with pccl_py.Master(max_pending_per_group=4096) as m:
        try:
            refused = None
            for i in range(2100):
                s = auth_socket(m.port, hello(group=3, host=host, hb_ms=600_000, port=1000 + i))
                socks.append(s)
                t, body = recv_control(s, 1, 5.0)[0]
                if t == 13:  # ERROR
                    refused = (i, body)
                    break
                assert t == 2, (i, t, body)  # WELCOME
            assert refused is not None, "2100 members with 255-character hosts were all taken"
            i, body = refused
            assert 1900 <= i <= 1960, f"refused at member {i}"
            assert b"would not fit in an epoch message" in body
        finally:
            _close_all(socks)


def test_handshakes_parked_for_unknown_epochs_do_not_keep_members_out():
    """Someone who guessed the group and a member's peer id parks 4200 well-formed handshakes for a future
    epoch (whose key the member cannot know yet, so they wait unverified). The parking holds 4096: the
    members' own handshakes used to be refused ("too many parked connections") until those expired.
    Now the oldest unverified one makes room, and a newcomer's epoch builds its mesh at once."""
    with pccl_py.Master() as m:
        port = free_port()
        a = new_comm(m.address, listen_port=port).connect()
        b = new_comm(m.address)
        run = Background(b.connect)
        admit_pending([a])
        run.result(30.0)
        hs = [struct.pack("<IHHIIQQQ", 0x48434350, 2, i % 64, 0, 0, a.epoch + 5, 1000 + i, a.peer_id) + bytes(64)
              for i in range(4200)]
        parked = []
        try:
            for i, h in enumerate(hs):
                s = _dial(port, f"127.0.0.{2 + i % 20}")
                s.sendall(h)
                parked.append(s)
            time.sleep(1.0)
            c = new_comm(m.address)
            run = Background(c.connect)
            t0 = time.time()
            admit_pending([a, b])
            run.result(30.0)
            bufs = [np.ones(100, np.float32) for _ in range(3)]
            run_concurrently(*[lambda comm=comm, x=x: comm.all_reduce(x) for comm, x in zip((a, b, c), bufs)],
                             timeout=30.0)
            assert all((x == 3.0).all() for x in bufs)
            assert_within(t0, time.time(), 5.0, "admitting a peer next to 4200 parked handshakes")
            c.close()
        finally:
            _close_all(parked)
            b.close()
            a.close()
