"""``python -m pccl_py.tools.diloco_train``: local peers train a character-level transformer together.

Why this exists: DiLoCo's claim is that peers which synchronise every H steps, over a slow and lossy
network, train about as well as DDP which synchronises every step, for a fraction of the bytes. This
tool measures exactly that on one machine, with real processes and sockets: the same model, data and
inner optimizer under ``--algo ddp | diloco | async | streaming | solo``, with peers killed and
replaced (``--churn``) and traffic through an emulated WAN (``--wan``), and writes a JSON record and a
plot to compare them.

Where to look:

- :mod:`.peer`: one peer process, and the canonical user-side training loop (read this first).
- :mod:`.launcher`: the master, the peer processes, churn, the WAN relay, the JSON record.
- :mod:`.data`, :mod:`.model`, :mod:`.ddp`: the corpus, the transformer, the DDP baseline.
- :mod:`.display`, :mod:`.record`: the live view, the summary, the plot.

The trap: the launcher never imports torch (it would cost every run seconds and hundreds of MB for
nothing); only peer processes do.
"""

from typing import Optional, Sequence


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The command line (see :mod:`.launcher`); imported lazily so that a peer process never loads it."""
    from .launcher import main as launcher_main  # noqa: PLC0415

    return launcher_main(argv)


__all__ = ["main"]
