"""Protocol hardening against hostile but well-formed control messages.

Real processes and sockets: a master subprocess and worker peers from harness.py. The hostile messages
come from a client that authenticates (control_frames.auth_socket plays the exchange with the cluster's
secret, or with none when the cluster has none), or from a member itself (worker command send_failure,
which sends a FAILURE report naming any suspect through the member's own master connection): being
authenticated does not make a message true. The rules tested here are in docs/security.md
("Hostile members") and docs/protocol.md (REJOIN, FAILURE).

Each test first sends the hostile message, then checks that no honest member was evicted (the group
still has its members and an all-reduce among them is correct) and what the master answered.
"""

from __future__ import annotations

import signal
import struct
import time

import pytest

from control_frames import auth_socket, frame, hello, hello_body, recv_control
from fault_helpers import read_text
from support import join, wait_until
from harness import Cluster, MasterProcess, keyed_cluster

SECRET = "hostile tests secret"
HB = 2.0
COMM = dict(heartbeat_timeout=HB, timeout=10.0)
SPEC = dict(dtype="float32", count=20_000)
WELCOME, EPOCH, EVICTED = 2, 10, 12
U64_MAX = 2**64 - 1


def member(peer_id: int, port: int = 1) -> bytes:
    host = b"127.0.0.1"
    return struct.pack("<Q", peer_id) + struct.pack("<H", len(host)) + host + struct.pack("<HH", port, 1)


def rejoin(peer_id: int, epoch: int, members: list[int], group: int = 0, hb_ms: int = 1000, settled: int = 1) -> bytes:
    """A REJOIN frame (type 14): the HELLO fields, peer id, epoch, settled flag, members, no last-heard."""
    body = (hello_body(group=group, hb_ms=hb_ms) + struct.pack("<QQB", peer_id, epoch, settled) +
            struct.pack("<I", len(members)) + b"".join(member(m) for m in members) + struct.pack("<I", 0))
    return frame(14, body)


@pytest.fixture(params=["secret", "no-secret"])
def hostile_cluster(request, tmp_path):
    """A cluster with a job secret (the hostile client knows it: a malicious member) or without one."""
    with keyed_cluster(tmp_path, SECRET if request.param == "secret" else None, COMM) as c:
        yield c


def _group_intact(c: Cluster, members, seed: int) -> None:
    states = [m.call("state", timeout=10) for m in members]
    assert all(s["world_size"] == len(members) for s in states), states
    res = c.all_reduce(members, seed=seed, **SPEC)
    assert all(r["ok"] and r["correct"] and r["world_size"] == len(members) for r in res), res


def _closed(s, timeout: float = 5.0) -> bool:
    s.settimeout(timeout)
    try:
        while s.recv(4096):
            pass
        return True
    except (ConnectionResetError, OSError):
        return True


# -- REJOIN ---------------------------------------------------------------------------------------
def test_rejoin_listing_none_of_the_members_evicts_nobody(hostile_cluster):
    """One REJOIN naming the running group and listing none of its members used to reset the group and
    evict every member. Now it is held (the master is young: it waits for a second claimant to confirm
    the claim) and refused once its heartbeat timeout passed; the members never notice."""
    c = hostile_cluster
    members = join(c, 2, c.comm)
    ids = {m.peer_id for m in members}
    fake = min(ids) - 1000
    s = auth_socket(c.master.port, rejoin(fake, 7, [fake], hb_ms=1000), c.key)
    try:
        got = recv_control(s, 1, timeout=5)
    finally:
        s.close()
    assert [t for t, _ in got] == [EVICTED], got
    assert b"no other member of this peer's claimed membership rejoined" in got[0][1], got
    log = read_text(c.master.log_path)
    assert "holding the rejoin of peer" in log and "displaced" not in log
    _group_intact(c, members, seed=1)
    # A claim that lists a live member is refused at once: the group went on without the claimant.
    s = auth_socket(c.master.port, rejoin(fake - 1, 7, [fake - 1, min(ids)]), c.key)
    try:
        got = recv_control(s, 1, timeout=5)
    finally:
        s.close()
    assert [t for t, _ in got] == [EVICTED] and b"already runs without it" in got[0][1], got
    _group_intact(c, members, seed=2)


@pytest.mark.parametrize("what, claim, needle", [
    ("epoch 2^64-1", lambda me: rejoin(me, U64_MAX, [me]), "rejoin claims an epoch out of range"),
    ("epoch 2^61+1", lambda me: rejoin(me, 2**61 + 1, [me]), "rejoin claims an epoch out of range"),
    ("a connection id", lambda me: rejoin(2**62, 3, [2**62]), "invalid member entry"),
    ("an id absent from its membership", lambda me: rejoin(me, 3, [me + 1]), "rejoin without a valid peer id"),
    ("id 2^64-1", lambda me: rejoin(me, 3, [me, U64_MAX]), "invalid member entry"),
    ("a duplicate member", lambda me: rejoin(me, 3, [me, 5, 5]), "rejoin lists a peer id twice"),
])
def test_rejoin_ids_and_epochs_out_of_range_are_refused(cluster, what, claim, needle):
    """Out-of-range ids and epochs are protocol violations: the connection is closed with a logged
    reason, before the master changes anything."""
    members = join(cluster, 2, COMM)
    s = auth_socket(cluster.master.port, claim(members[0].peer_id - 77), wait_ok=False)
    try:
        assert _closed(s)
    finally:
        s.close()
    wait_until(lambda: needle in read_text(cluster.master.log_path), 5.0, what=f"the master's log line for {what}")
    _group_intact(cluster, members, seed=3)


def test_rejoin_cannot_push_peer_ids_into_the_connection_range(cluster):
    """A claim listing an id just below the connection-id range used to push the next id handed out there,
    so a newcomer's id collided with a connection's. Ids above what an earlier master can have handed
    out are refused; a newcomer then gets an ordinary id."""
    s = auth_socket(cluster.master.port, rejoin(5, 3, [5, 2**62 - 2], group=7))
    try:
        got = recv_control(s, 1, timeout=5)
    finally:
        s.close()
    assert [t for t, _ in got] == [EVICTED] and b"above any id an earlier master can have handed out" in got[0][1], got
    s = auth_socket(cluster.master.port, hello(group=7, port=9))
    try:
        got = recv_control(s, 2, timeout=5)
    finally:
        s.close()
    assert [t for t, _ in got] == [WELCOME, EPOCH], got
    (peer_id,) = struct.unpack_from("<Q", got[0][1])
    assert 0 < peer_id < 2**62 - 2**40, peer_id
    members = join(cluster, 2, COMM)
    _group_intact(cluster, members, seed=4)


def test_rebuilt_group_cannot_be_taken_over_by_claims(tmp_path):
    """After a master restart the members rebuild their group. A hostile claim sent at once (inside the
    rebuild window) with the highest epoch and a membership of its own does not exclude them: the
    claims that share no member with the members' are refused. Once rebuilt, even two claims that
    confirm each other cannot displace the group."""
    comm = dict(COMM, master_grace=10.0)
    with Cluster(log_dir=str(tmp_path)) as c:
        members = join(c, 3, comm)
        ids = sorted(m.peer_id for m in members)
        port = c.master.port
        c.master.kill()
        c.master = MasterProcess(port=port, log_path=str(tmp_path / "master2.log"))
        h = ids[0] - 500
        s = auth_socket(port, rejoin(h, 2**61, [h], hb_ms=int(HB * 1000)))
        try:
            got = recv_control(s, 2, timeout=10)  # WELCOME into the rebuild, then EVICTED when it ends
        finally:
            s.close()
        assert [t for t, _ in got] == [WELCOME, EVICTED], got
        assert b"share no member with this peer's claim" in got[1][1], got
        wait_until(lambda: "group 0 rebuilt" in read_text(c.master.log_path), 10.0, what="the rebuild")
        assert f"with members [{','.join(str(i) for i in ids)}]" in read_text(c.master.log_path) or \
            sorted(m.call("state")["peer_id"] for m in members) == ids
        _group_intact(c, members, seed=5)
        epoch = members[0].call("state")["epoch"]
        assert epoch < 2**40, epoch  # the hostile epoch was not adopted
        socks = []
        try:
            for a, b in ((h - 1, h - 2), (h - 2, h - 1)):
                socks.append(auth_socket(port, rejoin(a, 9, [a, b])))
            for s in socks:
                got = recv_control(s, 1, timeout=5)
                assert [t for t, _ in got] == [EVICTED] and b"lists none of them" in got[0][1], got
        finally:
            for s in socks:
                s.close()
        _group_intact(c, members, seed=6)


# -- FAILURE --------------------------------------------------------------------------------------
def test_one_members_failure_reports_cannot_evict_an_honest_peer(hostile_cluster):
    """A member reports its link to an honest, live peer broken. The master's own view (the suspect
    heartbeats) does not confirm it: a new epoch starts and nobody is evicted. The same member reports the
    same link again: the link is resolved by removing both of its ends, so the liar goes with its victim
    and the rest of the group goes on."""
    c = hostile_cluster
    liar, honest, victim = join(c, 3, c.comm)
    epoch0 = honest.call("state")["epoch"]
    assert liar.call("send_failure", suspect=victim.peer_id)["ok"]
    wait_until(lambda: "looks alive to the master: starting a new epoch without evicting it" in read_text(c.master.log_path),
               5.0, what="the master's decision")
    wait_until(lambda: honest.call("state")["epoch"] > epoch0, 10.0, what="the new epoch")
    _group_intact(c, [liar, honest, victim], seed=7)
    # The same accusation in the next epoch: both ends go, the others stay.
    assert liar.call("send_failure", suspect=victim.peer_id)["ok"]
    wait_until(lambda: "broke again while both look alive" in read_text(c.master.log_path), 5.0, what="the resolution")
    wait_until(lambda: honest.call("state")["world_size"] == 1, 10.0, what="the group without both ends")
    res = c.all_reduce([honest], seed=8, **SPEC)
    assert res[0]["ok"] and res[0]["correct"], res
    for p in (liar, victim):
        r = p.call("all_reduce", expect_from=[p.index], **SPEC)
        assert not r["ok"] and r["error"] == "EvictedError" and "broke again" in r["message"], r


def test_failure_report_about_a_frozen_peer_still_evicts_it_at_once(cluster):
    """The corroborated case keeps today's speed: a frozen peer is silent to the master too, so the first
    report evicts it and the survivors go on within about one heartbeat timeout."""
    a, b, frozen = join(cluster, 3, COMM)
    frozen.kill(signal.SIGSTOP)
    try:
        t0 = time.time()
        for p in (a, b):
            p.send("all_reduce", expect_from=[a.index, b.index, frozen.index], **SPEC)
        replies = [p.recv(30) for p in (a, b)]
        assert all(not r["ok"] and r["error"] == "PeerLostError" for r in replies), replies
        assert time.time() - t0 < HB + 2.0
        wait_until(lambda: "master has not heard from it" in read_text(cluster.master.log_path)
                   or "no heartbeat for" in read_text(cluster.master.log_path), 5.0, what="the eviction")
        res = cluster.all_reduce([a, b], seed=9, **SPEC)
        assert all(r["ok"] and r["correct"] and r["world_size"] == 2 for r in res), res
    finally:
        frozen.kill(signal.SIGCONT)


@pytest.mark.parametrize("epoch, suspect, needle", [
    (U64_MAX, 0, "failure epoch out of range"),
    (0, 0, "failure epoch out of range"),
    (1, 2**62, "failure names a suspect peer id out of range"),
])
def test_failure_with_ids_or_epochs_out_of_range_is_a_protocol_violation(cluster, epoch, suspect, needle):
    """Sent by a raw client that founded a group of its own (so it is a member and may report)."""
    members = join(cluster, 2, COMM)
    s = auth_socket(cluster.master.port, hello(group=5, port=9))
    try:
        assert [t for t, _ in recv_control(s, 2)] == [WELCOME, EPOCH]
        s.sendall(frame(7, struct.pack("<QBQ", epoch, 0, suspect)))
        assert _closed(s)
    finally:
        s.close()
    wait_until(lambda: needle in read_text(cluster.master.log_path), 5.0, what="the log line")
    _group_intact(cluster, members, seed=10)


# -- shared-state sizes ---------------------------------------------------------------------------
@pytest.mark.parametrize("announced", [2**40, 8])
def test_rank_0_announcing_a_wrong_shared_state_size_is_refused_on_every_peer(hostile_cluster, announced):
    """Rank 0's table announces a byte count that its entry's dtype and shape do not give (a terabyte, or
    less than the entry): every peer refuses the sync with SharedStateError naming the peer and the key,
    before allocating anything, and keeps its tensors; an honest sync then succeeds."""
    c = hostile_cluster
    peers = join(c, 3, c.comm)  # rank order: peers[0] is rank 0, and the others need its content
    for k, p in enumerate(peers):
        p.send("sync_state", keys={"w": {"count": 10_000, "seed": 1 if k == 0 else 2}}, revision=3,
               rebuild=True, **({"announce_nbytes": {"w": announced}} if k == 0 else {}))
    replies = [p.recv(60) for p in peers]
    for r in replies:
        assert not r["ok"] and r["error"] == "SharedStateError", r
        assert f"announced shared state key 'w' as float32[10000] of {announced} bytes" in r["message"], r
        assert "make 40000 bytes" in r["message"] and r["unchanged"], r
    assert max(p.call("resources")["rss_kb"] for p in peers) < 2 * 1024 * 1024  # nothing near 2**40 was allocated
    for p in peers:
        p.send("sync_state")
    replies = [p.recv(60) for p in peers]
    assert all(r["ok"] for r in replies), replies
    assert len({str(r["hashes"]) for r in replies}) == 1
