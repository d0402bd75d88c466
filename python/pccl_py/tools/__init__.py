"""The tools shipped with pccl_py, apart from the library a user imports.

Each module or subpackage here is a program with a command line (``python -m pccl_py.tools.<name>``) or
a piece of one. The library (everything in ``pccl_py`` outside this folder) never imports from here, so
``import pccl_py`` stays free of the tools' dependencies (torch, rich, matplotlib), which each tool
imports only when it runs.

- :mod:`pccl_py.tools.demo`: ``pccl-demo``, a preset of diloco_train (or of allreduce_demo with
  ``--allreduce``).
- :mod:`pccl_py.tools.diloco_train`: local peers train a small character-level transformer with DDP,
  DiLoCo, async or streaming DiLoCo, or alone, under churn and an emulated WAN, and compare the runs.
- :mod:`pccl_py.tools.allreduce_demo`: the self-verifying all-reduce demo.
- :mod:`pccl_py.tools.bench`: ``pccl-bench``, benchmarks against Gloo in the same invocation.
- :mod:`pccl_py.tools.stress`: ``pccl-stress``, seeded churn against self-verifying peers.
- :mod:`pccl_py.tools.wan`: the user-space WAN emulator (latency and rate caps on a TCP relay).
- :mod:`pccl_py.tools.machine_stalls`: measures when the whole machine stood still, so that wall-clock
  bounds in tests and stress runs do not count a hypervisor's pause against the library.
- :mod:`pccl_py.tools.proof`: all-reduce inputs whose exact sum names its contributors, checked by
  every self-verifying peer (pccl-stress's workers, pccl-demo --allreduce's peers, the tests' reduce loop).
- :mod:`pccl_py.tools._process`: child processes that die with their parent, and a process's resources.
"""
