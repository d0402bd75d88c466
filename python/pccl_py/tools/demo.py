"""``pccl-demo``: four local peers train a small transformer with DiLoCo while peers are killed and replaced.

Why this exists: it is the first command in the README, and it should show what pccl_py is for in
about a minute, with nothing to download: a master and 4 peer processes train a character-level
transformer on CPython's own pydoc texts with DiLoCo (8-bit quantized pseudo-gradients, an outer step
every 25 inner steps). About every 20 s one peer is SIGKILLed and a newcomer starts in its place; the
group keeps training without it, admits the newcomer at the next outer step and hands it the
group's parameters. A live table (rich, when installed and on a terminal; plain lines otherwise)
shows each peer's state, step, loss and bytes sent. After about 60 s every peer is told to stop at the
same outer step; the demo prints each peer's final eval loss and checks that the parameters are
bitwise identical on every peer (SHA-256 of the bytes). Exit 0 means that, and that at least one kill
and one join happened; anything else exits 1 saying what failed. Without torch it exits 2.

It is a preset of ``python -m pccl_py.tools.diloco_train`` (see that package; the training loop a
user writes is ``pccl_py/tools/diloco_train/peer.py``); any of that tool's flags can be given here
to override the preset, e.g. ``pccl-demo --time-limit 120 --quantization q4``.

``pccl-demo --allreduce`` runs the earlier demo instead: a few all-reduce steps through a SIGKILL and
an admission, every result checked byte for byte (:mod:`pccl_py.tools.allreduce_demo`).

The trap to avoid: importing torch (or anything that needs it) before checking that it is installed;
``pip install .`` does not install it, and the demo must say so rather than fail with a traceback.
"""

from __future__ import annotations

import importlib.util
import sys
from typing import Optional, Sequence

# The preset (the tool's defaults otherwise). The small model (d=64) trains about 2x faster than the
# tool's default, so a minute shows a clearly falling loss and several outer steps between kills.
PRESET = dict(algo="diloco", peers=4, quantization="q8", sync_every=25, model="small", inner_steps=5000,
              churn=True, churn_every=20.0, time_limit=75.0)


def _torch_available() -> bool:
    return importlib.util.find_spec("torch") is not None


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--allreduce" in argv:
        from . import allreduce_demo  # noqa: PLC0415

        argv.remove("--allreduce")
        return allreduce_demo.main(argv)
    if not _torch_available():
        print("pccl-demo trains a small transformer and needs torch, which is not installed:\n"
              '    pip install "pccl_py[torch]"\n'
              "(pccl-demo --allreduce runs the all-reduce demo, which needs only numpy)", file=sys.stderr)
        return 2
    from .diloco_train import launcher, record  # noqa: PLC0415
    from .diloco_train.cli import validate  # noqa: PLC0415

    parser = launcher.build_parser(prog="pccl-demo")
    parser.description = ("4 local peers train a small character-level transformer with DiLoCo (q8) while a peer "
                          "is SIGKILLed and replaced about every 20 s; ends with each peer's final eval loss and a "
                          "check that the parameters are bitwise identical on every peer. Every flag of "
                          "python -m pccl_py.tools.diloco_train applies; the defaults below are the demo's.")
    parser.epilog = "pccl-demo --allreduce [--steps N ...] runs the numpy-only all-reduce demo instead."
    parser.set_defaults(**PRESET)
    args = parser.parse_args(argv)
    validate(parser, args)
    if args.sources:
        parser.error("--from is for python -m pccl_py.tools.diloco_train")
    print(f"pccl-demo: {args.peers} peers train a character-level transformer with {args.algo} "
          f"({args.quantization} pseudo-gradients, an outer step every {args.sync_every} inner steps)"
          + (f"; a peer is SIGKILLed about every {args.churn_every:.0f} s and replaced" if args.churn else "")
          + f"; stops after about {0.8 * args.time_limit:.0f} s", flush=True)
    rec, ok = launcher.execute(args)
    f = rec["final"]
    if args.churn and f["kills"] < 1:
        rec["problems"].append("no peer was killed (is --time-limit long enough for --churn-every?)")
    if args.churn and f["joins"] < 1:
        rec["problems"].append("no newcomer joined the running group")
    rec["passed"] = not rec["problems"]
    print(record.summary(rec), flush=True)
    if args.json:
        import json  # noqa: PLC0415

        with open(args.json, "w") as out:
            json.dump(rec, out, indent=1)
    if args.plot:
        ok = record.plot_records([rec], args.plot) == 0 and ok
    return 0 if ok and rec["passed"] else 1

if __name__ == "__main__":
    sys.exit(main())
