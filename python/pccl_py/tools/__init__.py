"""The tools shipped with pccl_py, apart from the library a user imports.

Each subpackage is a program with a command line (``python -m pccl_py.tools.<name>``, some also have a
console script such as ``pccl-demo``). Nothing in ``pccl_py`` itself imports from here, so the library
stays free of the tools' dependencies (torch, rich, matplotlib), which each tool imports only when it
runs.

- :mod:`pccl_py.tools.diloco_train`: local peers train a small character-level transformer with DDP,
  DiLoCo, async or streaming DiLoCo, or alone, under churn and an emulated WAN, and compare the runs.
"""
