"""The smallest complete pccl_py program: a master and two peers all-reduce a numpy array.

Everything runs in this one process so that the example fits on a screen. The master serves from a
background thread, and each peer is a Communicator driven by a thread of its own. In real use each
peer is a separate process or machine, and the master runs as ``pccl-master``. The calls are the same:

1. The first peer of a group is admitted as soon as it calls connect().
2. A later peer's connect() blocks until the members see ``are_peers_pending()`` and call
   ``update_topology()``.
3. Every member calls ``all_reduce`` on an array of the same shape and dtype. The sum is written
   back in place, bitwise identical on every peer.

Run it with ``python examples/basic_allreduce.py`` (with pccl_py importable, e.g.
``PYTHONPATH=python``). It prints the result and exits with 0 if both peers got the expected sum.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Callable

import numpy as np

import pccl_py

TIMEOUT = 10.0  # seconds; every blocking step below is bounded by it


def run_in_thread(fn: Callable[[], object]) -> tuple[threading.Thread, list]:
    """Starts fn in a thread; the returned list receives its result or the exception it raised."""
    out: list = []

    def target() -> None:
        try:
            out.append(fn())
        except BaseException as exc:  # noqa: BLE001 - handed back to the main thread
            out.append(exc)

    t = threading.Thread(target=target, daemon=True)
    t.start()
    return t, out


def join(t: threading.Thread, out: list, what: str) -> object:
    t.join(TIMEOUT)
    if t.is_alive():
        raise RuntimeError(f"{what} did not finish within {TIMEOUT} s")
    if isinstance(out[0], BaseException):
        raise out[0]
    return out[0]


def main() -> int:
    with pccl_py.Master("127.0.0.1", 0) as master:  # port 0: any free port
        peers = [pccl_py.Communicator(master.address, listen_host="127.0.0.1", timeout=TIMEOUT, join_timeout=TIMEOUT)
                 for _ in range(2)]
        try:
            peers[0].connect()  # the first peer of a group is admitted at once

            # The second peer's connect() blocks until the members admit it, so it runs in a thread.
            t, out = run_in_thread(peers[1].connect)
            deadline = time.monotonic() + TIMEOUT
            while not peers[0].are_peers_pending():
                if time.monotonic() > deadline:
                    raise RuntimeError("the second peer never became pending")
                time.sleep(0.01)
            peers[0].update_topology()  # every member calls it; here there is one member
            join(t, out, "connect()")
            print(f"world size {peers[0].world_size}: peer ids {[p.peer_id for p in peers]}")

            # Each peer contributes its own array; all_reduce sums them in place on both peers at once.
            arrays = [np.arange(8, dtype=np.float32) * (rank + 1) for rank in range(2)]
            expected = arrays[0] + arrays[1]
            jobs = [run_in_thread(lambda p=p, a=a: p.all_reduce(a, op=pccl_py.ReduceOp.SUM))
                    for p, a in zip(peers, arrays)]
            infos = [join(t, out, "all_reduce") for t, out in jobs]
            for rank, (a, info) in enumerate(zip(arrays, infos)):
                print(f"peer {rank}: {a.tolist()}  (world size {info.world_size}, {info.algorithm})")

            ok = all(np.array_equal(a, expected) for a in arrays) and arrays[0].tobytes() == arrays[1].tobytes()
            print("both peers hold the expected sum" if ok else f"WRONG: expected {expected.tolist()}")
            return 0 if ok else 1
        finally:
            for p in peers:
                p.close()


if __name__ == "__main__":
    sys.exit(main())
