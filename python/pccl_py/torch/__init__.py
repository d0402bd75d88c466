"""torch.distributed backend "pccl": ``import pccl_py.torch`` registers it.

Why this exists: it lets torch code (``dist.all_reduce``, DistributedDataParallel, ``torchrun``) run
on pccl's fault-tolerant TCP collectives by changing one string::

    import pccl_py.torch  # noqa: F401  (registers the backend)
    dist.init_process_group("pccl", init_method="env://")
    # encrypted (TLS 1.3, keyed by the job secret; docs/security.md):
    dist.init_process_group("pccl", init_method="env://", pg_options={"encryption": "tls"})

Registration is explicit on purpose: torch 2.13 auto-loads only *device* extensions (the
``torch.backends`` entry-point group, called while ``import torch`` runs), not process-group
backends, so an entry point would load pccl into every torch program without registering anything
useful earlier than this import does.

:func:`wrap_communicator` turns an existing :class:`pccl_py.Communicator` into a ProcessGroup whose
``rank()`` and ``size()`` follow the live membership, for code that admits and loses peers.
See docs/torch.md.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from ..communicator import Communicator
from . import objects, rendezvous, staging
from .backend import DEFAULT_TAG_BASE, ProcessGroupPCCL
from .work import PcclWork

BACKEND_NAME = "pccl"

__all__ = ["BACKEND_NAME", "ProcessGroupPCCL", "PcclWork", "wrap_communicator", "create_process_group"]


def _seconds(timeout: Any) -> float:
    if isinstance(timeout, timedelta):
        return timeout.total_seconds()
    return float(timeout) if timeout else 1800.0


def _encryption(backend_options: Any) -> Any:
    """pg_options of init_process_group/new_group: None, or a dict whose only key is "encryption"."""
    if backend_options is None:
        return None
    if not isinstance(backend_options, dict) or set(backend_options) - {"encryption"}:
        raise ValueError(f"pccl's pg_options must be a dict like {{'encryption': 'tls'}}, not {backend_options!r}")
    return backend_options.get("encryption")


def create_process_group(dist_backend_opts: Any, backend_options: Any = None) -> ProcessGroupPCCL:
    """torch's creator hook (extended API): hosts or finds the master, joins, returns the group."""
    store = dist_backend_opts.store
    rank, size = dist_backend_opts.group_rank, dist_backend_opts.group_size
    group_name = str(dist_backend_opts.group_id)
    timeout = min(max(_seconds(dist_backend_opts.timeout), 0.1), 86400.0)
    # torch passes no global ranks for the default group.
    is_default = not list(dist_backend_opts.global_ranks_in_group)
    encryption = _encryption(backend_options)
    address, master = rendezvous.find_master(store, rank, is_default, timeout, encryption)
    # CUDA tensors are staged through pinned host memory, which torch may have pinned by registering
    # ordinary pages with the driver: swapping pages under it would hide results from the GPU.
    comm = Communicator(address, peer_group=rendezvous.peer_group_id(group_name), timeout=timeout,
                        heartbeat_timeout=rendezvous.heartbeat_timeout(), join_timeout=timeout,
                        swap_result_pages=not staging.cuda_available(), secret=rendezvous.secret_for(address),
                        encryption=encryption)
    try:
        pccl_ranks = rendezvous.join(comm, rank, size, timeout)
    except BaseException:
        comm.close()
        if master is not None:
            master.stop()
        raise
    pg = ProcessGroupPCCL(comm, rank, size, master=master, name=group_name, timeout=timeout)
    pg._pccl_ranks = pccl_ranks  # send/recv address pccl ranks
    if is_default:
        pg._on_shutdown.append(lambda: rendezvous.forget_default_master(address))
    return pg


def wrap_communicator(comm: Communicator, *, tag_base: int = DEFAULT_TAG_BASE,
                      allow_object_collectives: bool = False) -> ProcessGroupPCCL:
    """A ProcessGroup on an existing, connected Communicator, for dynamic membership.

    ``rank()`` and ``size()`` follow ``comm.rank`` and ``comm.world_size`` (pccl's ring order), so
    after peers join or leave, the next operation runs among the new members. The group uses pccl tags
    ``tag_base .. tag_base + 7``; keep other uses of ``comm`` off those tags. ``shutdown()`` does not
    close ``comm``. Pass it as ``process_group=`` to DistributedDataParallel or call its methods; the
    ``dist.*`` functions that look groups up by global rank need groups created by torch.

    torch's object collectives (``all_gather_object`` and the like) unpickle what the members send; on
    this group they are refused unless ``comm`` has a job secret, ``allow_object_collectives=True`` is
    given, or ``PCCL_ALLOW_OBJECT_COLLECTIVES=1`` is set (docs/security.md).
    """
    if comm.world_size <= 0:
        raise ValueError("wrap_communicator needs a connected Communicator (call comm.connect() first)")
    if not isinstance(allow_object_collectives, bool):
        raise ValueError(f"allow_object_collectives must be True or False, not {allow_object_collectives!r}")
    return ProcessGroupPCCL(comm, comm.rank, comm.world_size, dynamic=True, owns_comm=False, tag_base=tag_base,
                            allow_object_collectives=allow_object_collectives)


def _register() -> None:
    if BACKEND_NAME.upper() in dist.Backend._plugins:
        return
    devices = ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
    dist.Backend.register_backend(BACKEND_NAME, create_process_group, extended_api=True, devices=devices)


_register()
objects.install()
