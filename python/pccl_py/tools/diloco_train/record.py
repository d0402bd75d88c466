"""A run's record (the ``--json`` file), its text summary and verdict, and the comparison plot.

Why this exists: one run says little; the point is to put ddp, diloco, async, streaming and solo side
by side. The record keeps everything a comparison needs (the configuration, every peer's eval-loss
curve against inner steps and against bytes sent, the outer-step reports, churn events, the longest
stall, and whether the final weights were bitwise identical), and ``--plot OUT.png --from a.json
b.json ...`` draws any number of them on one figure.

The traps to avoid: judging "identical" by the eval loss (the record compares SHA-256 digests of the
global parameters' bytes), counting a peer the launcher killed on purpose as a failure, and plotting
bytes on a linear axis (DDP sends about H times what DiLoCo does, so a linear axis shows one line).
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any, Optional, Sequence

VERSION = 1


def _config(args: Any) -> dict[str, Any]:
    out = {}
    for k, v in sorted(vars(args).items()):
        if k in ("sources", "progress"):
            continue
        if k == "wan" and v is not None:
            v = {"rtt_ms": v.rtt_ms, "flow_mbit": v.flow_mbit, "link_mbit": v.link_mbit}
        out[k] = v
    return out


def _peer(p: Any) -> dict[str, Any]:
    f = p.final
    d = {"index": p.index, "slot": p.slot, "pid": p.pid, "role": p.role, "status": p.status,
         "started_t": round(p.started_t, 3), "joined_t": p.joined_t and round(p.joined_t, 3),
         "ended_t": p.ended_t and round(p.ended_t, 3), "joined_at_inner_step": p.joined_at_step,
         "last_inner_step": p.inner_step, "tx_bytes": p.tx_bytes, "longest_step_s": p.longest_step_s,
         "final_eval_loss": f.get("final_eval_loss"), "global_eval_loss": f.get("global_eval_loss"),
         "params_sha256": f.get("params_sha256"), "global_sha256": f.get("global_sha256"),
         "eval_curve": p.eval_curve, "outer_reports": p.outer_reports}
    if p.error or p.status == "failed":
        d["error"] = p.error
        d["stderr_tail"] = list(p.stderr_tail)
    return d


def group_curve(peers: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The mean eval loss and mean bytes sent over the peers that evaluated at each inner step."""
    by_step: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for p in peers:
        for pt in p["eval_curve"]:
            by_step[pt["inner_step"]].append(pt)
    return [{"inner_step": s, "eval_loss": sum(x["eval_loss"] for x in pts) / len(pts),
             "tx_bytes": sum(x["tx_bytes"] for x in pts) / len(pts), "peers": len(pts)}
            for s, pts in sorted(by_step.items())]


def build(run: Any) -> dict[str, Any]:
    a = run.args
    peers = [_peer(p) for p in run.peers]
    done = [p for p in peers if p["status"] == "done"]
    problems = list(run.problems)
    identical: Optional[bool] = None
    hashes = sorted({p["global_sha256"] for p in done})
    if a.algo != "solo" and done:
        identical = len(hashes) == 1
        if not identical:
            problems.append(f"the final parameters differ: {len(hashes)} distinct SHA-256 digests on {len(done)} peers")
    if not done:
        problems.append("no peer finished training")
    losses = [p["global_eval_loss"] for p in done]
    stall = max(peers, key=lambda p: p["longest_step_s"], default=None)
    record = {
        "tool": "pccl_py.tools.diloco_train", "version": VERSION, "config": _config(a), **run.model_info,
        "wall_seconds": round(run.wall_seconds, 3),
        "peers": peers,
        "curve": group_curve(peers),
        "wan_relay": run.relay_stats,
        "churn_events": [{k: (round(v, 3) if k == "t" else v) for k, v in e.items()} for e in run.churn_events],
        "final": {
            # solo: every peer has its own weights, so this is the mean of their eval losses
            "eval_loss": sum(losses) / len(losses) if losses else None,
            "eval_loss_per_peer": {f"slot {p['slot']} pid {p['pid']}": p["final_eval_loss"] for p in done},
            "tx_bytes_per_peer": {f"slot {p['slot']} pid {p['pid']}": p["tx_bytes"] for p in peers},
            "params_identical": identical,
            "global_sha256": hashes[0] if len(hashes) == 1 else hashes,
            "peers_done": len(done),
            "inner_steps": max((p["last_inner_step"] for p in done), default=0),
            "longest_stall_s": stall["longest_step_s"] if stall else 0.0,
            "longest_stall_where": f"slot {stall['slot']} pid {stall['pid']}" if stall else "",
            "kills": sum(e["kind"] == "kill" for e in run.churn_events),
            "joins": sum(e["kind"] == "join" for e in run.churn_events),
        },
        "problems": problems,
        "passed": not problems,
    }
    return record


def label(rec: dict[str, Any]) -> str:
    c = rec["config"]
    parts = [c["algo"]]
    if c["algo"] in ("diloco", "async", "streaming"):
        parts.append(f"H={c['sync_every']}")
        if c["quantization"] != "none":
            parts.append(c["quantization"])
    if c.get("churn"):
        parts.append("churn")
    if c.get("wan"):
        parts.append("WAN")
    return " ".join(parts)


def summary(rec: dict[str, Any]) -> str:
    c, f = rec["config"], rec["final"]
    lines = [f"{label(rec)}: {c['peers']} peers, model {c['model']}, {f['inner_steps']} inner steps, seed {c['seed']}, "
             f"{rec['wall_seconds']:.1f} s" + (f"; churn: {f['kills']} kill(s), {f['joins']} join(s)" if c["churn"] else "")]
    for p in rec["peers"]:
        loss = "-" if p["final_eval_loss"] is None else f"{p['final_eval_loss']:.4f}"
        lines.append(f"  slot {p['slot']} pid {p['pid']:<7} {p['role']:<8} {p['status']:<7} final eval loss {loss:<7} "
                     f"sent {p['tx_bytes'] / 1e6:8.2f} MB  longest step {p['longest_step_s']:.2f} s")
    if f["eval_loss"] is not None:
        what = "mean eval loss of the peers (each alone)" if c["algo"] == "solo" else \
            "final eval loss of the global parameters"
        lines.append(f"{what}: {f['eval_loss']:.4f}")
    if f["params_identical"]:
        lines.append(f"parameters bitwise identical on every peer ({f['peers_done']} peers, "
                     f"sha256 {f['global_sha256'][:16]})")
    lines.append(f"longest stall (one peer's longest step() call): {f['longest_stall_s']:.2f} s ({f['longest_stall_where']})")
    if rec["passed"]:
        lines.append("PASSED")
    else:
        lines.append("FAILED:")
        lines += [f"  - {p}" for p in rec["problems"]]
    return "\n".join(lines)


def plot_records(records: Sequence[dict[str, Any]], path: str) -> int:
    """Eval loss against inner steps and against MB sent, one line per record. 0 on success, 2 without matplotlib."""
    try:
        import matplotlib  # noqa: PLC0415

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        print("--plot needs matplotlib: pip install 'pccl_py[plot]'")
        return 2
    fig, (ax_step, ax_bytes) = plt.subplots(1, 2, figsize=(12, 4.5))
    for rec in records:
        curve = rec["curve"]
        if not curve:
            continue
        name = label(rec)
        line, = ax_step.plot([p["inner_step"] for p in curve], [p["eval_loss"] for p in curve], marker=".", label=name)
        sent = [(p["tx_bytes"] / 1e6, p["eval_loss"]) for p in curve if p["tx_bytes"] > 0]
        if sent:
            ax_bytes.plot(*zip(*sent), marker=".", color=line.get_color(), label=name)
        else:  # sends nothing: a log axis has no 0, so its final loss is a horizontal reference
            ax_bytes.axhline(curve[-1]["eval_loss"], linestyle="--", color=line.get_color(), label=f"{name} (sends nothing)")
    losses = [p["eval_loss"] for rec in records for p in rec["curve"]]
    starts = [rec["curve"][0]["eval_loss"] for rec in records if rec["curve"]]
    if losses and starts:  # a run that diverged would squash every other line: cut it at the starting loss
        top = min(max(losses), max(starts)) * 1.05
        for ax in (ax_step, ax_bytes):
            ax.set_ylim(min(losses) * 0.95, top)
    ax_step.set_xlabel("inner step")
    ax_bytes.set_xlabel("MB sent per peer (log scale)")
    ax_bytes.set_xscale("log")
    for ax in (ax_step, ax_bytes):
        ax.set_ylabel("eval loss (nats per character)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("diloco_train: eval loss of the group (mean over peers)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"plot written to {path}")
    return 0


def plot_files(paths: Sequence[str], out: str) -> int:
    records = []
    for path in paths:
        with open(path) as f:
            rec = json.load(f)
        if rec.get("tool") != "pccl_py.tools.diloco_train":
            print(f"{path} is not a diloco_train record")
            return 2
        records.append(rec)
    return plot_records(records, out)
