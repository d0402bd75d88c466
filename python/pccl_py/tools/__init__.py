"""The tools shipped with pccl_py, apart from the library a user imports.

Each module or subpackage here is a program with a command line (``python -m pccl_py.tools.<name>``;
``pccl-demo`` runs two of them). The library never imports from here (only the console-script
module ``pccl_py.demo`` does), so ``import pccl_py`` stays free of the tools' dependencies (torch,
rich, matplotlib), which each tool imports only when it runs.

- :mod:`pccl_py.tools.diloco_train`: local peers train a small character-level transformer with DDP,
  DiLoCo, async or streaming DiLoCo, or alone, under churn and an emulated WAN, and compare the runs.
  ``pccl-demo`` is a preset of it.
- :mod:`pccl_py.tools.allreduce_demo`: the self-verifying all-reduce demo (``pccl-demo --allreduce``).
"""
