"""The live view of a run (``kurukshetra`` and ``status --watch`` on a terminal), drawn with ``rich``.

One screen: per level a bar of done / failed / running / pending tasks; per worker its state, current task,
elapsed time, CPU and memory against its limit (container mode: the engine's stats stream), tokens and cost
so far (where the agent reports them) and its latest action (the last line of its log, read bounded from
the end, never through a symlink); the last few events below.

It redraws on change only: typed events (from the run itself, or from the journal for ``status --watch``),
a stats sample from the engine, a worker log that grew (its size is looked at twice a second). Redraws are
coalesced (at most one per ``_MIN_REDRAW_S``) and happen on the view's own thread, so the run never waits for
the screen. Not a terminal (CI logs, ``| tee``, ``| head``): the plain lines, unchanged.

:class:`ViewModel` is pure (events and state in, rows out) and tested without a terminal.
"""

from __future__ import annotations

import collections
import os
import stat
import sys
import threading
import time
import unicodedata
from collections.abc import Callable
from typing import Any

from .. import events as E

__all__ = ["ViewModel", "LiveView", "run_with_view", "use_live_view", "last_line", "worker_log_path"]

_MIN_REDRAW_S = 0.5  # a redraw costs ~6 ms of CPU (rich, 4 workers): at most 2 a second bounds the view near 1%
_LOG_CHECK_S = 0.5
_TAIL_BYTES = 4096
_EVENTS_SHOWN = 6


def use_live_view(stream: Any = None) -> bool:
    """A live screen only on a terminal (and not when ``MAHABHARATHA_NO_LIVE=1`` or ``TERM=dumb``)."""
    stream = stream or sys.stdout
    if os.environ.get("MAHABHARATHA_NO_LIVE") == "1" or os.environ.get("TERM") == "dumb":
        return False
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def worker_log_path(repo: str, feature: str, worker: int) -> str:
    """The worker's host log, ``.mahabharatha/logs/workers/<feature>/worker-N.stdout.log`` (the plan's
    ``log_path``, for a process that has no plan)."""
    from ..core.plan import log_dir

    return os.path.join(log_dir(repo, feature), f"worker-{worker}.stdout.log")


def _clean(text: str, limit: int = 160) -> str:
    text = "".join(ch for ch in text.replace("\t", " ") if unicodedata.category(ch)[0] != "C" and ch not in "\u2028\u2029")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def last_line(repo: str, path: str, *, limit: int = _TAIL_BYTES) -> str:
    """The last non-empty line of the regular file ``path`` (below ``repo``), from its last ``limit`` bytes
    only; "" when missing, empty, a link or not a regular file. Control characters are dropped."""
    from ..edge.journal import open_below

    try:
        fd = open_below(repo, path, os.O_RDONLY)
    except Exception:  # noqa: BLE001 - missing, a link, a FIFO: nothing to show
        return ""
    try:
        size = os.fstat(fd).st_size
        os.lseek(fd, max(0, size - limit), os.SEEK_SET)
        data = os.read(fd, limit)
    except OSError:
        return ""
    finally:
        os.close(fd)
    for raw in reversed(data.decode("utf-8", "replace").splitlines()):
        line = _clean(raw.strip())
        if line:
            return line
    return ""


class _Worker:
    __slots__ = ("id", "name", "state", "task", "since", "tokens", "cost", "cpu", "mem", "limit", "action", "reported")

    def __init__(self, wid: int, name: str, limit: int) -> None:
        self.id, self.name, self.limit = wid, name, limit
        self.state, self.task, self.since, self.action = "waiting", "", 0.0, ""
        self.tokens, self.cost, self.reported = 0, 0.0, False
        self.cpu: float | None = None
        self.mem: int | None = None


class ViewModel:
    """What the screen shows, built from events (and the state document, for tasks a resumed run found)."""

    def __init__(self, feature: str, levels: dict[int, list[str]], workers: list[tuple[int, str, int]], *,
                 clock: Callable[[], float] = time.time) -> None:
        self.feature = feature
        self.clock = clock
        self.started = clock()
        self.status = "starting"
        self.level = min(levels) if levels else 0
        self.task_level = {tid: lvl for lvl, tids in levels.items() for tid in tids}
        self.task_status = {tid: "pending" for tid in self.task_level}
        self.workers = {wid: _Worker(wid, name, limit) for wid, name, limit in workers}
        self.lines: collections.deque[str] = collections.deque(maxlen=_EVENTS_SHOWN)
        self.finished: E.RunFinished | None = None

    def worker(self, wid: int) -> _Worker:
        if wid not in self.workers:
            self.workers[wid] = _Worker(wid, f"worker-{wid}", 0)
        return self.workers[wid]

    def load_state(self, data: dict[str, Any]) -> None:
        for tid, t in (data.get("tasks") or {}).items():
            self.task_level[tid] = int(t.get("level", 0))
            status = t.get("status", "pending")
            self.task_status[tid] = "running" if status == "claimed" else status

    def line(self, text: str, ts: float | None = None) -> None:
        self.lines.append(f"{time.strftime('%H:%M:%S', time.localtime(ts or self.clock()))} {text}")

    def apply(self, event: E.Event, ts: float | None = None) -> None:
        now = ts or self.clock()
        if isinstance(event, E.RunStarted):
            self.started, self.status, self.level = now, "running", event.level or self.level
        elif isinstance(event, E.WorkersStarting):
            for wid in range(event.workers):
                self.worker(wid)
        elif isinstance(event, E.WorkerStarted):
            self.worker(event.worker).state = "starting"
        elif isinstance(event, E.WorkerReady):
            w = self.worker(event.worker)
            w.state = "idle" if not w.task else "running"
        elif isinstance(event, E.TaskClaimed):
            w = self.worker(event.worker)
            w.state, w.task, w.since = "running", event.task, now
            self.task_status[event.task] = "running"
            self.task_level.setdefault(event.task, event.level)
        elif isinstance(event, (E.TaskDone, E.TaskFailed)):
            self.task_status[event.task] = "done" if isinstance(event, E.TaskDone) else "failed"
            if event.worker is not None:
                w = self.worker(event.worker)
                if w.task == event.task:
                    w.state, w.task = "idle", ""
        elif isinstance(event, E.TaskUsage):
            if event.worker is not None:
                w = self.worker(event.worker)
                w.tokens += event.input_tokens + event.output_tokens + event.cache_read_tokens + event.cache_creation_tokens
                w.cost += event.cost_usd
                w.reported = True
        elif isinstance(event, E.WorkerExited):
            w = self.worker(event.worker)
            w.state = f"exited {event.code} ({event.meaning})" + (" OOM" if event.oom else "")
            if event.task and self.task_status.get(event.task) == "running":
                self.task_status[event.task] = "pending"
            w.task, w.cpu, w.mem = "", None, None
        elif isinstance(event, E.LevelStarted):
            self.level = event.level
        elif isinstance(event, E.ReviewRequested):
            self.status = f"waiting for review of level {event.level} (`mahabharatha approve`)"
        elif isinstance(event, E.LevelMerged):
            self.status = "running" if self.status.startswith("waiting for review") else self.status
        elif isinstance(event, E.RunStopping):
            self.status = "stopping"
        elif isinstance(event, E.RunFinished):
            self.status, self.finished = event.status, event

    def level_counts(self) -> dict[int, dict[str, int]]:
        out: dict[int, dict[str, int]] = {}
        for tid, level in self.task_level.items():
            counts = out.setdefault(level, {"done": 0, "failed": 0, "running": 0, "pending": 0, "blocked": 0})
            status = self.task_status.get(tid, "pending")
            counts[status if status in counts else "pending"] += 1
        return dict(sorted(out.items()))

    def elapsed(self, since: float) -> str:
        s = max(0, int(self.clock() - since))
        return f"{s // 60}:{s % 60:02d}"


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:.0f}"


def render(model: ViewModel) -> Any:
    """The screen for ``model`` (a rich renderable)."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    head = Text.assemble(
        ("mahabharatha ", "bold"), (model.feature, "bold cyan"), f"  {model.status}",
        f"  level {model.level}", f"  {model.elapsed(model.started)}",
    )
    levels = Table(box=None, show_header=False, pad_edge=False)
    for col in ("level", "bar", "counts"):
        levels.add_column(col)
    width = 30
    for level, c in model.level_counts().items():
        total = sum(c.values()) or 1
        bar, upto, drawn = Text(), 0, 0
        for key, style in (("done", "green"), ("failed", "red"), ("blocked", "magenta"), ("running", "yellow")):
            upto += c[key]
            cells = round(width * upto / total) - drawn  # cumulative rounding: the bar is exactly `width` wide
            bar.append("█" * cells, style=style)
            drawn += cells
        bar.append("░" * max(0, width - len(bar.plain)), style="dim")
        counts = f"{c['done']} done, {c['failed']} failed, {c['running']} running, {c['pending']} pending" + (
            f", {c['blocked']} blocked" if c["blocked"] else "")
        levels.add_row(Text(f"level {level}"), bar, Text(counts))
    workers = Table(box=None, pad_edge=False, header_style="bold")
    for col in ("worker", "state", "task", "time", "cpu", "mem MiB", "tokens/cost", "latest"):
        workers.add_column(col, overflow="ellipsis", no_wrap=True, max_width=60 if col == "latest" else None)
    for wid in sorted(model.workers):
        w = model.workers[wid]
        mem = "-" if w.mem is None else f"{_mib(w.mem)}/{_mib(w.limit) if w.limit else '?'}"
        cells = (  # Text, not markup: a task id or a log line may hold "[...]"
            str(wid), w.state, w.task or "-", model.elapsed(w.since) if w.task else "-",
            "-" if w.cpu is None else f"{w.cpu:.0f}%", mem,
            f"{w.tokens} ${w.cost:.2f}" if w.reported else "-", w.action or "",
        )
        workers.add_row(*(Text(c) for c in cells))
    events = Text("\n".join(model.lines), style="dim")
    return Group(head, levels, Text(""), workers, Text(""), Text("events", style="bold"), events)


class LiveView:
    """Draws a :class:`ViewModel` on the terminal from its own thread, whenever something changed."""

    def __init__(self, model: ViewModel, *, repo: str, log_paths: dict[int, str], stream: Any = None,
                 client: Any = None) -> None:
        self.model = model
        self.repo = repo
        self.log_paths = log_paths
        self.stream = stream or sys.stdout
        self.client = client
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.dirty = True
        self.closing = False
        self.redraws = 0
        self._stats_started: set[int] = set()
        self._sizes: dict[int, int] = {}
        self._threads: list[threading.Thread] = []

    # -- inputs (any thread; quick) -----------------------------------------------------------------------
    def _touch(self) -> None:
        self.dirty = True
        self.changed.notify()

    def event(self, event: E.Event, ts: float | None = None) -> None:
        with self.changed:
            self.model.apply(event, ts)
            self._touch()
        if isinstance(event, (E.WorkerStarted, E.WorkerReady)) and self.client is not None:
            self._start_stats(event.worker)

    def line(self, text: str, ts: float | None = None) -> None:
        with self.changed:
            self.model.line(text, ts)
            self._touch()

    # -- watchers ------------------------------------------------------------------------------------------
    def _watch_logs(self) -> None:
        while not self.closing:
            self._check_logs()
            with self.changed:
                self.changed.wait_for(lambda: self.closing, timeout=_LOG_CHECK_S)

    def _check_logs(self) -> None:
        """Read the last line of each worker log that grew since the last look (a stat each, nothing more)."""
        sizes = self._sizes
        with self.lock:
            paths = list(self.log_paths.items())
        for wid, path in paths:
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode) or sizes.get(wid) == st.st_size:
                continue
            sizes[wid] = st.st_size
            action = last_line(self.repo, path)
            with self.changed:
                self.model.worker(wid).action = action
                self._touch()

    def _start_stats(self, wid: int) -> None:
        with self.lock:
            if wid in self._stats_started or wid not in self.model.workers:
                return
            self._stats_started.add(wid)
            name = self.model.workers[wid].name
        t = threading.Thread(target=self._stats, args=(wid, name), name=f"mahabharatha-view-stats-{wid}", daemon=True)
        t.start()

    def _stats(self, wid: int, name: str) -> None:
        """The engine's stats stream for one container (a sample a second, pushed by the engine)."""
        try:
            for s in self.client.api.stats(name, stream=True, decode=True):
                if self.closing:
                    return
                try:
                    cpu = s["cpu_stats"]["cpu_usage"]["total_usage"] - s["precpu_stats"]["cpu_usage"]["total_usage"]
                    system = s["cpu_stats"].get("system_cpu_usage", 0) - s["precpu_stats"].get("system_cpu_usage", 0)
                    ncpu = s["cpu_stats"].get("online_cpus") or 1
                    mem = s["memory_stats"].get("usage")
                    limit = s["memory_stats"].get("limit")
                except (KeyError, TypeError):
                    continue
                with self.changed:
                    w = self.model.worker(wid)
                    if w.state.startswith("exited") or not mem:
                        continue  # a last sample of a container that has ended
                    shown = (None if w.cpu is None else round(w.cpu), None if w.mem is None else w.mem >> 20)
                    w.cpu = 100.0 * cpu / system * ncpu if system > 0 else 0.0
                    w.mem = mem
                    w.limit = w.limit or limit or 0
                    if shown != (round(w.cpu), mem >> 20):  # redraw only when what the screen shows changed
                        self._touch()
        except Exception:  # noqa: BLE001 - not started yet, or gone: a later (re)start asks again
            pass
        with self.lock:
            self._stats_started.discard(wid)

    # -- drawing -------------------------------------------------------------------------------------------
    def _draw_loop(self, live: Any) -> None:
        while True:
            with self.changed:
                self.changed.wait_for(lambda: self.dirty or self.closing)
                if self.closing:
                    return
                self.dirty = False
                screen = render(self.model)
            live.update(screen, refresh=True)
            self.redraws += 1
            time.sleep(_MIN_REDRAW_S)  # coalesce bursts of changes into one redraw

    def start(self) -> LiveView:
        from rich.console import Console
        from rich.live import Live

        self.console = Console(file=self.stream)
        self.live = Live(render(self.model), console=self.console, auto_refresh=False, transient=False,
                         redirect_stdout=False, redirect_stderr=False)
        self.live.start()
        for target, name in ((self._watch_logs, "logs"), (lambda: self._draw_loop(self.live), "draw")):
            t = threading.Thread(target=target, name=f"mahabharatha-view-{name}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        with self.changed:
            self.closing = True
            self.changed.notify_all()
        for t in self._threads:
            t.join(timeout=2)
        self._check_logs()  # the workers' last lines, written as they ended
        with self.lock:
            screen = render(self.model)
        self.live.update(screen, refresh=True)
        self.live.stop()


def _model_for_plan(plan: Any) -> tuple[ViewModel, dict[int, str]]:
    levels: dict[int, list[str]] = {}
    for t in plan.graph.tasks:
        levels.setdefault(t.level, []).append(t.id)
    workers = [(w.worker_id, w.name, w.mem_limit_bytes if plan.mode == "container" else 0) for w in plan.workers]
    model = ViewModel(plan.feature, levels, workers)
    return model, {w.worker_id: w.log_path for w in plan.workers}


def run_with_view(plan: Any, execute: Callable[..., Any], *, say: Callable[[str], None], keep_failed: bool,
                  plain: bool = False) -> Any:
    """``execute(plan)`` with the live view on a terminal, else with ``say`` for each plain line."""
    if plain or not use_live_view() or plan.graph is None:
        return execute(plan, out=say, keep_failed=keep_failed)
    try:
        import rich  # noqa: F401
    except ImportError:  # pragma: no cover - a dependency; plain lines all the same
        return execute(plan, out=say, keep_failed=keep_failed)
    model, logs = _model_for_plan(plan)
    client = None
    if plan.mode == "container":
        from ..edge.executor import make_client

        try:
            client = make_client(workers=len(plan.workers))
        except Exception:  # noqa: BLE001 - the run's own preflight reports an unreachable engine
            client = None
    from ..worker.state import StateStore

    view = LiveView(model, repo=plan.repo, log_paths=logs, client=client)

    def on_event(event: E.Event) -> None:
        if (isinstance(event, E.RunStarted) and event.resumed) or isinstance(event, E.LevelMerged):  # blocked tasks
            data = StateStore(plan.state_dir, plan.feature).read()
            with view.changed:
                if data:
                    model.load_state(data)
        view.event(event)

    view.start()
    try:
        return execute(plan, out=view.line, on_event=on_event, keep_failed=keep_failed)
    finally:
        view.stop()


def watch_status(repo: str, feature: str, data: dict[str, Any], *, stream: Any = None) -> int:
    """``status --watch``: the live view of the feature's run, fed by its journal (replayed, then followed
    while the run lasts); not on a terminal, the journal's lines as ``events -f`` prints them."""
    from ..edge.journal import Entry, follow_entries
    from .common import run_in_progress, state_store
    from .watch import event_line

    stream = stream or sys.stdout
    active = lambda: run_in_progress(repo, feature)  # noqa: E731
    if not use_live_view(stream):
        for item in follow_entries(repo, feature, active=active):
            assert isinstance(item, Entry)
            stream.write(f"[{time.strftime('%H:%M:%S', time.localtime(item.ts))}] {event_line(item.event)}\n")
            stream.flush()
        return 0
    model = ViewModel(feature, {}, [])
    model.load_state(data)
    from ..edge.journal import read_entries

    modes = [e.event.mode for e in read_entries(repo, feature) if isinstance(e.event, E.WorkersStarting)]
    client, names = None, {}
    try:
        if not modes or modes[-1] != "container":
            raise LookupError("no containers to ask the engine about")  # and no Docker SDK import
        from ..core.model import LABEL_WORKER
        from ..edge.executor import feature_containers, make_client

        client = make_client(timeout=10)
        for row in feature_containers(client, repo, feature):
            wid = int((row.get("Labels") or {}).get(LABEL_WORKER, "-1"))
            if wid >= 0:
                names[wid] = (row.get("Names") or [f"worker-{wid}"])[0].lstrip("/")
    except Exception:  # noqa: BLE001 - subprocess mode, or no engine: no CPU/memory figures
        client = None
    for wid, name in names.items():
        model.worker(wid).name = name
    view = LiveView(model, repo=repo, log_paths={}, stream=stream, client=client if names else None)

    def feed() -> None:
        for item in follow_entries(repo, feature, active=active):
            assert isinstance(item, Entry)
            event = item.event
            if isinstance(event, E.WorkersStarting):
                with view.lock:
                    for wid in range(event.workers):
                        view.log_paths.setdefault(wid, worker_log_path(repo, feature, wid))
            if isinstance(event, (E.LevelMerged, E.RunStarted)):
                fresh = state_store(repo, feature).read()
                if fresh:
                    with view.lock:
                        model.load_state(fresh)
            view.event(event, item.ts)
            text = E.describe(event)  # the lines `kurukshetra` itself shows
            if text is not None:
                view.line(text, item.ts)

    view.start()
    try:
        feed()
    except KeyboardInterrupt:
        pass
    finally:
        view.stop()
    return 0
