"""torch.distributed on pccl: run with ``torchrun --nproc-per-node 3 examples/torch_backend.py``.

Importing ``pccl_py.torch`` registers the "pccl" backend. Rank 0 hosts the pccl master inside its own
process and publishes its address through torchrun's store; the other ranks find it there. The
example all-reduces, broadcasts and all-gathers, trains a tiny model with DistributedDataParallel,
checks every result, and prints "example OK" on each rank.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import pccl_py.torch  # noqa: F401 - registers the "pccl" backend


def main() -> None:
    dist.init_process_group("pccl")  # env:// from torchrun: RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT
    rank, world = dist.get_rank(), dist.get_world_size()

    x = torch.full((4,), float(rank + 1))
    dist.all_reduce(x, op=dist.ReduceOp.SUM)
    assert torch.equal(x, torch.full((4,), world * (world + 1) / 2)), x

    b = torch.arange(3.0) if rank == 0 else torch.zeros(3)
    dist.broadcast(b, src=0)
    assert torch.equal(b, torch.arange(3.0)), b

    gathered = [torch.empty(1) for _ in range(world)]
    dist.all_gather(gathered, torch.tensor([float(rank)]))
    assert [int(t) for t in gathered] == list(range(world)), gathered

    torch.manual_seed(0)  # the same initial model everywhere; DDP also broadcasts rank 0's
    model = DDP(torch.nn.Linear(4, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    data = torch.Generator().manual_seed(rank)
    for _ in range(5):
        inp = torch.randn(8, 4, generator=data)
        opt.zero_grad()
        model(inp).pow(2).mean().backward()
        opt.step()
    # DDP keeps replicas identical: check it bit for bit through an all_gather of the weights.
    w = model.module.weight.detach().reshape(-1)
    all_w = [torch.empty_like(w) for _ in range(world)]
    dist.all_gather(all_w, w)
    assert all(torch.equal(a, w) for a in all_w), "replicas diverged"

    dist.barrier()
    print(f"rank {rank}/{world}: example OK", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
