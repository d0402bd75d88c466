"""Local peers train a small character-level transformer with DiLoCo (or DDP, async, streaming, solo).

    python examples/diloco_train.py                                   # 4 peers, DiLoCo, H = 50, 1000 inner steps
    python examples/diloco_train.py --algo ddp --json ddp.json        # the baseline: gradients all-reduced every step
    python examples/diloco_train.py --quantization q8 --churn --wan 50,100,1000 --json diloco.json
    python examples/diloco_train.py --plot cmp.png --from ddp.json diloco.json   # both on one figure

Everything lives in the package (``python -m pccl_py.tools.diloco_train`` is the same program). Read
``python/pccl_py/tools/diloco_train/peer.py`` for the training loop a user writes: an ordinary torch
loop plus ``algo.step()`` after each inner optimizer step, which runs the outer steps, admits
newcomers and rides out peers that die. ``--help`` lists every flag.
"""

import sys

from pccl_py.tools.diloco_train import main

if __name__ == "__main__":
    sys.exit(main())
