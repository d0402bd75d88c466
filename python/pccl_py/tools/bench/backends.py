"""The backends pccl-bench times inside one peer process, and the loop that times them.

Kept apart from bench.py (which plans the sweep, launches peers and combines their numbers) so that
what is measured, and how one operation is timed, can be read in one place: each backend offers
alloc(), barrier(), op() and close(), and time_ops() runs barrier + op exactly alike for every one.
"""

from __future__ import annotations

import socket
import time
from typing import Any, Callable, List, Optional, Tuple

import numpy as np


class BenchError(RuntimeError):
    """The benchmark could not run or complete; the message says why."""


class PcclBackend:
    name = "pccl"

    def __init__(self, comm: Any, dtype: str, algorithm: str, quantization: Optional[str] = None,
                 name: str = "pccl") -> None:
        self.name = name  # "pccl-tls" for an encrypting communicator
        self.comm = comm
        self.dtype = dtype
        self.algorithm = algorithm
        self.quantization = quantization
        self._token = np.zeros(1, dtype=np.float32)
        self.last_algorithm = algorithm

    def alloc(self, count: int) -> Any:
        return np.zeros(count, dtype=self.dtype)

    def barrier(self) -> None:
        self.comm.all_reduce(self._token)

    def op(self, x: Any) -> None:
        self.last_algorithm = self.comm.all_reduce(x, algorithm=self.algorithm,
                                                   quantization=self.quantization).algorithm

    def close(self, graceful: bool = True) -> None:
        pass


class GlooBackend:
    """torch.distributed with the gloo backend, rendezvousing through a TCPStore that rank 0 hosts.

    The store's address is handed to the other peers over pccl, so no extra port must be agreed on.
    """

    name = "gloo"

    def __init__(self, comm: Any, rank: int, world: int, dtype: str, timeout: float, store_host: str) -> None:
        from datetime import timedelta

        import torch  # noqa: PLC0415 - imported only for --compare gloo
        import torch.distributed as dist  # noqa: PLC0415

        self.torch, self.dist = torch, dist
        self.dtype = getattr(torch, dtype)
        self.last_algorithm = "gloo"
        info = np.zeros(5, dtype=np.int64)
        store = None
        if rank == 0:
            store = dist.TCPStore(store_host, 0, world, is_master=True, timeout=timedelta(seconds=timeout),
                                  wait_for_workers=False)
            info[:4] = [int(b) for b in socket.inet_aton(socket.gethostbyname(store_host))]
            info[4] = store.port
        comm.all_reduce(info)  # SUM: everyone else contributes zeros, so this broadcasts rank 0's info
        if rank != 0:
            host = socket.inet_ntoa(bytes(int(b) for b in info[:4]))
            store = dist.TCPStore(host, int(info[4]), world, is_master=False, timeout=timedelta(seconds=timeout))
        dist.init_process_group("gloo", store=store, rank=rank, world_size=world, timeout=timedelta(seconds=timeout))
        self._store = store
        self._token = torch.zeros(1, dtype=torch.float32)

    def alloc(self, count: int) -> Any:
        return self.torch.zeros(count, dtype=self.dtype)

    def barrier(self) -> None:
        self.dist.all_reduce(self._token)

    def op(self, x: Any) -> None:
        self.dist.all_reduce(x)

    def close(self, graceful: bool = True) -> None:
        if graceful:
            self.dist.all_reduce(self._token)  # nobody tears down while another peer still needs the group
        self.dist.destroy_process_group()


class StateSyncBackend:
    """sync_shared_state of one entry to a newcomer: the last rank starts every iteration behind, with
    zeros, and receives the entry from all other peers (send-only). prepare() resets it untimed."""

    name = "state"

    def __init__(self, comm: Any, rank: int, world: int, dtype: str) -> None:
        import pccl_py  # noqa: PLC0415

        self.pccl, self.comm, self.dtype = pccl_py, comm, dtype
        self.newcomer = rank == world - 1
        self.strategy = "receive_only" if self.newcomer else "send_only"
        self.last_algorithm = "p2p"
        self._token = np.zeros(1, dtype=np.float32)
        self._revision = 0  # the group's revision, one step per sync across all sizes

    def alloc(self, count: int) -> Any:
        value = 0 if self.newcomer else 1
        return self.pccl.SharedState({"w": np.full(count, value, dtype=self.dtype)}, revision=0)

    def prepare(self, state: Any) -> None:
        self._revision += 1
        if self.newcomer:
            state.entries["w"].tensor[...] = 0
            state.revision = 0
        else:
            state.revision = self._revision

    def barrier(self) -> None:
        self.comm.all_reduce(self._token)

    def op(self, state: Any) -> None:
        info = self.comm.sync_shared_state(state, self.strategy)
        if self.newcomer and info.received_keys != ["w"]:
            raise BenchError(f"the newcomer did not receive the state: {info}")

    def close(self, graceful: bool = True) -> None:
        pass


class P2PBackend:
    """A send/recv round trip between ranks 0 and 1 (``--p2p``): rank 0 sends the buffer to rank 1 and
    receives it back; other ranks only join the barriers. A round trip rather than a one-way send, so
    that both backends are timed alike: a pccl send returns once the receiver acknowledged, a gloo send
    once its bytes are in the socket, and only a round trip makes both wait for real data."""

    name = "p2p"

    def __init__(self, comm: Any, rank: int, dtype: str) -> None:
        self.comm, self.rank, self.dtype = comm, rank, dtype
        self.last_algorithm = "p2p"
        self._token = np.zeros(1, dtype=np.float32)

    def alloc(self, count: int) -> Any:
        return np.zeros(count, dtype=self.dtype)

    def barrier(self) -> None:
        self.comm.all_reduce(self._token)

    def op(self, x: Any) -> None:
        if self.rank == 0:
            self.comm.send(x, 1)
            self.comm.recv(x, 1)
        elif self.rank == 1:
            self.comm.recv(x, 0)
            self.comm.send(x, 0)

    def close(self, graceful: bool = True) -> None:
        pass


class GlooP2PBackend:
    """The same round trip with torch.distributed send/recv on a GlooBackend's process group."""

    name = "gloo-p2p"

    def __init__(self, gloo: "GlooBackend", rank: int) -> None:
        self.gloo, self.rank = gloo, rank
        self.last_algorithm = "p2p"

    def alloc(self, count: int) -> Any:
        return self.gloo.alloc(count)

    def barrier(self) -> None:
        self.gloo.barrier()

    def op(self, x: Any) -> None:
        dist = self.gloo.dist
        if self.rank == 0:
            dist.send(x, 1)
            dist.recv(x, 1)
        elif self.rank == 1:
            dist.recv(x, 0)
            dist.send(x, 0)

    def close(self, graceful: bool = True) -> None:
        pass  # the GlooBackend owns the process group


def time_ops(backend: Any, x: Any, iters: int, tick: Callable[[], None]) -> Tuple[List[float], float]:
    """`iters` timed operations on x: this peer's wall time of each, and the process CPU time they used."""
    prepare = getattr(backend, "prepare", lambda x: None)  # untimed per-iteration setup
    times: List[float] = []
    cpu = 0.0
    for _ in range(iters):
        prepare(x)
        backend.barrier()
        c0 = time.process_time()
        t0 = time.perf_counter()
        backend.op(x)
        t1 = time.perf_counter()
        cpu += time.process_time() - c0
        times.append(t1 - t0)
        tick()
    return times, cpu


def warm_up(backend: Any, count: int, warmup: int, tick: Callable[[], None]) -> Any:
    """A fresh buffer for backend, after `warmup` untimed operations on it."""
    x = backend.alloc(count)
    time_ops(backend, x, warmup, tick)
    return x
