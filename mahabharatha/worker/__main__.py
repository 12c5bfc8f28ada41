"""The worker loop (``python3 -m mahabharatha_worker`` in a container, ``python -m mahabharatha.worker`` on the host).

1. Check git sees the workspace as this worker's worktree; print the ready line.
2. Under the state lock, claim the next pending task of the current level.
3. Run ``$MAHABHARATHA_AGENT_COMMAND`` (``sh -c``, in the workspace) with the task in the environment, then the
   task's verification command (shell, with its timeout).
4. Commit the work to the worker branch (message names the task), mark the task done; on failure park the
   work on ``refs/mahabharatha/failed/<feature>/<task>`` and mark it failed. Append to ``progress.md``.
5. No task to take: wait (short polls of the state file, growing to a small ceiling) until the orchestrator
   advances the level (then merge the base branch in and go on) or ends the run.

Exit codes (protocol): 0 run done, 1 unrecoverable error, 2 the agent reported its context limit (the task
is claimable again), 3 the run ended blocked/failed, 130 SIGTERM/SIGINT (the task is claimable again; an
agent that ignores SIGTERM is killed after ``$MAHABHARATHA_STOP_GRACE`` s, default 10), 137 the agent was
SIGKILLed (the memory limit's OOM killer picks the biggest process, usually the agent; the task stays claimed
for the orchestrator's OOM policy).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

from . import gitsetup
from . import protocol as P
from . import state as S


def say(text: str) -> None:
    print(text, flush=True)


class Stop(Exception):
    """SIGTERM/SIGINT arrived."""


class Worker:
    def __init__(self, env: dict[str, str]) -> None:
        try:
            self.worker_id = int(env[P.ENV_WORKER_ID])
            self.feature = env[P.ENV_FEATURE]
            self.branch = env[P.ENV_BRANCH]
            self.base_branch = env[P.ENV_BASE_BRANCH]
            self.state_dir = env[P.ENV_STATE_DIR]
            self.spec_dir = env[P.ENV_SPEC_DIR]
            self.agent_command = env[P.ENV_AGENT_COMMAND]
        except KeyError as exc:
            raise SystemExit(f"worker: environment variable {exc.args[0]} is not set") from None
        self.workspace = env.get(P.ENV_WORKSPACE) or P.WORKSPACE
        self.main_git_dir = env.get(P.ENV_GIT_MAIN_DIR) or None
        self.poll_max = float(env.get(P.ENV_POLL_MAX) or 0.1)
        self.stop_grace = float(env.get(P.ENV_STOP_GRACE) or 10)
        self._killer: threading.Timer | None = None
        self.store = S.StateStore(self.state_dir, self.feature)
        self.stopping = False
        self.child: subprocess.Popen[bytes] | None = None
        self.seen_level: int | None = None
        self._graph: dict[str, Any] | None = None

    # -- signals ------------------------------------------------------------------------------------------
    def on_signal(self, signum: int, _frame: Any) -> None:
        self.stopping = True
        child = self.child
        if child is not None and child.poll() is None:
            try:
                os.killpg(child.pid, signal.SIGTERM)
            except OSError:
                pass
            # An agent that ignores SIGTERM must not keep the worker (and so a timeout or `stop`) waiting:
            # after a grace period its whole process group is killed.
            if self._killer is None:
                self._killer = threading.Timer(self.stop_grace, self._kill_group, args=(child,))
                self._killer.daemon = True
                self._killer.start()

    @staticmethod
    def _kill_group(child: subprocess.Popen[bytes]) -> None:
        if child.returncode is None:
            try:
                os.killpg(child.pid, signal.SIGKILL)
            except OSError:
                pass

    def check_stop(self) -> None:
        if self.stopping:
            raise Stop()

    # -- helpers ------------------------------------------------------------------------------------------
    def graph_task(self, task_id: str) -> dict[str, Any]:
        if self._graph is None:
            with open(os.path.join(self.spec_dir, P.GRAPH_FILE), encoding="utf-8") as fh:
                self._graph = json.load(fh)
        for task in self._graph.get("tasks", ()):
            if task.get("id") == task_id:
                return task
        raise KeyError(task_id)

    def progress(self, line: str) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        path = os.path.join(self.spec_dir, P.PROGRESS_FILE)
        with self.store.lock():
            with open(path, "a", encoding="utf-8") as fh:
                fh.write(f"- {stamp} worker {self.worker_id}: {line}\n")

    def run_shell(self, command: str, env: dict[str, str], timeout: float | None) -> int | None:
        """Run ``sh -c command`` in the workspace in its own process group; None on timeout."""
        self.check_stop()
        self.child = subprocess.Popen(
            ["sh", "-c", command], cwd=self.workspace, env=env, start_new_session=True, stdout=sys.stdout, stderr=sys.stderr
        )
        if self.stopping:  # the signal came while the child was being started: the handler missed it
            self.on_signal(signal.SIGTERM, None)
        try:
            return self.child.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(self.child.pid, signal.SIGKILL)
            except OSError:
                pass
            self.child.wait()
            return None
        finally:
            self.child = None
            sys.stdout.flush()

    def owns(self, data: dict[str, Any], task_id: str) -> bool:
        task = data["tasks"].get(task_id) or {}
        return task.get("status") == S.CLAIMED and task.get("worker") == self.worker_id

    # -- one task -----------------------------------------------------------------------------------------
    def prompt(self, task: dict[str, Any]) -> str:
        files = task.get("files") or {}
        parts = [
            f"You are mahabharatha worker {self.worker_id} on feature {self.feature!r}.",
            f"Task {task.get('id')}: {task.get('title', '')}",
            str(task.get("description", "")),
        ]
        for key in ("create", "modify", "read"):
            if files.get(key):
                parts.append(f"Files to {key}: {', '.join(files[key])}")
        verify = (task.get("verification") or {}).get("command")
        if verify:
            parts.append(f"It must pass: {verify}")
        parts.append("Work only on these files in the current directory; do not commit (the worker commits).")
        return "\n".join(p for p in parts if p)

    def do_task(self, task_id: str, attempt: int) -> int | None:
        """Run one claimed task. Returns an exit code when the worker must exit, else None."""
        task = self.graph_task(task_id)
        say(f"[worker {self.worker_id}] task {task_id} (attempt {attempt}): {task.get('title', '')}")
        fd, task_json = tempfile.mkstemp(prefix=f"task-{task_id}-", suffix=".json")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(task, fh, indent=1)
        env = dict(os.environ)
        env.update(
            {
                P.ENV_TASK_ID: task_id,
                P.ENV_TASK_JSON: task_json,
                P.ENV_TASK_PROMPT: self.prompt(task),
                P.ENV_TASK_ATTEMPT: str(attempt),
            }
        )
        try:
            code = self.run_shell(self.agent_command, env, None)
            self.check_stop()
            if code == P.EXIT_CONTEXT_LIMIT:
                with self.store.transaction() as data:
                    S.release_worker(data, self.worker_id)
                say(f"[worker {self.worker_id}] agent reached its context limit on {task_id}; exiting 2")
                self.progress(f"{task_id} context limit reached; task released")
                return P.EXIT_CONTEXT_LIMIT
            if code in (-signal.SIGKILL, 128 + signal.SIGKILL):
                # Killed outright: in a container that is the memory limit's OOM killer. Exit 137 with the task
                # still claimed, so the orchestrator applies its OOM policy (retry, then fail with advice).
                say(f"[worker {self.worker_id}] agent killed (SIGKILL, likely out of memory) on {task_id}; exiting 137")
                self.progress(f"{task_id} agent killed (SIGKILL, likely out of memory)")
                return P.EXIT_OOM
            error = "" if code == 0 else f"agent command exited {code}"
            if code == 127:  # sh: command not found
                # (The command itself is not quoted: a user may have inlined a credential in it.)
                error += " (command not found: install the program of workers.agent_command in the worker image)"
            if not error:
                verify = task.get("verification") or {}
                command = verify.get("command") or ""
                if command:
                    timeout = float(verify.get("timeout_seconds") or 300)
                    vcode = self.run_shell(command, env, timeout)
                    self.check_stop()
                    if vcode is None:
                        error = f"verification timed out after {timeout:g} s: {command}"
                    elif vcode != 0:
                        error = f"verification failed (exit {vcode}): {command}"
        finally:
            os.unlink(task_json)
        title = task.get("title") or task_id
        if error:
            failed_ref = P.failed_ref(self.feature, task_id)
            parked = gitsetup.park_failed_work(self.workspace, failed_ref, f"{task_id} (failed): {title}")
            if parked:
                error += f" (work kept at {failed_ref})"
            with self.store.transaction() as data:
                if self.owns(data, task_id):
                    S.finish_task(data, task_id, S.FAILED, error=error)
            say(f"[worker {self.worker_id}] task {task_id} FAILED: {error}")
            self.progress(f"{task_id} failed: {error}")
            return None
        commit = gitsetup.commit_all(self.workspace, f"{task_id}: {title}\n\nmahabharatha worker {self.worker_id}, feature {self.feature}") or ""
        with self.store.transaction() as data:
            if self.owns(data, task_id):  # not taken away meanwhile (e.g. failed by the worker timeout)
                S.finish_task(data, task_id, S.DONE, commit=commit)
        say(f"[worker {self.worker_id}] task {task_id} done{' (' + commit[:10] + ')' if commit else ' (no changes)'}")
        self.progress(f"{task_id} done{' ' + commit[:10] if commit else ''}")
        return None

    # -- the loop -----------------------------------------------------------------------------------------
    def wait_for_change(self, seq: int) -> None:
        """Block until the state was written after write number ``seq`` (or a stop arrives), polling with a
        growing delay. ``seq`` is read *before* the state was last examined, so no update is missed."""
        delay = 0.02
        while self.store.seq() == seq:
            self.check_stop()
            time.sleep(delay)
            delay = min(delay * 2, self.poll_max)

    def run(self) -> int:
        try:
            gitsetup.check_worktree(self.workspace, self.branch, self.main_git_dir)
        except gitsetup.GitSetupError as exc:
            say(f"[worker {self.worker_id}] git setup failed: {exc}")
            return P.EXIT_ERROR
        # Uncommitted leftovers of a task this worker was stopped or killed in: keep them on a ref of their
        # own (never lost, never mixed into the next task's commit), and start from a clean branch.
        parked = gitsetup.park_failed_work(
            self.workspace,
            f"{P.interrupted_ref_prefix(self.feature, self.worker_id)}{int(time.time())}",
            f"interrupted work of worker {self.worker_id} (uncommitted when it stopped)",
        )
        if parked:
            say(f"[worker {self.worker_id}] kept uncommitted leftovers of an interrupted task at {parked[:10]} "
                f"({P.interrupted_ref_prefix(self.feature, self.worker_id)}*)")
        if not self.store.exists():
            say(f"[worker {self.worker_id}] no state at {self.store.path}: the orchestrator starts workers")
            return P.EXIT_ERROR
        with self.store.transaction() as data:
            S.release_worker(data, self.worker_id)  # claims left by an earlier run of this worker
            self.seen_level = data["level"]
        # A resumed or restarted worker may have missed level merges: start from the merged base.
        gitsetup.merge_base_branch(self.workspace, self.base_branch)
        say(P.ready_line(self.worker_id))
        while True:
            self.check_stop()
            data = self.store.read() or {}
            seq = int(data.get("seq", 0))
            status = data.get("status")
            if status in S.FINAL:
                say(f"[worker {self.worker_id}] run {status}; exiting")
                if status == "done":
                    return P.EXIT_DONE
                return P.EXIT_STOPPED if status == "stopped" else P.EXIT_BLOCKED
            if data.get("level") != self.seen_level:
                gitsetup.merge_base_branch(self.workspace, self.base_branch)
                self.seen_level = data.get("level")
                say(f"[worker {self.worker_id}] level {self.seen_level}: merged {self.base_branch}")
            with self.store.transaction() as data:
                if data.get("level") != self.seen_level or data.get("seq") != seq:
                    continue  # changed since we looked: look again
                task_id = S.claim_next(data, self.worker_id)
                attempt = data["tasks"][task_id]["attempts"] if task_id else 0
            if task_id is None:
                self.wait_for_change(seq)
                continue
            code = self.do_task(task_id, attempt)
            if code is not None:
                return code


def main() -> int:
    worker = Worker(dict(os.environ))
    signal.signal(signal.SIGTERM, worker.on_signal)
    signal.signal(signal.SIGINT, worker.on_signal)
    try:
        return worker.run()
    except Stop:
        try:
            with worker.store.transaction() as data:
                released = S.release_worker(data, worker.worker_id)
            if released:
                worker.progress(f"stopped; {', '.join(released)} released")
        except Exception as exc:  # noqa: BLE001 - exiting anyway; say why the release failed
            say(f"[worker {worker.worker_id}] could not release tasks: {exc}")
        say(f"[worker {worker.worker_id}] stopped by signal")
        return P.EXIT_STOPPED
    except gitsetup.GitSetupError as exc:
        say(f"[worker {worker.worker_id}] git error: {exc}")
        return P.EXIT_ERROR
    except Exception as exc:  # noqa: BLE001 - exit 1 with one line, the host fails the task
        say(f"[worker {worker.worker_id}] error: {type(exc).__name__}: {exc}")
        return P.EXIT_ERROR
    finally:
        # Leaving: further stop signals (two stoppers often signal at once) must not kill the interpreter
        # while it shuts down (it restores the default handlers then, turning our exit code into 143).
        # An ignored signal stays ignored through shutdown.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)


if __name__ == "__main__":
    sys.exit(main())
