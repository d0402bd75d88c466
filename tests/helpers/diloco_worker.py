"""One DiLoCo peer for tests/state/test_diloco.py: a small MLP on synthetic data, reporting every outer step.

Run as ``python diloco_worker.py '<json config>'``. Each line on stdout is one JSON event:
``{"event": "outer", ...}`` after every step() that returned a report (with the parameter bytes'
SHA-256, and with ``dump`` the local parameters before the step and the global ones after),
``{"event": "done", ...}`` at the end, ``{"event": "error", ...}`` if step() raised.

Data are a pure function of (seed, slot, inner step), so a run restored from a checkpoint, or a
newcomer taking over a slot, sees the batches the original would have seen.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import threading
import time
import traceback

import numpy as np
import torch

import pccl_py
from pccl_py.diloco import AsyncDiLoCo, DiLoCo, StreamingDiLoCo, admit_until

ALGOS = {"diloco": DiLoCo, "async": AsyncDiLoCo, "streaming": StreamingDiLoCo}


def make_model(cfg: dict) -> torch.nn.Module:
    torch.manual_seed(cfg["seed"] * 1000 + cfg["slot"])  # founders start from different initialisations
    return torch.nn.Sequential(torch.nn.Linear(cfg["dim"], cfg["hidden"]), torch.nn.Tanh(),
                               torch.nn.Linear(cfg["hidden"], 1))


def batch(cfg: dict, inner_step: int) -> tuple:
    g = torch.Generator().manual_seed(cfg["seed"] * 1_000_003 + cfg["slot"] * 10_007 + inner_step)
    x = torch.randn(16, cfg["dim"], generator=g)
    w = torch.linspace(-1.0, 1.0, cfg["dim"]).unsqueeze(1)
    return x, torch.sin(x @ w)


def flat(model: torch.nn.Module) -> np.ndarray:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).numpy().copy()


def emit(**event) -> None:
    sys.stdout.write(json.dumps({"t": time.time(), **event}) + "\n")
    sys.stdout.flush()


def main() -> None:
    cfg = json.loads(sys.argv[1])
    torch.set_num_threads(1)
    comm = pccl_py.Communicator(cfg["master"], timeout=cfg.get("timeout", 20.0),
                                heartbeat_timeout=cfg.get("heartbeat_timeout", 2.0), join_timeout=60.0).connect()
    if cfg.get("founders"):
        admit_until(comm, cfg["founders"], timeout=60.0)
    model = make_model(cfg)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.get("inner_lr", 0.05))
    kwargs = dict(sync_every=cfg["H"], outer_lr=cfg["outer_lr"], outer_momentum=cfg["momentum"],
                  nesterov=cfg["nesterov"], quantization=cfg.get("quantization"),
                  error_feedback=cfg.get("error_feedback", True))
    if cfg["algo"] == "streaming":
        kwargs.update(fragments=cfg["fragments"], overlap=cfg["overlap"])
    try:
        algo = ALGOS[cfg["algo"]](model, opt, comm, **kwargs)
    except pccl_py.PCCLError as exc:
        emit(event="error", type=type(exc).__name__, message=str(exc), trace=traceback.format_exc())
        sys.exit(3)
    if cfg.get("load"):
        ckpt = torch.load(cfg["load"], weights_only=False)
        algo.load_state_dict(ckpt["algo"])
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["opt"])
    emit(event="ready", inner_step=algo.inner_step, outer_step=algo.outer_step, world=comm.world_size,
         fragment_sizes=[f.numel for f in algo.fragments],
         hash=hashlib.sha256(flat(model).tobytes()).hexdigest(), params=flat(model).tolist() if cfg.get("dump") else None)
    loss_fn = torch.nn.MSELoss()
    # With rounds_after_join, the run ends that many outer steps after a newcomer was admitted (a
    # newcomer counts from its own admission), so that founders wait for a newcomer that is slow to start.
    after_join = cfg.get("rounds_after_join")
    stop_at = algo.outer_step + after_join if after_join and not cfg.get("founders") else None
    try:
        while algo.inner_step < cfg["steps"] and (stop_at is None or algo.outer_step < stop_at):
            x, y = batch(cfg, algo.inner_step)
            loss_fn(model(x), y).backward()
            opt.step()
            opt.zero_grad()
            local = flat(model) if cfg.get("dump") else None
            outer_next = algo.outer_step + 1
            if cfg.get("kill_at_outer") == outer_next and (algo.inner_step + 1) % cfg["H"] == 0:
                # kill -9 of this very process shortly after it entered the outer step's reduce
                threading.Timer(cfg.get("kill_delay", 0.02), os.kill, (os.getpid(), signal.SIGKILL)).start()
            report = algo.step()
            if report is None:
                continue
            if after_join and report.joined and stop_at is None:
                stop_at = report.outer_step + after_join
            if cfg.get("save_at") == report.outer_step and report.fragment in (None, cfg.get("fragments", 1) - 1):
                torch.save({"algo": algo.state_dict(), "model": model.state_dict(), "opt": opt.state_dict()},
                           cfg["save_path"])
            glob = torch.cat([f.global_ for f in algo.fragments]).numpy()
            emit(event="outer", inner_step=algo.inner_step, outer_step=report.outer_step, fragment=report.fragment,
                 world=report.world_size, contributors=report.contributors, retries=report.retries,
                 joined=report.joined, lost=report.lost, tx=report.tx_bytes, rx=report.rx_bytes,
                 comm_seconds=report.comm_seconds, blocked_seconds=report.blocked_seconds,
                 hash=hashlib.sha256(flat(model).tobytes()).hexdigest(),
                 global_hash=hashlib.sha256(glob.tobytes()).hexdigest(),
                 local=local.tolist() if local is not None else None,
                 params=flat(model).tolist() if cfg.get("dump") else None,
                 glob=glob.tolist() if cfg.get("dump") else None)
    except pccl_py.PCCLError as exc:
        emit(event="error", type=type(exc).__name__, message=str(exc), trace=traceback.format_exc())
        sys.exit(3)
    if cfg.get("flush"):
        report = algo.flush()
        emit(event="flush", outer_step=algo.outer_step, applied=report is not None,
             params=flat(model).tolist() if cfg.get("dump") else None)
    emit(event="done", inner_step=algo.inner_step, outer_step=algo.outer_step,
         hash=hashlib.sha256(flat(model).tobytes()).hexdigest())
    algo.close()
    comm.close()


if __name__ == "__main__":
    main()
