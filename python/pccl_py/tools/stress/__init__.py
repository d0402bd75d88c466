"""``pccl-stress``: seeded churn (kill -9, freeze, join, leave, master restart) against self-verifying peers.

``cli`` is the orchestrator, ``worker`` the peer process it starts (``python -m
pccl_py.tools.stress.worker``), ``report`` the live progress line and the final report.
"""
