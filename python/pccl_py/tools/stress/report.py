"""What pccl-stress shows: the live progress (a rich table, or a plain line every 5 s) and the final
text report.

Kept apart from stress.py, which schedules, collects and judges, so that the orchestrator stays
readable and the presentation can change without touching how a run is judged.
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .cli import Stress


def _summary_line(s: Stress) -> str:
    everyone = list(s.finished) + list(s.workers.values())
    ops = sum(int(w.stats.get("ops_ok", 0)) for w in everyone)
    failed = sum(int(w.stats.get("ops_failed", 0)) for w in everyone)
    step = max((int(w.stats.get("steps", 0)) for w in s.workers.values()), default=0)
    members = len(s.active())
    frozen = len([w for w in s.workers.values() if w.state == "stopped"])
    joining = len([w for w in s.workers.values() if w.state == "starting"])
    ev = " ".join(f"{k}={s.counts.get(k, 0)}" for k in s.kinds)
    return (f"[{time.monotonic() - s.t0:6.1f}/{s.args.duration:.0f} s] members {members} frozen {frozen} joining {joining} | "
            f"ops {ops} failed {failed} | wrong {len(s.wrong)} diverged {len(s.divergences) + len(s.state_divergences)} "
            f"crashes {len(s.crashes)} | {ev} | steps/peer {step}")


class Progress:
    """Live progress: a rich table when rich is installed and stdout is a TTY, else a line every 5 s."""

    def __init__(self, mode: str) -> None:
        self.live: Any = None
        self.last = 0.0
        self.quiet = mode == "none"
        if mode in ("auto", "rich") and not self.quiet:
            try:
                from rich.live import Live
            except ImportError:
                pass  # plain lines instead
            else:
                if mode == "rich" or sys.stdout.isatty():
                    self.live = Live(self._render_text("starting"), refresh_per_second=4)
                    self.live.start()

    @staticmethod
    def _render_text(text: str) -> Any:
        from rich.panel import Panel

        return Panel(text, title="pccl-stress")

    def update(self, s: Stress) -> None:
        now = time.monotonic()
        if self.live is not None:
            if now - self.last >= 0.25:
                self.last = now
                self.live.update(self._render(s))
        elif not self.quiet and now - self.last >= 5.0:
            self.last = now
            print(_summary_line(s), flush=True)

    def _render(self, s: Stress) -> Any:
        from rich.table import Table

        t = Table(title=f"pccl-stress  seed {s.args.seed}  {time.monotonic() - s.t0:.0f}/{s.args.duration:.0f} s",
                  show_header=False)
        t.add_column(style="bold")
        t.add_column()
        everyone = list(s.finished) + list(s.workers.values())

        def total(k: str) -> int:
            return sum(int(w.stats.get(k, 0)) for w in everyone)
        t.add_row("peers", f"{len(s.active())} members, "
                           f"{len([w for w in s.workers.values() if w.state == 'stopped'])} frozen, "
                           f"{len([w for w in s.workers.values() if w.state == 'starting'])} joining; "
                           f"{s.spawned} started")
        t.add_row("events", ", ".join(f"{k} {s.counts.get(k, 0)}" for k in s.kinds))
        t.add_row("last event", s.last_event or "-")
        t.add_row("ops", f"{total('ops_ok')} ok, {total('ops_failed')} failed, {total('retries')} retried")
        t.add_row("state syncs", str(total("state_syncs")))
        bad = len(s.wrong) + len(s.divergences) + len(s.state_divergences) + len(s.crashes)
        t.add_row("wrong / diverged / crashes",
                  f"[{'red' if bad else 'green'}]{len(s.wrong)} / "
                  f"{len(s.divergences) + len(s.state_divergences)} / {len(s.crashes)}[/]")
        return t

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None


def format_report(r: dict[str, Any]) -> str:
    lines = [f"pccl-stress report (seed {r['seed']}, {r['duration_s']} s, {r['initial_peers']} initial peers, "
             f"heartbeat_timeout {r['heartbeat_timeout_s']} s, K={r['connections_per_peer']}"
             + (", TLS" if r.get("encryption") == "tls" else "") + ")"]
    lines.append("  events: " + ", ".join(f"{k} {v}" for k, v in r["events"].items()) +
                 f" (skipped {r['events_skipped']}); workers started {r['workers_started']}")
    lines.append(f"  ops completed {r['ops_completed']}, failed {r['ops_failed']}, retried {r['ops_retried']} "
                 f"{r['op_errors'] or ''}; peer-steps {r['peer_steps']}")
    lines.append(f"  joins {r['joins']} (failed {r['join_failures']}), votes {r['votes']} (failed "
                 f"{r['vote_failures']}), evictions {r['evictions']}, master losses {r['master_losses']}")
    state = f"state syncs {r['state_syncs']} ({r['state_tx_bytes']} B sent), state divergences {r['state_divergences']}"
    lines.append(f"  wrong results {r['wrong_results']}, divergences {r['divergences']}; {state}")
    lines.append(f"  longest stall {r['longest_stall_s']:.2f} s (limit {r['stall_limit_s']:.1f} s) "
                 f"{r['longest_stall_where']}; the whole machine stood still for up to "
                 f"{r['worst_machine_stall_s']:.2f} s at a time")
    lines.append("  recovery (event -> first op on a survivor reflecting it), seconds:")
    for kind, d in r["recovery_s"].items():
        extra = f", unobserved {d['unobserved']}" if d.get("unobserved") else ""
        if d["count"]:
            lines.append(f"    {kind:<14} n={d['count']:<4} p50 {d['p50']:.3f}  p90 {d['p90']:.3f}  "
                         f"max {d['max']:.3f}{extra}")
        else:
            lines.append(f"    {kind:<14} n=0{extra}")
    lines.append(f"  peers' peak RSS {r['peak_rss_mb']} MB, peak open fds {r['peak_fds']}; "
                 f"survivor crashes {r['survivor_crashes']}")
    for note in r["notes"]:
        lines.append(f"  note: {note}")
    if r["passed"]:
        lines.append("PASSED")
    else:
        lines.append("FAILED:")
        lines += [f"  - {f}" for f in r["failures"]]
    lines.append(f"  logs: {r['log_dir']}")
    return "\n".join(lines)
