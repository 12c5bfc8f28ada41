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

import collections
import contextlib
import json
import os
import queue
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

from . import gitsetup
from . import protocol as P
from .agent_stream import StreamParser
from .channel import Channel, ChannelError

# US dollars per million tokens (input, output, cache write, cache read), to estimate a task's cost while it
# runs (Claude Code reports its own figure only at the end): the per-task budget must act before the end.
_PRICES = {"opus": (15.0, 75.0, 18.75, 1.5), "sonnet": (3.0, 15.0, 3.75, 0.3), "haiku": (1.0, 5.0, 1.25, 0.1)}


def estimate_cost(usage: dict[str, Any]) -> float:
    """Claude Code's own total when it gave one, else an estimate from the tokens (sonnet prices when the model
    is unknown)."""
    if isinstance(usage.get("cost_usd"), (int, float)):
        return float(usage["cost_usd"])
    model = str(usage.get("model") or "")
    price = next((p for name, p in _PRICES.items() if name in model), _PRICES["sonnet"])
    tokens = (usage.get("input_tokens", 0), usage.get("output_tokens", 0), usage.get("cache_creation_tokens", 0),
              usage.get("cache_read_tokens", 0))
    return sum(t * p for t, p in zip(tokens, price)) / 1e6


_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")
_WRAPPERS = frozenset({"exec", "command", "env", "nice", "nohup", "time"})


def _last_command(command: str) -> list[str]:
    """The words of the command that runs last in ``command`` (after its last ``;``, ``&&``, ``||``, ``&`` or
    newline), from its program on: leading ``NAME=value`` assignments and wrappers (``exec``, ``env`` and its
    options, ...) are skipped. Empty when that command is a pipeline, a subshell or ends in a comment (words
    appended to the line would not reach its program) or the line does not parse."""
    lexer = shlex.shlex(command.strip().replace("\n", " ; "), posix=True, punctuation_chars=";&|()<>")
    lexer.whitespace_split = True
    lexer.commenters = ""  # a comment in the last command is refused below, not skipped
    try:
        tokens = list(lexer)
    except ValueError:
        return []
    last: list[str] = []
    for token in tokens:
        if token in (";", "&", "&&", "||", ";;"):
            last = []
        else:
            last.append(token)
    if any(t in ("|", "|&", "(", ")") or t.startswith("#") for t in last):
        return []
    words = list(last)
    while words:
        word = words[0]
        if _ASSIGNMENT.match(word):
            words.pop(0)
        elif word in _WRAPPERS:
            words.pop(0)
            while word == "env" and words and words[0].startswith("-"):
                option = words.pop(0)
                if option in ("-u", "--unset", "-C", "--chdir", "-S", "--split-string") and words:
                    words.pop(0)
        else:
            break
    return words


def is_claude(command: str) -> bool:
    """Whether the agent command runs Claude Code: its last command's program is ``claude`` (``claude -p``,
    ``cd app && claude -p``, ``ANTHROPIC_MODEL=x claude -p``, ``/usr/local/bin/claude -p``); the worker then
    appends Claude Code's own options to the command line, so they reach that program."""
    words = _last_command(command)
    return bool(words) and os.path.basename(words[0]) == "claude"


def claude_command(command: str, model: str | None) -> str:
    """The agent command with what the worker needs from Claude Code: the stream and, when set, the model."""
    words = _last_command(command)
    extra = []
    if not any(w == "--output-format" or w.startswith("--output-format=") for w in words):
        extra += ["--output-format", "stream-json", "--verbose"]
    elif "--verbose" not in words:
        extra.append("--verbose")
    if model and not any(w == "--model" or w.startswith("--model=") for w in words):
        extra += ["--model", model]
    return " ".join([command.rstrip(), *map(shlex.quote, extra)])


class AgentRun:
    """How one agent run ended: exit code, the last lines it printed, its usage, and whether the worker stopped
    it (``"context"``: the context threshold, ``"budget"``: the per-task cost budget)."""

    def __init__(self) -> None:
        self.code: int | None = None
        self.tail: collections.deque[str] = collections.deque(maxlen=20)
        self.parser: StreamParser | None = None
        self.stopped_for: str | None = None

    def usage(self) -> dict[str, Any] | None:
        """What the run used, or None when it used nothing (not Claude Code, or it never reached the API: a
        task that cost nothing shows no ``0 in, 0 out, $0.00``)."""
        if self.parser is None:
            return None
        usage = self.parser.usage.to_dict()
        counted = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_creation_tokens", "cost_usd")
        return usage if any(usage.get(key) for key in counted) else None

    def reason(self) -> str:
        """The agent's own one-line reason for failing (Claude Code's result, else its last line)."""
        if self.parser is not None:
            text = self.parser.failure_reason(self.code, self.tail)
            if text:
                return text
        last = next((line.strip() for line in reversed(self.tail) if line.strip()), "")
        return last[:300]


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
        self.model = env.get(P.ENV_MODEL) or None
        self.max_cost = float(env.get(P.ENV_MAX_COST_PER_TASK) or 0) or None
        self.context_threshold = float(env.get(P.ENV_CONTEXT_THRESHOLD) or 70)
        self.context_window = int(env.get(P.ENV_CONTEXT_WINDOW) or 200_000)
        self.spec_dir = env.get(P.ENV_SPEC_DIR) or ""
        # Remote transport: nothing is mounted; history and spec arrive over the TCP channel.
        self.remote = self.channel_path.startswith("tcp://")
        # In its own container (never on the host: subprocess mode sets the workspace and drops the flag) the
        # worker may end every process but itself and init after each task: nothing a task started outlives it.
        self.in_container = env.get(P.ENV_IN_CONTAINER) == "1" and not env.get(P.ENV_WORKSPACE)
        self.in_flight = False  # a request is on its way: its answer would be taken for the next one's
        self._killer: threading.Timer | None = None
        self.stopping = False
        self.waiting = False  # blocked on the channel: a stop signal ends the wait at once
        self.child: subprocess.Popen[bytes] | None = None
        self.channel: Channel | None = None
        self.task_id: str | None = None
        self.task_start: str | None = None  # the start commit of the task being worked on, else None

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
            self.in_flight = True
            reply = self.channel.request(op, blob, **fields)
            self.in_flight = False
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
            self.reap_strays()
            sys.stdout.flush()

    def prompt(self, task: dict[str, Any], context: dict[str, Any] | None = None, checkpoint: bool = False) -> str:
        context = context or {}
        files = task.get("files") or {}
        parts = [
            f"You are mahabharatha worker {self.worker_id} on feature {self.feature!r}.",
            f"Task {task.get('id')}: {task.get('title', '')}",
            str(task.get("description", "")),
        ]
        for key in ("create", "modify", "read"):
            if files.get(key):
                parts.append(f"Files to {key}: {', '.join(map(str, files[key]))}")
        verify = (task.get("verification") or {}).get("command")
        if verify:
            parts.append(f"It must pass: {verify}")
        deps = context.get("dependencies") or []
        if deps:
            parts.append("Done before this task (its dependencies, already in the files here):")
            for dep in deps:
                made = ", ".join(map(str, dep.get("files") or ())) or "no files listed"
                parts.append(f"- {dep.get('id')}: {dep.get('subject') or dep.get('title') or ''} ({made})")
        specs = [name for name in P.SPEC_FILES if self.spec_dir and os.path.isfile(os.path.join(self.spec_dir, name))]
        if specs:
            parts.append("The feature's spec: " + ", ".join(os.path.join(self.spec_dir, n) for n in specs))
        if checkpoint:
            parts.append(
                "An earlier attempt at this task ran out of context; its work so far is already in the files here "
                "(a checkpoint). Continue from it: check what is done, then finish the task."
            )
        parts.append("Work only on these files in the current directory; do not commit (the worker commits).")
        return "\n".join(p for p in parts if p)

    def run_agent(self, env: dict[str, str], prompt_path: str) -> AgentRun:
        """Run the agent with the prompt on stdin, its output read line by line: readable log lines (Claude
        Code's stream turned into text), the last lines kept for the failure reason, the context and the cost
        watched. The agent's process group is killed when it ends (nothing of a task outlives it)."""
        self.check_stop()
        run = AgentRun()
        command = self.agent_command
        if is_claude(command):
            command = claude_command(command, self.model)
            run.parser = StreamParser(self.context_window)
        with open(prompt_path, "rb") as stdin:
            child = subprocess.Popen(
                ["sh", "-c", command], cwd=self.workspace, env=env, start_new_session=True, stdin=stdin,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            )
        self.child = child
        if self.stopping:
            self.on_signal(signal.SIGTERM, None)
        lines: queue.Queue[bytes | None] = queue.Queue()

        def pump() -> None:
            assert child.stdout is not None
            for raw in iter(child.stdout.readline, b""):
                lines.put(raw)
            lines.put(None)

        threading.Thread(target=pump, daemon=True, name="mahabharatha-agent-output").start()
        ended_at: float | None = None
        try:
            while True:
                try:
                    raw = lines.get(timeout=0.2)
                except queue.Empty:
                    if child.poll() is None:
                        continue
                    ended_at = ended_at or time.monotonic()
                    if time.monotonic() - ended_at > 1.0:  # a leftover process holds the pipe: stop reading
                        break
                    continue
                if raw is None:
                    break
                text = raw.decode("utf-8", "replace").rstrip("\r\n")
                run.tail.append(text)
                shown = run.parser.feed(text) if run.parser is not None else [text]
                for line in shown:
                    say(line)
                if run.stopped_for is None and run.parser is not None:
                    if run.parser.over(self.context_threshold) and not run.parser.result:
                        run.stopped_for = "context"
                    elif self.max_cost and estimate_cost(run.parser.usage.to_dict()) >= self.max_cost:
                        run.stopped_for = "budget"
                    if run.stopped_for:
                        self._terminate(child)
            run.code = child.wait()
        finally:
            self.child = None
            try:
                os.killpg(child.pid, signal.SIGKILL)
            except OSError:
                pass
            self.reap_strays()
            sys.stdout.flush()
        return run

    def reap_strays(self) -> None:
        """In a container: SIGKILL every process but this one and init (a task's `setsid` leftovers included),
        so nothing the agent started can change the workspace during the next task."""
        if self.in_container:
            try:
                os.kill(-1, signal.SIGKILL)
            except OSError:
                pass

    def _terminate(self, child: subprocess.Popen[bytes]) -> None:
        """Stop the agent at once (SIGTERM to its group, SIGKILL after the grace period)."""
        try:
            os.killpg(child.pid, signal.SIGTERM)
        except OSError:
            return
        timer = threading.Timer(self.stop_grace, self._kill_group, args=(child,))
        timer.daemon = True
        timer.start()

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
        message = f"interrupted work of worker {self.worker_id} (uncommitted when it stopped)"
        try:
            leftover = repo.snapshot(parent, message)
        except gitsetup.TooBig as exc:
            say(f"[worker {self.worker_id}] dropping what cannot be kept of an interrupted task: {exc}")
            repo.drop_oversized()
            leftover = repo.snapshot(parent, message)
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

    def keep_before_leaving(self, start: str) -> None:
        """A remote worker leaving mid-task (stopped, or its agent OOM-killed): its workspace goes with its
        container, so keep the task's uncommitted work now. (A local worker finds it in its workspace when it
        starts again.) Best effort: the exit it is leaving with matters more."""
        if self.remote:
            with contextlib.suppress(Exception):
                self.keep_leftovers(start)

    # -- one task -----------------------------------------------------------------------------------------
    def do_task(self, claim: dict[str, Any]) -> int | None:
        """Run one claimed task. Returns an exit code when the worker must exit, else None."""
        self.task_start = str(claim["start"])
        try:
            return self._do_task(claim)
        except Stop:
            if not self.in_flight:  # (an answer still due on the channel would be taken for the park's)
                self.keep_before_leaving(self.task_start)
            raise
        finally:
            self.task_start = None

    def _do_task(self, claim: dict[str, Any]) -> int | None:
        task, attempt, start = claim["task"], int(claim["attempt"]), str(claim["start"])
        task_id = str(task.get("id"))
        self.task_id = task_id
        repo = self.repo
        repo.checkout(start)
        checkpoint = str(claim.get("checkpoint") or "")
        if checkpoint and not repo.apply(checkpoint):
            say(f"[worker {self.worker_id}] task {task_id}: the checkpoint {checkpoint[:10]} does not apply here; starting over")
            repo.checkout(start)
            checkpoint = ""
        say(f"[worker {self.worker_id}] task {task_id} (attempt {attempt}): {task.get('title', '')}"
            + (f" (continuing from checkpoint {checkpoint[:10]})" if checkpoint else ""))
        prompt = self.prompt(task, claim.get("context"), checkpoint=bool(checkpoint))
        scratch = tempfile.mkdtemp(prefix=f"task-{task_id}-")
        task_json = os.path.join(scratch, "task.json")
        prompt_file = os.path.join(scratch, "prompt.txt")
        with open(task_json, "w", encoding="utf-8") as fh:
            json.dump(task, fh, indent=1)
        with open(prompt_file, "w", encoding="utf-8") as fh:
            fh.write(prompt)
        env = dict(os.environ)
        env.pop(P.ENV_CHANNEL, None)
        env.pop(P.ENV_CHANNEL_TOKEN, None)
        env.update({
            P.ENV_TASK_ID: task_id, P.ENV_TASK_JSON: task_json, P.ENV_TASK_PROMPT_FILE: prompt_file,
            P.ENV_TASK_ATTEMPT: str(attempt),
        })
        if len(prompt.encode("utf-8")) < P.PROMPT_ENV_LIMIT:
            env[P.ENV_TASK_PROMPT] = prompt
        else:
            env.pop(P.ENV_TASK_PROMPT, None)
        usage: dict[str, Any] | None = None
        try:
            run = self.run_agent(env, prompt_file)
            usage = run.usage()
            code = run.code
            self.check_stop()
            if run.stopped_for == "context" or code == P.EXIT_CONTEXT_LIMIT:
                return self.checkpoint(task_id, start, run, usage)
            if code in (-signal.SIGKILL, 128 + signal.SIGKILL) and run.stopped_for is None:
                # Killed outright: in a container that is the memory limit's OOM killer. Exit 137 with the task
                # still claimed, so the orchestrator applies its OOM policy (retry, then fail with advice).
                say(f"[worker {self.worker_id}] agent killed (SIGKILL, likely out of memory) on {task_id}; exiting 137")
                self.keep_before_leaving(start)
                return P.EXIT_OOM
            error = ""
            if run.stopped_for == "budget":
                spent = estimate_cost(usage or {})
                error = (f"cost budget reached: {P.format_money(spent)} of workers.max_cost_usd_per_task="
                         f"{P.format_money(self.max_cost)}; the agent was stopped")
            elif run.parser is not None and run.parser.prompt_too_long:
                error = f"the prompt is too long for the model: {run.reason()}"
            elif code != 0 or (run.parser is not None and run.parser.is_error):
                error = f"agent command exited {code}"
                if code == 127:  # sh: command not found
                    # (The command itself is not quoted: a user may have inlined a credential in it.)
                    error += " (command not found: install the program of workers.agent_command in the worker image)"
                reason = run.reason()
                if reason:
                    error += f": {reason}"
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
            for path in (task_json, prompt_file):
                try:
                    os.unlink(path)
                except OSError:
                    pass
            try:
                os.rmdir(scratch)
            except OSError:
                pass
        title = task.get("title") or task_id
        extra = {"usage": usage} if usage else {}
        commit: str | None = None
        if not error:
            try:
                commit = repo.snapshot(start, f"{task_id}: {title}\n\nmahabharatha worker {self.worker_id}, feature {self.feature}")
            except gitsetup.TooBig as exc:
                error = str(exc)
        if error:
            try:
                parked = repo.snapshot(start, f"{task_id} (failed): {title}")
            except gitsetup.TooBig:
                dropped = repo.drop_oversized()
                error += f" (not kept, too big: {', '.join(dropped)[:200]})"
                parked = repo.snapshot(start, f"{task_id} (failed): {title}")
            blob = repo.bundle(P.PARK_REF, parked, start) if parked else None
            reply = self.ask("finish", blob, task=task_id, status="failed", error=error, commit=parked or "", **extra)
            repo.checkout(start)
            shown = reply.get("error") or error
            say(f"[worker {self.worker_id}] task {task_id} FAILED: {shown}")
            return None
        blob = repo.bundle(repo.ref, commit, start) if commit else None
        reply = self.ask("finish", blob, task=task_id, status="done", commit=commit or "", **extra)
        if reply.get("status") == "done":
            repo.checkout(commit or start, known_clean=bool(commit))
            say(f"[worker {self.worker_id}] task {task_id} done{' (' + commit[:10] + ')' if commit else ' (no changes)'}")
        else:  # the orchestrator rejected the result (or the task was taken away meanwhile)
            repo.checkout(start)
            say(f"[worker {self.worker_id}] task {task_id} FAILED: {reply.get('error', 'rejected')}")
        self.task_id = None
        return None

    def checkpoint(self, task_id: str, start: str, run: AgentRun, usage: dict[str, Any] | None) -> int:
        """The agent reached its context limit: keep the work so far as the task's checkpoint (the next attempt
        continues from it), give the task back and exit 2 (the orchestrator restarts this worker)."""
        why = (
            f"context at {run.parser.context_percent:.0f}% of {run.parser.context_window} tokens "
            f"(workers.context_threshold_percent={self.context_threshold:g})"
            if run.stopped_for == "context" and run.parser is not None else "the agent reported its context limit (exit 2)"
        )
        try:
            kept = self.repo.snapshot(start, f"{task_id} (checkpoint): work so far")
        except gitsetup.TooBig as exc:
            say(f"[worker {self.worker_id}] {task_id}: no checkpoint: {exc}")
            kept = None
        fields: dict[str, Any] = {"task": task_id, "commit": kept or "", "reason": why}
        if usage:
            fields["usage"] = usage
        reply = self.ask("checkpoint", self.repo.bundle(P.PARK_REF, kept, start) if kept else None, **fields)
        self.repo.checkout(start)
        say(f"[worker {self.worker_id}] {task_id}: {why}; "
            + (f"work so far kept at {reply.get('ref')}; " if kept else "")
            + "exiting 2 to continue with a fresh context")
        return P.EXIT_CONTEXT_LIMIT

    # -- the loop -----------------------------------------------------------------------------------------
    @staticmethod
    def seed_claude_home() -> None:
        """Write the copy of the user's Claude login into this container's own home: credentials, and a
        ``~/.claude.json`` with onboarding done. The host's files are never mounted, so what Claude Code writes
        (token refreshes, session transcripts, settings) stays in this container."""
        seed = os.environ.pop(P.ENV_CLAUDE_SEED, None)
        if not seed:
            return
        try:
            data = json.loads(seed)
            home = os.environ.get("HOME") or P.WORKER_HOME
            os.makedirs(os.path.join(home, ".claude"), mode=0o700, exist_ok=True)
            fd = os.open(os.path.join(home, ".claude", ".credentials.json"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(str(data["credentials"]))
            config = os.path.join(home, ".claude.json")
            if not os.path.exists(config):
                body: dict[str, Any] = {"hasCompletedOnboarding": True, "bypassPermissionsModeAccepted": True}
                if isinstance(data.get("account"), dict):
                    body["oauthAccount"] = data["account"]
                with open(config, "w", encoding="utf-8") as fh:
                    json.dump(body, fh)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            say(f"could not copy the Claude login into the container's home: {type(exc).__name__}")

    def set_up_remote(self, hello: dict[str, Any]) -> None:
        """Where nothing is mounted: the workspace's ``.git`` file (pointing at the private git directory) and
        the feature's spec files from the hello reply. (Written by the worker; the agent may change them,
        which only affects its own view: the worker passes its git directory explicitly.)"""
        dotgit = os.path.join(self.workspace, ".git")
        if not os.path.lexists(dotgit):
            with open(dotgit, "w", encoding="utf-8") as fh:
                fh.write(f"gitdir: {self.repo.git_dir}\n")
        spec = hello.get("spec") if isinstance(hello.get("spec"), dict) else {}
        if spec and self.spec_dir:
            os.makedirs(self.spec_dir, exist_ok=True)
            for name, text in spec.items():
                if name in P.SPEC_FILES and isinstance(text, str):
                    with open(os.path.join(self.spec_dir, name), "w", encoding="utf-8") as fh:
                        fh.write(text)

    def run(self) -> int:
        self.seed_claude_home()
        try:
            self.channel = Channel(self.channel_path)
        except ChannelError as exc:
            say(f"[worker {self.worker_id}] {exc}: the orchestrator starts workers (mahabharatha kurukshetra)")
            return P.EXIT_ERROR
        hello = self.ask("hello")
        start = str(hello["start"])
        try:
            if self.remote:
                self.set_up_remote(hello)
            self.repo.ensure()
            if self.remote and isinstance(hello.get("_blob"), bytes):
                self.repo.receive(hello["_blob"])
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
            if isinstance(reply.get("_blob"), bytes):
                self.repo.receive(reply.pop("_blob"))
            final = reply.get("final")
            if final:
                say(f"[worker {self.worker_id}] run {final}; exiting")
                if final == "done":
                    return P.EXIT_DONE
                return P.EXIT_STOPPED if final == "stopped" else P.EXIT_BLOCKED
            code = self.do_task(reply)
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
            if worker.channel is not None and worker.in_flight:
                # The interrupted request's answer is still to come on this connection: release on a new one.
                worker.channel.close()
                worker.channel = Channel(worker.channel_path, timeout=10)
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
