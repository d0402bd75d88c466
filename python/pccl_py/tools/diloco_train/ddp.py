"""The two baselines DiLoCo is measured against: DDP (gradients averaged every step) and solo (never).

Why this exists: DiLoCo's numbers mean little alone. ``ElasticDDP`` is what a user of pccl_py would
write for plain data parallelism with peers that come and go: every inner step the flattened
gradients are all-reduced (AVG) through the "pccl" torch backend on the live membership
(``pccl_py.torch.wrap_communicator``), and newcomers are admitted between steps and handed the
parameters and the optimizer state with one shared-state sync. ``Solo`` has the same interface and
never talks to anyone: its peers train alone on their own data shards.

Both expose what the training loop in :mod:`.peer` uses on every algorithm: ``inner_step``, ``step()``
(called after ``inner_opt.step()``; returns None, since neither has outer steps), ``tx_bytes`` and
``close()``.

The traps to avoid:

- Admitting a newcomer on some members but not on others. ``are_peers_pending()`` is agreed at the
  same point of the communicator's op sequence, but the torch backend may finish a step's bucketed
  all-reduces in any order, so the flag rides along in the gradient all-reduce (one extra element,
  averaged: non-zero iff any member saw a pending peer), and every member then votes
  ``update_topology()`` after the same step.
- A newcomer with fresh Adam moments next to members with warm ones: the members' ``exp_avg`` /
  ``exp_avg_sq`` and the step counter are part of the synced state, so every member applies bitwise
  the same update afterwards and the parameters stay identical.
- Keeping one torch process group across admissions. It numbers its ops from 0, and the number picks
  the pccl tag, so a newcomer's fresh group and the members' old one would never meet on a tag (a
  hang until the op timeout). Every member makes a new group after each admission.
- Reading bytes sent from the torch ``Work`` objects: they carry no ``ReduceInfo``. The backend's
  communicator is wrapped in :class:`_ByteCounter`, which adds up what each pccl op reports.
"""

from __future__ import annotations

import threading
from typing import Any, Optional

import torch

import pccl_py

ATTEMPTS = 16  # consecutive failures of one op (each a lost peer or a timeout) before giving up


class _Counted:
    """An AllReduceHandle whose wait() adds the op's bytes to a counter."""

    def __init__(self, handle: pccl_py.AllReduceHandle, counter: "_ByteCounter") -> None:
        self._handle, self._counter = handle, counter

    def done(self) -> bool:
        return self._handle.done()

    def wait(self) -> Any:
        info = self._handle.wait()
        self._counter.add(info)
        return info


class _ByteCounter:
    """Stands in for the Communicator inside the torch process group and counts what its all-reduces move."""

    def __init__(self, comm: pccl_py.Communicator) -> None:
        self._comm = comm
        self._lock = threading.Lock()
        self.tx_bytes = 0
        self.rx_bytes = 0

    def add(self, info: Any) -> None:
        with self._lock:
            self.tx_bytes += info.tx_bytes
            self.rx_bytes += info.rx_bytes

    def all_reduce_async(self, *args: Any, **kwargs: Any) -> _Counted:
        return _Counted(self._comm.all_reduce_async(*args, **kwargs), self)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._comm, name)


def _adam_state(opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """The optimizer's moment tensors, created now if the optimizer has not stepped yet (a newcomer's
    must exist, with the same shapes as the members', before the sync can fill them)."""
    out = {}
    for gi, group in enumerate(opt.param_groups):
        for pi, p in enumerate(group["params"]):
            st = opt.state[p]
            if not st:
                st["step"] = torch.tensor(0.0)
                st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            out[f"opt.{gi}.{pi}.exp_avg"] = st["exp_avg"]
            out[f"opt.{gi}.{pi}.exp_avg_sq"] = st["exp_avg_sq"]
    return out


class ElasticDDP:
    """Data parallelism over the live membership: average the gradients every step, admit newcomers between steps."""

    def __init__(self, model: torch.nn.Module, inner_opt: torch.optim.Optimizer, comm: pccl_py.Communicator) -> None:
        import torch.distributed as dist  # noqa: PLC0415
        import pccl_py.torch  # noqa: PLC0415 - registers the backend; only DDP needs it

        self._comm = comm
        self._counter = _ByteCounter(comm)
        self._pg: Any = None  # made after the first sync, and again after every admission (see _new_group)
        self._opts = dist.AllreduceOptions()
        self._opts.reduceOp = dist.ReduceOp(dist.ReduceOp.AVG)
        self._opt = inner_opt
        self._params = [p for p in model.parameters() if p.requires_grad]
        self._flat = torch.zeros(sum(p.numel() for p in self._params) + 1)  # + the "someone is pending" flag
        self._admit = False
        self.inner_step = 0
        self.retries = 0
        self._state_tx = 0
        self._meta = torch.zeros(1, dtype=torch.int64)  # [inner_step], synced with the weights
        entries = {f"param.{name}": p.data for name, p in model.named_parameters()}
        entries.update(_adam_state(inner_opt))
        entries["meta"] = self._meta
        self._state = pccl_py.SharedState(entries, revision=1)
        self._synced = 0  # revision of our last sync; 0: never
        # Founders elect one state (they all hold the same one); a newcomer, admitted by the members in
        # update_topology() just before they sync, receives theirs. Founders must sync here too: after it
        # the group expects revision >= 2, so a newcomer (revision 1) is always behind and can never win
        # the election with its fresh weights, even against a single member.
        self._sync()
        self._new_group()

    @property
    def tx_bytes(self) -> int:
        return self._counter.tx_bytes + self._state_tx

    def all_reduce_gradients(self) -> None:
        """Replaces every gradient with its average over the members (call between backward() and the
        optimizer step). A member lost mid-op fails it on every survivor with the buffer unchanged: retry."""
        flat, offset = self._flat, 0
        for p in self._params:
            n = p.numel()
            flat[offset:offset + n].copy_(p.grad.reshape(-1) if p.grad is not None else torch.zeros(n))
            offset += n
        flat[-1] = 1.0 if self._comm.are_peers_pending() else 0.0
        for attempt in range(ATTEMPTS):
            try:
                self._pg.allreduce([flat], self._opts).wait()
                break
            except (pccl_py.PeerLostError, pccl_py.TimeoutError):
                self.retries += 1  # failed on every member alike, so every member retries alike
                if attempt + 1 == ATTEMPTS:
                    raise
        offset = 0
        for p in self._params:
            n = p.numel()
            if p.grad is not None:
                p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
            offset += n
        self._admit = bool(flat[-1] > 0)

    def step(self) -> None:
        """After the optimizer step: count it, and admit pending peers if any member saw one."""
        self.inner_step += 1
        if self._admit:
            self._admit = False
            try:
                self._comm.update_topology()
            except (pccl_py.PeerLostError, pccl_py.TimeoutError):
                # Nobody was admitted, or the vote went through on the others: either way the sync runs
                # among whoever is a member now (skipping it here would leave us in a different op).
                self.retries += 1
            self._sync()
            self._new_group()
        return None

    def _new_group(self) -> None:
        """A fresh torch process group on the communicator, made by every member at the same point.

        The group names its ops by their position in its own sequence (pccl tag ``tag_base + n % 8``). A
        newcomer's group starts at n = 0 while the members' are hundreds of ops in, so without this their
        gradient all-reduces would wait on different tags until the op timeout. Every member therefore
        starts over with a new group whenever someone is admitted (retries after a lost peer happen on
        every survivor alike and keep the members' sequences equal in between)."""
        if self._pg is not None:
            self._pg.shutdown()  # stops its completer thread; the communicator stays open
        self._pg = pccl_py.torch.wrap_communicator(self._counter)  # type: ignore[arg-type]

    def _sync(self) -> None:
        """One shared-state sync: newcomers receive the weights, Adam's moments and the step counter."""
        self._meta[0] = self.inner_step
        for attempt in range(ATTEMPTS):
            self._state.revision = self._synced + 1
            try:
                info = self._comm.sync_shared_state(self._state)
                break
            except (pccl_py.PeerLostError, pccl_py.TimeoutError):
                self.retries += 1
                if attempt + 1 == ATTEMPTS:
                    raise
        self._synced = info.revision
        self._state_tx += info.tx_bytes
        self.inner_step = int(self._meta[0])
        for group in self._opt.param_groups:
            for p in group["params"]:
                self._opt.state[p]["step"].fill_(float(self.inner_step))

    def close(self) -> None:
        self._pg.shutdown()


class Solo:
    """No communication at all: each peer trains alone (the lower bound any collaboration must beat)."""

    def __init__(self) -> None:
        self.inner_step = 0
        self.tx_bytes = 0
        self.retries = 0

    def step(self) -> Optional[Any]:
        self.inner_step += 1
        return None

    def close(self) -> None:
        pass
