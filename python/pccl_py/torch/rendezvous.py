"""Finds (or hosts) the pccl master through torch's store, and brings a group's members together.

Why this exists: torch.distributed gives a backend a key-value store shared by the group, a rank
and a size, but pccl needs a master address and an admission protocol (the first peer of a group
is admitted at once, later peers only when every member calls ``update_topology()``). This module
turns the former into the latter:

* master: ``PCCL_MASTER_ADDR=host:port`` selects an external master (``pccl-master``). Otherwise
  rank 0 of the default group starts a :class:`pccl_py.Master` in its own process on a free port and
  publishes "host:port" under :data:`MASTER_KEY` in the group's store; the other ranks read it from
  there. Subgroups reuse that master, each with a peer_group id of its own derived from torch's group
  name (identical on every rank). If the default group is not a pccl group, each pccl group's rank 0
  hosts a master for that group.
* secret: every connection to the master and between peers is authenticated with a job secret
  (docs/security.md). ``PCCL_SECRET`` on every rank is used when set (and must be set for an
  external master that has one). Otherwise rank 0 generates a random secret for the master it
  hosts and publishes it in the store under :data:`SECRET_KEY`, so the group is authenticated
  without configuration. The trap: torch's TCPStore itself is unauthenticated, so whoever can reach
  the store can read that secret; on an untrusted network set ``PCCL_SECRET`` (it is then never
  written to the store) and firewall the store's port.
* encryption: ``pg_options={"encryption": "tls"}`` on ``init_process_group`` (or ``PCCL_ENCRYPTION=tls``
  on every rank) encrypts every connection; a master hosted here is started with it too.
* admission: every member connects, and members keep voting ``update_topology()`` while peers are
  pending, until the group has all its members; then one all_reduce checks that the members are
  exactly the group's ranks (each torch rank exactly once).
"""

from __future__ import annotations

import os
import socket
import time
import zlib
from typing import Any, Optional

import numpy as np

from ..communicator import Communicator
from ..errors import TimeoutError as PcclTimeoutError
from ..master import Master
from ..ops import ReduceOp
from ..secret import ENV_SECRET, generate_secret, resolve_secret

MASTER_KEY = "pccl_master"
SECRET_KEY = "pccl_secret"  # the generated secret, or "" when rank 0 took it from PCCL_SECRET
ENV_MASTER = "PCCL_MASTER_ADDR"          # use this external master instead of hosting one
ENV_MASTER_HOST = "PCCL_MASTER_HOST"     # address other ranks dial to reach a hosted master
ENV_HEARTBEAT = "PCCL_HEARTBEAT_TIMEOUT"  # seconds; default 5

# The default group's master address, for subgroups created later in this process.
_default_master: Optional[str] = None
# The job secret of each master address this process found (secret_for()).
_secrets: dict[str, bytes] = {}


def secret_for(address: str) -> bytes:
    """The job secret for the master at `address`, as find_master() settled it."""
    return _secrets.get(address, resolve_secret(None))


def peer_group_id(group_name: str) -> int:
    """A peer_group id that every rank derives identically from torch's group name."""
    return zlib.crc32(group_name.encode()) & 0xFFFFFFFF


def heartbeat_timeout() -> float:
    return float(os.environ.get(ENV_HEARTBEAT, "5.0"))


def _advertised_host(store: Any) -> str:
    """The address other ranks should dial for a master hosted here: PCCL_MASTER_HOST, else the host of
    torch's TCPStore (which rank 0 serves, so it reaches this machine), else MASTER_ADDR, else this
    host's name."""
    host = os.environ.get(ENV_MASTER_HOST)
    if host:
        return host
    s = store
    for _ in range(16):
        if hasattr(s, "host") and getattr(s, "host", None):
            return str(s.host)
        s = getattr(s, "underlying_store", None)
        if s is None:
            break
    host = os.environ.get("MASTER_ADDR")
    if host:
        return host
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


def find_master(store: Any, group_rank: int, is_default: bool, timeout: float,
                encryption: Optional[str] = None) -> tuple[str, Optional[Master]]:
    """Returns the master address for a new group, and the Master if this process started it."""
    global _default_master
    external = os.environ.get(ENV_MASTER)
    if external:
        return external, None
    if not is_default and _default_master is not None:
        return _default_master, None
    hosted: Optional[Master] = None
    own = resolve_secret(None)  # PCCL_SECRET, or b""
    if group_rank == 0:
        secret = own or generate_secret().encode()
        hosted = Master(os.environ.get("PCCL_MASTER_BIND", "0.0.0.0"), 0, secret=secret, encryption=encryption).start()
        address = f"{_advertised_host(store)}:{hosted.port}"
        store.set(SECRET_KEY, b"" if own else secret)
        store.set(MASTER_KEY, address)
    else:
        store.wait([MASTER_KEY])
        address = store.get(MASTER_KEY).decode()
        secret = own or store.get(SECRET_KEY)
        if not secret:
            raise RuntimeError(f"rank 0 authenticates the pccl group with {ENV_SECRET}, which is not set on this rank; "
                               f"set the same {ENV_SECRET} on every rank")
    _secrets[address] = secret
    if is_default:
        _default_master = address
    return address, hosted


def forget_default_master(address: str) -> None:
    """Called when the default group goes away, so a later init_process_group hosts a new master."""
    global _default_master
    if _default_master == address:
        _default_master = None


def join(comm: Communicator, group_rank: int, group_size: int, timeout: float) -> list[int]:
    """Connects comm and helps admit the other members until the group has group_size members; returns
    each torch rank's pccl rank (point-to-point ops address pccl ranks).

    A vote needs every current member, and every member keeps voting while peers are pending until
    the group is complete, so no vote waits for a member that has stopped voting.
    """
    deadline = time.monotonic() + timeout
    comm.connect()
    while comm.world_size < group_size:
        if time.monotonic() > deadline:
            raise PcclTimeoutError(
                f"only {comm.world_size} of {group_size} ranks joined the pccl group within {timeout:.0f} s")
        if comm.are_peers_pending():
            try:
                comm.update_topology()
            except PcclTimeoutError:
                continue
        else:
            time.sleep(0.002)
    if comm.world_size != group_size:
        raise RuntimeError(f"pccl group has {comm.world_size} members, expected {group_size}")
    # Each rank marks its own slot; anything but all ones means a stranger joined or a rank is missing.
    # The second row carries each rank's pccl rank.
    seen = np.zeros((2, group_size), dtype=np.int64)
    seen[0, group_rank] = 1
    seen[1, group_rank] = comm.rank
    comm.all_reduce(seen, op=ReduceOp.SUM)
    if not np.all(seen[0] == 1):
        raise RuntimeError(f"pccl group members do not match torch ranks 0..{group_size - 1}: slot counts {seen[0].tolist()}")
    return [int(r) for r in seen[1]]
