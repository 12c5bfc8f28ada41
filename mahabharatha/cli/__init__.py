"""The ``mahabharatha`` command line.

This module only parses arguments and dispatches; each command lives in a small module of this package,
imported lazily so ``--help`` and the dry-run stay fast. Every :class:`~mahabharatha.errors.MahabharathaError`
becomes one line on stderr and its exit code: users never see a traceback for a mistake they can fix.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["main", "build_parser"]

# command name -> "module:function" inside mahabharatha.cli
_HANDLERS = {
    "kurukshetra": "launch:cmd_kurukshetra",
    "demo": "launch:cmd_demo",
    "status": "ops:cmd_status",
    "logs": "ops:cmd_logs",
    "events": "watch:cmd_events",
    "diff": "review:cmd_diff",
    "report": "report:cmd_report",
    "approve": "review:cmd_approve",
    "reject": "review:cmd_reject",
    "retry": "ops:cmd_retry",
    "stop": "cleanup:cmd_stop",
    "cleanup": "cleanup:cmd_cleanup",
    "install-commands": "ops:cmd_install_commands",
    "build-image": "cleanup:cmd_build_image",
    "render": "dryrun:cmd_render",
}

RENDER_FORMATS = ("text", "json", "docker", "swarm", "k8s")


def _int_at_least(minimum: int, words: str) -> Callable[[str], int]:
    """An argparse ``type`` for whole numbers >= ``minimum`` (``words`` says the bound in the message)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be {words}, got {value}")
        return value

    return parse


_positive_int = _int_at_least(1, "at least 1")
_non_negative_int = _int_at_least(0, "0 or more")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not 0 <= value <= 86_400:  # also rejects nan and inf
        raise argparse.ArgumentTypeError(f"must be between 0 and 86400 seconds, got {text}")
    return value


def _repo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repo", default=".", help="repository root (default: current directory)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mahabharatha",
        description="Run parallel coding-agent workers in Docker containers, level by level through a task graph.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("kurukshetra", help="plan and launch workers for a feature")
    _repo_args(p)
    p.add_argument("--workers", type=_positive_int, help="number of workers (capped by workers.max_concurrent)")
    p.add_argument("--mode", choices=("container", "subprocess", "swarm", "kubernetes"), help="launcher type (overrides workers.launcher_type)")
    p.add_argument("--feature", help="feature name (default: contents of .gsd/.current-feature)")
    p.add_argument("--dry-run", action="store_true", help="print the launch plan and touch nothing")
    p.add_argument("--json", action="store_true", help="with --dry-run: the plan as JSON; without: the final result as one JSON document on stdout (progress on stderr)")
    p.add_argument(
        "--render", choices=RENDER_FORMATS,
        help="with --dry-run: how to print the plan: text (default: the plan and docker run lines), json (like "
        "--json), docker (only the docker run lines) or k8s (Kubernetes Secret + Jobs as YAML; needs "
        "workers.transport: remote)",
    )
    p.add_argument("--namespace", default="default", help="with --render k8s: the Kubernetes namespace (default: default)")
    p.add_argument("--keep-failed", action="store_true", help="on a failed, stopped or interrupted launch or run, keep the containers for debugging")

    p = sub.add_parser("render", help="print the launch plan in one form (like kurukshetra --dry-run --render FORMAT)")
    p.add_argument("format", choices=RENDER_FORMATS, help="text, json, docker (docker run lines), swarm (Swarm service specs) or k8s (Kubernetes YAML)")
    _repo_args(p)
    p.add_argument("--workers", type=_positive_int, help="number of workers (capped by workers.max_concurrent)")
    p.add_argument("--mode", choices=("container", "subprocess"), help="launcher type (overrides workers.launcher_type)")
    p.add_argument("--feature", help="feature name (default: contents of .gsd/.current-feature)")
    p.add_argument("--namespace", default="default", help="with k8s: the Kubernetes namespace (default: default)")

    p = sub.add_parser("demo", help="run the built-in sample feature in containers (offline, no API key)")
    p.add_argument("--workers", type=_positive_int, default=3)
    p.add_argument("--dir", help="where to create the throwaway demo repo (default: a new temp dir)")
    p.add_argument("--image", help="worker image to use (default: build/reuse mahabharatha-worker)")

    p = sub.add_parser("status", help="tasks per level and per worker, container state and resource use")
    _repo_args(p)
    p.add_argument("--feature")
    p.add_argument("--json", action="store_true", help="one JSON document (schema mahabharatha.status/1, see the README)")
    p.add_argument("--watch", action="store_true", help="follow the run: a live screen on a terminal, event lines elsewhere")

    p = sub.add_parser("logs", help="show a worker's output")
    _repo_args(p)
    p.add_argument("worker", nargs="?", help="worker id (default: all workers)")
    p.add_argument("--feature")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new output while a run is in progress")
    p.add_argument("--tail", type=_non_negative_int, default=None, help="only the last N lines")

    p = sub.add_parser("events", help="the feature's event journal (.mahabharatha/journal/<feature>.jsonl)")
    _repo_args(p)
    p.add_argument("--feature")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new events while a run is in progress")
    p.add_argument("--json", action="store_true", help="print the journal's raw JSON lines")

    p = sub.add_parser("diff", help="what a task, a worker or a level changed, against the level's base")
    _repo_args(p)
    p.add_argument("task", nargs="?", help="a task id")
    p.add_argument("--worker", type=_non_negative_int, help="a worker's work in a level (default: its last level)")
    p.add_argument("--level", type=_positive_int, help="a merged level (default: the last merged)")
    p.add_argument("--feature")
    p.add_argument("--stat", action="store_true")
    p.add_argument("--name-only", action="store_true")
    p.add_argument("--name-status", action="store_true")

    p = sub.add_parser("report", help="one self-contained HTML file picturing a run (timeline, tasks, cost)")
    _repo_args(p)
    p.add_argument("feature_arg", nargs="?", metavar="FEATURE", help="default: .gsd/.current-feature")
    p.add_argument("--feature", help=argparse.SUPPRESS)
    p.add_argument("--output", "-o", help="where to write it (default: .mahabharatha/report-<feature>.html)")

    p = sub.add_parser("approve", help="workers.review: let the level under review merge")
    _repo_args(p)
    p.add_argument("--feature")

    p = sub.add_parser("reject", help="workers.review: fail a done TASK of the level under review (its work is kept)")
    _repo_args(p)
    p.add_argument("task")
    p.add_argument("--feature")

    p = sub.add_parser("retry", help="put failed tasks (or one TASK) back to pending")
    _repo_args(p)
    p.add_argument("task", nargs="?")
    p.add_argument("--feature")

    p = sub.add_parser("stop", help="stop workers gracefully (they exit 130)")
    _repo_args(p)
    p.add_argument("--feature")
    p.add_argument("--timeout", type=_seconds, default=30.0, help="seconds before a worker is killed")

    p = sub.add_parser("cleanup", help="remove a feature's containers and worktrees")
    _repo_args(p)
    p.add_argument("feature")
    p.add_argument("--force", action="store_true", help="also remove worktrees with uncommitted changes")

    p = sub.add_parser("install-commands", help="install /mahabharatha:* slash commands into .claude/commands/")
    _repo_args(p)

    p = sub.add_parser("build-image", help="build the worker image from the Dockerfile shipped in the package")
    p.add_argument("--tag", default="mahabharatha-worker")
    p.add_argument("--base-image", help="BASE_IMAGE build arg")
    p.add_argument("--no-claude", action="store_true", help="skip installing the claude CLI")
    p.add_argument("--claude-version", help="CLAUDE_CODE_VERSION build arg (the pinned Claude Code release)")
    p.add_argument("--extra-ca-cert", metavar="PEM_FILE",
                   help="trust this CA (a TLS-intercepting proxy's) for the download and at run time")
    return parser


def console_main() -> None:
    """The ``mahabharatha`` program: :func:`main`, then exit with its code. Once the command is done a late
    Ctrl-C or SIGTERM (an impatient user pressing again) is ignored, so it cannot replace the exit status that
    reports the run with a KeyboardInterrupt."""
    sys.exit(main(exiting=True))


def main(argv: Sequence[str] | None = None, *, exiting: bool = False) -> int:
    from ..errors import MahabharathaError
    from ..worker.state import StateError

    args = build_parser().parse_args(argv)
    module_name, func_name = _HANDLERS[args.command].split(":")
    previous = _terminate_like_ctrl_c()
    try:
        handler = getattr(importlib.import_module(f"{__name__}.{module_name}"), func_name)
        return int(handler(args) or 0)
    except MahabharathaError as exc:
        print(f"mahabharatha: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except StateError as exc:  # the shared state module is stdlib-only (it runs in containers): same treatment
        print(f"mahabharatha: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("mahabharatha: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `mahabharatha status --json | head`: the reader left early; that is not an error. Point stdout at
        # /dev/null so the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:
        # The host filesystem in the way: a file where a directory goes, permissions, a full disk. Runs record a
        # resumable state before this reaches us; say which path and stop.
        where = f"{exc.filename}: " if exc.filename else ""
        what = exc.strerror or str(exc)
        if isinstance(exc, FileExistsError) and exc.filename and not os.path.isdir(exc.filename):
            what = "is a file, but a directory is needed there"
        elif isinstance(exc, NotADirectoryError):
            what = "part of this path is a file, but must be a directory"
        print(f"mahabharatha: error: {where}{what} (fix or move that path, then run the command again)", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - a bug: still one line, the traceback on request
        if os.environ.get("MAHABHARATHA_DEBUG") == "1":
            raise
        text = " ".join(str(exc).split())[:300]
        print(
            f"mahabharatha: error: internal error: {type(exc).__name__}: {text} (a bug in mahabharatha; run again "
            "with MAHABHARATHA_DEBUG=1 for the traceback and report it)",
            file=sys.stderr,
        )
        return 1
    finally:
        if exiting and threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                signal.signal(signum, signal.SIG_IGN)
        else:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


def _terminate_like_ctrl_c() -> dict[int, Any]:
    """SIGTERM and SIGHUP (`timeout`, a CI cancel, a closed terminal) take the Ctrl-C path: the run stops its
    workers, removes its containers and records a resumable state, instead of dying with a fleet left running.
    A second signal is ignored so it cannot cut that cleanup short (SIGKILL still works). Returns the
    handlers to restore."""
    if threading.current_thread() is not threading.main_thread():
        return {}

    def on_signal(signum: int, _frame: Any) -> None:
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        raise KeyboardInterrupt

    previous = {}
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) == signal.SIG_IGN:
            continue  # started with it ignored (nohup): keep it that way
        previous[sig] = signal.signal(sig, on_signal)
    return previous


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
