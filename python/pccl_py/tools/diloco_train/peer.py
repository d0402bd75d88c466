"""One training peer, and the canonical user-side training loop for pccl_py (:func:`train`).

Why this exists: this is the code a user copies. :func:`train` is an ordinary torch loop (batch,
forward, backward, inner optimizer step) plus one call, ``algo.step()``, that does everything
distributed: DiLoCo's outer step every H inner steps, admitting newcomers, riding out peers that die.
Started by the launcher as ``python -m pccl_py.tools.diloco_train.peer ...``, it reports to the
launcher with JSON lines on stdout (marked, so stray prints cannot be mistaken for reports) and
takes one command on stdin: ``{"cmd": "stop_at", "inner_step": S}``.

Communicator settings (chosen here, for local peers on a loaded 2-core machine):

- ``timeout=30``: an outer step moves a few MB; 30 s covers it through a slow emulated WAN and a CPU
  oversubscribed 2:1 by torch, and still bounds a hang.
- ``heartbeat_timeout=3``: a SIGKILLed peer is noticed at once anyway (its sockets close); the
  heartbeat only catches frozen peers and silent links, and 3 s rides out the multi-second stalls a
  loaded VM shows without evicting healthy peers.

The traps to avoid:

- Founders and newcomers are not the same. The N peers started together wait until all N are in
  (``admit_until``) and start from the same seeded weights. A newcomer must NOT call admit_until:
  it connects, and the algorithm's constructor hands it the group's parameters, optimizer state and
  step counter when the members admit it at their next outer step.
- Stopping: every peer must leave after the same outer step, or the last all-reduce runs with fewer
  members and the final weights differ. Peers stop when the group's ``algo.inner_step`` reaches
  the target, which the launcher sets (on a sync boundary) for everyone alike.
- Only EvictedError, MasterLostError and ClosedError propagate from ``algo.step()``; a peer lost
  mid-step is handled inside it. Anything raised here ends this peer and is reported.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import signal
import sys
import threading
import time
import traceback
from typing import Any, Iterator, Optional, Sequence

MARK = "@@diloco_train "
TIMEOUT = 30.0
HEARTBEAT_TIMEOUT = 3.0
ADMIT_TIMEOUT = 120.0
PROGRESS_EVERY = 10  # inner steps between progress reports


class Reporter:
    """JSON lines to the launcher on stdout; a lock because the stdin thread may report too."""

    def __init__(self, slot: int) -> None:
        self.slot = slot
        self._lock = threading.Lock()

    def emit(self, event: str, **fields: Any) -> None:
        line = MARK + json.dumps({"event": event, "slot": self.slot, "pid": os.getpid(), **fields}) + "\n"
        with self._lock:
            sys.stdout.write(line)
            sys.stdout.flush()


class StopTarget:
    """The inner step at which to stop: --inner-steps, lowered by the launcher's stop_at command."""

    def __init__(self, initial: int) -> None:
        self.value = initial
        threading.Thread(target=self._read, name="stdin-commands", daemon=True).start()

    def _read(self) -> None:
        for line in sys.stdin:
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if msg.get("cmd") == "stop_at":
                self.value = min(self.value, int(msg["inner_step"]))


def make_algorithm(args: argparse.Namespace, model: Any, inner_opt: Any, comm: Any) -> Any:
    """The distributed part: one object whose step() follows every inner optimizer step."""
    from .ddp import ElasticDDP, Solo  # noqa: PLC0415

    if args.algo == "solo":
        return Solo()
    if args.algo == "ddp":
        return ElasticDDP(model, inner_opt, comm)
    from pccl_py import diloco  # noqa: PLC0415 - torch is imported by the peers only

    common = dict(sync_every=args.sync_every, outer_lr=args.outer_lr, outer_momentum=args.outer_momentum,
                  nesterov=args.outer_momentum > 0, quantization=None if args.quantization == "none" else args.quantization,
                  error_feedback=not args.no_error_feedback)
    if args.algo == "diloco":
        return diloco.DiLoCo(model, inner_opt, comm, **common)
    if args.algo == "async":
        return diloco.AsyncDiLoCo(model, inner_opt, comm, **common)
    return diloco.StreamingDiLoCo(model, inner_opt, comm, fragments=args.fragments, overlap=args.overlap,
                                  mixing=args.mixing, **common)


def learning_rate(args: argparse.Namespace, step: int) -> float:
    """Linear warmup, then constant: a function of the group's step, so a newcomer picks up the same value."""
    lr: float = args.lr * min(1.0, (step + 1) / max(args.warmup, 1))
    return lr


def join_group(args: argparse.Namespace, model: Any, inner_opt: Any, founder: bool) -> tuple[Any, Any]:
    """Connects to the master and builds the algorithm: (comm, algo); comm is None for solo."""
    import pccl_py  # noqa: PLC0415
    from pccl_py.diloco import admit_until  # noqa: PLC0415

    comm = None
    if args.algo != "solo":
        comm = pccl_py.Communicator(args.master, timeout=TIMEOUT, heartbeat_timeout=HEARTBEAT_TIMEOUT,
                                    listen_host="127.0.0.1", listen_port=args.listen_port,
                                    advertise_address=args.advertise_address or None)
        comm.connect()  # a newcomer waits here until the members admit it
        if founder:  # only the peers started together; never a newcomer joining a running group
            admit_until(comm, world_size=args.world_size, timeout=ADMIT_TIMEOUT)
    return comm, make_algorithm(args, model, inner_opt, comm)  # a newcomer receives the group's state here


def train(args: argparse.Namespace, out: Reporter, stop: StopTarget) -> None:
    """The training loop: plain torch, plus ``algo.step()`` after every inner optimizer step."""
    import torch  # noqa: PLC0415

    import pccl_py  # noqa: PLC0415

    from .data import Corpus  # noqa: PLC0415
    from .model import SIZES, build_model  # noqa: PLC0415

    torch.set_num_threads(1)  # several peers share the machine's cores
    corpus = Corpus(SIZES[args.model].context)
    model = build_model(args.model, corpus.vocab_size, args.seed)  # the same weights on every founder
    inner_opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.01)
    comm, algo = join_group(args, model, inner_opt, founder=args.founder)
    meter = Meter(out, args, comm, corpus.eval_batches(args.eval_sequences))
    meter.joined(algo, model)

    while algo.inner_step < stop.value:
        step = algo.inner_step  # the group's step: a newcomer continues from the group's value
        for group in inner_opt.param_groups:
            group["lr"] = learning_rate(args, step)
        x, y = corpus.batch(args.seed, args.slot, step, args.batch_size)  # this slot's data for this step
        loss = model.loss(x, y)
        loss.backward()
        try:
            with meter.communicating():
                if args.algo == "ddp":
                    algo.all_reduce_gradients()  # the baseline: average the gradients every step
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            inner_opt.step()
            inner_opt.zero_grad(set_to_none=True)
            with meter.communicating():
                report = algo.step()  # DiLoCo: an OuterStepReport every H inner steps, None in between
        except pccl_py.EvictedError as exc:
            # Silent for longer than heartbeat_timeout (frozen, or a dead link): the group went on without
            # us. Rejoin as a newcomer; the algorithm's constructor hands us the group's current state.
            inner_opt.zero_grad(set_to_none=True)
            meter.evicted(exc)
            algo.close()
            comm.close()
            comm, algo = join_group(args, model, inner_opt, founder=False)
            meter.joined(algo, model, comm)
            continue
        meter.after_step(algo, model, loss.item(), report, last=algo.inner_step >= stop.value)

    if hasattr(algo, "flush"):  # the DiLoCo variants (not the ddp and solo stand-ins)
        with meter.communicating():
            algo.flush()  # AsyncDiLoCo: apply the round still in flight, so the final model includes it
    meter.finish(algo, model)
    algo.close()
    if comm is not None:
        comm.close()  # leave the group gracefully: the others' next op just works


class Meter:
    """Everything the launcher learns about this peer: timing of the distributed calls, bytes sent,
    losses, evals and outer-step reports. Kept out of the training loop above, which stays readable."""

    def __init__(self, out: Reporter, args: argparse.Namespace, comm: Any, eval_batches: list[Any]) -> None:
        self.out, self.args, self.comm, self.eval_batches = out, args, comm, eval_batches
        self.sent = 0             # bytes this peer sent (DiLoCo: the sum of its reports; the baselines count)
        self.took = 0.0           # this step's time inside the distributed calls
        self.longest = 0.0        # the longest of those, over the run: this peer's longest stall
        self.total = 0.0
        self.losses: list[float] = []
        self.last_eval = -1

    def joined(self, algo: Any, model: Any, comm: Any = None) -> None:
        """Admitted (a newcomer: holding the group's state): reported with an eval of where we start."""
        from .data import text_sha256  # noqa: PLC0415
        from .model import describe, evaluate  # noqa: PLC0415

        self.comm = comm or self.comm
        self.out.emit("joined", inner_step=algo.inner_step, world_size=self.world_size(),
                      peer_id=self.comm.peer_id if self.comm else 0, model=describe(model), text_sha256=text_sha256())
        self.out.emit("eval", inner_step=algo.inner_step, eval_loss=evaluate(model, self.eval_batches),
                      tx_bytes=self.bytes_sent(algo))

    def evicted(self, exc: BaseException) -> None:
        self.took = 0.0
        self.out.emit("evicted", message=str(exc)[:300])

    def world_size(self) -> int:
        return self.comm.world_size if self.comm is not None else 1

    @contextlib.contextmanager
    def communicating(self) -> Iterator[None]:
        t = time.monotonic()
        try:
            yield
        finally:
            self.took += time.monotonic() - t

    def after_step(self, algo: Any, model: Any, loss: float, report: Any, last: bool) -> None:
        from .model import evaluate  # noqa: PLC0415

        took, self.took = self.took, 0.0
        self.total += took
        self.longest = max(self.longest, took)
        self.losses.append(loss)
        step = algo.inner_step
        if report is not None:
            self.sent += int(report.tx_bytes)
            self.out.emit("outer", inner_step=step, step_seconds=took, tx_total=self.bytes_sent(algo),
                          report=_report_dict(report))
        if step % PROGRESS_EVERY == 0 or last:
            self.out.emit("progress", inner_step=step, loss=sum(self.losses) / len(self.losses),
                          tx_bytes=self.bytes_sent(algo), world_size=self.world_size(),
                          outer_step=getattr(algo, "outer_step", 0), longest_step_s=self.longest)
            self.losses.clear()
        if step % self.args.eval_every == 0:
            self.last_eval = step
            self.out.emit("eval", inner_step=step, eval_loss=evaluate(model, self.eval_batches),
                          tx_bytes=self.bytes_sent(algo))

    def bytes_sent(self, algo: Any) -> int:
        return int(getattr(algo, "tx_bytes", self.sent))

    def finish(self, algo: Any, model: Any) -> None:
        """The final eval, and the SHA-256 of this peer's weights and of the group's global weights."""
        from .model import evaluate, params_sha256  # noqa: PLC0415

        final = evaluate(model, self.eval_batches)
        if self.last_eval != algo.inner_step:
            self.out.emit("eval", inner_step=algo.inner_step, eval_loss=final, tx_bytes=self.bytes_sent(algo))
        mine, group = params_sha256(model), global_parameters(algo, model)
        group_sha = params_sha256(group)
        self.out.emit("done", inner_step=algo.inner_step, final_eval_loss=final, params_sha256=mine,
                      global_sha256=group_sha,
                      global_eval_loss=final if group_sha == mine else evaluate(group, self.eval_batches),
                      tx_bytes=self.bytes_sent(algo), outer_step=getattr(algo, "outer_step", 0),
                      longest_step_s=self.longest, comm_seconds=self.total, retries=getattr(algo, "retries", 0))


def global_parameters(algo: Any, model: Any) -> Any:
    """The group's parameters. DiLoCo keeps them apart from the model (StreamingDiLoCo's fragments sync at
    different steps, so its model is never all of them at once); the baselines have only the model."""
    import copy  # noqa: PLC0415

    import torch  # noqa: PLC0415

    if not hasattr(algo, "state_dict"):
        return model
    flat = torch.cat([frag["global"] for frag in algo.state_dict()["fragments"]])
    group = copy.deepcopy(model)
    torch.nn.utils.vector_to_parameters(flat, [p for p in group.parameters() if p.requires_grad])
    return group


def _report_dict(report: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(report) and not isinstance(report, type):
        d = dataclasses.asdict(report)
    else:
        d = {k: getattr(report, k) for k in dir(report) if not k.startswith("_") and not callable(getattr(report, k))}
    return {k: (v if isinstance(v, (int, float, str, bool, type(None))) else repr(v)) for k, v in d.items()}


def build_parser() -> argparse.ArgumentParser:
    """The launcher passes every training setting explicitly; their defaults live in cli.py only."""
    p = argparse.ArgumentParser(prog="python -m pccl_py.tools.diloco_train.peer",
                                description="One training peer (started by pccl_py.tools.diloco_train).")
    p.add_argument("--master", default="")
    p.add_argument("--founder", action="store_true", help="one of the peers started together (admits until --world-size)")
    p.add_argument("--no-error-feedback", action="store_true")
    p.add_argument("--listen-port", type=int, default=0)
    p.add_argument("--advertise-address", default="")
    p.add_argument("--algo", choices=["ddp", "diloco", "async", "streaming", "solo"], required=True)
    for flag, kind in (("--slot", int), ("--world-size", int), ("--inner-steps", int), ("--sync-every", int),
                       ("--fragments", int), ("--overlap", int), ("--mixing", float), ("--quantization", str),
                       ("--outer-lr", float), ("--outer-momentum", float), ("--seed", int), ("--model", str),
                       ("--batch-size", int), ("--lr", float), ("--warmup", int), ("--eval-every", int),
                       ("--eval-sequences", int), ("--log-level", str), ("--parent-pid", int)):
        p.add_argument(flag, type=kind, required=True)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from .._process import die_with_parent  # noqa: PLC0415

    die_with_parent(args.parent_pid)  # even a SIGKILLed launcher leaves no peer behind
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the launcher owns our lifetime
    out = Reporter(args.slot)
    out.emit("started", founder=args.founder)
    try:
        import pccl_py  # noqa: PLC0415

        pccl_py.set_log_level(args.log_level)
        train(args, out, StopTarget(args.inner_steps))
    except BaseException as exc:  # noqa: BLE001 - reported to the launcher, which judges the run
        traceback.print_exc(file=sys.stderr)
        out.emit("error", error=type(exc).__name__, message=str(exc)[:500])
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
