"""Guards torch's object collectives on pccl groups: they unpickle what the other members send.

Why this exists: ``all_gather_object``, ``gather_object``, ``broadcast_object_list``,
``scatter_object_list`` and ``recv_object_list`` are implemented by torch itself on top of the backend's
tensor collectives; each receiver ``pickle.load``s the bytes a peer sent, so any member can run code in
every other one. On a pccl group they are refused with :class:`~pccl_py.errors.InvalidArgumentError`
unless only holders of the job secret can be members (the group is authenticated, as every
``init_process_group("pccl")`` group is), or the user opted in (``PCCL_ALLOW_OBJECT_COLLECTIVES=1``, or
``wrap_communicator(..., allow_object_collectives=True)``). docs/security.md says what trusting the
members means.

The trap: torch's functions look their helpers up as module globals of ``distributed_c10d`` and users
may hold references to the public functions taken before this module ran, so the guard sits in two
places: at the entry of each public object collective (every rank refuses before anything is sent, so
no rank waits for one that refused) and at ``_tensor_to_object``, the one place where bytes from a
peer are unpickled (whatever path reaches it).
"""

from __future__ import annotations

import functools
import os
from typing import Any, Callable, Optional

import torch
import torch.distributed.distributed_c10d as c10d

from ..errors import InvalidArgumentError

ENV_ALLOW = "PCCL_ALLOW_OBJECT_COLLECTIVES"
_PUBLIC = ("all_gather_object", "gather_object", "broadcast_object_list", "scatter_object_list",
           "send_object_list", "recv_object_list")
_installed = False


def env_allows() -> bool:
    """Whether PCCL_ALLOW_OBJECT_COLLECTIVES opts every pccl group of this process in."""
    return os.environ.get(ENV_ALLOW, "").strip().lower() in ("1", "true", "yes")


def _pccl_group(group: Any) -> Optional[Any]:
    """The ProcessGroupPCCL behind `group` (None: the default group), or None if it is not a pccl group."""
    from .backend import ProcessGroupPCCL  # a cycle at import time otherwise

    try:
        g = group if group is not None else c10d._get_default_group()
    except Exception:  # noqa: BLE001 - not initialized: torch raises its own error next
        return None
    if isinstance(g, ProcessGroupPCCL):
        return g
    try:
        backend = g._get_backend(torch.device("cpu"))
    except Exception:  # noqa: BLE001 - a group without a CPU backend is not ours
        return None
    return backend if isinstance(backend, ProcessGroupPCCL) else None


def check(group: Any, what: str) -> None:
    """Raises InvalidArgumentError when `what` would unpickle members' bytes on an unguarded pccl group."""
    pg = _pccl_group(group)
    if pg is None or pg.object_collectives_allowed():
        return
    raise InvalidArgumentError(
        f"{what} on a pccl group without a job secret is refused: torch's object collectives unpickle what "
        "the other members send, so any process that can join the group could run code in this one. Give the "
        f"master and every peer a job secret (secret= or PCCL_SECRET), or, if every process that can reach the "
        f"group's ports is trusted, opt in with {ENV_ALLOW}=1 (or wrap_communicator(..., "
        "allow_object_collectives=True)). See docs/security.md.")


def _guard_entry(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        check(kwargs.get("group"), f"torch.distributed.{name}()")
        return fn(*args, **kwargs)

    guarded.__pccl_guarded__ = True  # type: ignore[attr-defined]
    return guarded


def _guard_unpickle(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def guarded(tensor: Any, tensor_size: Any, group: Any) -> Any:
        check(group, "unpickling an object a peer sent")
        return fn(tensor, tensor_size, group)

    guarded.__pccl_guarded__ = True  # type: ignore[attr-defined]
    return guarded


def install() -> None:
    """Puts the guards in place (idempotent); called when pccl_py.torch is imported."""
    global _installed
    if _installed:
        return
    import torch.distributed as dist

    for name in _PUBLIC:
        fn = getattr(c10d, name, None)
        if fn is None or getattr(fn, "__pccl_guarded__", False):
            continue
        guarded = _guard_entry(name, fn)
        setattr(c10d, name, guarded)
        if getattr(dist, name, None) is fn:
            setattr(dist, name, guarded)
    unpickle = getattr(c10d, "_tensor_to_object", None)
    if unpickle is not None and not getattr(unpickle, "__pccl_guarded__", False):
        c10d._tensor_to_object = _guard_unpickle(unpickle)
    _installed = True
