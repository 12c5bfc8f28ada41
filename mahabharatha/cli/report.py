"""``mahabharatha report [FEATURE] [--output FILE]``: one self-contained HTML file picturing a run.

Built from the feature's journal only (:mod:`mahabharatha.edge.journal`): a timeline with a lane per worker
and a bar per task attempt, coloured by outcome (done, failed, restarted, OOM-killed, interrupted, still
running), with restarts and OOM kills marked; a vertical line at each level's merge; and a table of tasks with
duration, attempts, tokens and cost. Inline CSS and SVG, no script, nothing fetched when it is viewed. Every
text from the journal is HTML-escaped.

:func:`attempts` and :func:`render_html` are pure (entries in, values / text out).
"""

from __future__ import annotations

import argparse
import html
import os
import time
from dataclasses import dataclass, field
from typing import Any

from .. import events as E
from ..errors import MahabharathaError

__all__ = ["Attempt", "attempts", "render_html", "cmd_report", "COLOURS"]

COLOURS = {
    "done": "#2e9d4f",
    "failed": "#d0342c",
    "oom": "#8e44ad",
    "restarted": "#e0a800",
    "interrupted": "#7f8c8d",
    "running": "#3b82f6",
}


@dataclass
class Attempt:
    task: str
    worker: int
    attempt: int
    level: int
    start: float
    end: float = 0.0
    outcome: str = "running"  # done | failed | oom | restarted | interrupted | running
    note: str = ""


@dataclass
class _Task:
    level: int = 0
    attempts: int = 0
    seconds: float = 0.0
    status: str = "pending"
    tokens: int = 0
    cost: float = 0.0
    reported: bool = False
    reason: str = ""


@dataclass
class Picture:
    feature: str = ""
    t0: float = 0.0
    t1: float = 0.0
    attempts: list[Attempt] = field(default_factory=list)
    merges: list[tuple[float, int]] = field(default_factory=list)
    tasks: dict[str, _Task] = field(default_factory=dict)
    workers: set[int] = field(default_factory=set)
    runs: list[tuple[float, str]] = field(default_factory=list)  # (ts, status) of each finished run


def attempts(entries: list[Any]) -> Picture:
    """The run's picture from journal entries (``(ts, event)`` pairs, e.g. :class:`~mahabharatha.edge.journal.Entry`)."""
    pic = Picture()
    open_by_worker: dict[int, Attempt] = {}

    def close(a: Attempt, ts: float, outcome: str, note: str = "") -> None:
        a.end, a.outcome, a.note = ts, outcome, note
        open_by_worker.pop(a.worker, None)
        task = pic.tasks.setdefault(a.task, _Task(level=a.level))
        task.seconds += max(0.0, a.end - a.start)

    for ts, event in entries:
        pic.t0 = pic.t0 or ts
        pic.t1 = max(pic.t1, ts)
        if isinstance(event, E.RunStarted):
            pic.feature = event.feature
        elif isinstance(event, E.WorkersStarting):
            pic.workers.update(range(event.workers))
        elif isinstance(event, E.TaskClaimed):
            if event.worker in open_by_worker:
                close(open_by_worker[event.worker], ts, "interrupted")
            a = Attempt(event.task, event.worker, event.attempt, event.level, ts)
            pic.attempts.append(a)
            open_by_worker[event.worker] = a
            pic.workers.add(event.worker)
            task = pic.tasks.setdefault(event.task, _Task(level=event.level))
            task.attempts += 1
            task.status = "running"
        elif isinstance(event, (E.TaskDone, E.TaskFailed)):
            done = isinstance(event, E.TaskDone)
            a = open_by_worker.get(event.worker) if event.worker is not None else None
            if a is not None and a.task == event.task:
                close(a, ts, "done" if done else "failed", "" if done else event.reason)  # type: ignore[union-attr]
            task = pic.tasks.setdefault(event.task, _Task())
            task.status = "done" if done else "failed"
            task.reason = "" if done else event.reason  # type: ignore[union-attr]
        elif isinstance(event, E.WorkerExited):
            a = open_by_worker.get(event.worker)
            if a is not None:
                outcome = "oom" if event.oom or event.code == 137 else "restarted" if event.code == 2 else "interrupted"
                close(a, ts, outcome, f"exit {event.code} ({event.meaning})")
                if pic.tasks[a.task].status == "running":
                    pic.tasks[a.task].status = "pending"
        elif isinstance(event, E.TaskUsage):
            task = pic.tasks.setdefault(event.task, _Task())
            task.tokens += event.input_tokens + event.output_tokens + event.cache_read_tokens + event.cache_creation_tokens
            task.cost += event.cost_usd
            task.reported = True
        elif isinstance(event, E.LevelMerged):
            pic.merges.append((ts, event.level))
        elif isinstance(event, E.RunFinished):
            for a in list(open_by_worker.values()):
                close(a, ts, "interrupted")
            pic.runs.append((ts, event.status))
    for a in open_by_worker.values():  # a run still going: up to now
        a.end = pic.t1
    return pic


def _esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _fmt_s(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 60}:{s % 60:02d}" if s >= 60 else f"{seconds:.1f} s"


_CSS = """
body{font:14px system-ui,sans-serif;margin:24px;color:#222;background:#fff}
h1{font-size:20px;margin:0 0 4px} .sub{color:#666;margin-bottom:16px}
table{border-collapse:collapse;margin-top:18px} td,th{border-bottom:1px solid #ddd;padding:4px 10px;text-align:left}
th{background:#f4f4f4} td.n{text-align:right;font-variant-numeric:tabular-nums}
.legend span{display:inline-block;margin-right:14px} .legend i{display:inline-block;width:12px;height:12px;margin-right:4px;vertical-align:-1px}
.s-done{color:#2e9d4f} .s-failed{color:#d0342c} .s-blocked{color:#8e44ad}
"""


def render_html(pic: Picture, *, title: str = "") -> str:
    """The whole report as one HTML document."""
    width, left, lane_h, top = 1300, 110, 34, 28
    workers = sorted(pic.workers) or [0]
    span = max(pic.t1 - pic.t0, 1e-6)
    height = top + lane_h * len(workers) + 30

    def x(ts: float) -> float:
        return left + (width - left - 20) * (ts - pic.t0) / span

    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" aria-label="timeline">']
    for i, wid in enumerate(workers):
        y = top + i * lane_h
        svg.append(f'<rect x="{left}" y="{y}" width="{width - left - 20}" height="{lane_h - 6}" fill="#f3f4f6"/>')
        svg.append(f'<text x="8" y="{y + lane_h / 2 + 2}" font-size="13">worker {wid}</text>')
    lane_of = {wid: i for i, wid in enumerate(workers)}
    for a in pic.attempts:
        y = top + lane_of.get(a.worker, 0) * lane_h
        x0, x1 = x(a.start), x(max(a.end, a.start))
        w = max(x1 - x0, 3.0)
        tip = f"{a.task} attempt {a.attempt} (level {a.level}): {a.outcome}, {_fmt_s(max(a.end - a.start, 0))}" + (f"; {a.note}" if a.note else "")
        svg.append(
            f'<rect class="attempt {a.outcome}" x="{x0:.1f}" y="{y + 2}" width="{w:.1f}" height="{lane_h - 10}" '
            f'fill="{COLOURS.get(a.outcome, "#999")}" rx="3"><title>{_esc(tip)}</title></rect>'
        )
        if w > 28:
            svg.append(f'<text x="{x0 + 4:.1f}" y="{y + lane_h / 2 + 1}" font-size="11" fill="#fff">{_esc(a.task[:max(1, int(w / 7))])}</text>')
        if a.outcome in ("oom", "restarted"):  # the mark: a triangle where the attempt ended
            mark = "OOM" if a.outcome == "oom" else "restart"
            svg.append(f'<path d="M{x1:.1f},{y} l-5,-7 h10 z" fill="{COLOURS[a.outcome]}"><title>{mark}</title></path>')
    for ts, level in pic.merges:
        mx = x(ts)
        svg.append(f'<line x1="{mx:.1f}" y1="{top - 10}" x2="{mx:.1f}" y2="{height - 24}" stroke="#111" stroke-dasharray="4 3"/>')
        anchor, tx = ("end", mx - 3) if mx > width - 120 else ("start", mx + 3)
        svg.append(f'<text x="{tx:.1f}" y="{top - 14}" font-size="11" text-anchor="{anchor}">level {level} merged</text>')
    svg.append(f'<text x="{left}" y="{height - 6}" font-size="11" fill="#666">0 s</text>')
    svg.append(f'<text x="{width - 20}" y="{height - 6}" font-size="11" fill="#666" text-anchor="end">{_esc(_fmt_s(span))}</text>')
    svg.append("</svg>")

    rows = []
    for tid, t in sorted(pic.tasks.items(), key=lambda kv: (kv[1].level, kv[0])):
        rows.append(
            f'<tr><td>{_esc(tid)}</td><td class="n">{t.level}</td><td class="s-{_esc(t.status)}">{_esc(t.status)}</td>'
            f'<td class="n">{_esc(_fmt_s(t.seconds))}</td><td class="n">{t.attempts}</td>'
            f'<td class="n">{t.tokens if t.reported else "-"}</td><td class="n">{f"${t.cost:.4f}" if t.reported else "-"}</td>'
            f'<td>{_esc(t.reason[:200])}</td></tr>'
        )
    total_cost = sum(t.cost for t in pic.tasks.values())
    legend = "".join(f'<span><i style="background:{c}"></i>{_esc(k)}</span>' for k, c in COLOURS.items())
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(pic.t0)) if pic.t0 else "-"
    outcome = ", ".join(f"{status}" for _, status in pic.runs) or "in progress"
    heading = title or f"mahabharatha run of {pic.feature or '?'}"
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{_esc(heading)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{_esc(heading)}</h1><div class=\"sub\">started {_esc(when)}; {_esc(_fmt_s(span))}; "
        f"{len(pic.tasks)} tasks, {len(pic.attempts)} attempts on {len(workers)} workers; runs: {_esc(outcome)}"
        + (f"; agents cost ${total_cost:.4f}" if any(t.reported for t in pic.tasks.values()) else "")
        + f"</div><div class=\"legend\">{legend}</div>{''.join(svg)}"
        "<table><tr><th>task</th><th>level</th><th>status</th><th>duration</th><th>attempts</th><th>tokens</th>"
        f"<th>cost</th><th>reason</th></tr>{''.join(rows)}</table></body></html>\n"
    )


def cmd_report(args: argparse.Namespace) -> int:
    from ..edge.journal import read_entries
    from ..edge.safefs import write_nofollow
    from .common import repo_feature

    if getattr(args, "feature_arg", None):
        args.feature = args.feature_arg
    repo, feature = repo_feature(args)
    entries = read_entries(repo, feature)
    if not entries:
        raise MahabharathaError(f"no event journal for feature {feature!r}", hint="start a run with `mahabharatha kurukshetra`")
    out = getattr(args, "output", None) or os.path.join(repo, ".mahabharatha", f"report-{feature}.html")
    write_nofollow(os.path.abspath(out), render_html(attempts(list(entries))).encode("utf-8"))
    print(f"wrote {out}")
    return 0
