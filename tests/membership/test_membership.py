"""Membership: admitting newcomers through update_topology(), graceful leaves, and peer groups.

Each test runs real worker processes around a master subprocess (the `cluster` fixture), and checks
the next all_reduce after every change: its world size, and that its result contains exactly the
current members' contributions.
"""

from __future__ import annotations

import socket
import struct
import time

import pytest

from control_frames import auth_socket, frame, hello, recv_control, recv_frames
from support import call, join, reduce_all, reply_to, vote, wait_until

SPEC = dict(dtype="float32", count=1001, op="SUM")


def test_newcomer_is_admitted_only_after_every_member_updates_topology(cluster):
    """A newcomer's connect() blocks while the members keep reducing among themselves; the members see
    it as pending; once all of them call update_topology() it is admitted, and the next all_reduce
    includes its contribution."""
    members = join(cluster, 2)
    newcomer = cluster.spawn()
    joining = newcomer.send("connect", master=cluster.master.address)
    for m in members:
        wait_until(lambda: call(m, "pending")["pending"], 30, f"peer {m.index} to see the newcomer")

    reduce_all(members, seed=1, **SPEC)  # the members are not held up by the pending peer
    with pytest.raises(TimeoutError):
        reply_to(newcomer, joining, timeout=0.5)  # connect() is still blocked

    for r in vote(members):
        assert r["ok"] and r["world_size"] == 3, r
    admitted = reply_to(newcomer, joining, timeout=30)
    assert admitted["ok"] and admitted["world_size"] == 3, admitted
    assert not call(members[0], "pending")["pending"]
    reduce_all(cluster.ranked(members + [newcomer]), seed=2, **SPEC)


def test_join_epoch_sends_the_pending_count_before_the_vote_result(cluster):
    """A member that votes again the moment update_topology() returns must see the admitted peer as no
    longer pending; otherwise it votes for nobody and the next newcomer is stranded. The master
    guarantees this by order: EPOCH, PENDING(0), then VOTE_RESULT. Checked on raw connections."""
    def connect(port: int) -> socket.socket:
        return auth_socket(cluster.master.port, hello(group=79, hb_ms=10_000, port=port))

    member = connect(11)
    newcomer = None
    try:
        assert [t for t, _ in recv_frames(member, 2)] == [2, 10]  # WELCOME, EPOCH 1: the first member
        newcomer = connect(12)
        assert [t for t, _ in recv_frames(newcomer, 1)] == [2]  # WELCOME, not admitted yet
        assert recv_frames(member, 1) == [(6, struct.pack("<I", 1))]  # PENDING 1
        member.sendall(frame(4, struct.pack("<QI", 1, 5000)))  # VOTE in epoch 1
        assert recv_frames(member, 1) == [(8, struct.pack("<Q", 2))]  # RECOVER into epoch 2
        member.sendall(frame(9, struct.pack("<QII", 2, 0, 0)))  # STATUS: no ops
        got = recv_frames(member, 3)
        assert [t for t, _ in got] == [10, 6, 5], got  # EPOCH, PENDING, VOTE_RESULT
        assert got[1][1] == struct.pack("<I", 0)
        assert got[2][1][:5] == struct.pack("<BI", 0, 1)  # not timed out, 1 admitted
    finally:
        for s in (member, newcomer):
            if s is not None:
                s.close()


def test_voters_get_their_result_when_a_member_is_lost_during_the_admission(cluster):
    """Admitting a newcomer takes a recovery round. If a member is lost during that round, the new
    epoch's cause becomes 'lost', but the vote still ended and admitted the newcomer: every surviving
    voter must get its VOTE_RESULT then, not wait out the vote timeout while the newcomer, already a
    member, waits for them in its first op (the 10 s stalls pccl-stress found). Raw connections."""
    def connect(port: int) -> socket.socket:
        return auth_socket(cluster.master.port, hello(group=80, hb_ms=30_000, port=port))

    socks: list[socket.socket] = []
    try:
        first = connect(21)
        socks.append(first)
        assert [t for t, _ in recv_control(first, 2)] == [2, 10]  # WELCOME, EPOCH 1
        second = connect(22)
        socks.append(second)
        assert [t for t, _ in recv_control(second, 1)] == [2]
        assert recv_control(first, 1) == [(6, struct.pack("<I", 1))]
        first.sendall(frame(4, struct.pack("<QI", 1, 30_000)))  # VOTE: admit the second
        assert recv_control(first, 1) == [(8, struct.pack("<Q", 2))]  # RECOVER 2
        first.sendall(frame(9, struct.pack("<QII", 2, 0, 0)))
        assert [t for t, _ in recv_control(first, 3)] == [10, 6, 5]
        assert [t for t, _ in recv_control(second, 2)] == [10, 6]  # a member of epoch 2; PENDING 0

        newcomer = connect(23)
        socks.append(newcomer)
        assert [t for t, _ in recv_control(newcomer, 1)] == [2]
        for s in (first, second):
            assert recv_control(s, 1) == [(6, struct.pack("<I", 1))]
            s.sendall(frame(4, struct.pack("<QI", 2, 30_000)))  # both vote: the admission starts
        for s in (first, second):
            assert recv_control(s, 1) == [(8, struct.pack("<Q", 3))]  # RECOVER 3
        first.sendall(frame(9, struct.pack("<QII", 3, 0, 0)))
        second.close()  # lost before it answered
        socks.remove(second)

        t0 = time.monotonic()
        got = recv_control(first, 3, timeout=10)
        assert [t for t, _ in got] == [10, 6, 5], got  # EPOCH 3, PENDING 0, VOTE_RESULT
        assert got[0][1][12] == 2  # the epoch's cause: lost (the member, not only the join)
        assert got[1][1] == struct.pack("<I", 0)
        assert got[2][1][:5] == struct.pack("<BI", 0, 1)  # not timed out, 1 admitted
        assert time.monotonic() - t0 < 5, "the result came only with the vote timeout"
        assert [t for t, _ in recv_control(newcomer, 2)] == [10, 6]  # admitted: EPOCH 3, PENDING 0
    finally:
        for s in socks:
            s.close()


def test_member_that_never_updates_topology_cannot_hang_the_others(cluster):
    """If one member never calls update_topology(), the others' calls fail with pccl_py.TimeoutError
    after `timeout` (not forever), naming the member that did not call it. The group stays usable and
    the newcomer stays pending until everyone votes."""
    timeout = 2.0
    members = join(cluster, 3, dict(timeout=timeout))
    idle = members[-1]
    newcomer = cluster.spawn()
    joining = newcomer.send("connect", master=cluster.master.address, kwargs={"timeout": timeout})
    wait_until(lambda: call(members[0], "pending")["pending"], 30, "the newcomer to be pending")

    t0 = time.monotonic()
    replies = vote(members[:-1], timeout=timeout + 10)
    elapsed = time.monotonic() - t0
    for r in replies:
        assert not r["ok"] and r["error"] == "TimeoutError", r
        assert "update_topology" in r["message"] and str(idle.peer_id) in r["message"], r["message"]
    assert elapsed < timeout + 3, f"update_topology() took {elapsed:.1f} s with timeout={timeout}"

    reduce_all(members, seed=3, **SPEC)  # everyone, including the idle member, still works at world size 3
    assert call(members[0], "pending")["pending"]
    for r in vote(members):
        assert r["ok"], r
    assert reply_to(newcomer, joining, timeout=30)["ok"]
    reduce_all(cluster.ranked(members + [newcomer]), seed=4, **SPEC)


@pytest.mark.parametrize("position", [0, 2, 4], ids=["rank0", "middle", "last"])
def test_graceful_close_between_ops(cluster, position):
    """After a member close()s between ops, the others' next all_reduce succeeds without any error,
    at the smaller world size, with a result over the remaining members only."""
    members = join(cluster, 5)
    reduce_all(members, seed=5, **SPEC)
    leaver = members[position]
    assert call(leaver, "close", timeout=30)["ok"]
    rest = [m for m in members if m is not leaver]
    reduce_all(rest, seed=6, **SPEC)  # checks ok, world size 4, correct over `rest`, identical everywhere
    reduce_all(rest, seed=7, algorithm="ring", **SPEC)


def test_peer_groups_do_not_cross_talk(cluster):
    """Two peer groups on one master run the same all_reduce (same tag, seed, size) at the same time;
    each result contains only its own group's contributions."""
    group_a = join(cluster, 2, dict(peer_group=1))
    group_b = join(cluster, 3, dict(peer_group=2))
    for g, size in ((group_a, 2), (group_b, 3)):
        assert {call(p, "state")["world_size"] for p in g} == {size}
    for algorithm in ("star", "ring"):
        pending = [(g, [p.send("all_reduce", expect_from=[q.index for q in g], seed=8, algorithm=algorithm, **SPEC)
                        for p in g]) for g in (group_a, group_b)]
        for g, ids in pending:
            replies = [reply_to(p, i) for p, i in zip(g, ids)]
            for r in replies:
                assert r["ok"] and r["correct"] and r["world_size"] == len(g), r
            assert len({r["sha"] for r in replies}) == 1
