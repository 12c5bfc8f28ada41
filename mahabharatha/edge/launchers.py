"""Launchers: start, restart and stop a run's workers, and report their exits to the orchestrator.

Both kinds put ``("exit", worker_id, code, oom_killed)`` on the run's event queue, so the orchestrator's loop
does not care where workers run:

- :class:`ContainerLauncher`: containers through :mod:`.executor` (docker-py), exits from Docker ``die``
  events (with a slow poll as a safety net);
- :class:`SubprocessLauncher`: the same worker runtime as host processes (``workers.launcher_type:
  subprocess``), with host paths in place of the container ones and output redacted into the same logs.
"""

from __future__ import annotations

import contextlib
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..core.model import LABEL_WORKER, LaunchPlan, WorkerSpec
from ..worker import protocol as P
from ..worker import state as S
from . import processes as _processes
from . import worktrees as _worktrees
from .git import REPO_LOCATION_VARS

__all__ = ["ContainerLauncher", "SubprocessLauncher", "worker_env_for_host"]

_NAME_FREE_S = 60.0  # how long a restart waits for a removed container's name to be free


def _runtime_pythonpath(repo: str) -> str:
    """A directory where ``mahabharatha_worker`` is this package's worker runtime (a symlink), so the host runs
    exactly what containers run: ``python3 -m mahabharatha_worker``. It lives in the repository's own
    ``.mahabharatha/runtime/lib`` (not a shared temp dir another user could plant code in)."""
    from .. import worker as worker_pkg

    target = Path(worker_pkg.__file__).resolve().parent
    base = Path(repo) / ".mahabharatha" / "runtime" / "lib"
    base.mkdir(parents=True, exist_ok=True)
    link = base / P.RUNTIME_PACKAGE
    if not (link.is_symlink() and link.resolve() == target):
        tmp = base / f".{P.RUNTIME_PACKAGE}.{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        tmp.symlink_to(target)
        os.replace(tmp, link)
    return str(base)


def worker_env_for_host(plan: LaunchPlan, spec: WorkerSpec, base_env: dict[str, str] | None = None) -> dict[str, str]:
    """The worker's environment for subprocess mode: the plan's values with host paths for the container ones."""
    env = {k: v for k, v in (os.environ if base_env is None else base_env).items() if k not in REPO_LOCATION_VARS}
    planned = spec.env_dict()
    # IS_SANDBOX tells Claude Code a container is its sandbox: on the host there is none.
    for key in ("HOME", "PYTHONPATH", "IS_SANDBOX", P.ENV_IN_CONTAINER, "GIT_CONFIG_COUNT", "GIT_CONFIG_KEY_0", "GIT_CONFIG_VALUE_0", "GIT_CONFIG_KEY_1", "GIT_CONFIG_VALUE_1"):
        planned.pop(key, None)
    env.update(planned)
    # Credentials found in the repo's .env reach host workers the same way they reach containers.
    from .executor import secret_environment

    env.update(secret_environment(spec, reveal=True))
    env.pop(P.ENV_CLAUDE_SEED, None)  # a host worker uses the real home, which holds the login already
    env.update(
        {
            P.ENV_WORKSPACE: spec.worktree.path,
            P.ENV_CHANNEL: spec.channel_socket,
            P.ENV_SPEC_DIR: f"{plan.repo}/.gsd/specs/{plan.feature}",
            P.ENV_GIT_WORKTREE_DIR: spec.worktree.git_dir,
            P.ENV_GIT_MAIN_DIR: f"{plan.repo}/.git",
            "PYTHONPATH": os.pathsep.join(p for p in (_runtime_pythonpath(plan.repo), env.get("PYTHONPATH", "")) if p),
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def _copy_log(stream: Any, path: str, redact: Callable[[str], str], secrets: tuple[bytes, ...] = ()) -> None:
    """Append a worker's output to its host log line by line, secrets redacted, bounded (like container logs)."""
    from .logfile import HostLog, LineCutter

    cutter = LineCutter(secrets)
    out = HostLog(path, redact)
    with stream:
        try:
            for chunk in iter(lambda: stream.read1(1 << 16), b""):
                for raw in cutter.feed(chunk):
                    out.write(raw)
            rest = cutter.rest()
            if rest:
                out.write(rest)
        finally:
            out.close()


def _as_exit_status(returncode: int) -> int:
    """A host process's return code as a container reports it: killed by signal N is 128 + N (not -N)."""
    return 128 - returncode if returncode < 0 else returncode


class SubprocessLauncher:
    """Workers as host processes (``workers.launcher_type: subprocess``): same runtime, host paths."""

    def __init__(self, plan: LaunchPlan, events: queue.Queue[tuple[Any, ...]], out: Callable[[str], None]) -> None:
        self.plan = plan
        self.events = events
        self.out = out
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.store = S.StateStore(plan.state_dir, plan.feature)
        from .executor import redactor  # the very redaction container logs get

        self.redact = redactor(plan.workers)

    def _start(self, spec: WorkerSpec) -> None:
        Path(spec.log_path).parent.mkdir(parents=True, exist_ok=True)
        proc = subprocess.Popen(
            [sys.executable, "-m", P.RUNTIME_PACKAGE],
            cwd=spec.worktree.path,
            env=worker_env_for_host(self.plan, spec),
            stdout=subprocess.PIPE,  # through _copy_log: secrets are redacted before the log file sees them
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        assert proc.stdout is not None
        copier = threading.Thread(
            target=_copy_log, args=(proc.stdout, spec.log_path, self.redact, tuple(s.value.reveal().encode() for s in spec.secret_environment)),
            daemon=True, name=f"mahabharatha-log-{spec.worker_id}"
        )
        copier.start()
        self.procs[spec.worker_id] = proc
        # So `mahabharatha stop` can find it from another process, also when this orchestrator is gone.
        _processes.record(self.store, spec.worker_id, proc.pid)

        def wait() -> None:
            code = proc.wait()
            # Its output is in the log before its exit is reported (bounded: a leftover grandchild of the
            # agent may still hold the pipe open).
            copier.join(timeout=5)
            self.events.put(("exit", spec.worker_id, _as_exit_status(code), False, proc.pid))

        threading.Thread(target=wait, daemon=True, name=f"mahabharatha-wait-{spec.worker_id}").start()

    def start_all(self) -> None:
        _worktrees.ensure_worktrees(self.plan.repo, self.plan.base_branch, self.plan.worktrees, host_git=True)
        for spec in self.plan.workers:
            self._start(spec)

    def restart(self, worker_id: int) -> None:
        self._start(self.plan.workers[worker_id])

    def current(self, worker_id: int) -> Any:
        proc = self.procs.get(worker_id)
        return proc.pid if proc else None

    def stop(self, worker_id: int) -> None:
        proc = self.procs.get(worker_id)
        if proc and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()

    def stop_all(self, timeout: float = 30.0) -> None:
        for wid in list(self.procs):
            self.stop(wid)
        deadline = time.monotonic() + timeout
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()

    def poll_exits(self, alive: dict[int, Any]) -> list[tuple[int, int | None, bool, bool]]:
        """Workers in ``alive`` (id -> pid) whose process has ended: (id, code, oom, lost)."""
        out = []
        for wid, pid in alive.items():
            proc = self.procs.get(wid)
            if proc is not None and proc.pid == pid and proc.poll() is not None:
                out.append((wid, _as_exit_status(proc.returncode), False, False))
        return out

    def close(self, *, success: bool) -> None:
        pass


class ContainerLauncher:
    """Workers as containers through :mod:`.executor`; exits come from the engine's ``die`` events."""

    def __init__(
        self, plan: LaunchPlan, events: queue.Queue[tuple[Any, ...]], out: Callable[[str], None], client: Any = None,
        keep_failed: bool = False, link: Any = None,
    ) -> None:
        from . import executor

        self.link = link  # the run's TCP channel (remote transport), else None
        self.executor = executor
        self.plan = plan
        self.events = events
        self.out = out
        self.keep_failed = keep_failed
        self.client = client if client is not None else executor.make_client(workers=len(plan.workers))
        self.ids: dict[int, str] = {}
        self._stream = executor.watch_feature_events(
            self.client, plan.repo, plan.feature, self._on_die, actions=("die",), name="mahabharatha-orchestrator-events"
        )

    def _on_die(self, cid: str, _action: str, labels: dict[str, str]) -> None:
        try:
            wid = int(labels.get(LABEL_WORKER, "-1"))
        except ValueError:
            return
        if wid >= 0:
            self.events.put(("die", wid, cid))

    def exit_of(self, cid: str) -> tuple[int | None, bool, bool]:
        """(exit code, OOMKilled, lost): lost when the container is gone or being removed (``docker rm -f``
        by hand), which says nothing about its task."""
        info = self.executor.worker_exit(self.client, cid)
        if info is None:
            return None, False, True
        return info.exit_code, info.oom_killed, info.removing

    def poll_exits(self, alive: dict[int, Any]) -> list[tuple[int, int | None, bool, bool]]:
        """Workers in ``alive`` (id -> container id) whose container has stopped: (id, code, oom, lost)."""
        out = []
        for wid, cid in alive.items():
            try:
                info = self.executor.worker_exit(self.client, cid)
            except Exception:  # noqa: BLE001 - engine unreachable: nothing to report now
                continue
            if info is None:  # removed behind our back: a lost worker
                out.append((wid, None, False, True))
            elif info.exit_code is not None:
                out.append((wid, info.exit_code, info.oom_killed, info.removing))
        return out

    def start_all(self) -> None:
        launch = self.executor.launch_fleet(self.plan, client=self.client, keep_failed=self.keep_failed, link=self.link)
        for handle in launch.workers:
            self.ids[handle.worker_id] = handle.container_id

    def restart(self, worker_id: int) -> None:
        """Start the worker again. A container removed by hand keeps its name while the engine removes it
        (409 Conflict "already in use"): wait for the name to be free, up to ``_NAME_FREE_S`` seconds."""
        from ..errors import LaunchError

        deadline = time.monotonic() + _NAME_FREE_S
        delay = 0.1
        while True:
            try:
                handle = self.executor.start_worker(
                    self.client, self.plan, self.plan.workers[worker_id], keep_failed=self.keep_failed, link=self.link
                )
                break
            except LaunchError as exc:
                if "already in use" not in str(exc) and "removal of container" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(delay)  # the engine is removing the old container; there is no event for "name free"
                delay = min(delay * 2, 1.0)
        self.ids[worker_id] = handle.container_id

    def current(self, worker_id: int) -> Any:
        return self.ids.get(worker_id)

    def stop(self, worker_id: int) -> None:
        """Ask the engine to stop the worker's container and return at once (like SubprocessLauncher.stop):
        the stop takes as long as the worker needs to wind down, and its end arrives as a ``die`` event, so
        the loop keeps merging levels and serving the other workers meanwhile."""
        cid = self.ids.get(worker_id)
        if cid:
            def stop() -> None:
                with contextlib.suppress(Exception):
                    self.client.api.stop(cid, timeout=30)

            threading.Thread(target=stop, daemon=True, name=f"mahabharatha-stop-{worker_id}").start()

    def stop_all(self, timeout: float = 30.0) -> None:
        self.executor.stop_workers(self.client, self.plan.repo, self.plan.feature, timeout=timeout)

    def close(self, *, success: bool) -> None:
        """End of the run: the containers go (their output is in the host logs, their exits were reported;
        a resumed run starts new ones), unless the user asked to keep them after a failure (--keep-failed)."""
        with contextlib.suppress(Exception):
            self._stream.close()
        if success or not self.keep_failed:
            with contextlib.suppress(Exception):
                self.executor.remove_containers(self.client, self.plan.repo, self.plan.feature)
