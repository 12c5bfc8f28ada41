"""The worker loop (``python3 -m mahabharatha_worker`` in a container, ``python -m mahabharatha.worker`` on the host).

1. Say hello on the channel; the orchestrator answers with the commit this worker's branch stands on. Set up
   the private repository (objects, index and refs of its own; the user's objects as alternates). Leftovers
   of an interrupted task in the workspace are kept: sent as a bundle the orchestrator stores under
   ``refs/mahabharatha/interrupted/...``. Then check out that commit and print the ready line.
2. ``claim`` a task (the orchestrator answers when there is one, or when the run ends: no polling). The reply
   carries the task as validated at the start of the run and the commit to start it from.
3. Run ``$MAHABHARATHA_AGENT_COMMAND`` (``sh -c``, in the workspace) with the task in the environment, then the
   task's verification command (shell, with its timeout).
4. Commit the work on top of the start commit and ``finish`` the task with a bundle of that commit; the
   orchestrator verifies it (only this worker's branch, descending from the start commit, files no other
   task of the level owns) and imports it. A failed task's work goes the same way to
   ``refs/mahabharatha/failed/<feature>/<task>``: kept, never merged.

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
from .channel import Channel, ChannelError


def say(text: str) -> None:
    print(text, flush=True)


class Stop(Exception):
    """SIGTERM/SIGINT arrived."""


class Refused(Exception):
    """The orchestrator answered a request with an error (one line)."""


class Worker:
    def __init__(self, env: dict[str, str]) -> None:
        try:
            self.worker_id = int(env[P.ENV_WORKER_ID])
            self.feature = env[P.ENV_FEATURE]
            self.branch = env[P.ENV_BRANCH]
            self.channel_path = env[P.ENV_CHANNEL]
            self.agent_command = env[P.ENV_AGENT_COMMAND]
        except KeyError as exc:
            raise SystemExit(f"worker: environment variable {exc.args[0]} is not set") from None
        self.workspace = env.get(P.ENV_WORKSPACE) or P.WORKSPACE
        git_dir = env.get(P.ENV_GIT_WORKTREE_DIR) or P.GIT_WORKTREE_DIR
        main_git = env.get(P.ENV_GIT_MAIN_DIR) or ""
        alternates = os.path.join(main_git, "objects") if main_git else None
        self.repo = gitsetup.Repo(self.workspace, git_dir, self.branch, alternates)
        self.stop_grace = float(env.get(P.ENV_STOP_GRACE) or 10)
        self._killer: threading.Timer | None = None
        self.stopping = False
        self.waiting = False  # blocked on the channel: a stop signal ends the wait at once
        self.child: subprocess.Popen[bytes] | None = None
        self.channel: Channel | None = None
        self.task_id: str | None = None

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
        elif self.waiting:
            raise Stop()

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

    # -- the channel --------------------------------------------------------------------------------------
    def ask(self, op: str, blob: bytes | None = None, *, wait: bool = False, **fields: Any) -> dict[str, Any]:
        """One request to the orchestrator; its reply. A refusal (``ok: false``) raises :class:`Refused`."""
        assert self.channel is not None
        self.waiting = wait
        try:
            if wait:
                self.check_stop()
            reply = self.channel.request(op, blob, **fields)
        finally:
            self.waiting = False
        if not reply.get("ok"):
            raise Refused(str(reply.get("error") or f"{op} refused"))
        return reply

    def progress(self, line: str) -> None:
        try:
            self.ask("progress", line=line[: P.MAX_PROGRESS_CHARS])
        except (Refused, ChannelError):
            pass  # a note, not the work

    # -- helpers ------------------------------------------------------------------------------------------
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

    def _workspace_empty(self) -> bool:
        skip = {".git", ".git-worktree", ".mahabharatha"}
        try:
            return not [n for n in os.listdir(self.workspace) if n not in skip]
        except OSError:
            return True

    def keep_leftovers(self, start: str) -> None:
        """Uncommitted work of a task this worker was stopped or killed in: keep it on a ref of its own (never
        lost, never mixed into the next task), so the next task starts clean."""
        repo = self.repo
        mine = repo.git("rev-parse", "--verify", "--quiet", repo.ref, check=False).stdout.strip()
        if mine and repo.has(mine):
            parent = mine
        elif self._workspace_empty():
            return
        else:
            parent = start
        leftover = repo.snapshot(parent, f"interrupted work of worker {self.worker_id} (uncommitted when it stopped)")
        if leftover is None and parent != start and not repo.git(
            "merge-base", "--is-ancestor", parent, start, check=False
        ).returncode == 0:
            leftover = parent  # committed here but never imported (the worker died before finishing)
        if leftover is None:
            return
        try:
            reply = self.ask("park", repo.bundle(P.PARK_REF, leftover, start), kind="interrupted", commit=leftover)
        except Refused as exc:
            say(f"[worker {self.worker_id}] could not keep the leftovers of an interrupted task: {exc}")
            return
        say(f"[worker {self.worker_id}] kept uncommitted leftovers of an interrupted task at {leftover[:10]} "
            f"({reply.get('ref', 'refs/mahabharatha/interrupted/...')})")

    # -- one task -----------------------------------------------------------------------------------------
    def do_task(self, task: dict[str, Any], attempt: int, start: str) -> int | None:
        """Run one claimed task from ``start``. Returns an exit code when the worker must exit, else None."""
        task_id = str(task.get("id"))
        self.task_id = task_id
        self.repo.checkout(start)
        say(f"[worker {self.worker_id}] task {task_id} (attempt {attempt}): {task.get('title', '')}")
        fd, task_json = tempfile.mkstemp(prefix=f"task-{task_id}-", suffix=".json")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(task, fh, indent=1)
        env = dict(os.environ)
        env.pop(P.ENV_CHANNEL, None)
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
                self.ask("release")
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
        repo = self.repo
        if error:
            parked = repo.snapshot(start, f"{task_id} (failed): {title}")
            blob = repo.bundle(P.PARK_REF, parked, start) if parked else None
            reply = self.ask("finish", blob, task=task_id, status="failed", error=error, commit=parked or "")
            repo.checkout(start)
            shown = reply.get("error") or error
            say(f"[worker {self.worker_id}] task {task_id} FAILED: {shown}")
            return None
        commit = repo.snapshot(start, f"{task_id}: {title}\n\nmahabharatha worker {self.worker_id}, feature {self.feature}")
        blob = repo.bundle(repo.ref, commit, start) if commit else None
        reply = self.ask("finish", blob, task=task_id, status="done", commit=commit or "")
        if reply.get("status") == "done":
            repo.checkout(commit or start)
            say(f"[worker {self.worker_id}] task {task_id} done{' (' + commit[:10] + ')' if commit else ' (no changes)'}")
        else:  # the orchestrator rejected the result (or the task was taken away meanwhile)
            repo.checkout(start)
            say(f"[worker {self.worker_id}] task {task_id} FAILED: {reply.get('error', 'rejected')}")
        self.task_id = None
        return None

    # -- the loop -----------------------------------------------------------------------------------------
    def run(self) -> int:
        try:
            self.channel = Channel(self.channel_path)
        except ChannelError as exc:
            say(f"[worker {self.worker_id}] {exc}: the orchestrator starts workers (mahabharatha kurukshetra)")
            return P.EXIT_ERROR
        hello = self.ask("hello")
        start = str(hello["start"])
        try:
            self.repo.ensure()
            if not self.repo.has(start):
                raise gitsetup.GitSetupError(
                    f"the worker's repository cannot see commit {start[:10]} of the run (is /repo/.git mounted?)"
                )
            self.keep_leftovers(start)
            self.repo.checkout(start)
        except gitsetup.GitSetupError as exc:
            say(f"[worker {self.worker_id}] git setup failed: {exc}")
            return P.EXIT_ERROR
        say(P.ready_line(self.worker_id))
        while True:
            reply = self.ask("claim", wait=True)
            final = reply.get("final")
            if final:
                say(f"[worker {self.worker_id}] run {final}; exiting")
                if final == "done":
                    return P.EXIT_DONE
                return P.EXIT_STOPPED if final == "stopped" else P.EXIT_BLOCKED
            code = self.do_task(reply["task"], int(reply["attempt"]), str(reply["start"]))
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
            if worker.channel is not None:
                released = worker.channel.request("release").get("released") or []
                if released:
                    say(f"[worker {worker.worker_id}] stopped; {', '.join(map(str, released))} released")
        except Exception as exc:  # noqa: BLE001 - exiting anyway; say why the release failed
            say(f"[worker {worker.worker_id}] could not release tasks: {exc}")
        say(f"[worker {worker.worker_id}] stopped by signal")
        return P.EXIT_STOPPED
    except gitsetup.GitSetupError as exc:
        say(f"[worker {worker.worker_id}] git error: {exc}")
        return P.EXIT_ERROR
    except ChannelError as exc:
        say(f"[worker {worker.worker_id}] {exc}")
        return P.EXIT_ERROR
    except Refused as exc:
        say(f"[worker {worker.worker_id}] the orchestrator refused: {exc}")
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
