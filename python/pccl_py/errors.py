"""Exceptions raised by pccl_py.

Every failure surfaces as a subclass of :class:`PCCLError`, one class per thing the caller can do
something about: retry (PeerLostError), wait or raise a timeout (TimeoutError), restart the master
(MasterLostError), rejoin (EvictedError), fix the program (InvalidArgumentError, MismatchError, SharedStateError),
fix the deployment (AuthenticationError: the job secret differs between this process and the master).
The C++ core raises these through explicit error codes, never by parsing messages: ``ERROR_CLASSES``
below is the one table from a core ``ErrorCode`` to a class (the trap: a code missing from it would
raise the bare PCCLError, so every code the core defines is listed).
"""

from __future__ import annotations

import builtins
from typing import Dict, Type

from ._core import ErrorCode


class PCCLError(Exception):
    """Base class of every pccl_py error."""


class InvalidArgumentError(PCCLError, ValueError):
    """A call was made with bad arguments or in the wrong state; nothing was sent."""


class PeerLostError(PCCLError):
    """A peer died or was evicted during a collective.

    The collective was aborted on every surviving peer and the caller's buffers are unchanged;
    calling it again runs it among the survivors.
    """


class TimeoutError(PCCLError, builtins.TimeoutError):  # noqa: A001 - deliberately mirrors the builtin
    """A deadline passed (a collective, update_topology(), or admission in connect())."""


class MasterLostError(PCCLError):
    """The master is unreachable, so no failure or membership change can be resolved."""


class EvictedError(PCCLError):
    """This peer is out of its group: the master removed it (it was frozen, silent, or its links broke), or
    it left on its own after an internal error lost a membership change (the message says which).

    Create a new Communicator to rejoin as a new peer.
    """


class MismatchError(PCCLError):
    """Peers issued different collectives (count, dtype, op or algorithm) under the same tag."""


class SharedStateError(PCCLError):
    """The peers' shared states cannot be reconciled as asked: a peer is ahead of the group, send-only
    peers disagree, nobody offers the state, or no source delivered content matching the elected hash.
    The caller's tensors are unchanged."""


class AuthenticationError(PCCLError, PermissionError):
    """The master refused this peer's credentials, or the master could not prove its own.

    Raised by ``connect()`` as soon as the master answers (never after a timeout). The message says
    which side lacks or differs in the job secret; give the master and every peer the same one
    (``secret=``, ``pccl-master --secret-file`` or ``PCCL_SECRET``). Retrying does not help.
    """


class ClosedError(PCCLError):
    """The communicator was closed."""


#: The exception the core's bindings raise for each error code (csrc/bindings/module.cpp looks it up here).
#: A protocol violation or an operating-system failure surfaces as the base class: neither has a remedy
#: of its own beyond what the message says.
ERROR_CLASSES: Dict[ErrorCode, Type[PCCLError]] = {
    ErrorCode.INVALID_ARGUMENT: InvalidArgumentError,
    ErrorCode.PEER_LOST: PeerLostError,
    ErrorCode.TIMEOUT: TimeoutError,
    ErrorCode.MASTER_LOST: MasterLostError,
    ErrorCode.EVICTED: EvictedError,
    ErrorCode.MISMATCH: MismatchError,
    ErrorCode.CLOSED: ClosedError,
    ErrorCode.PROTOCOL: PCCLError,
    ErrorCode.IO: PCCLError,
    ErrorCode.AUTH: AuthenticationError,
}


__all__ = [
    "ERROR_CLASSES",
    "PCCLError",
    "InvalidArgumentError",
    "PeerLostError",
    "TimeoutError",
    "MasterLostError",
    "EvictedError",
    "MismatchError",
    "ClosedError",
    "AuthenticationError",
    "SharedStateError",
]
