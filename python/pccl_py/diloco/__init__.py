"""DiLoCo training loops on pccl_py: DiLoCo, AsyncDiLoCo and StreamingDiLoCo.

Why this exists: training one model across machines on the internet means syncing rarely (every H
inner steps) and surviving peers that come and go. These classes run the outer loop so the caller
only writes the inner one::

    from pccl_py.diloco import DiLoCo
    algo = DiLoCo(model, inner_optimizer, comm, sync_every=50)
    for batch in loader:
        loss_fn(model(batch)).backward(); inner_optimizer.step(); inner_optimizer.zero_grad()
        report = algo.step()   # None between outer steps, an OuterStepReport at each one

What lives where: the global parameters, outer momentum and counters in a SharedState (membership.py),
the reduce and its retries (reduce.py), the outer optimizer and error feedback (outer.py), the
buffers (params.py); sync.py, async_diloco.py and streaming.py only decide when to reduce and when
to apply. See docs/diloco.md.

torch is imported here (and in pccl_py.torch) only; ``import pccl_py`` does not need it.
"""

from .async_diloco import AsyncDiLoCo
from .membership import admit_until
from .report import OuterStepReport
from .streaming import StreamingDiLoCo
from .sync import DiLoCo

__all__ = ["DiLoCo", "AsyncDiLoCo", "StreamingDiLoCo", "OuterStepReport", "admit_until"]
