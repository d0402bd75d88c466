#!/usr/bin/env python3
"""Which 4-bit wire format should `quantization="q4"` use? Measured on real DiLoCo pseudo-gradients.

A small character-level transformer (2 layers, d=64, context 64, ~117k parameters, batches of 8) learns the text of
CPython's pydoc_data/topics.py with 4 simulated DiLoCo workers: each round every worker starts from the
shared parameters, takes H AdamW steps on its own shard of the text (its optimizer state persists across
rounds), and hands in the pseudo-gradient params_at_round_start - params_after_H_steps. The outer
optimizer (SGD, lr 0.7, momentum 0.9, Nesterov) steps on their average.

Every candidate format is implemented here in numpy with float32 arithmetic, one encode/decode round trip
per call. For each one the script reports

* wire bytes per element;
* the relative L2 error of decode(encode(g)) on each worker's pseudo-gradient (mean over workers and
  rounds of an unquantized run), of the quantized average against the exact average, and of a simulated
  ring all-reduce (the partial sum is encoded at every hop: s = Q(s) + g_next, then Q(s / n), as pccl's
  ring does with n - 1 + 1 encodings);
* the final eval loss of a DiLoCo run whose averaged pseudo-gradient is quantized with the format,
  without and with error feedback (residual = input - decode(encode(input)), added to the next round's
  averaged pseudo-gradient; q8 is a reference and runs without); `--reduce ring` quantizes like the ring
  instead, with one error-feedback residual per worker.

The runs are deterministic (fixed seeds, the same batches for every format), so loss differences come
from the formats alone; they are spread over --procs processes (one torch thread each).

    python stress/q4_formats.py                   # about 5 minutes on 2 idle cores
    python stress/q4_formats.py --rounds 3 --only fp32,int4-mm64   # a quick look
    python stress/q4_formats.py --json q4.json    # also write every number

Needs numpy and torch (pip install ".[torch]"); does not need pccl_py.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

F32 = np.float32

# ----------------------------------------------------------------------------------------------------
# Candidate formats. Each roundtrip(x) takes and returns a 1-D float32 array; blocks start at element 0
# and the last block may be short (padded here with its last value, which changes no min, max or amax).
# ----------------------------------------------------------------------------------------------------


def _blocks(x: np.ndarray, block: int) -> np.ndarray:
    n = x.size
    pad = (-n) % block
    if pad:
        x = np.concatenate([x, np.full(pad, x[-1] if n else 0, dtype=F32)])
    return x.reshape(-1, block)


def _unblock(b: np.ndarray, n: int) -> np.ndarray:
    return b.reshape(-1)[:n]


def bf16_down(v: np.ndarray) -> np.ndarray:
    """float32 -> the nearest bfloat16 at or below it (toward -inf), as float32."""
    bits = np.asarray(v, dtype=F32).view(np.uint32)
    trunc = bits & np.uint32(0xFFFF0000)
    up = ((bits & np.uint32(0xFFFF)) != 0) & ((bits >> np.uint32(31)) == 1)  # negative: grow the magnitude
    return (trunc + np.where(up, np.uint32(0x10000), np.uint32(0))).astype(np.uint32).view(F32)


def bf16_up(v: np.ndarray) -> np.ndarray:
    """float32 -> the nearest bfloat16 at or above it (toward +inf), as float32."""
    bits = np.asarray(v, dtype=F32).view(np.uint32)
    trunc = bits & np.uint32(0xFFFF0000)
    up = ((bits & np.uint32(0xFFFF)) != 0) & ((bits >> np.uint32(31)) == 0)  # positive: grow the magnitude
    return (trunc + np.where(up, np.uint32(0x10000), np.uint32(0))).astype(np.uint32).view(F32)


def minmax_roundtrip(x: np.ndarray, block: int, bits: int, header: str = "f32") -> np.ndarray:
    """Min-max integer block: min and step = (max - min) / (2^bits - 1), codes floor((x - min) / step
    + 0.5) clamped to [0, 2^bits - 1]; decodes to min + code * step. The same float32 operations as
    csrc/kernels/codec.cpp's q8 (x * (1/step), not a division). header: "f32" (8 bytes per block),
    "f16" (4 bytes, both rounded to nearest) or "bf16" (4 bytes, min rounded down and step up, so the
    codes still span the block)."""
    b = _blocks(x, block)
    levels = F32(2 ** bits - 1)
    lo = b.min(axis=1)
    hi = b.max(axis=1)
    if header == "f16":
        lo = lo.astype(np.float16).astype(F32)
    elif header == "bf16":
        lo = bf16_down(lo)
    step = (hi - lo) / levels
    if header == "f16":
        step = step.astype(np.float16).astype(F32)
    elif header == "bf16":
        step = bf16_up(step)
    with np.errstate(divide="ignore"):
        inv = np.where(step > 0, F32(1) / step, F32(0)).astype(F32)
    q = np.clip((b - lo[:, None]) * inv[:, None], F32(0), levels)
    code = np.floor(q + F32(0.5))
    return _unblock(lo[:, None] + code * step[:, None], x.size)


def absmax_int_roundtrip(x: np.ndarray, block: int, bits: int) -> np.ndarray:
    """Symmetric integer block: f32 scale = amax / (2^(bits-1) - 1), codes rint(x / scale)."""
    b = _blocks(x, block)
    top = F32(2 ** (bits - 1) - 1)
    scale = np.abs(b).max(axis=1) / top
    with np.errstate(divide="ignore"):
        inv = np.where(scale > 0, F32(1) / scale, F32(0)).astype(F32)
    code = np.clip(np.rint(b * inv[:, None]), -top, top)
    return _unblock(code * scale[:, None], x.size)


E2M1 = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6], dtype=F32)
_E2M1_MID = ((E2M1[:-1] + E2M1[1:]) / 2).astype(F32)  # 0.25 0.75 1.25 1.75 2.5 3.5 5


def e2m1_round(v: np.ndarray) -> np.ndarray:
    """Nearest FP4 E2M1 value (ties to the even code, as in the OCP MX spec), saturating at +-6."""
    a = np.abs(v)
    idx = np.searchsorted(_E2M1_MID, a, side="left")  # thresholds strictly below a
    tie = (idx < _E2M1_MID.size) & (a == _E2M1_MID[np.minimum(idx, _E2M1_MID.size - 1)])
    idx = np.where(tie & (idx % 2 == 1), idx + 1, idx)
    return np.copysign(E2M1[idx], v).astype(F32)


def _amax(b: np.ndarray) -> np.ndarray:
    return np.abs(b).max(axis=1)


def mxfp4_roundtrip(x: np.ndarray, block: int = 32, ceil_scale: bool = False) -> np.ndarray:
    """E2M1 elements with a power-of-two (E8M0) block scale. OCP MX: scale = 2^(floor(log2 amax) - 2),
    so amax / scale lies in [4, 8) and values beyond 6 saturate. ceil_scale: the smallest power of two
    with amax / scale <= 6 instead (nothing saturates, the grid is up to 1.5x coarser)."""
    b = _blocks(x, block)
    amax = _amax(b)
    mant, exp = np.frexp(amax)  # amax = mant * 2^exp, mant in [0.5, 1)
    if ceil_scale:
        mant6, exp6 = np.frexp(amax / F32(6))
        e = np.where(mant6 == 0.5, exp6 - 1, exp6)
    else:
        e = (exp - 1) - 2
    e = np.clip(e, -127, 127)
    scale = np.ldexp(F32(1), e).astype(F32)
    scale = np.where(amax > 0, scale, F32(1)).astype(F32)
    return _unblock(e2m1_round(b / scale[:, None]) * scale[:, None], x.size)


def _to_e4m3(v: np.ndarray) -> np.ndarray:
    import torch

    t = torch.from_numpy(np.clip(v, 0, 448).astype(F32))
    return t.to(torch.float8_e4m3fn).to(torch.float32).numpy()


def nvfp4_roundtrip(x: np.ndarray, block: int = 16) -> np.ndarray:
    """NVFP4: E2M1 elements, an E4M3 scale per 16 elements, and one f32 scale for the whole tensor
    (amax / (448 * 6)) that brings the block scales into E4M3's range."""
    b = _blocks(x, block)
    amax = _amax(b)
    tensor_scale = F32(amax.max() / F32(448 * 6)) if amax.max() > 0 else F32(1)
    bs = _to_e4m3(amax / F32(6) / tensor_scale)
    scale = (bs * tensor_scale).astype(F32)
    with np.errstate(divide="ignore", invalid="ignore"):
        y = np.where(scale[:, None] > 0, e2m1_round(b / scale[:, None]) * scale[:, None], F32(0))
    return _unblock(y.astype(F32), x.size)


def e2m1_f32_roundtrip(x: np.ndarray, block: int = 32) -> np.ndarray:
    """E2M1 elements with an exact f32 block scale amax / 6: the best the FP4 element grid can do."""
    b = _blocks(x, block)
    scale = _amax(b) / F32(6)
    with np.errstate(divide="ignore", invalid="ignore"):
        y = np.where(scale[:, None] > 0, e2m1_round(b / scale[:, None]) * scale[:, None], F32(0))
    return _unblock(y.astype(F32), x.size)


@dataclass(frozen=True)
class Format:
    name: str
    bytes_per_elem: float
    roundtrip: Optional[Callable[[np.ndarray], np.ndarray]]  # None: unquantized
    note: str


FORMATS = [
    Format("fp32", 4.0, None, "no quantization"),
    Format("q8", 1 + 8 / 256, lambda x: minmax_roundtrip(x, 256, 8), "existing q8: min-max, 8 bits, block 256"),
    Format("int4-mm32", 0.5 + 8 / 32, lambda x: minmax_roundtrip(x, 32, 4), "min-max int4, f32 min+step, block 32"),
    Format("int4-mm64", 0.5 + 8 / 64, lambda x: minmax_roundtrip(x, 64, 4), "min-max int4, f32 min+step, block 64"),
    Format("int4-mm128", 0.5 + 8 / 128, lambda x: minmax_roundtrip(x, 128, 4), "min-max int4, f32 min+step, block 128"),
    Format("int4-mm256", 0.5 + 8 / 256, lambda x: minmax_roundtrip(x, 256, 4), "min-max int4, f32 min+step, block 256"),
    Format("int4-mm64h", 0.5 + 4 / 64, lambda x: minmax_roundtrip(x, 64, 4, header="f16"),
           "min-max int4, f16 min+step, block 64"),
    Format("int4-mm32b", 0.5 + 4 / 32, lambda x: minmax_roundtrip(x, 32, 4, header="bf16"),
           "min-max int4, bf16 min (down) + step (up), block 32"),
    Format("int4-mm64b", 0.5 + 4 / 64, lambda x: minmax_roundtrip(x, 64, 4, header="bf16"),
           "min-max int4, bf16 min (down) + step (up), block 64"),
    Format("int4-mm128b", 0.5 + 4 / 128, lambda x: minmax_roundtrip(x, 128, 4, header="bf16"),
           "min-max int4, bf16 min (down) + step (up), block 128"),
    Format("int4-abs64", 0.5 + 4 / 64, lambda x: absmax_int_roundtrip(x, 64, 4),
           "symmetric int4 (-7..7), f32 scale, block 64"),
    Format("mxfp4", 0.5 + 1 / 32, lambda x: mxfp4_roundtrip(x, 32), "MXFP4: E2M1, E8M0 scale (OCP floor rule), block 32"),
    Format("mxfp4-ceil", 0.5 + 1 / 32, lambda x: mxfp4_roundtrip(x, 32, ceil_scale=True),
           "E2M1, E8M0 scale rounded up (no saturation), block 32"),
    Format("nvfp4", 0.5 + 1 / 16, nvfp4_roundtrip, "NVFP4: E2M1, E4M3 scale, block 16, + f32 tensor scale"),
    Format("e2m1-f32", 0.5 + 4 / 32, e2m1_f32_roundtrip, "E2M1, exact f32 scale amax/6, block 32"),
]
BY_NAME = {f.name: f for f in FORMATS}

# ----------------------------------------------------------------------------------------------------
# The model and the simulated DiLoCo run.
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    workers: int = 4
    rounds: int = 8
    inner_steps: int = 50
    batch: int = 8
    context: int = 64
    d_model: int = 64
    layers: int = 2
    heads: int = 4
    inner_lr: float = 2e-3
    weight_decay: float = 0.01
    outer_lr: float = 0.7
    outer_momentum: float = 0.9
    eval_windows: int = 256
    seed: int = 0


_DATA: dict = {}


def _data(cfg: Config):
    """(worker shards, eval windows) as torch tensors, built once per process."""
    import torch
    import pydoc_data.topics

    key = (cfg.workers, cfg.context, cfg.eval_windows, cfg.seed)
    if key not in _DATA:
        text = "".join(pydoc_data.topics.topics.values())
        chars = sorted(set(text))
        index = {c: i for i, c in enumerate(chars)}
        ids = torch.tensor([index[c] for c in text], dtype=torch.long)
        n_eval = len(ids) // 10
        train, held_out = ids[:-n_eval], ids[-n_eval:]
        shards = list(torch.chunk(train, cfg.workers))
        g = torch.Generator().manual_seed(cfg.seed + 12345)
        starts = torch.randint(0, len(held_out) - cfg.context - 1, (cfg.eval_windows,), generator=g)
        windows = torch.stack([held_out[s:s + cfg.context + 1] for s in starts.tolist()])
        _DATA[key] = (shards, windows, len(chars))
    return _DATA[key]


def _model(cfg: Config, vocab: int):
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            d = cfg.d_model
            self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
            self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
            self.fc, self.out = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

        def forward(self, x):
            b, t, d = x.shape
            q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, cfg.heads, d // cfg.heads).permute(2, 0, 3, 1, 4)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, d)
            x = x + self.proj(y)
            return x + self.out(F.gelu(self.fc(self.ln2(x))))

    class CharTransformer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(vocab, cfg.d_model)
            self.pos = nn.Parameter(torch.randn(cfg.context, cfg.d_model) * 0.02)
            self.blocks = nn.ModuleList(Block() for _ in range(cfg.layers))
            self.ln = nn.LayerNorm(cfg.d_model)
            self.head = nn.Linear(cfg.d_model, vocab)

        def forward(self, idx):
            x = self.emb(idx) + self.pos[: idx.shape[1]]
            for blk in self.blocks:
                x = blk(x)
            return self.head(self.ln(x))

    torch.manual_seed(cfg.seed)
    return CharTransformer()


def _loss(model, windows):
    import torch.nn.functional as F

    logits = model(windows[:, :-1])
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), windows[:, 1:].reshape(-1))


def _load(theta, model) -> None:
    """Copies the flat parameter vector into the model (torch's vector_to_parameters would alias it)."""
    import torch

    with torch.no_grad():
        at = 0
        for p in model.parameters():
            p.copy_(theta[at:at + p.numel()].view_as(p))
            at += p.numel()


def diloco_run(job: tuple) -> dict:
    """One simulated DiLoCo run. job = (cfg, format name, error feedback, reduce mode, collect pseudo-
    gradients). Returns the eval loss after every round (and the pseudo-gradients when asked)."""
    cfg, fmt_name, feedback, reduce, collect = job
    import torch
    from torch.nn.utils import parameters_to_vector

    torch.set_num_threads(1)
    t0 = time.time()
    fmt = BY_NAME[fmt_name]
    shards, windows, vocab = _data(cfg)
    workers = [_model(cfg, vocab) for _ in range(cfg.workers)]
    inner = [torch.optim.AdamW(m.parameters(), lr=cfg.inner_lr, weight_decay=cfg.weight_decay) for m in workers]
    evaluator = _model(cfg, vocab)
    theta = parameters_to_vector(workers[0].parameters()).detach().clone().requires_grad_(True)
    outer = torch.optim.SGD([theta], lr=cfg.outer_lr, momentum=cfg.outer_momentum, nesterov=True)
    residual = np.zeros((cfg.workers if reduce == "ring" else 1, theta.numel()), dtype=F32)
    evals, pgs = [], []
    for r in range(cfg.rounds):
        round_pgs = []
        for w, (model, opt) in enumerate(zip(workers, inner)):
            _load(theta, model)
            g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + r * 101 + w)
            shard = shards[w]
            for _ in range(cfg.inner_steps):
                starts = torch.randint(0, len(shard) - cfg.context - 1, (cfg.batch,), generator=g)
                batch = torch.stack([shard[s:s + cfg.context + 1] for s in starts.tolist()])
                loss = _loss(model, batch)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            with torch.no_grad():
                round_pgs.append((theta.detach() - parameters_to_vector(model.parameters())).numpy().astype(F32))
        if collect:
            pgs.append(np.stack(round_pgs))
        if fmt.roundtrip is None:
            update = np.mean(np.stack(round_pgs), axis=0, dtype=F32)
        elif reduce == "average":
            x = np.mean(np.stack(round_pgs), axis=0, dtype=F32) + residual[0]
            update = fmt.roundtrip(x)
            residual[0] = x - update if feedback else 0
        else:
            xs = [p + residual[w] for w, p in enumerate(round_pgs)]
            update = ring_average(xs, fmt.roundtrip)
            if feedback:
                for w, x in enumerate(xs):
                    residual[w] = x - fmt.roundtrip(x)
        theta.grad = torch.from_numpy(np.ascontiguousarray(update, dtype=F32))
        outer.step()
        _load(theta, evaluator)
        with torch.no_grad():
            evals.append(float(_loss(evaluator, windows)))
    return dict(format=fmt_name, feedback=feedback, reduce=reduce, evals=evals, pgs=pgs,
                seconds=time.time() - t0)


def ring_average(xs: list, rt: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """The average as pccl's quantized ring computes it for one chunk: each hop sends its partial sum
    encoded, the next adds its own input to the decoded value; the owner divides, encodes once more."""
    s = xs[0]
    for x in xs[1:]:
        s = rt(s) + x
    return rt((s / F32(len(xs))).astype(F32))


def rel_l2(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.linalg.norm((got - want).astype(np.float64)) / np.linalg.norm(want.astype(np.float64)))


# Pseudo-gradients shrink with the learning rate (decay, shorter H): the per-worker error is measured
# again on the same values times this factor, where a half-precision header leaves its normal range.
SMALL = F32(1e-4)


def reconstruction(pgs: list, fmt: Format) -> dict:
    """Mean relative L2 errors over rounds: per worker (also at SMALL scale), of the average, and of a
    simulated ring."""
    worker, small, avg, ring = [], [], [], []
    for round_pgs in pgs:
        exact = np.mean(round_pgs, axis=0, dtype=F32)
        for p in round_pgs:
            worker.append(rel_l2(fmt.roundtrip(p), p))
            small.append(rel_l2(fmt.roundtrip(p * SMALL), p * SMALL))
        avg.append(rel_l2(fmt.roundtrip(exact), exact))
        ring.append(rel_l2(ring_average(list(round_pgs), fmt.roundtrip), exact))
    return dict(worker=float(np.mean(worker)), small=float(np.mean(small)), average=float(np.mean(avg)),
                ring=float(np.mean(ring)))


def main(argv: Optional[list] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=Config.rounds)
    p.add_argument("--inner-steps", type=int, default=Config.inner_steps)
    p.add_argument("--workers", type=int, default=Config.workers)
    p.add_argument("--seed", type=int, default=Config.seed)
    p.add_argument("--only", default="", help="comma-separated format names (default: all): "
                   + ", ".join(f.name for f in FORMATS))
    p.add_argument("--reduce", choices=["average", "ring"], default="average",
                   help="quantize the averaged pseudo-gradient (default) or simulate pccl's ring")
    p.add_argument("--procs", type=int, default=min(2, os.cpu_count() or 1), help="parallel runs")
    p.add_argument("--json", help="write every number to this file")
    args = p.parse_args(argv)

    cfg = Config(workers=args.workers, rounds=args.rounds, inner_steps=args.inner_steps, seed=args.seed)
    names = [n for n in args.only.split(",") if n] or [f.name for f in FORMATS]
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        p.error(f"unknown format(s) {unknown}; known: {', '.join(BY_NAME)}")
    if "fp32" not in names:
        names.insert(0, "fp32")
    jobs = [(cfg, "fp32", False, args.reduce, True)]
    for n in names:
        if n != "fp32":
            jobs.append((cfg, n, False, args.reduce, False))
            if n != "q8":  # a reference: no error feedback run
                jobs.append((cfg, n, True, args.reduce, False))
    t0 = time.time()
    print(f"{len(jobs)} DiLoCo runs: {cfg.workers} workers x {cfg.rounds} rounds x H={cfg.inner_steps} "
          f"AdamW steps, {args.procs} processes", file=sys.stderr)
    ctx = mp.get_context("spawn")
    with ctx.Pool(args.procs) as pool:
        results = []
        for res in pool.imap_unordered(diloco_run, jobs):
            results.append(res)
            print(f"  [{time.time() - t0:6.1f} s] {res['format']:<11} feedback={res['feedback']!s:<5} "
                  f"eval loss {res['evals'][-1]:.4f}", file=sys.stderr)
    base = next(r for r in results if r["format"] == "fp32")
    pgs = base["pgs"]
    flat = np.concatenate([p.reshape(-1) for p in pgs]).astype(np.float64)
    kurt = float(np.mean((flat - flat.mean()) ** 4) / np.var(flat) ** 2 - 3)

    rows = []
    for n in names:
        fmt = BY_NAME[n]
        row = dict(format=n, note=fmt.note, bytes=fmt.bytes_per_elem)
        if fmt.roundtrip is None:
            row.update(worker=0.0, small=0.0, average=0.0, ring=0.0, loss=base["evals"][-1], loss_ef=base["evals"][-1])
        else:
            row.update(reconstruction(pgs, fmt), loss_ef=float("nan"))
            for r in results:
                if r["format"] == n:
                    row["loss_ef" if r["feedback"] else "loss"] = r["evals"][-1]
        rows.append(row)

    print(f"\npseudo-gradients: {pgs[0].shape[1]} parameters, {cfg.workers} workers x {cfg.rounds} rounds, "
          f"excess kurtosis {kurt:.1f}; eval loss after round 1: {base['evals'][0]:.4f}, "
          f"after round {cfg.rounds} (fp32): {base['evals'][-1]:.4f}")
    print(f"command: python stress/q4_formats.py {' '.join(argv if argv is not None else sys.argv[1:])}".rstrip())
    print(f"reduce: {args.reduce}; {time.time() - t0:.0f} s\n")
    print(f"| format | bytes/elem | rel. L2 err, per worker | same, g x {SMALL:g} | of the average "
          f"| ring, {cfg.workers} peers | eval loss | with error feedback | description |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| `{r['format']}` | {r['bytes']:.4f} | {r['worker']:.4f} | {r['small']:.4f} | {r['average']:.4f} "
              f"| {r['ring']:.4f} | {r['loss']:.4f} | {'-' if np.isnan(r['loss_ef']) else format(r['loss_ef'], '.4f')} "
              f"| {r['note']} |")
    losses = [r[k] for r in rows if r["format"] not in ("fp32", "q8") for k in ("loss", "loss_ef")]
    print(f"\n4-bit runs' final eval loss: {min(losses):.4f} to {max(losses):.4f} "
          f"(mean {np.mean(losses):.4f}, std {np.std(losses):.4f}); fp32 {rows[0]['loss']:.4f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(config=cfg.__dict__, reduce=args.reduce, kurtosis=kurt, rows=rows,
                           runs=[{k: v for k, v in r.items() if k != "pgs"} for r in results]), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
