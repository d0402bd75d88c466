"""A command-driven peer process for the multi-process tests.

The test drives it over stdin/stdout with one JSON object per line, so every test uses real processes
and real sockets while still choosing exactly when each peer calls what. Inputs are generated from
(seed, index) so the test and the worker can both compute the reference result.

Why most commands are not the package's self-verifying peer (pccl_py.tools.verified_peer, which
pccl-stress's and the demo's peers are): that peer must find out who took part in each op, so its inputs
encode their authors and it can only check exact float64 sums. Here the test decides every call and its
timing (start times, retries, kills in between) and knows the contributors, so it can check any dtype,
op, quantization, point-to-point or shared-state call against a numpy reference. The one command that
runs on its own, reduce_loop, is that peer's loop; the reading of a process's resources is shared too
(pccl_py.tools._process).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
import time
import traceback

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from reference import make_input, reference_result, results_match  # noqa: E402

import pccl_py  # noqa: E402
from pccl_py.tools._process import process_resources  # noqa: E402


def _array(dtype: str, count: int, seed: int, index: int, op: str):
    arr = make_input(dtype, count, seed, index, op)
    if dtype == "bfloat16":
        import torch

        return torch.from_numpy(arr.astype(np.float32)).to(torch.bfloat16)
    return arr


def _bytes(x) -> bytes:
    if isinstance(x, np.ndarray):
        return x.tobytes()
    return x.view(dtype=__import__("torch").int16).numpy().tobytes()


def _to_numpy(x) -> np.ndarray:
    if isinstance(x, np.ndarray):
        return x
    return x.float().numpy()


class Worker:
    def __init__(self, index: int) -> None:
        self.index = index
        self.comm: pccl_py.Communicator | None = None
        self.pending: dict[str, dict] = {}
        self.kept: dict[str, dict] = {}  # multi_all_reduce buffers kept for a retry, by op key

    def reply(self, obj: dict) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    def run(self) -> None:
        for line in sys.stdin:
            line = line.strip()
            if not line:
                continue
            cmd = json.loads(line)
            try:
                out = self.dispatch(cmd)
            except pccl_py.PCCLError as exc:
                out = {"ok": False, "error": type(exc).__name__, "message": str(exc), "t": time.time()}
            except Exception as exc:  # noqa: BLE001 - reported to the test, which fails on it
                out = {"ok": False, "error": type(exc).__name__, "message": str(exc),
                       "trace": traceback.format_exc(), "t": time.time()}
            out["id"] = cmd.get("id")
            self.reply(out)
            if cmd["cmd"] == "exit":
                return

    def dispatch(self, cmd: dict) -> dict:
        name = cmd["cmd"]
        if name == "connect":
            kwargs = dict(listen_host="127.0.0.1")
            kwargs.update(cmd.get("kwargs", {}))
            self.comm = pccl_py.Communicator(cmd["master"], **kwargs)
            self.comm.connect()
            return self.state()
        if name == "state":
            return self.state()
        if name == "update_topology":
            self.comm.update_topology()
            return self.state()
        if name == "pending":
            return {"ok": True, "pending": self.comm.are_peers_pending()}
        if name == "all_reduce":
            return self.all_reduce(cmd)
        if name == "close":
            self.comm.close()
            return {"ok": True}
        if name == "resources":
            return {"ok": True, **resources()}
        if name == "exit":
            return {"ok": True}
        if name == "all_reduce_at":  # all_reduce with a start time (fault-injection tests)
            return self.all_reduce(cmd)
        # --- added for the throughput tests (striping, concurrency, quantization) ------------------
        if name == "multi_all_reduce":
            return self.multi_all_reduce(cmd)
        if name == "tcp_conns":
            return {"ok": True, "conns": tcp_conns()}
        if name == "try_quantized_int":
            return self.try_quantized_int(cmd)
        # --- added for the shared-state tests ------------------------------------------------------
        if name == "sync_state":
            return self.sync_state(cmd)
        # --- added for the overlapping-fault tests --------------------------------------------------
        if name == "reduce_loop":
            return self.reduce_loop(cmd)
        # --- added for the point-to-point tests ----------------------------------------------------
        if name == "p2p":
            return self.p2p(cmd)
        # --- added for the protocol-hardening tests (test_hostile.py) ------------------------------
        if name == "send_failure":  # a FAILURE report with any suspect, as a malicious member would send
            epoch = cmd.get("epoch") or self.comm.epoch
            self.comm._core._send_failure_report(epoch, cmd.get("kind", 0), cmd["suspect"])
            return {"ok": True, "epoch": epoch}
        raise ValueError(f"unknown command {name}")

    def p2p(self, cmd: dict) -> dict:
        """Issues cmd["ops"] (each {op: send|recv, peer, tag, dtype, count, seed}) as async send/recv,
        in list order, `repeat` times (optionally starting at wall time start_at), and waits for all.
        Sent bytes are random bits from seed (NaN payloads included); receive buffers start as a known
        pattern. Replies per op: outcome, error class and time, and the sha256 of the receive buffer
        before and after (a failed receive must leave it unchanged)."""
        ops = cmd["ops"]
        bufs = []
        for o in ops:
            nbytes = int(o["count"]) * np.dtype(o["dtype"]).itemsize
            seed = int(o["seed"]) + (0 if o["op"] == "send" else 7919)
            raw = np.random.default_rng(seed).integers(0, 256, nbytes, dtype=np.uint8)
            bufs.append(raw.view(o["dtype"]))
        before = [hashlib.sha256(b.tobytes()).hexdigest() for b in bufs]
        wait = float(cmd.get("start_at", 0)) - time.time()
        if wait > 0:
            time.sleep(wait)
        results = [{"ok": True} for _ in ops]
        # pin_epoch: the ranks are those of the epoch current now, and a later membership change fails the
        # ops (PeerLostError) instead of resolving the ranks in the new membership.
        # pinned: that epoch instead of the current one.
        epoch = (cmd.get("pinned") or self.comm.epoch) if cmd.get("pin_epoch") else None
        t0 = time.time()
        for _ in range(int(cmd.get("repeat", 1))):
            handles = []
            for o, b, r in zip(ops, bufs, results):
                if not r["ok"]:
                    handles.append(None)
                    continue
                try:
                    fn = self.comm.send_async if o["op"] == "send" else self.comm.recv_async
                    handles.append(fn(b, o["peer"], tag=o.get("tag", 0), epoch=epoch))
                except pccl_py.PCCLError as exc:
                    r.update(ok=False, error=type(exc).__name__, message=str(exc), t=time.time())
                    handles.append(None)
            for h, r in zip(handles, results):
                if h is None:
                    continue
                try:
                    info = h.wait()
                    r["retries"] = r.get("retries", 0) + info.retries
                except pccl_py.PCCLError as exc:
                    r.update(ok=False, error=type(exc).__name__, message=str(exc), t=time.time())
        for r, b, h0 in zip(results, bufs, before):
            r["sha_before"] = h0
            r["sha_after"] = hashlib.sha256(b.tobytes()).hexdigest()
        return {"ok": True, "results": results, "t0": t0, "t1": time.time()}

    def state(self) -> dict:
        c = self.comm
        return {"ok": True, "rank": c.rank, "world_size": c.world_size, "peer_id": c.peer_id, "epoch": c.epoch}

    def reduce_loop(self, cmd: dict) -> dict:
        """Runs the package's self-verifying peer (VerifiedPeer, which pccl-stress's and the demo's peers are) in its
        own loop, reduce_until, until the members agree that cmd["until"] (time.time()) has passed; its report, stamped with
        time.time() so that the test can line it up with the faults it injected."""
        from pccl_py.tools.verified_peer import VerifiedPeer

        peer = VerifiedPeer(self.index, int(cmd.get("seed", 0)), clock=time.time)
        peer.comm = self.comm
        return peer.reduce_until(float(cmd["until"]), size=int(cmd.get("count", 256)), tag=int(cmd.get("tag", 0)))

    def all_reduce(self, cmd: dict) -> dict:
        """Runs cmd["repeat"] all-reduces on generated inputs and reports outcome, timing and correctness.
        With cmd["start_at"] (the all_reduce_at command) the buffers are prepared first and the ops start
        at that wall-clock time, so a test can aim a fault at a known point of the ops; "t0" is when they
        started."""
        dtype, count, seed, op = cmd["dtype"], int(cmd["count"]), int(cmd.get("seed", 0)), cmd.get("op", "SUM")
        x = _apply_specials(_array(dtype, count, seed, self.index, op), cmd, self.index)
        original = _bytes(x)
        out = None
        if cmd.get("use_out"):
            out = _array(dtype, count, seed + 777, self.index, op)
            out_original = _bytes(out)
        repeat = int(cmd.get("repeat", 1))
        if repeat > 1 and out is None:
            raise ValueError("repeat > 1 needs use_out=True so the input stays the same across repetitions")
        wait = float(cmd.get("start_at", 0)) - time.time()
        if wait > 0:
            time.sleep(wait)
        t0 = time.time()
        done = 0
        t_first_ok = None  # when the first op of this command succeeded (recovery time after a failure)
        try:
            for _ in range(repeat):
                if out is not None:
                    out_original = _bytes(out)
                info = self.comm.all_reduce(x, op=getattr(pccl_py.ReduceOp, op), out=out, tag=int(cmd.get("tag", 0)),
                                            algorithm=cmd.get("algorithm", "auto"), **_quant_kwargs(cmd))
                done += 1
                t_first_ok = t_first_ok or time.time()
        except pccl_py.PCCLError as exc:
            return {"ok": False, "error": type(exc).__name__, "message": str(exc), "t": time.time(), "t0": t0,
                    "elapsed": time.time() - t0, "input_unchanged": _bytes(x) == original, "completed": done,
                    "out_unchanged": out is None or _bytes(out) == out_original}
        result = x if out is None else out
        reply = {"ok": True, "t": time.time(), "t0": t0, "elapsed": time.time() - t0, "world_size": info.world_size,
                 "completed": done, "t_first_ok": t_first_ok, "algorithm": info.algorithm, "retries": info.retries,
                 "epoch": info.epoch,
                 "sha": hashlib.sha256(_bytes(result)).hexdigest(),
                 "input_unchanged": out is None or _bytes(x) == original}
        reply["tx_bytes"], reply["rx_bytes"] = info.tx_bytes, info.rx_bytes
        expect = cmd.get("expect_from")
        if expect is None and cmd.get("expect_by_world"):  # {world_size: [worker indices]}
            expect = {int(k): v for k, v in cmd["expect_by_world"].items()}.get(info.world_size)
        if expect is not None:
            _check_result(reply, cmd, _to_numpy(result), expect)
        return reply


    # --- shared-state tests ----------------------------------------------------------------------
    def sync_state(self, cmd: dict) -> dict:
        """Builds (or keeps) a SharedState and syncs it cmd["steps"] times (default 1).

        cmd["keys"]: {name: {dtype, count, seed, allow}} - content is generated from seed, so two peers
        given the same seed hold the same bytes; given when the state is (re)built (cmd["rebuild"] or the
        first call). cmd["revision"]: revision for a rebuilt state. Before every step after the first the
        revision is incremented, and with cmd["evolve"] every float entry gets +1 (the same on every peer).
        cmd["set"]: {name: seed} regenerates those entries before the first step. cmd["lie"]: {name:
        seed}: this peer reports the hash of that seed's content for the entry while holding other bytes
        (a corrupt source). cmd["start_at"]: wall-clock start. Reply: per-step infos or the error, plus
        the final hashes and whether the tensors changed on error.
        """
        if cmd.get("rebuild") or not hasattr(self, "shared"):
            entries = {}
            for name, k in cmd["keys"].items():
                arr = make_input(k.get("dtype", "float32"), int(k["count"]), int(k["seed"]), 0, "SUM")
                entries[name] = pccl_py.StateEntry(arr, allow_content_inequality=bool(k.get("allow", False)))
            self.shared = pccl_py.SharedState(entries, revision=int(cmd.get("revision", 0)))
        state = self.shared
        for name, seed in (cmd.get("set") or {}).items():
            t = state.entries[name].tensor
            t[...] = make_input(t.dtype.name, t.size, int(seed), 0, "SUM")
        lie = cmd.get("lie") or {}
        if lie:
            import pccl_py.shared_state as ss
            honest = ss._hash_buffers

            def lying(bufs):
                out = honest(bufs)
                for name, seed in lie.items():
                    t = state.entries[name].tensor
                    fake = make_input(t.dtype.name, t.size, int(seed), 0, "SUM")
                    out[name] = pccl_py._core.content_hash(fake.ctypes.data, fake.nbytes)
                return out
            ss._hash_buffers = lying
        announce = cmd.get("announce_nbytes") or {}
        if announce:  # a hostile peer: its table gives these byte counts instead of the true ones
            import json as real_json
            import pccl_py.shared_state as ss

            class LyingJson:
                loads = staticmethod(real_json.loads)

                @staticmethod
                def dumps(obj, **kw):
                    if isinstance(obj, dict) and "keys" in obj:
                        obj = dict(obj, keys=[[k[0], k[1], k[2], int(announce.get(k[0], k[3])), *k[4:]]
                                              for k in obj["keys"]])
                    return real_json.dumps(obj, **kw)
            ss.json = LyingJson
        wait = float(cmd.get("start_at", 0)) - time.time()
        if wait > 0:
            time.sleep(wait)
        infos = []
        before = state.hashes()
        t0 = time.time()
        try:
            for step in range(int(cmd.get("steps", 1))):
                if step > 0 or cmd.get("advance"):
                    state.revision += 1
                    if cmd.get("evolve"):
                        for e in state.entries.values():
                            e.tensor[...] += 1
                    before = state.hashes()
                info = self.comm.sync_shared_state(state, cmd.get("strategy", "enforce_popular"))
                infos.append({"revision": info.revision, "tx_bytes": info.tx_bytes, "rx_bytes": info.rx_bytes,
                              "received_keys": info.received_keys, "retries": info.retries, "rounds": info.rounds,
                              "failovers": info.failovers, "total_tx_bytes": info.total_tx_bytes,
                              "elapsed": time.time() - t0})
        except pccl_py.PCCLError as exc:
            return {"ok": False, "error": type(exc).__name__, "message": str(exc), "infos": infos, "t0": t0,
                    "t": time.time(), "unchanged": state.hashes() == before, "revision": state.revision}
        finally:
            if lie:
                ss._hash_buffers = honest
            if announce:
                ss.json = real_json
        return {"ok": True, "infos": infos, "hashes": {k: f"{v:016x}" for k, v in state.hashes().items()},
                "revision": state.revision, "t0": t0, "t": time.time()}

    # --- throughput tests ----------------------------------------------------------------------
    def try_quantized_int(self, cmd: dict) -> dict:
        """Calls all_reduce with quantization on a non-float dtype; reports the error it raised."""
        dtype = cmd["dtype"]
        x = _array(dtype, int(cmd.get("count", 1000)), 0, self.index, "SUM")
        original = _bytes(x)
        fn = self.comm.all_reduce_async if cmd.get("asynchronous") else self.comm.all_reduce
        t0 = time.time()
        try:
            h = fn(x, tag=int(cmd.get("tag", 0)), algorithm=cmd.get("algorithm", "auto"),
                   quantization=cmd["quantization"])
            if cmd.get("asynchronous"):
                h.wait()
        except pccl_py.PCCLError as exc:
            return {"ok": False, "error": type(exc).__name__, "message": str(exc), "elapsed": time.time() - t0,
                    "input_unchanged": _bytes(x) == original}
        return {"ok": True, "elapsed": time.time() - t0}

    def multi_all_reduce(self, cmd: dict) -> dict:
        """Submits several all_reduce_async ops and waits for all of them.

        cmd["ops"]: list of {key, dtype, count, seed, tag, op, algorithm, quantization, use_out, offset,
        reuse}: op i is submitted `offset` seconds after the start (in list order; default 0); with
        reuse=True, the buffers kept from an earlier failed op of the same key are used again (a retry).
        cmd["start_at"]: wall-clock time to start submitting (buffers are prepared before).
        cmd["expect_by_world"]: {world_size: [worker indices]} whose contributions a result of that world
        size must hold. cmd["wait_timeout"]: seconds to wait for every op (default 60).
        The reply lists per op: ok/error/message, t_submit, t_returned (all_reduce_async returned),
        t_done (wall clock), world_size, sha, correct, input_unchanged, out_unchanged (failed ops), tx_bytes.
        """
        specs = cmd["ops"]
        prepared = []
        for i, o in enumerate(specs):
            key = str(o.get("key", i))
            if o.get("reuse"):
                b = self.kept.pop(key)
            else:
                dtype, count, seed, op = o["dtype"], int(o["count"]), int(o.get("seed", 0)), o.get("op", "SUM")
                x = _array(dtype, count, seed, self.index, op)
                out = _array(dtype, count, seed + 777, self.index, op) if o.get("use_out") else None
                b = {"x": x, "out": out, "x_orig": _bytes(x), "out_orig": None if out is None else _bytes(out),
                     "spec": o}
            prepared.append((key, b))
        wait = float(cmd.get("start_at", 0)) - time.time()
        if wait > 0:
            time.sleep(wait)
        t0 = time.time()
        outcomes: list[dict] = [dict() for _ in prepared]
        threads = []

        def waiter(i: int, key: str, b: dict, h) -> None:
            res = outcomes[i]
            try:
                info = h.wait()
            except pccl_py.PCCLError as exc:
                res.update(ok=False, error=type(exc).__name__, message=str(exc), t_done=time.time())
                res["input_unchanged"] = _bytes(b["x"]) == b["x_orig"]
                res["out_unchanged"] = b["out"] is None or _bytes(b["out"]) == b["out_orig"]
                self.kept[key] = b
                return
            except Exception as exc:  # noqa: BLE001 - reported to the test
                res.update(ok=False, error=type(exc).__name__, message=str(exc), t_done=time.time(),
                           trace=traceback.format_exc())
                return
            res.update(ok=True, t_done=time.time(), world_size=info.world_size, epoch=info.epoch,
                       algorithm=info.algorithm, retries=info.retries, tx_bytes=info.tx_bytes)

        for i, (key, b) in enumerate(prepared):
            o = b["spec"]
            delay = t0 + float(specs[i].get("offset", 0)) - time.time()
            if delay > 0:
                time.sleep(delay)
            outcomes[i].update(key=key, tag=int(o.get("tag", 0)), t_submit=time.time())
            try:
                h = self.comm.all_reduce_async(b["x"], op=getattr(pccl_py.ReduceOp, o.get("op", "SUM")), out=b["out"],
                                               tag=int(o.get("tag", 0)), algorithm=o.get("algorithm", "auto"),
                                               **_quant_kwargs(o))
                outcomes[i]["t_returned"] = time.time()
            except pccl_py.PCCLError as exc:
                outcomes[i].update(ok=False, error=type(exc).__name__, message=str(exc), t_done=time.time(),
                                   submit_error=True, input_unchanged=_bytes(b["x"]) == b["x_orig"],
                                   out_unchanged=b["out"] is None or _bytes(b["out"]) == b["out_orig"])
                self.kept[key] = b
                continue
            t = threading.Thread(target=waiter, args=(i, key, b, h), daemon=True)
            t.start()
            threads.append(t)
        deadline = time.time() + float(cmd.get("wait_timeout", 60))
        for t in threads:
            t.join(max(0.0, deadline - time.time()))
        expect = {int(k): v for k, v in (cmd.get("expect_by_world") or {}).items()}
        for (key, b), res in zip(prepared, outcomes):
            if "ok" not in res:
                res.update(ok=False, error="hung", message="wait() did not return in time")
                continue
            if not res["ok"]:
                continue
            o = b["spec"]
            result = b["x"] if b["out"] is None else b["out"]
            res["sha"] = hashlib.sha256(_bytes(result)).hexdigest()
            res["input_unchanged"] = b["out"] is None or _bytes(b["x"]) == b["x_orig"]
            if res["world_size"] in expect:
                _check_result(res, o, _to_numpy(result), expect[res["world_size"]])
        return {"ok": True, "t0": t0, "t": time.time(), "ops": outcomes}


def resources() -> dict:
    """This process's descriptors, OS threads and memory (pccl_py.tools._process), plus its Python threads."""
    return {**process_resources(), "py_threads": threading.active_count()}


# --- throughput tests: quantization, special values, result checks --------------------------------
_SPECIAL_VALUES = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf")}
# Default bounds on the relative L2 error of a quantized result (docs/quantization.md, with margin).
QUANT_MAX_REL_L2 = {"fp16": 1e-3, "bf16": 6e-3, "q8": 2.5e-2, "q4": 0.2}


def _quant_kwargs(cmd: dict) -> dict:
    """Only passes quantization= when the command asks for it, so other commands call exactly as before."""
    return {"quantization": cmd["quantization"]} if cmd.get("quantization") is not None else {}


def _apply_specials(x, cmd: dict, index: int):
    """cmd["specials"]: [[element, "nan" | "inf" | "-inf" | a number(, worker index)], ...]; without a
    worker index the value goes into every peer's input."""
    for s in cmd.get("specials") or ():
        if len(s) > 2 and s[2] is not None and int(s[2]) != index:
            continue
        x[int(s[0])] = _SPECIAL_VALUES[s[1]] if isinstance(s[1], str) else float(s[1])
    return x


def _reference(cmd: dict, expect: list) -> np.ndarray:
    dtype, count, seed, op = cmd["dtype"], int(cmd["count"]), int(cmd.get("seed", 0)), cmd.get("op", "SUM")
    if not cmd.get("specials"):
        return reference_result(dtype, count, seed, expect, op)
    stack = np.stack([_apply_specials(make_input(dtype, count, seed, i, op).astype(np.float64), cmd, i)
                      for i in expect])
    with np.errstate(invalid="ignore", over="ignore"):
        return {"SUM": np.sum, "AVG": np.mean, "PROD": np.prod, "MIN": np.min, "MAX": np.max}[op](stack, axis=0)


def _indices(mask: np.ndarray, cap: int = 4096) -> list:
    return np.flatnonzero(mask)[:cap].tolist()


def _check_result(reply: dict, cmd: dict, got: np.ndarray, expect: list) -> None:
    """Sets reply["correct"] and ["detail"] exactly as before for plain ops; for quantized ops or ops with
    special values also reports the error statistics and where the result is not finite."""
    dtype, op = cmd["dtype"], cmd.get("op", "SUM")
    ref = _reference(cmd, expect)
    quant = cmd.get("quantization")
    if not quant and not cmd.get("specials"):
        reply["correct"], reply["detail"] = results_match(dtype, got, ref, op, len(expect))
        return
    g = got.astype(np.float64)
    fin = np.isfinite(g) & np.isfinite(ref)
    with np.errstate(invalid="ignore", over="ignore"):
        diff = g[fin] - ref[fin]
        norm = float(np.linalg.norm(ref[fin]))
        rel = float(np.linalg.norm(diff)) / norm if norm > 0 else float(np.linalg.norm(diff))
    reply.update(rel_l2=rel, max_abs_err=float(np.max(np.abs(diff))) if diff.size else 0.0,
                 finite_compared=int(fin.sum()),
                 nan_idx=_indices(np.isnan(g)), posinf_idx=_indices(np.isposinf(g)),
                 neginf_idx=_indices(np.isneginf(g)),
                 n_nan=int(np.isnan(g).sum()), n_inf=int(np.isinf(g).sum()),
                 ref_nan_idx=_indices(np.isnan(ref)), ref_posinf_idx=_indices(np.isposinf(ref)),
                 ref_neginf_idx=_indices(np.isneginf(ref)))
    reply["probe"] = [[int(i), float(g[int(i)]), float(ref[int(i)])] for i in cmd.get("probe") or ()]
    if quant in ("fp16", "bf16"):
        # Every element of the result is a decoded 16-bit value (the owner adopts what it sends).
        f = g[np.isfinite(g)]
        if quant == "fp16":
            with np.errstate(over="ignore"):
                reply["quant_grid"] = bool(np.all(f.astype(np.float16).astype(np.float64) == f))
        else:
            f32 = f.astype(np.float32)
            reply["quant_grid"] = bool(np.all(f32.astype(np.float64) == f) and
                                       not np.any(f32.view(np.uint32) & np.uint32(0xFFFF)))
    if quant:
        bound = float(cmd.get("max_rel_l2", QUANT_MAX_REL_L2.get(quant, 0.0)))
        reply["correct"] = rel <= bound
        reply["detail"] = f"relative L2 error {rel:.3g} (bound {bound:.3g})"
    else:
        ok, detail = results_match(dtype, np.where(fin, got, 0), np.where(fin, ref, 0), op, len(expect))
        reply["correct"], reply["detail"] = ok, detail


def tcp_conns() -> list:
    """Every connected TCP socket of this process: [local port, remote port, bytes acked, bytes received]
    (the last two from TCP_INFO), so a test can pair up the connections between two workers and see how
    many bytes each one carried."""
    import socket
    import struct

    conns = []
    for name in os.listdir("/proc/self/fd"):
        try:
            if not os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                continue
            dup = os.dup(int(name))
        except OSError:
            continue
        try:
            s = socket.socket(fileno=dup)  # family and type detected from the descriptor
        except OSError:
            os.close(dup)
            continue
        try:
            if s.family != socket.AF_INET or s.type != socket.SOCK_STREAM:
                continue
            local, remote = s.getsockname(), s.getpeername()
            info = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 192)
            acked, received = struct.unpack_from("<QQ", info, 120) if len(info) >= 136 else (-1, -1)
            conns.append([local[1], remote[1], acked, received])
        except OSError:  # listening socket (no peer) or closed meanwhile
            pass
        finally:
            s.close()
    return conns


if __name__ == "__main__":
    import faulthandler
    import signal

    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 <pid>` writes every thread's stack to the peer's log
    Worker(int(sys.argv[1])).run()
