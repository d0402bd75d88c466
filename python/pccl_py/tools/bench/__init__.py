"""``pccl-bench``: all-reduce, send/recv and shared-state benchmarks against Gloo, run in one invocation.

``cli`` runs the sweep (and is each worker process, with ``--worker``), ``backends`` drives pccl and
Gloo the same way, ``report`` turns the timings into tables, ratios and a plot.
"""
