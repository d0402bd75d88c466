"""A command-driven peer process for the multi-process tests.

The test drives it over stdin/stdout with one JSON object per line, so every test uses real processes
and real sockets while still choosing exactly when each peer calls what. Inputs are generated from
(seed, index) so the test and the worker can both compute the reference result.
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
        # --- added for the fault-injection tests -------------------------------------------------
        if name == "all_reduce_at":
            return self.all_reduce_at(cmd)
        raise ValueError(f"unknown command {name}")

    def state(self) -> dict:
        c = self.comm
        return {"ok": True, "rank": c.rank, "world_size": c.world_size, "peer_id": c.peer_id, "epoch": c.epoch}

    def all_reduce(self, cmd: dict) -> dict:
        dtype, count, seed, op = cmd["dtype"], int(cmd["count"]), int(cmd.get("seed", 0)), cmd.get("op", "SUM")
        x = _array(dtype, count, seed, self.index, op)
        original = _bytes(x)
        out = None
        if cmd.get("use_out"):
            out = _array(dtype, count, seed + 777, self.index, op)
            out_original = _bytes(out)
        repeat = int(cmd.get("repeat", 1))
        if repeat > 1 and out is None:
            raise ValueError("repeat > 1 needs use_out=True so the input stays the same across repetitions")
        t0 = time.time()
        done = 0
        try:
            for _ in range(repeat):
                if out is not None:
                    out_original = _bytes(out)
                info = self.comm.all_reduce(x, op=getattr(pccl_py.ReduceOp, op), out=out, tag=int(cmd.get("tag", 0)),
                                            algorithm=cmd.get("algorithm", "auto"))
                done += 1
        except pccl_py.PCCLError as exc:
            return {"ok": False, "error": type(exc).__name__, "message": str(exc), "t": time.time(),
                    "elapsed": time.time() - t0, "input_unchanged": _bytes(x) == original, "completed": done,
                    "out_unchanged": out is None or _bytes(out) == out_original}
        result = x if out is None else out
        reply = {"ok": True, "t": time.time(), "elapsed": time.time() - t0, "world_size": info.world_size,
                 "completed": done,
                 "algorithm": info.algorithm, "retries": info.retries, "epoch": info.epoch,
                 "sha": hashlib.sha256(_bytes(result)).hexdigest(),
                 "input_unchanged": out is None or _bytes(x) == original}
        expect = cmd.get("expect_from")
        if expect is not None:
            ref = reference_result(dtype, count, seed, expect, op)
            reply["correct"], reply["detail"] = results_match(dtype, _to_numpy(result), ref, op, len(expect))
        return reply

    def all_reduce_at(self, cmd: dict) -> dict:
        """Like all_reduce, but the buffers are prepared first and the ops start at wall-clock time
        cmd["start_at"], so a test can aim a fault at a known point of the ops. The reply adds "t0" (when
        the ops started), and "dtype"/"count" are as in all_reduce; expect_from may be omitted."""
        dtype, count, seed, op = cmd["dtype"], int(cmd["count"]), int(cmd.get("seed", 0)), cmd.get("op", "SUM")
        x = _array(dtype, count, seed, self.index, op)
        original = _bytes(x)
        out = None
        if cmd.get("use_out"):
            out = _array(dtype, count, seed + 777, self.index, op)
            out_original = _bytes(out)
        repeat = int(cmd.get("repeat", 1))
        if repeat > 1 and out is None:
            raise ValueError("repeat > 1 needs use_out=True so the input stays the same across repetitions")
        wait = float(cmd["start_at"]) - time.time()
        if wait > 0:
            time.sleep(wait)
        t0 = time.time()
        done = 0
        try:
            for _ in range(repeat):
                if out is not None:
                    out_original = _bytes(out)
                info = self.comm.all_reduce(x, op=getattr(pccl_py.ReduceOp, op), out=out, tag=int(cmd.get("tag", 0)),
                                            algorithm=cmd.get("algorithm", "auto"))
                done += 1
        except pccl_py.PCCLError as exc:
            return {"ok": False, "error": type(exc).__name__, "message": str(exc), "t": time.time(), "t0": t0,
                    "elapsed": time.time() - t0, "input_unchanged": _bytes(x) == original, "completed": done,
                    "out_unchanged": out is None or _bytes(out) == out_original}
        result = x if out is None else out
        reply = {"ok": True, "t": time.time(), "t0": t0, "elapsed": time.time() - t0, "world_size": info.world_size,
                 "completed": done, "algorithm": info.algorithm, "retries": info.retries, "epoch": info.epoch,
                 "sha": hashlib.sha256(_bytes(result)).hexdigest(),
                 "input_unchanged": out is None or _bytes(x) == original}
        expect = cmd.get("expect_from")
        if expect is not None:
            ref = reference_result(dtype, count, seed, expect, op)
            reply["correct"], reply["detail"] = results_match(dtype, _to_numpy(result), ref, op, len(expect))
        return reply


def resources() -> dict:
    fds = len(os.listdir("/proc/self/fd"))
    threads = threading.active_count()
    with open("/proc/self/status") as f:
        status = dict(line.split(":", 1) for line in f if ":" in line)
    return {"fds": fds, "os_threads": int(status["Threads"].strip()), "py_threads": threads,
            "rss_kb": int(status["VmRSS"].split()[0])}


if __name__ == "__main__":
    Worker(int(sys.argv[1])).run()
