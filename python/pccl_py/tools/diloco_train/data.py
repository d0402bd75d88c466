"""The training text and how each peer samples it: real text that needs no download, split and sampled
deterministically.

Why this exists: a comparison of training algorithms is only meaningful if every run sees the same
data, and a run that downloads a corpus fails offline. CPython ships the reference manual's topic
texts as ``pydoc_data/topics.py`` (about 465 000 characters of English prose and code), which is
enough for a character-level model that trains in minutes.

The trap to avoid: sampling from a generator that lives in the process. A peer killed at inner step
800 and replaced by a newcomer would then restart its random stream from scratch and repeat the
batches of steps 0..800 (or, seeded by the process, differ from run to run). Here the batch of step
``s`` for peer slot ``k`` is drawn from a fresh ``torch.Generator`` seeded by ``(seed, k, s)``, so a
newcomer that takes over slot ``k`` at step ``s`` continues exactly where the dead peer would have.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from typing import Tuple

import numpy as np
import torch

TRAIN_FRACTION = 0.9


@lru_cache(maxsize=1)
def load_text() -> str:
    """The corpus: every pydoc topic, in key order (the order of a dict literal is not something to rely on)."""
    import pydoc_data.topics  # noqa: PLC0415 - part of the standard library, imported once

    return "".join(v for _, v in sorted(pydoc_data.topics.topics.items()))


def text_sha256() -> str:
    """Identifies the corpus in a run's record: it differs between CPython versions."""
    return hashlib.sha256(load_text().encode("utf-8")).hexdigest()


def seed_of(*parts: int) -> int:
    """A 63-bit generator seed from integers, well mixed (neighbouring steps get unrelated streams)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, dtype=np.uint32).view(np.uint64)[0]
               >> np.uint64(1))


class Corpus:
    """The text as token ids (one per character), split into train (first 90%) and eval (last 10%)."""

    def __init__(self, context: int) -> None:
        text = load_text()
        self.chars = sorted(set(text))
        index = {c: i for i, c in enumerate(self.chars)}
        ids = torch.tensor([index[c] for c in text], dtype=torch.long)
        cut = int(len(ids) * TRAIN_FRACTION)
        self.train, self.eval = ids[:cut], ids[cut:]
        self.context = context

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def batch(self, seed: int, slot: int, step: int, batch_size: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Peer slot ``slot``'s training batch at inner step ``step``: inputs and next-character targets."""
        g = torch.Generator().manual_seed(seed_of(seed, slot, step))
        starts = torch.randint(0, len(self.train) - self.context - 1, (batch_size,), generator=g)
        return self._windows(self.train, starts)

    def eval_batches(self, sequences: int, batch_size: int = 32) -> list[Tuple[torch.Tensor, torch.Tensor]]:
        """A fixed subset of the eval split: ``sequences`` windows spread evenly over it, the same for
        every peer, every run and every algorithm."""
        last = len(self.eval) - self.context - 1
        starts = torch.linspace(0, last, sequences).long()
        return [self._windows(self.eval, starts[i:i + batch_size]) for i in range(0, sequences, batch_size)]

    def _windows(self, ids: torch.Tensor, starts: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        offsets = starts[:, None] + torch.arange(self.context + 1)[None, :]
        w = ids[offsets]
        return w[:, :-1], w[:, 1:]
