"""Helpers for the package's own child processes (pccl-demo peers, pccl-stress workers).

Why this exists: the tools that start real peer processes must never leave one behind, even when
the tool itself is killed with SIGKILL and gets no chance to clean up. Both use the same Linux
mechanism, so it lives here once.
"""

from __future__ import annotations

import os
import signal


def die_with_parent(parent_pid: int) -> None:
    """Linux: get SIGKILLed if the parent dies, so that even `kill -9 <tool>` leaves no children behind.

    Call it first thing in the child. Exits at once if the parent already died before the request
    took effect; does nothing where prctl is unavailable.
    """
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):
        return
    if parent_pid and os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)
