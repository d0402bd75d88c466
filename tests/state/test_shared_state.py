"""Shared state: election, revision rule, transfers of dirty entries only, verification, failover.

The election itself is a pure function (plan_sync), checked directly on hand-made tables; everything
else runs between worker processes over real sockets.
"""

from __future__ import annotations

import re
import subprocess

import numpy as np
import pytest

import pccl_py
from pccl_py.shared_state import KeyMeta, PeerMeta, SyncStrategy, plan_sync, plan_transfers
from harness import Cluster
from support import admit, join, wait_until
from reference import make_input

MiB = 1 << 20


# ---------------------------------------------------------------------------------------------
# the election (pure)


def _peer(rank, hashes, revision=1, last=None, strategy="enforce_popular", shape=(4,), dtype="float32", allow=()):
    keys = tuple(KeyMeta(name, dtype, shape, 16, h, name in allow) for name, h in sorted(hashes.items()))
    return PeerMeta(rank, 100 + rank, revision, last, SyncStrategy.parse(strategy), keys)


def test_most_popular_content_wins_and_only_dirty_keys_move():
    """The election picks each key's most popular content; only the peers holding other content receive, only for
    that key, from the peers holding the winner."""
    peers = [_peer(0, {"a": 1, "b": 2}), _peer(1, {"a": 1, "b": 9}), _peer(2, {"a": 1, "b": 2})]
    plan = plan_sync(peers)
    assert plan.group_error is None and not plan.peer_errors
    assert plan.target_hash == {"a": 1, "b": 2}
    assert plan.receives == {1: ["b"]}
    assert plan.sources["b"] == [0, 2]


def test_tie_breaks_the_same_way_whatever_the_rank_order():
    """A tie between contents is broken by the content, not by which rank holds it."""
    a = _peer(0, {"w": 111})
    b = _peer(1, {"w": 222})
    first = plan_sync([a, b])
    swapped = plan_sync([_peer(0, {"w": 222}), _peer(1, {"w": 111})])
    assert first.target_hash == swapped.target_hash  # content decides, not rank
    assert len(first.receives) == 1


def test_send_only_outranks_the_vote():
    """A send_only peer's content wins over a majority holding other content, and it is the only source."""
    peers = [_peer(0, {"w": 1}), _peer(1, {"w": 1}), _peer(2, {"w": 7}, strategy="send_only")]
    plan = plan_sync(peers)
    assert plan.target_hash == {"w": 7}
    assert plan.receives == {0: ["w"], 1: ["w"]}
    assert plan.sources["w"] == [2]


def test_two_send_only_peers_that_disagree_fail_the_group():
    """Two send_only peers with different content fail the whole group with SharedStateError naming the key and
    the peer group."""
    plan = plan_sync([_peer(0, {"w": 1}, strategy="send_only"), _peer(1, {"w": 2}, strategy="send_only")], group=3)
    cls, msg = plan.group_error
    assert cls is pccl_py.SharedStateError
    assert "send-only" in msg and "'w'" in msg and "peer group 3" in msg


def test_all_receive_only_fails_the_group():
    """A group in which every peer is receive_only fails with SharedStateError: nobody could provide the content.
    A group in which every peer is receive_only fails with SharedStateError: nobody could provide the content."""
    plan = plan_sync([_peer(0, {"w": 1}, strategy="receive_only"), _peer(1, {"w": 1}, strategy="receive_only")])
    cls, msg = plan.group_error
    assert cls is pccl_py.SharedStateError and "receive_only" in msg


def test_receive_only_never_sends_even_when_up_to_date():
    """receive_only peers do not vote and are never sources, even when they hold the winning content."""
    # Receive-only peers do not vote: 5 wins 2:1 although two peers hold 1.
    peers = [_peer(0, {"w": 1}, strategy="receive_only"), _peer(1, {"w": 1}), _peer(2, {"w": 5}), _peer(3, {"w": 5})]
    plan = plan_sync(peers)
    assert plan.target_hash == {"w": 5}
    assert plan.sources["w"] == [2, 3]
    assert plan.receives == {0: ["w"], 1: ["w"]}


@pytest.mark.parametrize("other,needle", [
    ({"shape": (5,)}, "float32[4]"),
    ({"dtype": "float64"}, "float64[4]"),
])
def test_dtype_or_shape_mismatch_names_the_key(other, needle):
    """Peers whose entry differs in dtype or shape fail with MismatchError naming the key and the dtype[shape].
    Peers whose entry differs in dtype or shape fail with MismatchError naming the key and the dtype[shape]."""
    plan = plan_sync([_peer(0, {"w": 1}), _peer(1, {"w": 1}, **other)])
    cls, msg = plan.group_error
    assert cls is pccl_py.MismatchError and "'w'" in msg and needle in msg


def test_missing_key_is_named():
    """A key held by some peers only fails the group with MismatchError naming that key."""
    plan = plan_sync([_peer(0, {"w": 1, "extra": 3}), _peer(1, {"w": 1})])
    cls, msg = plan.group_error
    assert cls is pccl_py.MismatchError and "'extra'" in msg


def test_revision_rule():
    """The revision must advance by one per sync: a peer behind is updated, a peer ahead gets an error, a group
    that did not advance fails, and the first sync accepts any revision."""
    # The group was at 4: 5 is expected; a peer at 3 is behind (updated), a peer at 7 is ahead (error).
    peers = [_peer(0, {"w": 1}, revision=5, last=4), _peer(1, {"w": 9}, revision=3, last=None),
             _peer(2, {"w": 1}, revision=7, last=4)]
    plan = plan_sync(peers)
    assert plan.revision == 5
    assert plan.receives == {1: ["w"]}
    assert 2 in plan.peer_errors and "ahead" in plan.peer_errors[2]
    # Nobody incremented: a clear group error.
    plan = plan_sync([_peer(0, {"w": 1}, revision=4, last=4), _peer(1, {"w": 1}, revision=4, last=4)])
    assert plan.group_error[0] is pccl_py.SharedStateError and "revision 5" in plan.group_error[1]
    # The first sync of a run accepts any revision (resume from a checkpoint).
    plan = plan_sync([_peer(0, {"w": 1}, revision=1234), _peer(1, {"w": 1}, revision=1234)])
    assert plan.group_error is None and plan.revision == 1234 and not plan.receives


def test_allow_content_inequality_is_tolerated_among_current_peers_but_sent_to_newcomers():
    """Keys allowed to differ are not synced among current peers, but a newcomer receives them from the peers
    holding the representative content."""
    peers = [_peer(0, {"w": 1, "opt": 10}, revision=2, last=1, allow={"opt"}),
             _peer(1, {"w": 1, "opt": 11}, revision=2, last=1, allow={"opt"}),
             _peer(2, {"w": 0, "opt": 0}, revision=0, allow={"opt"})]
    plan = plan_sync(peers)
    assert plan.receives == {2: ["opt", "w"]}
    assert plan.sources["opt"] == [0]  # only peers holding the representative's content


def test_survivors_do_not_elect_stale_content_after_the_holders_left():
    """When every holder of the current revision has left, the survivors get SharedStateError instead of electing
    their stale content."""
    plan = plan_sync([_peer(0, {"w": 0}, revision=0)], seen_revision=9)
    assert plan.group_error[0] is pccl_py.SharedStateError and "left" in plan.group_error[1]


def test_large_entries_are_split_across_every_source():
    """A large entry is fetched in parts from every source; a re-fetch round takes the whole entry from one
    source, a different one each round."""
    peers = [_peer(0, {"w": 1}), _peer(1, {"w": 1}), _peer(2, {"w": 1}), _peer(3, {"w": 0})]
    plan = plan_sync(peers)
    transfers = plan_transfers(plan, {"w": 30 * MiB}, 0)
    assert sorted(t.src for t in transfers) == [0, 1, 2]
    assert sum(t.nbytes for t in transfers) == 30 * MiB
    assert {t.dst for t in transfers} == {3}
    # A re-fetch round takes the whole entry from one source, a different one each round.
    again = [plan_transfers(plan, {"w": 30 * MiB}, r, {3: ["w"]}) for r in (1, 2, 3)]
    assert [a[0].src for a in again] == [0, 1, 2] and all(a[0].nbytes == 30 * MiB for a in again)


# ---------------------------------------------------------------------------------------------
# between processes

KEYS = {"w": {"count": 50_000, "seed": 1}, "b": {"count": 1000, "seed": 2}, "i": {"dtype": "int64", "count": 333, "seed": 3}}
KEY_BYTES = {"w": 200_000, "b": 4000, "i": 2664}


def _sync_all(peers, timeout=60.0, per_peer=None, **common):
    for k, p in enumerate(peers):
        kw = dict(common)
        kw.update((per_peer or {}).get(k, {}))
        p.send("sync_state", **kw)
    return [p.recv(timeout) for p in peers]


def _keys(**changes):
    keys = {k: dict(v) for k, v in KEYS.items()}
    for name, seed in changes.items():
        keys[name]["seed"] = seed
    return keys


def test_identical_state_moves_nothing_and_one_dirty_key_moves_only_its_bytes():
    """Identical state moves no bytes; when one peer's key drifts, exactly that key's bytes are sent back to it
    and every peer ends with the same hashes and the next revision."""
    with Cluster() as c:
        peers = join(c, 3)
        replies = _sync_all(peers, keys=KEYS, revision=10, rebuild=True)
        for r in replies:
            assert r["ok"], r
            assert r["infos"][0]["tx_bytes"] == 0 and r["infos"][0]["rx_bytes"] == 0
            assert r["revision"] == 10
        # Peer 1 drifts on "b" only: it gets exactly b's bytes back, from the two others.
        replies = _sync_all(peers, advance=True, per_peer={1: {"set": {"b": 99}}})
        assert all(r["ok"] for r in replies), replies
        infos = [r["infos"][0] for r in replies]
        assert infos[1]["received_keys"] == ["b"] and infos[1]["rx_bytes"] == KEY_BYTES["b"]
        assert sum(i["tx_bytes"] for i in infos) == KEY_BYTES["b"]
        assert infos[0]["rx_bytes"] == infos[2]["rx_bytes"] == 0
        assert len({str(r["hashes"]) for r in replies}) == 1
        assert all(r["revision"] == 11 for r in replies)


def test_a_steady_state_sync_moves_one_header_row_per_member_not_the_key_tables():
    """When every member's key table is the same (same names, shapes and content hashes), a sync moves
    only the fixed-size headers: its traffic does not grow with the number of entries."""
    many = {f"layer{i:03d}.weight": {"count": 8, "seed": i} for i in range(200)}
    with Cluster() as c:
        peers = join(c, 3)
        replies = _sync_all(peers, keys=many, revision=0, rebuild=True, steps=3, evolve=True)
        for r in replies:
            assert r["ok"], r
            # 200 entries: their tables are about 14 KB per member, all of it moved if they were gathered.
            assert all(i["tx_bytes"] == 0 and i["total_tx_bytes"] < 1024 for i in r["infos"]), r["infos"]
        assert len({str(r["hashes"]) for r in replies}) == 1
        # A member whose content drifted has a different table: the tables are gathered and it is healed.
        replies = _sync_all(peers, advance=True, per_peer={2: {"set": {"layer007.weight": 99}}})
        assert all(r["ok"] for r in replies), replies
        assert replies[2]["infos"][0]["received_keys"] == ["layer007.weight"]
        assert replies[2]["infos"][0]["total_tx_bytes"] > 10_000
        assert len({str(r["hashes"]) for r in replies}) == 1


def test_newcomer_at_step_50_receives_everything_then_nothing():
    """A newcomer joining at revision 50 receives every key once, all peers then hold the same hashes, and later
    syncs move nothing."""
    with Cluster() as c:
        peers = join(c, 2)
        replies = _sync_all(peers, keys=KEYS, revision=0, rebuild=True, steps=50, evolve=True)
        for r in replies:
            assert r["ok"], r
            assert all(i["tx_bytes"] == 0 and i["rx_bytes"] == 0 for i in r["infos"])
            assert r["revision"] == 49
        peers = admit(c, peers, [c.spawn()])  # a third peer with state from seed 0 and revision 0
        newcomer = next(p for p in peers if p.index == 2)
        per_peer = {k: {"advance": True} for k, p in enumerate(peers) if p is not newcomer}
        per_peer[peers.index(newcomer)] = {"keys": _keys(w=0, b=0, i=0), "revision": 0, "rebuild": True}
        replies = _sync_all(peers, per_peer=per_peer)
        assert all(r["ok"] for r in replies), replies
        mine = replies[peers.index(newcomer)]["infos"][0]
        assert mine["rx_bytes"] == sum(KEY_BYTES.values()) and sorted(mine["received_keys"]) == ["b", "i", "w"]
        assert all(r["revision"] == 50 for r in replies)
        assert len({str(r["hashes"]) for r in replies}) == 1
        # Every later step: zero bytes, still identical.
        replies = _sync_all(peers, steps=5, advance=True, evolve=True)
        for r in replies:
            assert r["ok"], r
            assert all(i["tx_bytes"] == 0 and i["rx_bytes"] == 0 for i in r["infos"])
        assert len({str(r["hashes"]) for r in replies}) == 1 and replies[0]["revision"] == 55


def test_popularity_among_three_and_tie_between_two():
    """Between real peers, the majority content wins among three, and a tie between two is settled with exactly
    one key moved."""
    with Cluster() as c:
        peers = join(c, 3)
        replies = _sync_all(peers, rebuild=True, revision=1, per_peer={
            0: {"keys": _keys(w=5)}, 1: {"keys": _keys(w=6)}, 2: {"keys": _keys(w=5)}})
        assert all(r["ok"] for r in replies), replies
        expected = make_input("float32", KEYS["w"]["count"], 5, 0, "SUM")
        want = f"{pccl_py._core.content_hash(expected.ctypes.data, expected.nbytes):016x}"
        assert all(r["hashes"]["w"] == want for r in replies)
        assert replies[1]["infos"][0]["received_keys"] == ["w"]
    with Cluster() as c:
        peers = join(c, 2)
        replies = _sync_all(peers, rebuild=True, revision=1, per_peer={0: {"keys": _keys(w=7)}, 1: {"keys": _keys(w=8)}})
        assert all(r["ok"] for r in replies), replies
        assert replies[0]["hashes"] == replies[1]["hashes"]
        assert sum(len(r["infos"][0]["received_keys"]) for r in replies) == 1


def test_strategy_matrix_errors_stay_in_the_offending_group():
    """Invalid strategy combinations and mismatched entries fail only the offending peer group, with the right
    error and its tensors unchanged, while another group on the same master syncs undisturbed; valid mixed
    strategies succeed."""
    with Cluster() as c:
        good = join(c, 2, dict(peer_group=1))
        bad = join(c, 2, dict(peer_group=2))
        cases = [
            ({0: {"strategy": "send_only", "keys": _keys(w=1)}, 1: {"strategy": "send_only", "keys": _keys(w=2)}},
             "SharedStateError", "send-only"),
            ({0: {"strategy": "receive_only"}, 1: {"strategy": "receive_only"}}, "SharedStateError", "receive_only"),
            ({0: {"keys": _keys(w=1)}, 1: {"keys": {**KEYS, "w": {"count": 10, "seed": 1}}}}, "MismatchError", "'w'"),
        ]
        for step, (per_peer, error, needle) in enumerate(cases):
            for k, p in enumerate(bad):
                kw = {"keys": KEYS, "rebuild": True, "revision": 3, **per_peer.get(k, {})}
                p.send("sync_state", **kw)
            # The other group syncs at the same time and is not disturbed.
            good_replies = _sync_all(good, rebuild=True, revision=3 + step, per_peer={0: {"keys": _keys(w=40)},
                                                                              1: {"keys": _keys(w=40)}})
            bad_replies = [p.recv(60) for p in bad]
            assert all(r["ok"] for r in good_replies), good_replies
            for r in bad_replies:
                assert not r["ok"] and r["error"] == error and needle in r["message"], r
                assert r["unchanged"]
        # Mixed strategies that are valid: send_only + receive_only, send_only + enforce_popular.
        for j, strategies in enumerate((("send_only", "receive_only"), ("send_only", "enforce_popular"))):
            replies = _sync_all(bad, rebuild=True, revision=3 + j, per_peer={
                0: {"strategy": strategies[0], "keys": _keys(w=11)}, 1: {"strategy": strategies[1], "keys": _keys(w=12)}})
            assert all(r["ok"] for r in replies), replies
            assert replies[1]["infos"][0]["received_keys"] == ["w"]
            assert replies[0]["hashes"] == replies[1]["hashes"]


def test_two_peer_groups_sync_different_states_at_once_without_cross_talk():
    """Two peer groups on one master sync different states at the same time; each gets exactly its own content
    and bytes."""
    with Cluster() as c:
        g1 = join(c, 2, dict(peer_group=1))
        g2 = join(c, 2, dict(peer_group=2))
        # Each group has one member behind, so both groups move bytes at the same time.
        for group, seed in ((g1, 100), (g2, 200)):
            group[0].send("sync_state", keys=_keys(w=seed, b=seed + 1), revision=5, rebuild=True)
            group[1].send("sync_state", keys=_keys(w=0, b=0), revision=0, rebuild=True)
        r1 = [p.recv(60) for p in g1]
        r2 = [p.recv(60) for p in g2]
        assert all(r["ok"] for r in r1 + r2), (r1, r2)
        for replies, seed in ((r1, 100), (r2, 200)):
            want = make_input("float32", KEYS["w"]["count"], seed, 0, "SUM")
            assert {r["hashes"]["w"] for r in replies} == {f"{pccl_py._core.content_hash(want.ctypes.data, want.nbytes):016x}"}
            assert replies[1]["infos"][0]["received_keys"] == ["b", "w"]
            assert replies[1]["infos"][0]["rx_bytes"] == KEY_BYTES["w"] + KEY_BYTES["b"]
        assert r1[0]["hashes"] != r2[0]["hashes"]


def test_a_peer_ahead_of_the_group_gets_the_error_the_others_continue():
    """A peer whose revision is ahead of the group gets SharedStateError saying so, and the others' sync
    succeeds."""
    with Cluster() as c:
        peers = join(c, 3)
        replies = _sync_all(peers, keys=KEYS, revision=1, rebuild=True)
        assert all(r["ok"] for r in replies)
        replies = _sync_all(peers, per_peer={0: {"advance": True}, 1: {"advance": True},
                                             2: {"keys": KEYS, "rebuild": True, "revision": 9}})
        assert replies[0]["ok"] and replies[1]["ok"], replies
        assert not replies[2]["ok"] and replies[2]["error"] == "SharedStateError" and "ahead" in replies[2]["message"]


def test_a_corrupt_source_is_detected_and_the_entry_fetched_again():
    """A source that lies about its content hash is detected: the receiver fetches the entry again and ends with
    the honest content."""
    big = {"w": {"count": 3 * MiB // 4 * 4, "seed": 1}}  # 12 MiB: split across both sources
    with Cluster() as c:
        peers = join(c, 3)
        # Peers 0 and 1 claim the same content; one of them lies about its hash. Peer 2 is behind.
        liar = 1
        per_peer = {0: {"keys": big, "revision": 2}, 1: {"keys": _keys_for(big, w=666), "revision": 2, "lie": {"w": 1}},
                    2: {"keys": _keys_for(big, w=0), "revision": 0}}
        replies = _sync_all(peers, rebuild=True, per_peer=per_peer, timeout=120)
        assert all(r["ok"] for r in replies), replies
        honest = replies[0]["hashes"]["w"]
        assert replies[2]["hashes"]["w"] == honest
        assert replies[2]["infos"][0]["rounds"] >= 2
        assert liar  # the liar keeps its own bytes (it never receives: it claims to be up to date)


def _keys_for(keys, **seeds):
    out = {k: dict(v) for k, v in keys.items()}
    for name, seed in seeds.items():
        out[name]["seed"] = seed
    return out


def _bytes_read(pid: int) -> int:
    """Bytes received so far on the process's TCP sockets (from `ss`, which reads the kernel's counters)."""
    out = subprocess.run(["ss", "-tinpH"], capture_output=True, text=True, timeout=10).stdout.splitlines()
    total = 0
    for head, info in zip(out[::2], out[1::2]):
        if f"pid={pid}," in head:
            m = re.search(r"bytes_received:(\d+)", info)
            total += int(m.group(1)) if m else 0
    return total


def _kill_sender_mid_transfer(n_sources: int):
    """Sources hold 256 MiB; a newcomer syncs; source 0 is killed once the newcomer has received 32 MiB
    on its sockets, so the kill lands while state bytes flow. Returns the newcomer's reply and the
    survivors' replies."""
    big = {"w": {"count": 64 * MiB, "seed": 1}}
    with Cluster() as c:
        peers = join(c, n_sources + 1, dict(heartbeat_timeout=2.0), timeout=60)
        receiver = peers[-1]
        per_peer = {k: {"keys": big, "revision": 4} for k in range(n_sources)}
        per_peer[n_sources] = {"keys": _keys_for(big, w=0), "revision": 0}
        baseline = _bytes_read(receiver.pid)
        for k, p in enumerate(peers):
            p.send("sync_state", rebuild=True, **per_peer[k])
        wait_until(lambda: _bytes_read(receiver.pid) - baseline, 60, "the newcomer to receive 32 MiB",
                   until=lambda got: got >= 32 * MiB, interval=0.001)
        peers[0].kill()
        replies = {p.index: p.recv(120) for p in peers[1:]}
        return replies[receiver.index], replies


def test_kill_sender_mid_transfer_fails_over_to_another_source():
    """When a sender is killed mid-transfer, the receiver fails over to another source and every survivor ends
    with the same content."""
    mine, replies = _kill_sender_mid_transfer(2)
    assert mine["ok"], mine
    assert mine["infos"][0]["failovers"] >= 1 and mine["infos"][0]["received_keys"] == ["w"]
    survivors = [r for r in replies.values()]
    assert all(r["ok"] for r in survivors), survivors
    assert len({r["hashes"]["w"] for r in survivors}) == 1


def test_kill_only_sender_mid_transfer_is_a_clear_error_and_tensors_are_unchanged():
    """When the only sender is killed mid-transfer, the receiver gets SharedStateError saying the source left,
    with its tensors unchanged."""
    mine, _ = _kill_sender_mid_transfer(1)
    assert not mine["ok"] and mine["error"] == "SharedStateError", mine
    assert "left during this sync" in mine["message"]
    assert mine["unchanged"]


# ---------------------------------------------------------------------------------------------
# arguments (checked before any traffic)


def test_bad_arguments_are_clear_errors():
    """Bad SharedState contents, read-only tensors, unknown strategies, a non-SharedState argument and reserved
    tags raise InvalidArgumentError naming the problem."""
    with pytest.raises(pccl_py.InvalidArgumentError, match="non-empty mapping"):
        pccl_py.SharedState({})
    with pytest.raises(pccl_py.InvalidArgumentError, match="keys must be non-empty strings"):
        pccl_py.SharedState({"": np.zeros(3)})
    with pytest.raises(pccl_py.InvalidArgumentError, match="revision must be an int"):
        pccl_py.SharedState({"w": np.zeros(3)}, revision=-1)
    with pytest.raises(pccl_py.InvalidArgumentError, match="not C-contiguous"):
        pccl_py.SharedState({"w": np.zeros((4, 4))[:, 1]})
    comm = pccl_py.Communicator("127.0.0.1:9")  # never connected: argument checks come first
    ro = np.zeros(3)
    ro.flags.writeable = False
    with pytest.raises(pccl_py.InvalidArgumentError, match="'w' is read-only"):
        comm.sync_shared_state(pccl_py.SharedState({"w": ro}))
    with pytest.raises(pccl_py.InvalidArgumentError, match="strategy must be one of"):
        comm.sync_shared_state(pccl_py.SharedState({"w": np.zeros(3)}), strategy="loudest")
    with pytest.raises(pccl_py.InvalidArgumentError, match="must be a pccl_py.SharedState"):
        comm.sync_shared_state({"w": np.zeros(3)})
    with pytest.raises(pccl_py.InvalidArgumentError, match="not connected"):
        comm.sync_shared_state(pccl_py.SharedState({"w": ro}), strategy="send-only")
    with pytest.raises(pccl_py.InvalidArgumentError, match="reserved"):
        comm.all_reduce(np.zeros(3), tag=0xFFFF0000)


def test_hash_is_a_fixed_function_of_the_bytes():
    """The content hash is a fixed function of the bytes (known values), the same for equal bytes in different
    arrays, and changes when one bit flips."""
    # Known values pin the function: a change would split peers running different versions.
    data = np.arange(100, dtype=np.uint8)
    got = [pccl_py._core.content_hash(data.ctypes.data, n) for n in (0, 1, 31, 32, 33, 100)]
    assert got == [0xF9BCB70563DE2090, 0x9E8477872F79442E, 0x1E1897047F557981, 0xC12F02E31F4FB194,
                   0xCA004969C91D82F2, 0x75C2DD183696CCD9]
    state = pccl_py.SharedState({"a": data, "b": data.copy()})
    h = state.hashes()
    assert h["a"] == h["b"] == got[-1]
    flipped = data.copy()
    flipped[57] ^= 0x10
    assert pccl_py._core.content_hash(flipped.ctypes.data, 100) != got[-1]
