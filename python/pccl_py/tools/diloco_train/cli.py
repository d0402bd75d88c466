"""The command line of ``python -m pccl_py.tools.diloco_train`` (and the settings ``pccl-demo`` presets).

Why this exists: a run that fails after two minutes of training because of a flag it could have
rejected at once wastes the two minutes. Every combination that cannot work (quantized DDP, churn
without communication, a step count that ends between two outer steps, --plot without matplotlib,
no torch) is refused here, before anything starts, with a message saying what to do instead.
"""

from __future__ import annotations

import argparse
import importlib.util
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pccl_py.tools.wan import WanProfile

DILOCO_ALGOS = ("diloco", "async", "streaming")
MODEL_SIZES = ("default", "small", "tiny")  # model.SIZES; not imported from there, which needs torch


def _wan(text: str) -> "WanProfile":  # pccl_py.tools.wan is pure Python and small
    from pccl_py.tools.wan import parse_wan  # noqa: PLC0415

    try:
        return parse_wan(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training")
    g.add_argument("--algo", choices=["ddp", "diloco", "async", "streaming", "solo"], default="diloco",
                   help="ddp: gradients all-reduced every step (baseline); diloco / async / streaming: the DiLoCo "
                        "variants; solo: no communication, each peer alone (default %(default)s)")
    g.add_argument("--peers", type=int, default=4, help="peers started together (default %(default)s)")
    g.add_argument("--inner-steps", type=int, default=1000, help="inner steps of the group (default %(default)s)")
    g.add_argument("--sync-every", type=int, default=50, metavar="H", help="inner steps per outer step (default %(default)s)")
    g.add_argument("--fragments", type=int, default=4, metavar="F", help="streaming: parameter fragments (default %(default)s)")
    g.add_argument("--overlap", type=int, default=5, metavar="TAU",
                   help="streaming: inner steps between a fragment's reduce starting and its update being applied "
                        "(default %(default)s; must be < H / F)")
    g.add_argument("--mixing", type=float, default=0.0, metavar="M",
                   help="streaming: share of the local fragment kept when the global one is applied (default %(default)s)")
    g.add_argument("--quantization", choices=["none", "fp16", "bf16", "q8", "q4"], default="none",
                   help="DiLoCo's pseudo-gradient wire format; none is float32 (default %(default)s)")
    g.add_argument("--no-error-feedback", action="store_true", help="do not carry quantization error into the next round")
    g.add_argument("--outer-lr", type=float, default=0.5,
                   help="outer SGD learning rate (default %(default)s: the best of 0.3-1.0 on this task, see docs/diloco.md)")
    g.add_argument("--outer-momentum", type=float, default=0.9, help="outer Nesterov momentum; 0: plain SGD (default %(default)s)")
    g.add_argument("--seed", type=int, default=0, help="initialisation, data order, churn victims (default %(default)s)")
    g.add_argument("--model", choices=MODEL_SIZES, default="default",
                   help="model size: default (d=128, 2 layers), small (d=64), tiny (d=32, 1 layer, for tests) (default %(default)s)")
    g.add_argument("--batch-size", type=int, default=16, help="sequences per peer per inner step (default %(default)s)")
    g.add_argument("--lr", type=float, default=3e-3, help="inner AdamW learning rate (default %(default)s)")
    g.add_argument("--warmup", type=int, default=50, help="inner steps of linear learning-rate warmup (default %(default)s)")
    g.add_argument("--eval-every", type=int, default=0, help="inner steps between evals (default: --sync-every)")
    g.add_argument("--eval-sequences", type=int, default=64, help="eval windows, a fixed subset of the eval split (default %(default)s)")
    g = p.add_argument_group("environment")
    g.add_argument("--churn", action="store_true", help="SIGKILL a random peer about every --churn-every s and start "
                                                        "a newcomer that joins the running group")
    g.add_argument("--churn-every", type=float, default=20.0, help="mean seconds between kills (default %(default)s)")
    g.add_argument("--wan", metavar="RTT_MS,FLOW_MBIT,LINK_MBIT", type=_wan, default=None,
                   help="route all peer traffic through the WAN emulator (pccl_py.tools.wan), e.g. 50,100,1000")
    g.add_argument("--time-limit", type=float, default=1800.0,
                   help="seconds; at 80%% of it every peer is told to stop at the next sync boundary, and the run "
                        "fails if it has not ended by 1.2x (default %(default)s)")
    g = p.add_argument_group("output")
    g.add_argument("--json", metavar="FILE", default=None, help="write the run's record here")
    g.add_argument("--plot", metavar="FILE.png", default=None,
                   help="eval loss vs inner step and vs bytes sent (needs matplotlib: pip install 'pccl_py[plot]')")
    g.add_argument("--from", dest="sources", nargs="+", metavar="JSON", default=None,
                   help="with --plot: plot these records (several algorithms on one figure) instead of training")
    g.add_argument("--progress", choices=["auto", "rich", "plain", "none"], default="auto",
                   help="live view: a rich table on a terminal when rich is installed (auto), plain lines, or none")
    g.add_argument("--log-level", default="error", choices=["debug", "info", "warn", "error", "off"],
                   help="the peers' pccl core log level on their stderr (shown for peers that fail)")


def validate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Rejects (exit code 2) what cannot work, before anything starts."""
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        parser.error("--plot needs matplotlib, which is not installed: pip install 'pccl_py[plot]' "
                     "(or pip install matplotlib)")
    if args.sources is not None:
        if not args.plot:
            parser.error("--from JSON... only makes sense with --plot OUT.png")
        return
    if importlib.util.find_spec("torch") is None:
        parser.error("training needs torch, which is not installed: pip install 'pccl_py[torch]'")
    if not 1 <= args.peers <= 16:
        parser.error("--peers must be between 1 and 16")
    if args.inner_steps < 1 or args.sync_every < 1 or args.batch_size < 1 or args.eval_sequences < 1:
        parser.error("--inner-steps, --sync-every, --batch-size and --eval-sequences must be positive")
    if args.algo in DILOCO_ALGOS and args.inner_steps % args.sync_every:
        parser.error(f"--inner-steps ({args.inner_steps}) must be a multiple of --sync-every ({args.sync_every}): "
                     "a run that ends between two outer steps ends with every peer's own, unsynchronised weights")
    if args.algo == "streaming" and not (1 <= args.fragments <= args.sync_every
                                         and 0 <= args.overlap < args.sync_every // args.fragments):
        parser.error(f"streaming needs 1 <= --fragments <= --sync-every and 0 <= --overlap < H / F "
                     f"(= {args.sync_every // max(args.fragments, 1)}): a fragment's reduce starts after the previous "
                     "fragment was applied")
    if args.algo == "ddp" and args.quantization != "none":
        parser.error("--quantization is DiLoCo's: the ddp baseline all-reduces float32 gradients through the torch "
                     "backend")
    if args.algo == "solo" and (args.churn or args.wan is not None):
        parser.error("--algo solo does not communicate: --churn and --wan do not apply")
    if args.churn and (args.peers < 2 or args.churn_every <= 0):
        parser.error("--churn needs --peers >= 2 and a positive --churn-every")
    if args.time_limit <= 0:
        parser.error("--time-limit must be positive")
    if args.eval_every <= 0:
        args.eval_every = args.sync_every
