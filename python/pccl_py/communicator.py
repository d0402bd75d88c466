"""The peer-side API: join a peer group through a master and all-reduce with its members.

This module only validates arguments and converts types; membership, failure handling and the
collectives themselves live in the C++ core (csrc/peer, csrc/collectives), which releases the GIL
whenever it waits on the network.

It also defines the communicator's package-internal interface (:class:`Internals`, reached through
:func:`internals`): what pccl_py's own protocols (shared-state sync, DiLoCo, the torch backend) may do
and users may not, i.e. ops on the tags reserved in :mod:`pccl_py.tags`. The trap it closes: modules
reaching into a communicator's private attributes, which nothing checks when those change.
"""

from __future__ import annotations

import threading
from typing import Any, Optional, Tuple, Union

from . import _core
from .buffers import DTYPE_CODES, Buffer, check_output, describe
from .errors import InvalidArgumentError
from .ops import Algorithm, DataType, Quantization, ReduceInfo, ReduceOp
from .secret import SecretLike, resolve_encryption, resolve_secret
from .shared_state import SharedState, SyncInfo, SyncStrategy, sync  # it imports this module only to type-check

from .tags import MAX_USER_TAG  # tags from here up belong to pccl_py's own collectives

_ALGORITHMS = {"auto": Algorithm.AUTO, "ring": Algorithm.RING, "star": Algorithm.STAR}
# The spellings quantization= accepts; the codes are the core's (csrc/kernels/codec.hpp).
_QUANTIZATIONS: dict[Optional[str], Quantization] = {None: Quantization.NONE,
                                                      **{q.name.lower(): q for q in Quantization}}
# The bound on tags of the library's own ops (Internals), which use the reserved range: any 32-bit tag.
_ANY_TAG = 2**32

# Arguments of the core's all_reduce and p2p, in their order.
_ReduceArgs = Tuple[int, int, int, DataType, ReduceOp, int, Algorithm, Quantization]
_P2PArgs = Tuple[bool, int, int, int, DataType, int]


def _planned(epoch: Optional[int]) -> int:
    """A point-to-point op's epoch= argument as the core takes it (0: none)."""
    if epoch is None:
        return 0
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 1:
        raise InvalidArgumentError(f"epoch must be None or a positive int (comm.epoch), not {epoch!r}")
    return epoch


def _quantization(value: Optional[str]) -> Quantization:
    try:
        return _QUANTIZATIONS[value.lower() if isinstance(value, str) else value]
    except (KeyError, TypeError):
        raise InvalidArgumentError(
            f"quantization must be None, 'fp16', 'bf16', 'q8' or 'q4', not {value!r}") from None


def _algorithm(value: Union[str, Algorithm]) -> Algorithm:
    if isinstance(value, Algorithm):
        return value
    try:
        return _ALGORITHMS[str(value).lower()]
    except KeyError:
        raise InvalidArgumentError(f"algorithm must be one of {', '.join(_ALGORITHMS)}, not {value!r}") from None


def _op(value: Union[ReduceOp, int, str]) -> ReduceOp:
    try:
        if isinstance(value, str):
            return ReduceOp[value.upper()]
        return ReduceOp(value)
    except (KeyError, ValueError):
        raise InvalidArgumentError(f"op must be a pccl_py.ReduceOp (SUM, AVG, PROD, MIN, MAX), not {value!r}") from None


def _split_advertise(address: Optional[str]) -> tuple[str, int]:
    if not address:
        return "", 0
    host, sep, port = address.rpartition(":")
    if not sep:
        return address, 0
    if not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise InvalidArgumentError(f"advertise_address must be 'host' or 'host:port', not {address!r}")
    return host, int(port)


def _reduce_args(x: Any, out: Any, op: Any, tag: Any, algorithm: Any, quantization: Optional[str],
                 max_tag: int = MAX_USER_TAG) -> Tuple[_ReduceArgs, Tuple[Buffer, Buffer]]:
    """Validates an all-reduce's arguments; returns the core's arguments and the buffers to keep alive."""
    src = describe(x, "x")
    if out is None:
        if not src.writeable:
            raise InvalidArgumentError("x is read-only and no out= was given; pass a writeable array or out=")
        dst = src
    else:
        dst = describe(out, "out")
        check_output(src, dst)
    if not isinstance(tag, int) or not 0 <= tag < max_tag:
        raise InvalidArgumentError(f"tag must be an int in [0, 0x{MAX_USER_TAG:X}) (higher tags are reserved), not {tag!r}")
    quant = _quantization(quantization)
    if quant and src.dtype not in ("float32", "float64"):
        raise InvalidArgumentError(
            f"quantization={quantization!r} applies to float32 and float64 tensors only, not {src.dtype}")
    args = (src.ptr, dst.ptr, src.count, DTYPE_CODES[src.dtype], _op(op), tag, _algorithm(algorithm), quant)
    return args, (src, dst)


def _p2p_args(send: bool, x: Any, peer: Any, tag: Any, max_tag: int = MAX_USER_TAG) -> Tuple[_P2PArgs, Buffer]:
    """Validates a send's or recv's arguments; returns the core's arguments and the buffer to keep alive."""
    what, role = ("send", "dst") if send else ("recv", "src")
    buf = describe(x, "x" if send else "out")
    if not send and not buf.writeable:
        raise InvalidArgumentError("recv: out is read-only; pass a writeable array")
    if isinstance(peer, bool) or not isinstance(peer, int):
        raise InvalidArgumentError(f"{what}: {role} must be an int rank, not {peer!r}")
    if isinstance(tag, bool) or not isinstance(tag, int) or not 0 <= tag < max_tag:
        raise InvalidArgumentError(
            f"{what}: tag must be an int in [0, 0x{MAX_USER_TAG:X}) (higher tags are reserved), not {tag!r}")
    if not -2**31 <= peer < 2**31:
        raise InvalidArgumentError(f"{what}: {role}={peer} is not a rank of the group")
    return (send, peer, buf.ptr, buf.count, DTYPE_CODES[buf.dtype], tag), buf


class AllReduceHandle:
    """An all-reduce running in the background. Keeps its buffers alive until it is waited for."""

    def __init__(self, core_op: _core.AsyncOp, buffers: Tuple[Buffer, ...]) -> None:
        self._op = core_op
        self._buffers = buffers
        self._info: Optional[ReduceInfo] = None

    def done(self) -> bool:
        """True once the op has finished (successfully or not); wait() then returns at once."""
        return self._op.done()

    def wait(self) -> ReduceInfo:
        """Blocks (without the GIL) until the op finishes; returns its ReduceInfo or raises its error."""
        if self._info is None:
            self._info = ReduceInfo.from_core(self._op.wait())
            self._buffers = ()
        return self._info


class P2PHandle(AllReduceHandle):
    """A send or recv running in the background (``send_async`` / ``recv_async``). Keeps its buffer
    alive until it is waited for; wait() returns the op's ReduceInfo (algorithm "p2p") or raises."""


class Internals:
    """The communicator's package-internal interface, for pccl_py's own modules only (not a user API).

    Reach it with :func:`internals`. Its ops accept any 32-bit tag, the ranges reserved in
    :mod:`pccl_py.tags` included, so a caller must use a tag allocated there. It also keeps the
    shared-state bookkeeping a sync needs across calls: the last synced revision, and the lock that
    makes two syncs on one communicator take turns (a sync is several ops on one reserved tag; two
    interleaved ones would pair each other's steps).
    """

    def __init__(self, core: _core.Communicator) -> None:
        self._core = core
        #: Revision of the last successful shared-state sync (None before the first).
        self.state_revision: Optional[int] = None
        self.state_lock = threading.Lock()

    def check_usable(self, what: str) -> None:
        """Raises the error a call named `what` would raise now (closed, evicted, master lost, not a member)."""
        self._core.check_usable(what)

    def all_reduce(self, x: Any, *, op: ReduceOp, tag: int) -> ReduceInfo:
        """all_reduce in place, on any tag."""
        args, _keep = _reduce_args(x, None, op, tag, "auto", None, max_tag=_ANY_TAG)
        return ReduceInfo.from_core(self._core.all_reduce(*args))

    def all_reduce_async(self, x: Any, *, op: ReduceOp, tag: int, out: Any = None,
                         quantization: Optional[str] = None) -> AllReduceHandle:
        """all_reduce_async on any tag."""
        args, keep = _reduce_args(x, out, op, tag, "auto", quantization, max_tag=_ANY_TAG)
        return AllReduceHandle(self._core.all_reduce_async(*args), keep)

    def p2p_async(self, send: bool, x: Any, peer: int, *, tag: int, planned_epoch: int = 0) -> P2PHandle:
        """send_async (send=True) or recv_async on any tag. With planned_epoch, peer is a rank of that
        epoch: the op fails with PeerLostError in any other one (and is never re-run in a later one)."""
        args, keep = _p2p_args(send, x, peer, tag, max_tag=_ANY_TAG)
        return P2PHandle(self._core.p2p_async(*args, planned_epoch), (keep,))


def internals(comm: Communicator) -> Internals:
    """The package-internal interface of `comm` (see :class:`Internals`)."""
    return comm._internals


class Communicator:
    """One peer of a peer group coordinated by a pccl_py master.

    Args:
        master_address: "host:port" of the master.
        peer_group: peers only reduce with members of the same group.
        connections_per_peer: TCP connections to each other member; one large op is striped over them.
        timeout: seconds a collective (or a master request) may take before it fails with TimeoutError.
        heartbeat_timeout: seconds of silence after which a peer, a link or the master counts as dead.
        join_timeout: seconds connect() waits for the members to admit this peer.
        listen_host: interface for incoming peer connections.
        listen_port: port for incoming peer connections (0: any free port).
        advertise_address: "host" or "host:port" other members should dial instead of this peer's
            own listener (NAT, port forwarding, the WAN emulator's relay); default: the address this
            peer uses to reach the master, with the listen port.
        master_grace: seconds a member keeps trying to rejoin a master restarted at the same address
            after losing it. Meanwhile all-reduces among healthy members keep running; calls that need
            the master (update_topology, resolving a failure) wait for it. 0 (default): losing the
            master is final (MasterLostError).
        swap_result_pages: publish results of 4 MiB and more by swapping the result's memory pages
            into the output array instead of copying them (private anonymous memory only, i.e.
            ordinary numpy arrays and CPU tensors; anything else is copied). Saves a full copy per
            op. Set False if the output memory is registered with a device by address
            (cudaHostRegister, RDMA) or mlock()ed: the swap gives it new physical pages.
        secret: the job secret (str or bytes) shared with the master; default: the ``PCCL_SECRET``
            environment variable; empty: none. connect() raises AuthenticationError at once when the
            master's secret differs (or only one side has one). See docs/security.md.
        encryption: "tls": every connection (to the master and to each member) runs TLS 1.3, keyed
            by the secret (required); the master must be started with encryption too, and connect()
            raises AuthenticationError when only one side encrypts. "none": clear text. Default: the
            ``PCCL_ENCRYPTION`` environment variable, else "none".
    """

    def __init__(
        self,
        master_address: str,
        *,
        peer_group: int = 0,
        connections_per_peer: int = 1,
        timeout: float = 60.0,
        heartbeat_timeout: float = 5.0,
        join_timeout: float = 600.0,
        listen_host: str = "0.0.0.0",
        listen_port: int = 0,
        advertise_address: Optional[str] = None,
        master_grace: float = 0.0,
        swap_result_pages: bool = True,
        secret: SecretLike = None,
        encryption: Optional[str] = None,
    ) -> None:
        if not isinstance(master_address, str) or ":" not in master_address:
            raise InvalidArgumentError(f"master_address must be 'host:port', not {master_address!r}")
        if not isinstance(peer_group, int) or not 0 <= peer_group < 2**32:
            raise InvalidArgumentError(f"peer_group must be an int in [0, 2**32), not {peer_group!r}")
        if not isinstance(connections_per_peer, int) or not 1 <= connections_per_peer <= 64:
            raise InvalidArgumentError(f"connections_per_peer must be an int in [1, 64], not {connections_per_peer!r}")
        for name, value, low in (("timeout", timeout, 0.1), ("heartbeat_timeout", heartbeat_timeout, 0.5),
                                 ("join_timeout", join_timeout, 0.1), ("master_grace", master_grace, 0.0)):
            if not isinstance(value, (int, float)) or not low <= value <= 86400:
                raise InvalidArgumentError(f"{name} must be a number of seconds in [{low}, 86400], not {value!r}")
        if not isinstance(listen_port, int) or not 0 <= listen_port <= 65535:
            raise InvalidArgumentError(f"listen_port must be an int in [0, 65535], not {listen_port!r}")
        if not isinstance(swap_result_pages, bool):
            raise InvalidArgumentError(f"swap_result_pages must be True or False, not {swap_result_pages!r}")
        advertise_host, advertise_port = _split_advertise(advertise_address)
        key = resolve_secret(secret)
        self.encrypted = resolve_encryption(encryption, key)
        self._core = _core.Communicator(_core.CommunicatorOptions(
            master_address=master_address, group=peer_group, connections=connections_per_peer,
            timeout=float(timeout), heartbeat_timeout=float(heartbeat_timeout), join_timeout=float(join_timeout),
            listen_host=listen_host, listen_port=listen_port, advertise_host=advertise_host,
            advertise_port=advertise_port, master_grace=float(master_grace), swap_result_pages=swap_result_pages,
            secret=key, encrypt=self.encrypted))
        self._internals = Internals(self._core)
        self.master_address = master_address
        #: Whether a job secret authenticates this communicator's connections (only holders of the
        #: secret can be members). The torch backend's object collectives require it (docs/security.md).
        self.authenticated = bool(key)
        self.peer_group = peer_group

    # -- membership -------------------------------------------------------------------------
    def connect(self) -> "Communicator":
        """Joins the group; blocks until admitted (the first peer of a group is admitted at once)."""
        self._core.connect()
        return self

    def update_topology(self) -> None:
        """Called by every member: admits pending peers. Returns once the new membership is usable."""
        self._core.update_topology()

    def are_peers_pending(self) -> bool:
        """True if peers are waiting for the members to call update_topology().

        Every member gets the same answer at the same point of its op sequence, so the loop
        ``op; if comm.are_peers_pending(): comm.update_topology()`` never strands a member inside an
        op while another votes. The answer is the one agreed at the end of the outcome this peer
        received last: an op's result or error (an async op's at ``wait()``), ``update_topology()``
        or ``connect()``; ``ReduceInfo.peers_pending`` carries the same value. Two calls with no such
        outcome in between (an idle polling loop), or a member alone in its group, get the master's
        live count instead: then no member is inside an op, so a vote cannot strand anyone.
        """
        return self._core.are_peers_pending()

    @property
    def world_size(self) -> int:
        """Number of members in the current epoch (0 when not a member)."""
        return self._core.world_size

    @property
    def rank(self) -> int:
        """This peer's position in the current ring order (-1 when not a member)."""
        return self._core.rank

    @property
    def epoch(self) -> int:
        """Membership epoch; it increases on every join, leave or failure."""
        return self._core.epoch

    @property
    def state_revision(self) -> Optional[int]:
        """Revision of this communicator's last successful shared-state sync (None before the first)."""
        return self._internals.state_revision

    @property
    def peer_id(self) -> int:
        """Identifier the master gave this peer (0 before connect())."""
        return self._core.peer_id

    def close(self) -> None:
        """Leaves the group gracefully; other members' next ops succeed without error."""
        self._core.close()

    def __enter__(self) -> "Communicator":
        if self.peer_id == 0:
            self.connect()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- collectives --------------------------------------------------------------------------
    def all_reduce(self, x: Any, *, op: ReduceOp = ReduceOp.SUM, out: Any = None, tag: int = 0,
                   algorithm: Union[str, Algorithm] = "auto", quantization: Optional[str] = None) -> ReduceInfo:
        """Reduces x element-wise across all members; the result is bitwise identical on every peer.

        In place unless out is given. x (and out) are numpy arrays or CPU torch tensors, contiguous,
        used without copying. On failure x and out are unchanged.

        quantization ("fp16", "bf16", "q8" or "q4"; float32/float64 only) shrinks what travels on the wire;
        each hop encodes once and every peer decodes the same bytes, so results stay bitwise
        identical across peers. See docs/quantization.md for error bounds and NaN/Inf handling.

        Raises:
            PeerLostError: a member died mid-op; retry to run among the survivors.
            TimeoutError, MasterLostError, EvictedError, MismatchError, InvalidArgumentError, ClosedError.
        """
        args, _keep = _reduce_args(x, out, op, tag, algorithm, quantization)
        return ReduceInfo.from_core(self._core.all_reduce(*args))

    def all_reduce_async(self, x: Any, *, op: ReduceOp = ReduceOp.SUM, out: Any = None, tag: int = 0,
                         algorithm: Union[str, Algorithm] = "auto",
                         quantization: Optional[str] = None) -> AllReduceHandle:
        """Starts all_reduce in the background. Ops on one tag run in submission order; use different
        tags for ops that may run concurrently. Do not touch x or out until wait() returns."""
        args, keep = _reduce_args(x, out, op, tag, algorithm, quantization)
        return AllReduceHandle(self._core.all_reduce_async(*args), keep)

    # -- point-to-point -------------------------------------------------------------------------
    def send(self, x: Any, dst: int, *, tag: int = 0, epoch: Optional[int] = None) -> ReduceInfo:
        """Sends x to the member of rank dst, which receives it with ``recv(out, src=<this rank>, tag=tag)``.

        Returns once dst holds the whole message. Sends on one (dst, tag) are received in the order they
        were issued; different tags or peers are independent channels. x and dst's out must have the
        same dtype and element count, else both sides raise MismatchError. Do not modify x until the call
        returns. The GIL is released while it waits.

        dst is a rank of the membership current when the call is made, and the partner it names is kept
        (by identity) if the op is re-run after a membership change both survive. Ranks shift when the
        membership changes, so a rank read before a change names someone else after it. Pass
        ``epoch=comm.epoch`` as read when the partner was chosen to have dst read in that epoch instead:
        the op then runs only in that epoch and raises PeerLostError if the membership changed before or
        while it ran.

        Raises:
            PeerLostError: dst died, was evicted or left before it held the message (raised on both sides);
                with epoch=, also any membership change since that epoch.
            TimeoutError: dst did not receive within the communicator's timeout.
            MismatchError, InvalidArgumentError (bad rank, own rank, bad tag), MasterLostError, EvictedError,
            ClosedError.
        """
        args, _keep = _p2p_args(True, x, dst, tag)
        return ReduceInfo.from_core(self._core.p2p(*args, _planned(epoch)))

    def recv(self, out: Any, src: int, *, tag: int = 0, epoch: Optional[int] = None) -> ReduceInfo:
        """Receives into out the message that the member of rank src sends with ``send(x, dst=<this rank>,
        tag=tag)``. out is written only once the whole message arrived and both sides agreed; on any
        failure it is unchanged. src and epoch as for ``send``'s dst. Raises what ``send`` raises."""
        args, _keep = _p2p_args(False, out, src, tag)
        return ReduceInfo.from_core(self._core.p2p(*args, _planned(epoch)))

    def send_async(self, x: Any, dst: int, *, tag: int = 0, epoch: Optional[int] = None) -> P2PHandle:
        """Starts ``send`` in the background; arguments are checked (and its place on the channel taken)
        before this returns. Do not touch x until wait() returns."""
        args, keep = _p2p_args(True, x, dst, tag)
        return P2PHandle(self._core.p2p_async(*args, _planned(epoch)), (keep,))

    def recv_async(self, out: Any, src: int, *, tag: int = 0, epoch: Optional[int] = None) -> P2PHandle:
        """Starts ``recv`` in the background. Do not touch out until wait() returns."""
        args, keep = _p2p_args(False, out, src, tag)
        return P2PHandle(self._core.p2p_async(*args, _planned(epoch)), (keep,))

    # -- shared state ---------------------------------------------------------------------------
    def sync_shared_state(self, state: SharedState,
                          strategy: Union[str, SyncStrategy] = "enforce_popular") -> SyncInfo:
        """Makes state bitwise identical across the group at revision previous + 1; every member calls it.

        Each entry's 64-bit content hash is compared; the most popular content at the expected revision
        wins (send-only peers outrank the vote; ties break by the smallest hash digest), and only entries
        that differ travel, split across every up-to-date peer. Received bytes are verified against the
        elected hash in a staging buffer before they are written into state's tensors, and re-fetched
        from another source on a mismatch. A peer lost mid-sync makes the sync start over with the
        survivors. In steady state nothing but a few hundred bytes of hashes moves.

        Args:
            state: the tensors and their revision; revision must be the group's previous revision + 1
                (any value on the first sync of this communicator's group, to resume from a checkpoint).
            strategy: "enforce_popular" (default), "receive_only" or "send_only".

        Raises:
            SharedStateError: this peer is ahead of the group, send-only peers disagree, every peer is
                receive-only, or no source delivered verified content; tensors are unchanged.
            MismatchError: members hold different key sets, dtypes or shapes (the message names the key).
            PeerLostError, TimeoutError, MasterLostError, EvictedError, ClosedError, InvalidArgumentError.
        """
        with self._internals.state_lock:
            return sync(self, self._internals, state, strategy)
