"""A peer running the admission loop the way users write it, checking every result.

    while running:
        comm.all_reduce(ones)                  # the training step's collective
        if comm.are_peers_pending():           # no extra MAX all-reduce of the flag
            comm.update_topology()

It prints one JSON object per line on stdout: ``{"world": n}`` whenever the world size it sees
changes, ``{"slow": ...}`` for every call that took longer than 0.5 s, ``{"rejoined": ...}`` after an
eviction, and a final ``{"report": ...}``. SIGTERM ends the loop and prints the report; SIGUSR1 makes
the peer leave gracefully (close()) and then report. A wrong result exits with status 3 at once.

Usage: natural_loop_worker.py MASTER_ADDRESS HEARTBEAT_TIMEOUT

It stays apart from the self-verifying loops (worker.py's reduce_loop, pccl-stress's worker) on
purpose: what it pins is that the plain loop, with no extra collective to agree on who votes, admits
newcomers under churn; adding their machinery would test a different loop.
"""

from __future__ import annotations

import json
import signal
import sys
import time

import numpy as np

import pccl_py

stop = False
leave = False


def _on_term(*_: object) -> None:
    global stop
    stop = True


def _on_usr1(*_: object) -> None:
    global leave, stop
    leave = stop = True


def say(**kw: object) -> None:
    print(json.dumps(kw), flush=True)


def connect(address: str, hb: float) -> pccl_py.Communicator:
    return pccl_py.Communicator(address, heartbeat_timeout=hb, timeout=30.0, join_timeout=120.0).connect()


def timed(what: str, fn, counters: dict) -> object:
    t0, w0 = time.monotonic(), time.time()
    try:
        return fn()
    finally:
        dt = time.monotonic() - t0
        counters["max_" + what] = max(counters.get("max_" + what, 0.0), dt)
        if dt > 0.5:
            say(slow=what, seconds=round(dt, 3), start=w0, end=w0 + dt)


def main() -> int:
    address, hb = sys.argv[1], float(sys.argv[2])
    signal.signal(signal.SIGTERM, _on_term)
    signal.signal(signal.SIGUSR1, _on_usr1)
    comm = connect(address, hb)
    x = np.ones(1024, dtype=np.float32)
    y = np.empty_like(x)
    counters: dict = {"steps": 0, "failed_ops": 0, "votes": 0, "rejoins": 0}
    world = 0
    while not stop:
        try:
            info = timed("all_reduce", lambda: comm.all_reduce(x, out=y), counters)
            if not np.array_equal(y, np.full_like(x, info.world_size)):
                say(wrong=True, world=info.world_size, got=float(y[0]))
                return 3
            if info.world_size != world:
                world = info.world_size
                say(world=world, peer=comm.peer_id)
            counters["steps"] += 1
            if comm.are_peers_pending():
                counters["votes"] += 1
                timed("update_topology", comm.update_topology, counters)
        except (pccl_py.PeerLostError, pccl_py.TimeoutError) as e:
            counters["failed_ops"] += 1
            if isinstance(e, pccl_py.TimeoutError):
                say(timeout=str(e))
        except pccl_py.EvictedError:
            # Frozen past the heartbeat timeout: the others went on without this peer. Come back as a
            # new peer, as a user's script would.
            comm.close()
            counters["rejoins"] += 1
            comm = connect(address, hb)
            say(rejoined=comm.peer_id)
        # No compute between steps: a tight loop is where members' views of the pending count differ
        # most (with a 5 ms step the old local flag stranded nobody in 3 runs; with none, run 2 stalled
        # for the whole 30 s op timeout).
    if leave:
        comm.close()
    say(report=counters, peer=comm.peer_id)
    if not leave:
        comm.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
