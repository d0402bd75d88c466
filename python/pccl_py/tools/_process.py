"""Helpers for the package's own child processes (pccl-demo peers, pccl-stress workers, test workers).

Why this exists: the tools that start real peer processes must never leave one behind, even when
the tool itself is killed with SIGKILL and gets no chance to clean up. Both use the same Linux
mechanism, so it lives here once; so does the one reading of a process's resources (descriptors,
threads, memory) that stress workers report and the leak tests compare.
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


def process_resources(pid: object = "self") -> dict[str, int]:
    """Open descriptors, OS threads, resident and peak resident memory (KiB) of a process, read from
    Linux's /proc: {"fds", "os_threads", "rss_kb", "hwm_kb"}. Raises OSError if the process is gone or
    /proc does not say (a leak check must not pass on zeros it could not read)."""
    fields = {"Threads": "os_threads", "VmRSS": "rss_kb", "VmHWM": "hwm_kb"}
    out = {"fds": len(os.listdir(f"/proc/{pid}/fd"))}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name in fields:
                out[fields[name]] = int(value.split()[0])
    missing = [k for k in fields if fields[k] not in out]
    if missing:
        raise OSError(f"/proc/{pid}/status has no {', '.join(missing)}")
    return out
