"""Text, JSON-ready comparison and plot output of pccl-bench.

Kept apart from bench.py, which launches peers and measures, so that the measuring code stays short
and the report can change without touching how numbers are taken.
"""

from __future__ import annotations

import argparse
import math
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

_STEAL_WARN = 0.05  # steal share above which a size's numbers are flagged
_INTERVAL = 0.90  # confidence of the interval given for each pccl/gloo ratio


def fmt_size(n: int) -> str:
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= scale and n % scale == 0:
            return f"{n // scale} {unit}"
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def fmt_time(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} us"
    if seconds < 1.0:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.3f} s"


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("nan")


def ratio_interval(pccl_times: Sequence[float], gloo_times: Sequence[float], level: float = _INTERVAL,
                   resamples: int = 4000, seed: int = 0) -> Tuple[float, float]:
    """Bootstrap interval of the busbw ratio (gloo's median time / pccl's) at confidence `level`.

    A single ratio cannot say whether a few percent either way is the code or the machine: on a shared
    VM, iterations of one size spread by tens of percent. Resampling each backend's own iterations shows
    how far the ratio of medians moves with that spread; when the interval contains 1.0 the run cannot
    tell the two apart. Seeded, so a report is reproducible from its JSON.
    """
    p, g = np.asarray(pccl_times, dtype=float), np.asarray(gloo_times, dtype=float)
    if p.size == 0 or g.size == 0 or (p <= 0).any() or (g <= 0).any():
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    p_med = np.median(rng.choice(p, (resamples, p.size)), axis=1)
    g_med = np.median(rng.choice(g, (resamples, g.size)), axis=1)
    lo, hi = np.quantile(g_med / p_med, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def compare(results: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """pccl vs gloo per size (busbw and median latency ratios), and shared-state sync throughput vs
    pccl's all-reduce busbw."""
    by = {(r["backend"], r["size_bytes"]): r for r in results}
    rows = []
    for (backend, size), p in by.items():
        if backend != "pccl":
            continue
        row: Dict[str, Any] = {"size_bytes": size}
        g = by.get(("gloo", size))
        if g is not None:
            row["busbw_ratio"] = _ratio(p["busbw_GBps"], g["busbw_GBps"])
            row["latency_ratio"] = _ratio(p["median_s"], g["median_s"])
            row["busbw_ratio_interval"] = list(ratio_interval(p.get("times_s") or [], g.get("times_s") or []))
        st = by.get(("state", size))
        if st is not None:
            row["state_ratio"] = _ratio(st["busbw_GBps"], p["busbw_GBps"])
        t = by.get(("pccl-tls", size))
        if t is not None:
            row["tls_ratio"] = _ratio(t["busbw_GBps"], p["busbw_GBps"])
            row["tls_latency_ratio"] = _ratio(t["median_s"], p["median_s"])
            row["tls_ratio_interval"] = list(ratio_interval(t.get("times_s") or [], p.get("times_s") or []))
        pp, gp = by.get(("p2p", size)), by.get(("gloo-p2p", size))
        if pp is not None and gp is not None:
            row["p2p_ratio"] = _ratio(pp["busbw_GBps"], gp["busbw_GBps"])
            row["p2p_latency_ratio"] = _ratio(pp["median_s"], gp["median_s"])
            row["p2p_ratio_interval"] = list(ratio_interval(pp.get("times_s") or [], gp.get("times_s") or []))
        if len(row) > 1:
            rows.append(row)
    return rows


def format_report(data: Dict[str, Any], args: argparse.Namespace) -> str:
    res = data["results"]
    n = data["world_size"]
    lines = [f"pccl_py all-reduce benchmark: {n} peers, {args.dtype}, SUM in place, algorithm={args.algorithm}, "
             f"quantization={args.quantization}, "
             f"{args.connections} connection(s) per peer",
             "time = slowest peer per iteration; algbw = bytes/time; busbw = algbw*2(n-1)/n; "
             "cpu = process CPU/wall per peer, averaged (100% = one core)", ""]
    host = data.get("host") or {}
    if host and host["loadavg_start"][0] > 0.5:
        lines.insert(2, f"warning: 1-min load average was {host['loadavg_start'][0]:.1f} before the run "
                        f"({host['cpus']} CPUs): other processes competed for the CPU, numbers are noisy")
    # size -> steal, where the hypervisor took a noticeable share of the CPUs
    stolen = {r["size_bytes"]: r["steal"] for r in res if (r.get("steal") or 0.0) > _STEAL_WARN}
    if stolen:
        sizes = ", ".join(f"{fmt_size(s)} ({v * 100:.0f}%)" for s, v in stolen.items())
        lines.insert(2, f"warning: the hypervisor took CPU time away (steal) while these sizes ran: {sizes}; "
                        "their numbers are noisy, rerun them on a quieter machine")
    wan = data.get("wan")
    if wan:
        st = wan["relay"]
        relayed = st["bytes_forward"] + st["bytes_backward"]
        lines.insert(1, f"through the WAN relay: RTT {wan['rtt_ms']:g} ms, {wan['flow_mbit']:g} Mbit/s per flow, "
                        f"{wan['link_mbit']:g} Mbit/s per link (0 = unlimited): ideal min(K x flow, link) = "
                        f"{wan['ideal_mbit'] or math.inf:g} Mbit/s per direction; wan% = busbw / ideal")
        lines.append(f"relay: {st['connections']} connections, {relayed / 1e9:.2f} GB relayed, thread CPU "
                     f"{st['cpu_s']:.2f} s over {st['wall_s']:.1f} s ({st['cpu_util'] * 100:.1f}% of one core; "
                     f"{st['cpu_s'] / max(relayed, 1) * 1e9:.2f} s per GB)"
                     + (f"; relay FAILED: {st['error']}" if st.get("error") else ""))
        lines.append("")
    hdr = (f"{'size':>9}  {'backend':<8} {'algo':<5} {'iters':>5} {'median':>10} {'p10':>10} {'p90':>10} "
           f"{'algbw GB/s':>11} {'busbw GB/s':>11} {'cpu':>6}" + (f" {'Mbit/s':>8} {'wan%':>6}" if wan else ""))
    lines += [hdr, "-" * len(hdr)]
    for r in res:
        line = (f"{fmt_size(r['size_bytes']):>9}  {r['backend']:<8} {r['algorithm']:<5} {r['iters']:>5} "
                f"{fmt_time(r['median_s']):>10} {fmt_time(r['p10_s']):>10} {fmt_time(r['p90_s']):>10} "
                f"{r['algbw_GBps']:>11.3f} {r['busbw_GBps']:>11.3f} {r['cpu_util'] * 100:>5.0f}%")
        if wan:
            mbit = r["busbw_GBps"] * 8e3
            ideal = wan["ideal_mbit"]
            line += f" {mbit:>8.1f} {mbit / ideal * 100 if ideal else float('nan'):>5.1f}%"
        lines.append(line)
    state_rows = [c for c in data.get("comparison") or [] if "state_ratio" in c]
    if state_rows:
        lines += ["", "shared-state sync to a newcomer (state busbw = bytes it received / time) vs pccl all-reduce busbw",
                  f"{'size':>9}  {'state/all-reduce':>17}"]
        lines += [f"{fmt_size(c['size_bytes']):>9}  {c['state_ratio']:>16.2f}x" for c in state_rows]
    p2p_rows = [c for c in data.get("comparison") or [] if "p2p_ratio" in c]
    if p2p_rows:
        level = f"{_INTERVAL * 100:.0f}%"
        lines += ["", "send/recv round trip, pccl vs gloo (p2p/gloo-p2p rows: time = rank 0 -> rank 1 -> rank 0; "
                      "busbw = 2 x size / time)",
                  f"{'size':>9}  {'busbw pccl/gloo':>16} {level + ' interval':>14} {'latency pccl/gloo':>18}"]
        for c in p2p_rows:
            lo, hi = c["p2p_ratio_interval"]
            lines.append(f"{fmt_size(c['size_bytes']):>9}  {c['p2p_ratio']:>15.2f}x {f'{lo:.2f}-{hi:.2f}':>14} "
                         f"{c['p2p_latency_ratio']:>17.2f}x")
    tls_rows = [c for c in data.get("comparison") or [] if "tls_ratio" in c]
    if tls_rows:
        level = f"{_INTERVAL * 100:.0f}%"
        lines += ["", "pccl with TLS vs without, same processes and rounds (busbw ratio 1 = encryption costs nothing)",
                  f"{'size':>9}  {'busbw tls/plain':>16} {level + ' interval':>14} {'latency tls/plain':>18}"]
        for c in tls_rows:
            lo, hi = c["tls_ratio_interval"]
            lines.append(f"{fmt_size(c['size_bytes']):>9}  {c['tls_ratio']:>15.2f}x {f'{lo:.2f}-{hi:.2f}':>14} "
                         f"{c['tls_latency_ratio']:>17.2f}x")
    rows = [c for c in data.get("comparison") or [] if "busbw_ratio" in c]
    if rows:
        level = f"{_INTERVAL * 100:.0f}%"
        lines += ["", "pccl vs gloo (busbw ratio > 1: pccl faster; latency ratio < 1: pccl faster)",
                  f"interval: where the busbw ratio lies with {level} confidence, given how the iterations spread",
                  f"{'size':>9}  {'busbw pccl/gloo':>16} {level + ' interval':>14} {'latency pccl/gloo':>18}"]
        slower = []
        for c in rows:
            lo, hi = c.get("busbw_ratio_interval") or (float("nan"), float("nan"))
            lines.append(f"{fmt_size(c['size_bytes']):>9}  {c['busbw_ratio']:>15.2f}x {f'{lo:.2f}-{hi:.2f}':>14} "
                         f"{c['latency_ratio']:>17.2f}x")
            if c["latency_ratio"] > 1.0:
                noise = (f", within noise: the {level} interval reaches {hi:.2f}" if hi >= 1.0 else "")
                slower.append(f"{fmt_size(c['size_bytes'])} ({c['latency_ratio']:.2f}x gloo's time, "
                              f"{(1 - c['busbw_ratio']) * 100:.0f}% less busbw{noise})")
        lines.append("")
        lines.append("pccl slower than gloo at: " + ", ".join(slower) if slower else "pccl is not slower than gloo "
                     "at any size measured")
    return "\n".join(lines)


def write_plot(data: Dict[str, Any], path: str) -> None:
    import matplotlib  # noqa: PLC0415 - optional dependency, checked before the sweep

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, (ax_bw, ax_lat) = plt.subplots(1, 2, figsize=(12, 4.5))
    for backend in sorted({r["backend"] for r in data["results"]}):
        rs = [r for r in data["results"] if r["backend"] == backend]
        sizes = [r["size_bytes"] for r in rs]
        ax_bw.plot(sizes, [r["busbw_GBps"] for r in rs], marker="o", label=backend)
        ax_lat.plot(sizes, [r["median_s"] * 1e6 for r in rs], marker="o", label=backend)
        ax_lat.fill_between(sizes, [r["p10_s"] * 1e6 for r in rs], [r["p90_s"] * 1e6 for r in rs], alpha=0.2)
    for ax, ylabel in ((ax_bw, "busbw (GB/s)"), (ax_lat, "median latency (us), p10-p90 shaded")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("message size (bytes)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    ax_lat.set_yscale("log")
    fig.suptitle(f"all-reduce, {data['world_size']} peers, {data['config']['dtype']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


