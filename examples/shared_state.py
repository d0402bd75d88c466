"""Shared state with a late joiner: ``python examples/shared_state.py``.

Two peers train a toy model for 20 steps, syncing its parameters every step (nothing moves: they
apply the same update). A third peer then joins with garbage parameters; its first sync pulls every
byte from the other two, and from then on all three stay bitwise identical with zero bytes moved.
Each peer is a thread here for brevity; in real use each is its own process or machine.
"""

from __future__ import annotations

import threading

import numpy as np

import pccl_py


def train_step(params: dict, step: int) -> None:
    """A deterministic stand-in for an optimizer step (the same on every peer)."""
    for name, p in params.items():
        p *= 0.99
        p += np.float32(0.01 * np.sin(step + len(name)))


def peer(address: str, name: str, steps: int, joined: threading.Event, log: list, world: int = 1) -> None:
    """Runs `steps` revisions, and beyond them until a step ran with `world` peers: the founders wait for
    the late joiner, however slow its start, so that it never finds an empty group."""
    if name == "c":  # the late joiner starts from garbage
        params = {"w": np.random.default_rng(7).standard_normal(100_000).astype(np.float32),
                  "b": np.ones(100, np.float32)}
    else:  # the founders start from the same initialisation
        params = {"w": np.linspace(-1, 1, 100_000, dtype=np.float32), "b": np.zeros(100, np.float32)}
    comm = pccl_py.Communicator(address, listen_host="127.0.0.1", timeout=30).connect()
    joined.set()
    state = pccl_py.SharedState(params, revision=0)
    synced_with = 0  # peers in the last sync
    while state.revision < steps or (synced_with < world and state.revision < 100 * steps):
        # Members must agree on admitting newcomers at the same step: one MAX all-reduce of the flag.
        pending = np.array([comm.are_peers_pending()], dtype=np.uint8)
        comm.all_reduce(pending, op=pccl_py.ReduceOp.MAX)
        if pending[0]:
            comm.update_topology()
            continue  # start the step again, together with the newcomer
        info = comm.sync_shared_state(state)  # a behind peer jumps to the group's revision here
        synced_with = comm.world_size
        log.append((name, info.revision, info.rx_bytes, sorted(state.hashes().items())))
        train_step(params, state.revision)
        state.revision += 1
    comm.close()


def main() -> None:
    master = pccl_py.Master("127.0.0.1", 0).start()
    address = f"127.0.0.1:{master.port}"
    log: list = []
    first, second, third = threading.Event(), threading.Event(), threading.Event()
    founders = [threading.Thread(target=peer, args=(address, n, 40, e, log, 3)) for n, e in (("a", first), ("b", second))]
    founders[0].start()
    first.wait()
    founders[1].start()
    # The founders run alone until "c" shows up; pending peers are admitted at a step boundary.
    late = threading.Thread(target=peer, args=(address, "c", 40, third, log))
    second.wait()
    while not any(r >= 20 for _, r, _, _ in log):
        threading.Event().wait(0.01)
    late.start()
    for t in founders + [late]:
        t.join(120)
    master.stop()

    by_revision: dict = {}
    for name, revision, rx, hashes in log:
        by_revision.setdefault(revision, []).append((name, rx, hashes))
    c_first = min(r for r, entries in by_revision.items() if any(n == "c" for n, _, _ in entries))
    received = next(rx for n, rx, _ in by_revision[c_first] if n == "c")
    print(f"c joined at revision {c_first} and received {received} bytes in its first sync")
    for revision in sorted(by_revision):
        entries = by_revision[revision]
        assert len({str(h) for _, _, h in entries}) == 1, f"peers differ at revision {revision}"
        if revision > c_first:
            assert all(rx == 0 for _, rx, _ in entries), f"bytes moved at revision {revision}"
    assert received == 100_000 * 4 + 100 * 4
    print("all peers bitwise identical at every revision; nothing moved after the catch-up: example OK")


if __name__ == "__main__":
    main()
