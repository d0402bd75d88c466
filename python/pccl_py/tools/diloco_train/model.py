"""The model: a small causal character-level transformer, its evaluation, and a fingerprint of its weights.

Why this exists: the algorithms are compared on a real (if small) language model, not a toy
regression, because what DiLoCo trades away (synchronising every H steps instead of every step) only
shows on a loss landscape like the one it is meant for. The default size (d=128, 2 layers, 64
characters of context, about 430 000 parameters, 1.7 MB in float32) trains 4 peers x 1000 inner
steps on 2 CPU cores in 1-3 minutes with one torch thread per peer.

The traps to avoid: initialising from torch's global RNG after anything else has drawn from it (every
founder must start from bitwise the same weights, so the model is built right after seeding, from
the seed alone), and comparing peers by their eval loss (equal losses do not mean equal weights: the
record compares a SHA-256 of the parameter bytes).
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass(frozen=True)
class ModelConfig:
    d_model: int
    layers: int
    heads: int
    context: int


SIZES = {
    "default": ModelConfig(d_model=128, layers=2, heads=4, context=64),
    "small": ModelConfig(d_model=64, layers=2, heads=4, context=64),
    "tiny": ModelConfig(d_model=32, layers=1, heads=2, context=32),
}


class Block(nn.Module):
    def __init__(self, c: ModelConfig) -> None:
        super().__init__()
        self.heads = c.heads
        self.ln1 = nn.LayerNorm(c.d_model)
        self.qkv = nn.Linear(c.d_model, 3 * c.d_model)
        self.proj = nn.Linear(c.d_model, c.d_model)
        self.ln2 = nn.LayerNorm(c.d_model)
        self.fc = nn.Linear(c.d_model, 4 * c.d_model)
        self.out = nn.Linear(4 * c.d_model, c.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2)
                   for z in self.qkv(self.ln1(x)).split(d, dim=2))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, d)
        x = x + self.proj(y)
        out: torch.Tensor = x + self.out(F.gelu(self.fc(self.ln2(x))))
        return out


class CharTransformer(nn.Module):
    def __init__(self, c: ModelConfig, vocab_size: int) -> None:
        super().__init__()
        self.config = c
        self.vocab_size = vocab_size
        self.tok = nn.Embedding(vocab_size, c.d_model)
        self.pos = nn.Embedding(c.context, c.d_model)
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.layers))
        self.ln = nn.LayerNorm(c.d_model)
        self.head = nn.Linear(c.d_model, vocab_size)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        h = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        for block in self.blocks:
            h = block(h)
        logits: torch.Tensor = self.head(self.ln(h))
        return logits

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of the next character, in nats."""
        return F.cross_entropy(self(x).reshape(-1, self.vocab_size), y.reshape(-1))


def build_model(size: str, vocab_size: int, seed: int) -> CharTransformer:
    """The same weights for every peer given the same seed (torch's global RNG is seeded right here)."""
    torch.manual_seed(seed)
    return CharTransformer(SIZES[size], vocab_size)


def describe(model: CharTransformer) -> dict[str, Any]:
    return {**asdict(model.config), "vocab_size": model.vocab_size,
            "parameters": sum(p.numel() for p in model.parameters())}


@torch.no_grad()
def evaluate(model: CharTransformer, batches: Iterable[Tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Mean loss over the fixed eval batches (token-weighted)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for x, y in batches:
        total += float(model.loss(x, y)) * y.numel()
        count += y.numel()
    model.train(was_training)
    return total / max(count, 1)


def params_sha256(model: nn.Module) -> str:
    """SHA-256 over every parameter's name, dtype, shape and raw bytes, in registration order."""
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        t = p.detach().contiguous().cpu()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
