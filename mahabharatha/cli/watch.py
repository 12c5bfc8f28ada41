"""``mahabharatha events [-f] [--json]``: the feature's event journal (:mod:`mahabharatha.edge.journal`).

Text mode prints one line per event (``[HH:MM:SS] what happened``), ``--json`` the journal's raw lines;
``-f`` keeps printing new events while a run of the feature is in progress, like ``logs -f``.
"""

from __future__ import annotations

import argparse
import sys
import time

from .. import events as E
from ..errors import MahabharathaError

__all__ = ["cmd_events", "event_line"]


def event_line(event: E.Event) -> str:
    """One line for any event: :func:`mahabharatha.events.describe` where it has one, else a short account."""
    text = E.describe(event)
    if text is not None:
        return text
    if isinstance(event, E.RunStarted):
        return f"run started: {event.feature}, {event.tasks} tasks in {len(event.levels)} level(s)"
    if isinstance(event, E.WorkerStarted):
        return f"worker {event.worker} started"
    if isinstance(event, E.WorkerReady):
        return f"worker {event.worker} ready"
    if isinstance(event, E.TaskClaimed):
        return f"task {event.task} claimed by worker {event.worker} (level {event.level}, attempt {event.attempt})"
    if isinstance(event, E.TaskUsage):
        tokens = event.input_tokens + event.output_tokens + event.cache_read_tokens + event.cache_creation_tokens
        return f"task {event.task} used {tokens} tokens, ${event.cost_usd:.4f}" + (f" ({event.model})" if event.model else "")
    if isinstance(event, E.RunStopping):
        return f"run stopping: {event.message}"
    if isinstance(event, E.RunFinished):
        return f"run {event.status} (exit {event.exit_code}) in {event.seconds:.1f} s" + (f": {event.message}" if event.message else "")
    return event.__struct_config__.tag  # type: ignore[attr-defined,no-any-return]


def _stamp(ts: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts))


def cmd_events(args: argparse.Namespace) -> int:
    from ..edge.journal import Entry, follow_entries, journal_path, read_entries, read_lines
    from .common import repo_feature, run_in_progress

    repo, feature = repo_feature(args)
    path = journal_path(repo, feature)
    raw = bool(getattr(args, "json", False))
    out = sys.stdout
    if getattr(args, "follow", False):
        try:
            for item in follow_entries(repo, feature, active=lambda: run_in_progress(repo, feature), raw=raw):
                if isinstance(item, Entry):
                    out.write(f"[{_stamp(item.ts)}] {event_line(item.event)}\n")
                else:
                    out.write(item.decode("utf-8", "replace") + "\n")
                out.flush()
        except KeyboardInterrupt:
            return 0
        return 0
    if raw:
        lines = list(read_lines(repo, feature))
        if not lines:
            raise MahabharathaError(f"no event journal for feature {feature!r} at {path}", hint="start a run with `mahabharatha kurukshetra`")
        for line in lines:
            out.write(line.decode("utf-8", "replace") + "\n")
        return 0
    entries = read_entries(repo, feature)
    if not entries:
        raise MahabharathaError(f"no event journal for feature {feature!r} at {path}", hint="start a run with `mahabharatha kurukshetra`")
    for entry in entries:
        out.write(f"[{_stamp(entry.ts)}] {event_line(entry.event)}\n")
    return 0
