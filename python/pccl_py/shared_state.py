"""Shared state: named tensors every member of a peer group holds bitwise identical, one revision per step.

DiLoCo-style training needs every peer to start each outer step from the same parameters, and a
newcomer needs those parameters before its first step. Rather than broadcasting everything from one
peer, each sync compares 64-bit content hashes (computed in C++, GIL released), elects the group's
content, and moves only the entries that differ, split across every up-to-date peer. Received bytes
land in staging buffers and reach the caller's tensors only after their hash checks out.

A sync is a sequence of collectives on a reserved tag, each carrying the engine's guarantees:
  1. gather every member's header (peer id, revision, strategy, size and digest of its key table);
  2. gather the key tables (name, dtype, shape, content hash per entry), unless every member's table has
     the same size and digest: then every member already holds the others' tables (the steady state,
     which thus moves one header row per member instead of every table to every member);
  3. every member computes the same plan from the same tables (``plan_sync``: a pure function);
  4. point-to-point sends and receives (on the same tag) move the dirty bytes; receivers verify hashes;
  5. if anything moved, gather the verification results, and re-fetch mismatched entries from
     another source, one source per round.
A peer loss or a membership change in any step aborts it on every member; the sync then starts over
with the survivors, so a dead sender means the receiver fails over to another source.
"""

from __future__ import annotations

import ctypes
import enum
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence, Tuple, Type, Union

import numpy as np

from . import _core
from .buffers import Buffer, describe
from .errors import InvalidArgumentError, MismatchError, PeerLostError, SharedStateError
from .ops import ReduceInfo, ReduceOp
from .tags import STATE_TAG

if TYPE_CHECKING:  # communicator imports this module at run time
    from .communicator import Communicator, Internals, P2PHandle

_NO_REVISION = (1 << 64) - 1
_HEADER_WORDS = 9  # valid, epoch, rank, revision, last revision, strategy, table size, table digest, peer id
_MAX_ATTEMPTS = 20
# Pieces of one entry below this size are not worth splitting across sources.
_MIN_PART_BYTES = 1 << 20
# A key table larger than this (about 100,000 keys) is refused as malformed.
_MAX_TABLE_BYTES = 64 << 20
# Below this total, hashing threads cost more than they save.
_PARALLEL_HASH_BYTES = 8 << 20
# Bytes per element of every dtype a table may name. A table's byte count is never taken on its
# sender's word: it must equal elements x itemsize (docs/security.md, "Hostile members"), or a hostile rank 0 could make every
# peer allocate terabytes, or copy a short staging buffer over a longer tensor.
_ITEMSIZE = {"int8": 1, "uint8": 1, "int16": 2, "uint16": 2, "int32": 4, "uint32": 4, "int64": 8, "uint64": 8,
             "float16": 2, "bfloat16": 2, "float32": 4, "float64": 8}


class SyncStrategy(str, enum.Enum):
    """How a peer takes part in the election of the group's content."""

    ENFORCE_POPULAR = "enforce_popular"  # vote with its content; adopt the most popular content
    RECEIVE_ONLY = "receive_only"        # never a source; always adopt the group's content
    SEND_ONLY = "send_only"              # its content must win; never receives

    @classmethod
    def parse(cls, value: Union["SyncStrategy", str]) -> "SyncStrategy":
        if isinstance(value, cls):
            return value
        try:
            return cls(str(value).lower().replace("-", "_"))
        except ValueError:
            raise InvalidArgumentError(
                f"strategy must be one of {', '.join(s.value for s in cls)}, not {value!r}") from None


_STRATEGY_CODES = {SyncStrategy.ENFORCE_POPULAR: 0, SyncStrategy.RECEIVE_ONLY: 1, SyncStrategy.SEND_ONLY: 2}
_STRATEGY_BY_CODE = {v: k for k, v in _STRATEGY_CODES.items()}


@dataclass(frozen=True)
class StateEntry:
    """One named tensor of a SharedState.

    allow_content_inequality: members at the current revision may hold different content for this
    entry (it is neither compared nor transferred among them); peers that are behind still receive it.
    """

    tensor: Any
    allow_content_inequality: bool = False


class SharedState:
    """Named tensors (numpy arrays or contiguous CPU torch tensors) plus a revision counter.

    Increment ``revision`` by exactly one before each sync; the first sync of a run accepts any value,
    so a run can resume from a checkpoint. Tensors are used in place: a sync that receives content
    writes into them (only after verification).
    """

    def __init__(self, entries: Mapping[str, Union[Any, StateEntry]], revision: int = 0) -> None:
        if not isinstance(entries, Mapping) or not entries:
            raise InvalidArgumentError("SharedState needs a non-empty mapping of name -> tensor")
        self.entries: Dict[str, StateEntry] = {}
        for name, value in entries.items():
            if not isinstance(name, str) or not name or len(name.encode()) > 1024:
                raise InvalidArgumentError(f"shared state keys must be non-empty strings of at most 1024 bytes, not {name!r}")
            entry = value if isinstance(value, StateEntry) else StateEntry(value)
            describe(entry.tensor, f"shared state entry {name!r}")
            self.entries[name] = entry
        self.revision = revision

    @property
    def revision(self) -> int:
        return self._revision

    @revision.setter
    def revision(self, value: int) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < (1 << 63):
            raise InvalidArgumentError(f"revision must be an int in [0, 2**63), not {value!r}")
        self._revision = value

    def keys(self) -> List[str]:
        return sorted(self.entries)

    def hashes(self) -> Dict[str, int]:
        """64-bit content hash of every entry (the same function on every platform)."""
        bufs = {name: describe(e.tensor, f"shared state entry {name!r}") for name, e in self.entries.items()}
        return _hash_buffers(bufs)


@dataclass(frozen=True)
class SyncInfo:
    """What one sync did on this peer. Byte counts are state payload only (headers excluded)."""

    revision: int
    tx_bytes: int
    rx_bytes: int
    received_keys: List[str] = field(default_factory=list)
    retries: int = 0  # restarts after a peer loss or membership change mid-sync
    rounds: int = 0   # exchange rounds; more than one means an entry failed verification and was re-fetched
    failovers: int = 0  # restarts because a peer was lost while bytes were moving
    # Everything this sync sent and received, its table gathers and verification rounds included.
    total_tx_bytes: int = 0
    total_rx_bytes: int = 0


# ---------------------------------------------------------------------------------------------
# hashing


def _hash(buf: Buffer) -> int:
    return _core.content_hash(buf.ptr, buf.nbytes)


def _hash_buffers(bufs: Mapping[str, Buffer]) -> Dict[str, int]:
    total = sum(b.nbytes for b in bufs.values())
    if len(bufs) > 1 and total >= _PARALLEL_HASH_BYTES:
        with ThreadPoolExecutor(max_workers=min(len(bufs), os.cpu_count() or 1)) as pool:
            return dict(zip(bufs, pool.map(_hash, bufs.values())))
    return {name: _hash(b) for name, b in bufs.items()}


# ---------------------------------------------------------------------------------------------
# the plan: a pure function of the gathered tables, so every member computes the same one


@dataclass(frozen=True)
class KeyMeta:
    name: str
    dtype: str
    shape: Tuple[int, ...]
    nbytes: int
    hash: int
    allow_inequality: bool


@dataclass(frozen=True)
class PeerMeta:
    rank: int
    peer_id: int
    revision: int
    last_revision: Optional[int]  # the revision of this peer's last successful sync in this run
    strategy: SyncStrategy
    keys: Tuple[KeyMeta, ...]


@dataclass(frozen=True)
class TransferPlan:
    slot: int
    key: str
    src: int  # rank
    dst: int  # rank
    offset: int
    nbytes: int


@dataclass
class SyncPlan:
    """The outcome of the election, identical on every member."""

    revision: int = 0
    group_error: Optional[Tuple[Type[Exception], str]] = None
    peer_errors: Dict[int, str] = field(default_factory=dict)  # rank -> why that peer fails
    target_hash: Dict[str, int] = field(default_factory=dict)
    receives: Dict[int, List[str]] = field(default_factory=dict)  # rank -> keys it receives
    sources: Dict[str, List[int]] = field(default_factory=dict)   # key -> ranks holding the target content
    transfers: List[TransferPlan] = field(default_factory=list)


def _split(nbytes: int, parts: int) -> List[Tuple[int, int]]:
    base, rem = divmod(nbytes, parts)
    out, off = [], 0
    for i in range(parts):
        n = base + (1 if i < rem else 0)
        out.append((off, n))
        off += n
    return out


def plan_sync(peers: Sequence[PeerMeta], group: int = 0, seen_revision: Optional[int] = None) -> SyncPlan:
    """Elects the group's content and plans who sends which bytes to whom. Deterministic.

    seen_revision: the revision an earlier attempt of the same sync elected. If every peer holding it
    has left since, the survivors must not silently elect their own stale content instead.
    """
    plan = SyncPlan()
    where = f"peer group {group}"
    # 1. Every member must describe the same entries.
    ref = peers[0]
    for p in peers[1:]:
        mine = {k.name: k for k in ref.keys}
        theirs = {k.name: k for k in p.keys}
        for name in sorted(set(mine) | set(theirs)):
            a, b = mine.get(name), theirs.get(name)
            if a is None or b is None:
                holder, other = (ref, p) if b is None else (p, ref)
                plan.group_error = (MismatchError, (
                    f"shared state key {name!r} exists on peer {holder.peer_id} but not on peer {other.peer_id} "
                    f"of {where}; every peer must sync the same keys"))
                return plan
            if (a.dtype, a.shape) != (b.dtype, b.shape):
                plan.group_error = (MismatchError, (
                    f"shared state key {name!r} is {a.dtype}{list(a.shape)} on peer {ref.peer_id} but "
                    f"{b.dtype}{list(b.shape)} on peer {p.peer_id} of {where}; every peer must use the same dtype and shape"))
                return plan
            if a.allow_inequality != b.allow_inequality:
                plan.group_error = (MismatchError, (
                    f"shared state key {name!r} has allow_content_inequality={a.allow_inequality} on peer "
                    f"{ref.peer_id} but {b.allow_inequality} on peer {p.peer_id} of {where}"))
                return plan

    capable = [p for p in peers if p.strategy != SyncStrategy.RECEIVE_ONLY]
    if not capable:
        plan.group_error = (SharedStateError, (
            f"every peer of {where} called sync_shared_state with strategy receive_only, so nobody offers the "
            "state; at least one peer must use enforce_popular or send_only"))
        return plan

    def signature(p: PeerMeta) -> Tuple[int, ...]:
        return tuple(k.hash for k in p.keys if not k.allow_inequality)

    def digest(sig: Tuple[int, ...], revision: int) -> int:
        data = np.array((revision,) + sig, dtype=np.uint64)
        return _core.content_hash(data.ctypes.data, data.nbytes)

    # 2. The revision the group moves to.
    known = [p.last_revision for p in peers if p.last_revision is not None]
    if known:
        expected = max(known) + 1
        pool = [p for p in capable if p.revision == expected]
        if not pool:
            plan.group_error = (SharedStateError, (
                f"no peer of {where} that offers its state advanced it to revision {expected} (the group is at "
                f"{max(known)}); increment state.revision by exactly one before each sync"))
            return plan
    else:
        pool = list(capable)  # the first sync of a run accepts any revision: resuming from a checkpoint

    # 3. Election: send-only peers outrank the vote; otherwise the most popular (revision, content) wins.
    senders = [p for p in pool if p.strategy == SyncStrategy.SEND_ONLY]
    if senders:
        first = senders[0]
        for p in senders[1:]:
            if (p.revision, signature(p)) != (first.revision, signature(first)):
                diff = next((a.name for a, b in zip(first.keys, p.keys) if a.hash != b.hash and not a.allow_inequality),
                            None)
                what = f"different content for key {diff!r}" if diff else f"revisions {first.revision} and {p.revision}"
                plan.group_error = (SharedStateError, (
                    f"send-only peers {first.peer_id} and {p.peer_id} of {where} hold {what}; at most one content "
                    "can be enforced, so make them agree or let one of them use enforce_popular"))
                return plan
        winners = senders
    else:
        votes: Dict[Tuple[int, Tuple[int, ...]], List[PeerMeta]] = {}
        for p in pool:
            votes.setdefault((p.revision, signature(p)), []).append(p)
        # Ties go to the smallest digest: arbitrary, but the same on every peer.
        best = min(votes, key=lambda v: (-len(votes[v]), digest(v[1], v[0])))
        winners = votes[best]
    representative = min(winners, key=lambda p: p.rank)
    expected = representative.revision
    if seen_revision is not None and expected < seen_revision:
        plan.group_error = (SharedStateError, (
            f"every peer of {where} that held the shared state at revision {seen_revision} left during this sync; "
            "nobody left can provide it. Your tensors are unchanged; restore the state from a checkpoint"))
        return plan
    plan.revision = expected
    plan.target_hash = {k.name: k.hash for k in representative.keys}

    # 4. Who fails, who receives what, who can send what.
    for p in peers:
        if p.revision > expected:
            plan.peer_errors[p.rank] = (
                f"this peer's shared state is at revision {p.revision}, ahead of {where}, which moves to revision "
                f"{expected}; a peer cannot be ahead of the group: load the group's revision or increment by one per step")
        elif p.strategy == SyncStrategy.SEND_ONLY and (p.revision != expected or signature(p) != signature(representative)):
            plan.peer_errors[p.rank] = (
                f"this peer uses strategy send_only but its shared state (revision {p.revision}) differs from "
                f"{where}'s (revision {expected}); a send-only peer cannot receive: use enforce_popular or receive_only")
    up_to_date = [p for p in capable if p.rank not in plan.peer_errors and p.revision == expected]
    for k_index, key in enumerate(representative.keys):
        plan.sources[key.name] = [p.rank for p in up_to_date if p.keys[k_index].hash == key.hash]
    for p in peers:
        if p.rank in plan.peer_errors or p.strategy == SyncStrategy.SEND_ONLY:
            continue
        behind = p.revision < expected
        dirty = [k.name for k, mine in zip(representative.keys, p.keys)
                 if mine.hash != k.hash and (behind or not k.allow_inequality)]
        if dirty:
            plan.receives[p.rank] = dirty
    return plan


def plan_transfers(plan: SyncPlan, sizes: Mapping[str, int], round_index: int,
                   failed: Optional[Mapping[int, List[str]]] = None) -> List[TransferPlan]:
    """Round 0 splits each dirty entry across all its sources. Later rounds re-fetch entries whose hash
    did not match, whole, from one source each, a different one every round."""
    transfers: List[TransferPlan] = []
    wanted = plan.receives if round_index == 0 else (failed or {})
    for dst in sorted(wanted):
        for key in sorted(wanted[dst]):
            sources = [s for s in plan.sources[key] if s != dst]
            if not sources:
                continue
            nbytes = sizes[key]
            if round_index == 0:
                parts = max(1, min(len(sources), nbytes // _MIN_PART_BYTES))
                start = (dst + len(transfers)) % len(sources)  # spread small entries over sources
                for i, (off, n) in enumerate(_split(nbytes, parts)):
                    src = sources[(start + i) % len(sources)]
                    transfers.append(TransferPlan(len(transfers), key, src, dst, off, n))
            else:
                src = sources[(round_index - 1) % len(sources)]
                transfers.append(TransferPlan(len(transfers), key, src, dst, 0, nbytes))
    return transfers


# ---------------------------------------------------------------------------------------------
# running a sync


class _Restart(Exception):
    """The gathered tables do not describe one consistent membership: start the sync over."""


class _Traffic:
    """Bytes a sync moved in all its collectives, failed attempts excluded (their ops did not report)."""

    def __init__(self) -> None:
        self.tx = self.rx = 0

    def add(self, info: ReduceInfo) -> ReduceInfo:
        self.tx += info.tx_bytes
        self.rx += info.rx_bytes
        return info


def _gather_tables(comm: Communicator, lib: Internals, header_row: np.ndarray[Any, Any], blob: bytes,
                   traffic: _Traffic) -> Tuple[List[PeerMeta], int, int]:
    world = comm.world_size
    header = np.zeros((world, _HEADER_WORDS), dtype=np.uint64)
    rank = comm.rank
    if not 0 <= rank < world:
        raise _Restart()
    header[rank] = header_row
    header[rank, 1] = comm.epoch
    header[rank, 2] = rank
    info = traffic.add(lib.all_reduce(header, op=ReduceOp.SUM, tag=STATE_TAG))
    if info.world_size != world or info.rank != rank:
        raise _Restart()
    for i in range(world):
        if header[i, 0] != 1 or header[i, 1] != info.epoch or header[i, 2] != i:
            raise _Restart()
    if int(header[:, 6].max()) > _MAX_TABLE_BYTES or int(header[:, 5].max()) > 2:
        raise SharedStateError("a peer sent a malformed shared-state header (strategy or table size out of range)")
    if len(set(header[:, 6].tolist())) == 1 and len(set(header[:, 7].tolist())) == 1:
        # Same size and digest everywhere: every table is this member's own (a 64-bit digest, the
        # same trust the per-entry content hashes already carry).
        tables = [blob] * world
    else:
        width = int(header[:, 6].max())
        blobs = np.zeros((world, width), dtype=np.uint8)
        blobs[rank, :len(blob)] = np.frombuffer(blob, dtype=np.uint8)
        info2 = traffic.add(lib.all_reduce(blobs, op=ReduceOp.SUM, tag=STATE_TAG))
        if info2.epoch != info.epoch:
            raise _Restart()
        tables = []
        for i in range(world):
            n = int(header[i, 6])
            if _core.content_hash(blobs[i].ctypes.data, n) != int(header[i, 7]):
                raise _Restart()
            tables.append(blobs[i, :n].tobytes())
    parsed: Dict[bytes, Tuple[KeyMeta, ...]] = {}
    peers = []
    for i in range(world):
        try:
            keys = parsed.get(tables[i])
            if keys is None:
                keys = parsed[tables[i]] = _parse_table(tables[i])
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise SharedStateError(f"the peer at rank {i} sent a malformed shared-state table ({exc})") from None
        peer_id = int(header[i, 8])
        for k in keys:
            _check_announced_size(k, i, peer_id)
        peers.append(PeerMeta(
            rank=i, peer_id=peer_id, revision=int(header[i, 3]),
            last_revision=None if int(header[i, 4]) == _NO_REVISION else int(header[i, 4]),
            strategy=_STRATEGY_BY_CODE[int(header[i, 5])], keys=keys))
    return peers, info.epoch, rank


def _parse_table(table: bytes) -> Tuple[KeyMeta, ...]:
    doc = json.loads(table)
    keys = tuple(sorted((KeyMeta(str(k[0]), str(k[1]), tuple(int(d) for d in k[2]), int(k[3]), int(k[4], 16),
                                 bool(k[5])) for k in doc["keys"]), key=lambda k: k.name))
    if len({k.name for k in keys}) != len(keys):
        raise ValueError("duplicate key names")
    return keys


def _check_announced_size(k: KeyMeta, rank: int, peer_id: int) -> None:
    """Raises SharedStateError unless the entry's byte count is exactly its dtype's itemsize times its
    element count (checked on every peer, for every peer's table, before anything is allocated)."""
    itemsize = _ITEMSIZE.get(k.dtype)
    elements = 1
    for d in k.shape:
        elements *= d
    negative = any(d < 0 for d in k.shape)
    if itemsize is None or negative or k.nbytes != elements * itemsize:
        expected = ("no size (unknown dtype)" if itemsize is None else "no size (negative dimension)" if negative
                    else f"{elements * itemsize} bytes")
        raise SharedStateError(
            f"the peer at rank {rank} (peer id {peer_id}) announced shared state key {k.name!r} as {k.dtype}"
            f"{list(k.shape)} of {k.nbytes} bytes, but that dtype and shape make {expected}; its table is corrupt "
            "or hostile, so this sync is refused on every peer and your tensors are unchanged")


def sync(comm: Communicator, lib: Internals, state: SharedState,
         strategy: Union[SyncStrategy, str] = SyncStrategy.ENFORCE_POPULAR) -> SyncInfo:
    """Implementation of Communicator.sync_shared_state (see there); lib is comm's package-internal
    interface (ops on STATE_TAG, the last synced revision). The caller holds lib.state_lock."""
    if not isinstance(state, SharedState):
        raise InvalidArgumentError(f"state must be a pccl_py.SharedState, not {type(state).__name__}")
    strategy = SyncStrategy.parse(strategy)
    names = state.keys()
    bufs = {n: describe(state.entries[n].tensor, f"shared state entry {n!r}") for n in names}
    if strategy != SyncStrategy.SEND_ONLY:
        for n, b in bufs.items():
            if not b.writeable:
                raise InvalidArgumentError(
                    f"shared state entry {n!r} is read-only, but strategy {strategy.value} may have to write into it; "
                    "pass writeable arrays or use strategy send_only")
    lib.check_usable("sync_shared_state")
    last = lib.state_revision
    hashes = _hash_buffers(bufs)
    blob = json.dumps({"keys": [
        [n, bufs[n].dtype, list(_shape(state.entries[n].tensor)), bufs[n].nbytes, f"{hashes[n]:016x}",
         state.entries[n].allow_content_inequality] for n in names]}, separators=(",", ":")).encode()
    blob_arr = np.frombuffer(blob, dtype=np.uint8)
    row = np.array([1, 0, 0, state.revision, _NO_REVISION if last is None else last, _STRATEGY_CODES[strategy],
                    len(blob), _core.content_hash(blob_arr.ctypes.data, len(blob)), comm.peer_id], dtype=np.uint64)
    tx = rx = failovers = 0
    seen_revision: Optional[int] = None
    last_error: Optional[Exception] = None
    # Restarts: a member died or the membership changed under the sync. A MismatchError can only come
    # from members that sized a table for different memberships, so it restarts too.
    restart = (_Restart, PeerLostError, MismatchError)
    traffic = _Traffic()
    for attempt in range(_MAX_ATTEMPTS):
        try:
            peers, epoch, rank = _gather_tables(comm, lib, row, blob, traffic)
        except restart as exc:
            last_error = exc
            continue
        plan = plan_sync(peers, comm.peer_group, seen_revision)
        if plan.group_error:
            cls, msg = plan.group_error
            raise cls(msg)
        seen_revision = plan.revision
        try:
            received, t, r, rounds = _transfer(lib, plan, peers, epoch, rank, bufs, traffic)
        except restart as exc:
            failovers += isinstance(exc, PeerLostError)
            last_error = exc
            continue
        tx += t
        rx += r
        if rank in plan.peer_errors:
            raise SharedStateError(plan.peer_errors[rank])
        if received is None:
            raise SharedStateError(
                f"sync_shared_state: no source delivered content matching the elected hash for every dirty key "
                f"(tried every source of peer group {comm.peer_group}); your tensors are unchanged")
        for name, staging in received.items():
            _core.copy_bytes(bufs[name].ptr, staging.ctypes.data, bufs[name].nbytes)
        state.revision = plan.revision
        lib.state_revision = plan.revision
        return SyncInfo(revision=plan.revision, tx_bytes=tx, rx_bytes=rx, received_keys=sorted(received),
                        retries=attempt, rounds=rounds, failovers=failovers,
                        total_tx_bytes=traffic.tx, total_rx_bytes=traffic.rx)
    raise PeerLostError(f"sync_shared_state: the membership kept changing; gave up after {_MAX_ATTEMPTS} attempts "
                        f"(last error: {last_error}); your tensors are unchanged")


_WINDOW = 16  # point-to-point ops of one sync in flight at once on a peer (each waits on a thread)


def _move(lib: Internals, transfers: Sequence[TransferPlan], rank: int, epoch: int, bufs: Mapping[str, Buffer],
          staging: Mapping[str, np.ndarray[Any, Any]]) -> Tuple[int, int]:
    """This peer's part of one round: a send or recv (Communicator's point-to-point, on STATE_TAG, only
    valid in `epoch`) per transfer it takes part in, issued in plan order, at most _WINDOW at a time.

    Every member issues its ops in the one plan order, so the ops of a channel pair up in order, and the
    earliest unfinished transfer is always in both its parties' windows: the window cannot deadlock. A
    failure (a lost peer, a membership change) fails the remaining ops at once; the first error is
    raised once none is in flight any more. Returns (tx bytes, rx bytes)."""
    pending: List[P2PHandle] = []
    error: Optional[BaseException] = None
    tx = rx = 0

    def settle(handle: P2PHandle) -> None:
        nonlocal error, tx, rx
        try:
            info = handle.wait()
            tx += info.tx_bytes
            rx += info.rx_bytes
        except Exception as exc:  # noqa: BLE001 - the first one is raised below
            error = error or exc

    for t in transfers:
        if error is not None:
            break
        if rank not in (t.src, t.dst):
            continue
        if len(pending) >= _WINDOW:
            settle(pending.pop(0))
        try:
            if t.src == rank:
                region = np.ctypeslib.as_array((ctypes.c_uint8 * t.nbytes).from_address(bufs[t.key].ptr + t.offset)) \
                    if t.nbytes else np.empty(0, np.uint8)
                pending.append(lib.p2p_async(True, region, t.dst, tag=STATE_TAG, planned_epoch=epoch))
            else:
                pending.append(lib.p2p_async(False, staging[t.key][t.offset:t.offset + t.nbytes], t.src,
                                             tag=STATE_TAG, planned_epoch=epoch))
        except Exception as exc:  # noqa: BLE001 - raised once the ops in flight ended
            error = exc
    for h in pending:
        settle(h)
    if error is not None:
        raise error
    return tx, rx


def _shape(tensor: Any) -> Tuple[int, ...]:
    return tuple(int(d) for d in tensor.shape)


def _transfer(lib: Internals, plan: SyncPlan, peers: Sequence[PeerMeta], epoch: int, rank: int,
              bufs: Mapping[str, Buffer],
              traffic: _Traffic) -> Tuple[Optional[Dict[str, np.ndarray[Any, Any]]], int, int, int]:
    """Runs the exchange rounds. Returns (verified staging buffers of this peer, or None if some entry
    could not be verified; tx bytes; rx bytes; rounds run)."""
    sizes = {k.name: k.nbytes for k in peers[0].keys}
    for name, n in sizes.items():  # the tables agree on dtype and shape (plan_sync); this is the local entry
        if name in bufs and n != bufs[name].nbytes:
            raise SharedStateError(
                f"peer {peers[0].peer_id} (rank 0) announced {n} bytes for shared state key {name!r}, but this peer's "
                f"entry has {bufs[name].nbytes}; nothing was received and your tensors are unchanged")
    mine = plan.receives.get(rank, [])
    staging = {name: np.empty(sizes[name], dtype=np.uint8) for name in mine}
    verified: Dict[str, np.ndarray[Any, Any]] = {}
    failed: Dict[int, List[str]] = {}
    tx = rx = rounds = 0
    max_rounds = 1 + max((len(s) for s in plan.sources.values()), default=0)
    for round_index in range(max_rounds):
        transfers = plan_transfers(plan, sizes, round_index, failed)
        if not transfers:
            break
        rounds += 1
        t_bytes, r_bytes = _move(lib, transfers, rank, epoch, bufs, staging)
        tx += t_bytes
        rx += r_bytes
        traffic.tx += t_bytes
        traffic.rx += r_bytes
        arrived = sorted({t.key for t in transfers if t.dst == rank})
        bad = [name for name in arrived
               if _core.content_hash(staging[name].ctypes.data, sizes[name]) != plan.target_hash[name]]
        for name in arrived:
            if name not in bad:
                verified[name] = staging[name]
        # Everyone learns which entries failed where, so the next round's plan is the same everywhere.
        keys = [k.name for k in peers[0].keys]
        table = np.zeros((len(peers), len(keys)), dtype=np.uint8)
        for name in bad:
            table[rank, keys.index(name)] = 1
        info = traffic.add(lib.all_reduce(table, op=ReduceOp.MAX, tag=STATE_TAG))
        if info.epoch != epoch:
            raise _Restart()
        failed = {r: [keys[j] for j in np.flatnonzero(table[r])] for r in range(len(peers)) if table[r].any()}
        if not failed:
            break
    if any(name not in verified for name in mine):
        return None, tx, rx, rounds
    return verified, tx, rx, rounds


__all__ = ["SharedState", "StateEntry", "SyncInfo", "SyncStrategy", "plan_sync", "STATE_TAG"]
