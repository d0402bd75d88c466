"""One peer of a ``pccl-stress`` run: a self-verifying training-like loop that reports over stdout.

Why this exists: the stress orchestrator (``pccl_py.tools.stress``) kills, freezes, adds and removes peers
at random; only the peers themselves can see whether every collective still returned exactly the
right bits. So each peer runs a workload whose results prove who contributed, checks every result
itself, and reports counters and findings to the orchestrator as JSON lines on stdout. It is a
module of the package (``python -m pccl_py.tools.stress.worker``) so that ``pccl-stress`` works after
``pip install``.

Running, retrying and checking each op is :class:`pccl_py.tools.verified_peer.VerifiedPeer`'s, shared with
the demo's peers and the tests' workers; this module adds the step: what runs, in which order, and the
shared state, the digest and the votes.

The loop, per step (every op is retried at once after PeerLostError or TimeoutError; the core
guarantees that every survivor sees the same outcome for every op, so the retries line up):

1. header (tag 1, int64 MAX): ``[next_step, peers_pending]``. Everyone adopts the largest step, so a
   newcomer (or a rejoining peer) falls into line with the group, and everyone agrees whether to vote.
2. ident (tag 2, float64 SUM, small: star). Every exact tensor is built by :mod:`pccl_py.tools.proof`:
   a membership block names the contributing slots and the payload is a function of that set, so any
   contribution lost, counted twice, reduced into the wrong place or left over from another step
   shows. All values are integers below 2**53, so the sums are exact in float64 whatever the order.
3. some steps (chosen from (seed, step), so every peer agrees): concurrently, an async 1 MiB exact op
   (tag 3: above the star limit, so it runs the ring and is striped over the K connections) and an
   async q8 op (tag 4, float32, every peer contributes the same ``c[j]`` in [0.5, 1]; the result must
   be ``n * c`` within the q8 bound, n taken from the membership that an exact op of the same epoch
   proved), while the ident op runs on the caller's thread.
4. shared state (only when the core has ``pccl_py.SharedState``): sync, check the content against the
   revision, hash it.
5. digest (tag 5, uint64 MAX): ``[h, ~h, s, ~s]`` with h a hash of this step's results and s the state
   hash; MAX of h and of ~h gives the largest and the smallest h, so any difference between peers (a
   divergence) shows on every peer.
6. if the header said peers are pending: ``update_topology()``, at the end of the step, so the
   newcomer's first op (a header) lines up with everyone's next one.

Within one epoch the membership is fixed, so every exact op of an epoch must decode to the same set;
a different set is a wrong result too.

Signals: SIGTERM asks for a graceful leave (``close()`` at the next step boundary, exit 0).
``PCCL_STRESS_CORRUPT=<slot>`` makes the peer in that slot contribute a wrong value to every ident
op from step 3 on (early, so that even a run slowed down by a loaded machine gets there), to prove that
the checks can fail.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import sys
import threading
import time
import traceback
from typing import Any, Callable, Optional, Sequence

import numpy as np

from .._process import die_with_parent, process_resources
from ..proof import HEAD, MAX_SLOTS, exact_contribution
from ..verified_peer import Op, VerifiedPeer

IDENT_PAYLOAD = 256                 # small: star
BIG_PAYLOAD = (1 << 17) - HEAD      # 1 MiB in total: ring, striped over the K connections
Q8_ELEMENTS = 1 << 16               # 256 KiB of float32
STATE_ELEMENTS = 512                # shared state: 4 KiB of float64 plus a small int64 key
TAG_HEADER, TAG_IDENT, TAG_BIG, TAG_Q8, TAG_DIGEST = 1, 2, 3, 4, 5
CORRUPT_FROM_STEP = 3
STATS_INTERVAL = 0.5


class Fatal(Exception):
    """Something this worker cannot continue after; reported, then the process exits 2."""


# ------------------------------------------------------------------------------------------------
# The data.

def _rng(seed: int, step: int, tag: int) -> np.random.Generator:
    return np.random.default_rng([seed, step, tag])


def q8_contribution(seed: int, step: int) -> np.ndarray:
    return (0.5 + 0.5 * _rng(seed, step, TAG_Q8).random(Q8_ELEMENTS)).astype(np.float32)


def check_q8(result: np.ndarray, seed: int, step: int, n: int) -> str:
    """"" if result == n * c within the q8 bound, else why not.

    Each q8 encoding of a block of partial sums k * c (c in [0.5, 1]) errs by at most half a step,
    (max - min) / 510 <= k / 1020; a chunk is encoded at most n times on its way, so n * n / 1020
    bounds the error. A lost or doubled contribution moves an element by at least 0.5.
    """
    c = q8_contribution(seed, step).astype(np.float64)
    tol = n * n / 1020.0 + 1e-3
    err = np.abs(result.astype(np.float64) - n * c)
    worst = float(err.max()) if err.size else 0.0
    if not np.isfinite(worst) or worst > tol:
        return f"q8 result is off by {worst:.4g} (> {tol:.3g}) from {n} contributions"
    return ""


def state_expected(seed: int, revision: int) -> np.ndarray:
    """The shared state's content at a revision: revision * c, c integers in [1, 64] (exact)."""
    c = np.random.default_rng([seed, 7_777]).integers(1, 65, size=STATE_ELEMENTS).astype(np.float64)
    return c * float(revision)


def step_kind(seed: int, step: int) -> str:
    """"plain" (ident only) or "async" (big + q8 concurrently with ident); every peer agrees."""
    return "async" if _rng(seed, step, 0).random() < 0.5 else "plain"


def _hash64(*arrays: np.ndarray) -> int:
    h = hashlib.blake2b(digest_size=8)
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return int.from_bytes(h.digest(), "little")


# ------------------------------------------------------------------------------------------------
# The peer.

class Worker(VerifiedPeer):
    """The peer loop; see the module docstring. Running, retrying and checking each op is VerifiedPeer's."""

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args.slot, args.seed, on_event=self.emit)
        self.args = args
        corrupt = os.environ.get("PCCL_STRESS_CORRUPT", "")
        self.corrupt = corrupt.strip().isdigit() and int(corrupt) == self.slot
        self.leaving = False
        self.lock = threading.Lock()
        self.next_step = 0
        self.state_revision = 0
        self.state_w = np.zeros(STATE_ELEMENTS, dtype=np.float64)
        self.state_meta = np.zeros(4, dtype=np.int64)
        self.c.update(steps=0, divergences=0, state_syncs=0, state_divergences=0, state_tx=0, state_rx=0,
                      votes=0, vote_failures=0, joins=0, join_failures=0, evictions=0, master_losses=0)

    # -- reporting ----------------------------------------------------------------------------
    def emit(self, ev: str, **fields: Any) -> None:
        line = json.dumps({"ev": ev, "slot": self.slot, "t": time.monotonic(), **fields})
        with self.lock:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    def stats(self) -> None:
        try:
            res = process_resources()
        except OSError:  # no /proc (not Linux): report the counters without resources
            res = {}
        self.emit("stats", **self.c, **res)

    def _stats_loop(self) -> None:
        while True:
            time.sleep(STATS_INTERVAL)
            try:
                self.stats()
            except (OSError, ValueError):
                return

    # -- membership -----------------------------------------------------------------------------
    def _new_comm(self) -> Any:
        a = self.args
        kwargs: dict[str, Any] = dict(connections_per_peer=a.connections, timeout=a.timeout,
                                      heartbeat_timeout=a.heartbeat_timeout, join_timeout=a.join_timeout,
                                      listen_host="127.0.0.1")
        if a.master_grace > 0:
            kwargs["master_grace"] = a.master_grace
        return self.pccl.Communicator(a.master, **kwargs)

    def join(self, stall: bool = False) -> None:
        """(Re)joins with a new Communicator; retries a failed admission a few times.

        stall: the wait counts as a stall of this peer (after a master restart the whole group is
        held up); otherwise waiting for admission (first join, after an eviction) does not.
        """
        if not stall:
            self.last_ok = None
        self.forget_membership()
        for attempt in range(20):
            if self.leaving:
                return
            self._close()
            self.comm = self._new_comm()
            try:
                self.comm.connect()
            except self.pccl.PCCLError as exc:
                self.c["join_failures"] += 1
                self.emit("join_failed", error=type(exc).__name__, message=str(exc)[:300])
                time.sleep(0.2 + 0.1 * attempt)
                continue
            self.c["joins"] += 1
            self.emit("joined", peer_id=self.comm.peer_id, epoch=self.comm.epoch, world=self.comm.world_size)
            return
        raise Fatal("could not join after 20 attempts")

    def _close(self) -> None:
        if self.comm is not None:
            comm, self.comm = self.comm, None
            try:
                comm.close()
            except Exception:  # noqa: BLE001 - a dead communicator may refuse; we drop it anyway
                pass

    # -- ops --------------------------------------------------------------------------------------
    def _reduce(self, buf: np.ndarray, tag: int, op: Any, **kw: Any) -> Callable[[], Any]:
        return lambda: self.comm.all_reduce(buf, op=op, tag=tag, **kw)

    def _reduce_async(self, buf: np.ndarray, tag: int, **kw: Any) -> Callable[[], Any]:
        return lambda: self.comm.all_reduce_async(buf, tag=tag, **kw)

    def step(self) -> None:
        ReduceOp = self.pccl.ReduceOp
        seed = self.seed

        header = np.array([self.next_step, int(self.comm.are_peers_pending())], dtype=np.int64)
        self.run_ops(-1, {"header": (header, self._reduce(header, TAG_HEADER, ReduceOp.MAX))})
        step, pending = int(header[0]), bool(header[1])

        ident = exact_contribution(self.slot, seed, step, TAG_IDENT, IDENT_PAYLOAD)
        if self.corrupt and step >= CORRUPT_FROM_STEP:
            ident[HEAD] += 1.0
        ops: dict[str, Op] = {}
        kind = step_kind(seed, step)
        if kind == "async":
            big = exact_contribution(self.slot, seed, step, TAG_BIG, BIG_PAYLOAD)
            q8 = q8_contribution(seed, step)
            ops["big"] = (big, self._reduce_async(big, TAG_BIG))
            ops["q8"] = (q8, self._reduce_async(q8, TAG_Q8, quantization="q8"))
        # The ident op goes last, so it runs on this thread while the async ones are in flight.
        ops["ident"] = (ident, self._reduce(ident, TAG_IDENT, ReduceOp.SUM))
        infos = self.run_ops(step, ops)

        self.verify_exact(step, "ident", ident, TAG_IDENT, infos["ident"])
        results = [ident]
        if kind == "async":
            self.verify_exact(step, "big", big, TAG_BIG, infos["big"])
            members = self.epoch_members.get(infos["q8"].epoch)
            n = len(members) if members is not None else infos["q8"].world_size
            why = check_q8(q8, seed, step, n)
            if why:
                self.wrong(step, why)
            results += [big, q8]

        state_hash = self.sync_state(step)
        h = _hash64(np.array([step], dtype=np.int64), *results)
        mask = (1 << 64) - 1
        digest = np.array([h, h ^ mask, state_hash, state_hash ^ mask], dtype=np.uint64)
        self.run_ops(step, {"digest": (digest, self._reduce(digest, TAG_DIGEST, ReduceOp.MAX))})
        if int(digest[0]) != mask ^ int(digest[1]):
            self.c["divergences"] += 1
            self.emit("divergence", step=step, what="result hashes differ across peers")
        if int(digest[2]) != mask ^ int(digest[3]):
            self.c["state_divergences"] += 1
            self.emit("state_divergence", step=step, what="shared-state hashes differ across peers")

        self.c["steps"] += 1
        self.next_step = step + 1
        if pending:
            self.vote()
        if self.args.step_sleep > 0:
            time.sleep(self.args.step_sleep)

    def vote(self) -> None:
        self.c["votes"] += 1
        try:
            self.comm.update_topology()
        except self.pccl.PCCLError as exc:
            if not self.retryable(exc):
                raise
            # Nobody was admitted; the newcomer stays pending and the next header triggers another vote.
            self.c["vote_failures"] += 1
            self.record_failure(exc)

    def sync_state(self, step: int) -> int:
        """Shared-state step: sync, check the content against the revision, hash, then advance."""
        pccl = self.pccl
        state = pccl.SharedState({"w": self.state_w, "meta": self.state_meta}, revision=self.state_revision)
        while True:
            try:
                info = self.comm.sync_shared_state(state)
                break
            except pccl.PCCLError as exc:
                self.record_failure(exc)
                if not self.retryable(exc):
                    raise
                self.c["retries"] += 1
        self.op_ok()
        self.c["state_syncs"] += 1
        self.c["state_tx"] += int(getattr(info, "tx_bytes", 0))
        self.c["state_rx"] += int(getattr(info, "rx_bytes", 0))
        revision = int(getattr(info, "revision", self.state_revision))
        self.state_revision = revision
        if hasattr(state, "__getitem__"):
            # Whether SharedState writes into our arrays or into copies of its own, read back what it holds.
            for key, mine in (("w", self.state_w), ("meta", self.state_meta)):
                held = np.asarray(state[key])
                if held is not mine:
                    mine[...] = held
        if not np.array_equal(self.state_w, state_expected(self.seed, revision)) or int(self.state_meta[0]) != revision:
            self.wrong(step, f"shared state content does not match its revision {revision}")
        hashes = state.hashes()
        state_hash = _hash64(np.array([revision], dtype=np.int64),
                             np.array([hashes[k] for k in sorted(hashes)], dtype=np.uint64))
        # Every peer applies the same update, so the next sync only has to bring newcomers up to date.
        self.state_revision = revision + 1
        self.state_w[...] = state_expected(self.seed, self.state_revision)
        self.state_meta[0] = self.state_revision
        return state_hash

    # -- main loop --------------------------------------------------------------------------------
    def run(self) -> int:
        signal.signal(signal.SIGTERM, lambda *_: setattr(self, "leaving", True))
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the orchestrator owns our lifetime
        threading.Thread(target=self._stats_loop, name="stats", daemon=True).start()
        self.emit("started", pid=os.getpid(), corrupt=self.corrupt)
        pccl = self.pccl
        try:
            self.join()
            while not self.leaving:
                try:
                    self.step()
                except pccl.EvictedError as exc:
                    # Frozen longer than heartbeat_timeout: rejoin as a new peer, as the docs say.
                    self.c["evictions"] += 1
                    self.emit("evicted", message=str(exc)[:300])
                    self.join()
                except pccl.MasterLostError as exc:
                    self.c["master_losses"] += 1
                    self.emit("master_lost", message=str(exc)[:300])
                    if not self.args.master_restart:
                        raise Fatal(f"MasterLostError without a master restart: {exc}") from exc
                    # A core with master_grace rides out the restart; this one did not: rejoin.
                    self.join(stall=True)
            self._close()
            self.stats()
            self.emit("left")
            return 0
        except Exception as exc:  # noqa: BLE001 - any other failure is a crash the orchestrator must see
            traceback.print_exc()
            self.stats()
            self.emit("fatal", error=type(exc).__name__, message=str(exc)[:500])
            return 2


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m pccl_py.tools.stress.worker",
                                description="One pccl-stress peer (started by pccl-stress, not by hand).")
    p.add_argument("--master", required=True)
    p.add_argument("--slot", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--connections", type=int, default=4)
    p.add_argument("--timeout", type=float, default=10.0)
    p.add_argument("--heartbeat-timeout", type=float, default=2.0)
    p.add_argument("--join-timeout", type=float, default=60.0)
    p.add_argument("--master-grace", type=float, default=0.0)
    p.add_argument("--master-restart", action="store_true")
    p.add_argument("--step-sleep", type=float, default=0.0)
    p.add_argument("--parent-pid", type=int, default=0)
    p.add_argument("--log-level", default="error")
    args = p.parse_args(argv)
    if not 0 <= args.slot < MAX_SLOTS:
        p.error(f"--slot must be in [0, {MAX_SLOTS})")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    die_with_parent(args.parent_pid)
    import pccl_py

    pccl_py.set_log_level(args.log_level)
    return Worker(args).run()


if __name__ == "__main__":
    sys.exit(main())
