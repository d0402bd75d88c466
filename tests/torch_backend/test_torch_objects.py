"""torch's object collectives on pccl groups (docs/security.md, docs/torch.md).

all_gather_object and friends unpickle what the other members send. The first test shows the attack is
real (a member that sends a crafted pickle runs code in the receiver) on a group that opted in, and that
without a job secret or the opt-in the receiver refuses before anything is exchanged.
"""

from __future__ import annotations

import os
import pickle

import pytest
import torch
import torch.distributed as dist
import torch.distributed.distributed_c10d as c10d

import pccl_py
import pccl_py.torch as pt
from support import Background, connect_group, new_comm


class _Payload:
    """Unpickling this creates the file `path`: code of the sender's choosing runs in the receiver."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _attacker_all_gather_object(pg, obj) -> None:
    """What torch's all_gather_object sends, done with tensor collectives (no guard on the sender's side)."""
    data = torch.frombuffer(bytearray(pickle.dumps(obj)), dtype=torch.uint8)
    size = torch.tensor([data.numel()], dtype=torch.long)
    sizes = torch.zeros(pg.size(), dtype=torch.long)
    pg.allgather([[sizes[i].unsqueeze(0) for i in range(pg.size())]], [size]).wait()
    top = int(sizes.max())
    padded = torch.zeros(top, dtype=torch.uint8)
    padded[: data.numel()] = data
    out = torch.empty(top * pg.size(), dtype=torch.uint8)
    pg.allgather([[out[i * top:(i + 1) * top] for i in range(pg.size())]], [padded]).wait()


@pytest.mark.parametrize("opt_in", [True, False])
def test_a_member_sending_a_crafted_pickle(tmp_path, opt_in):
    """A crafted pickle from another member runs only where object collectives were opted into; without the
    opt-in the call is refused with InvalidArgumentError naming PCCL_ALLOW_OBJECT_COLLECTIVES and nothing
    runs."""
    marker = str(tmp_path / "ran")
    with pccl_py.Master() as m:
        victim, attacker = connect_group(m.address, 2, timeout=5.0)
        try:
            pv = pt.wrap_communicator(victim, allow_object_collectives=opt_in)
            pa = pt.wrap_communicator(attacker)
            attack = Background(lambda: _attacker_all_gather_object(pa, _Payload(marker)))
            out = [None, None]
            if opt_in:
                dist.all_gather_object(out, "hello", group=pv)
                attack.result(30.0)
                assert os.path.exists(marker), "the crafted pickle did not run: the attack this guard answers is gone?"
            else:
                with pytest.raises(pccl_py.InvalidArgumentError, match="PCCL_ALLOW_OBJECT_COLLECTIVES"):
                    dist.all_gather_object(out, "hello", group=pv)
                # The attacker's collective has no partner now: it times out, and nothing ran here.
                with pytest.raises(Exception):
                    attack.result(30.0)
                assert not os.path.exists(marker)
        finally:
            attacker.close()
            victim.close()


def test_every_object_collective_is_refused_without_a_secret(monkeypatch):
    """Without a job secret or the opt-in, every object collective and torch's unpickling point raise
    InvalidArgumentError naming the call."""
    monkeypatch.delenv("PCCL_ALLOW_OBJECT_COLLECTIVES", raising=False)
    with pccl_py.Master() as m:
        c = new_comm(m.address).connect()
        try:
            pg = pt.wrap_communicator(c)
            calls = {
                "all_gather_object": lambda: dist.all_gather_object([None], 1, group=pg),
                "gather_object": lambda: dist.gather_object(1, [None], group=pg, group_dst=0),
                "broadcast_object_list": lambda: dist.broadcast_object_list([1], group=pg, group_src=0),
                "scatter_object_list": lambda: dist.scatter_object_list([None], [1], group=pg, group_src=0),
                "send_object_list": lambda: dist.send_object_list([1], group=pg, group_dst=0),
                "recv_object_list": lambda: dist.recv_object_list([None], group=pg, group_src=0),
            }
            for name, call in calls.items():
                with pytest.raises(pccl_py.InvalidArgumentError, match=name):
                    call()
            # The unpickling point itself is guarded too (a reference to torch's function taken before
            # pccl_py.torch was imported still reaches it).
            t = torch.frombuffer(bytearray(pickle.dumps(1)), dtype=torch.uint8)
            with pytest.raises(pccl_py.InvalidArgumentError, match="unpickling"):
                c10d._tensor_to_object(t, t.numel(), pg)
        finally:
            c.close()


def test_allowed_with_a_secret_or_the_opt_in(monkeypatch):
    """Object collectives work with a job secret or with PCCL_ALLOW_OBJECT_COLLECTIVES=1, and a non-bool
    allow_object_collectives is a ValueError."""
    monkeypatch.delenv("PCCL_ALLOW_OBJECT_COLLECTIVES", raising=False)
    secret = "objects-test-secret"
    with pccl_py.Master(secret=secret) as m:
        c = new_comm(m.address, secret=secret).connect()
        try:
            out = [None]
            dist.all_gather_object(out, {"a": 1}, group=pt.wrap_communicator(c))
            assert out == [{"a": 1}]
        finally:
            c.close()
    with pccl_py.Master() as m:
        c = new_comm(m.address).connect()
        try:
            monkeypatch.setenv("PCCL_ALLOW_OBJECT_COLLECTIVES", "1")
            lst = [{"b": 2}]
            dist.broadcast_object_list(lst, group=pt.wrap_communicator(c), group_src=0)
            assert lst == [{"b": 2}]
            with pytest.raises(ValueError, match="allow_object_collectives"):
                pt.wrap_communicator(c, allow_object_collectives="yes")
        finally:
            c.close()
