"""``mahabharatha stop``, ``mahabharatha cleanup FEATURE`` and ``mahabharatha build-image``.

Containers are found by their labels (repository + feature), never by name, so cleanup only ever touches
what this repository's launches created. Worktrees with uncommitted work are kept unless ``--force``; worker
branches are always kept (they hold the commits).
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path
from typing import Any

from ..errors import LaunchError, MahabharathaError, WorktreeError

__all__ = ["cmd_stop", "cmd_cleanup", "cmd_build_image"]


def _request_stop(repo: str, feature: str) -> bool:
    """Mark a running run "stopped" in its state: the orchestrator (woken by the state write) stops its
    workers, and idle workers exit 130 on their own. True when there was a running run to stop."""
    from ..worker import state as S
    from .common import state_store

    store = state_store(repo, feature)
    if not store.exists():
        return False
    with store.transaction() as data:
        return S.mark_stopped(data, "stopped by `mahabharatha stop`; run again to resume")


def cmd_stop(args: argparse.Namespace) -> int:
    """Stop the feature's workers gracefully (SIGTERM; they exit 130), killing them after --timeout.

    Works for both launchers: containers are found by their labels, subprocess-mode workers by the pids
    the orchestrator recorded in the run state. The run is marked stopped first, so a running orchestrator
    stops its own workers too and ends with exit 130; `mahabharatha kurukshetra` resumes it.
    """
    from ..edge import executor, processes
    from .common import repo_feature, state_store

    repo, feature = repo_feature(args)
    requested = _request_stop(repo, feature)
    stopped = processes.stop_recorded(state_store(repo, feature), timeout=args.timeout)
    engine_error: LaunchError | None = None
    try:
        exits = executor.stop_workers(executor.make_client(action="Cannot stop worker containers"), repo, feature, timeout=args.timeout)
    except LaunchError as exc:  # no engine: subprocess-mode workers are stopped all the same
        engine_error, exits = exc, []
    for wid, pid, how in stopped:
        print(f"worker {wid} (pid {pid}): {how}")
    for e in exits:
        oom = ", OOMKilled" if e.oom_killed else ""
        print(f"worker {e.worker_id} ({e.name}): exit {e.exit_code}: {e.meaning}{oom}")
    if requested:
        # Also when nothing was listed above: a running orchestrator may have stopped (and removed) its
        # workers first, on seeing the state change.
        print(f"Run of feature {feature} marked stopped; `mahabharatha kurukshetra` resumes it")
    elif not stopped and not exits:
        if engine_error is not None:
            raise engine_error
        print(f"No running workers for feature {feature} in {repo}")
    return 0


def _kubernetes_plan(repo: str, feature: str) -> Any:
    """The feature's plan when the repository's config runs it as Kubernetes Jobs, else None."""
    from ..planning import plan

    try:
        p = plan(repo, feature=feature)
    except MahabharathaError:
        return None
    return p if p.mode == "kubernetes" else None


def cmd_cleanup(args: argparse.Namespace) -> int:
    """Remove the feature's containers and worktrees; refuse (naming them) worktrees with uncommitted work."""
    from ..core.plan import private_git_dir, run_branch_prefix
    from ..edge import executor, worktrees
    from .common import repo_feature, run_in_progress

    repo, feature = repo_feature(args)
    if run_in_progress(repo, feature):
        # Removing a live run's containers and worktrees kills its workers mid-task and breaks its restarts.
        raise MahabharathaError(
            f"a `mahabharatha kurukshetra` run of feature {feature} is in progress in {repo}; not cleaning up under it",
            hint=f"stop it first with `mahabharatha stop --feature {feature}`, then run cleanup again",
        )
    engine_error: MahabharathaError | None = None
    removed: list[str] = []
    kube = _kubernetes_plan(repo, feature)
    try:
        if kube is not None:  # a run as Kubernetes Jobs: its Jobs and Secret go (by label), no Docker engine involved
            from ..edge.kube import remove_run

            selector = remove_run(kube)
            removed = [selector]
            print(f"Removed the feature's Kubernetes Jobs and Secret in namespace {kube.namespace} ({selector})")
        else:
            removed = executor.remove_containers(executor.make_client(action="Cannot remove containers"), repo, feature)
            print(f"Removed {len(removed)} container(s){': ' + ', '.join(removed) if removed else ''}")
    except LaunchError as exc:  # no engine or cluster: still clean up the worktrees, then report
        engine_error = exc
    refused: list[str] = []
    failed: list[str] = []
    done = 0
    for path, branch in worktrees.feature_worktrees(repo, feature):
        wid = int(path.rsplit("-", 1)[1])
        try:
            if worktrees.remove_worktree(repo, path, branch=branch, force=args.force, git_dir=private_git_dir(repo, feature, wid)):
                done += 1
        except WorktreeError as exc:
            (refused if "uncommitted" in str(exc) else failed).append(str(exc) if "uncommitted" not in str(exc) else path)
    worktrees.prune(repo)
    print(f"Removed {done} worktree(s) of feature {feature}; branches {run_branch_prefix(feature)}* are kept")
    if not (removed or done or refused or failed or engine_error):
        print(_nothing_found(repo, feature))
    if not refused and not failed:
        worktrees.remove_tree(Path(repo) / ".mahabharatha" / "runtime" / feature)
        with contextlib.suppress(OSError):
            Path(repo).parent.joinpath(".mahabharatha-worktrees", feature).rmdir()
    if failed:
        raise WorktreeError(failed[0])
    if refused:
        raise WorktreeError(
            f"Kept {len(refused)} worktree(s) with uncommitted changes: {', '.join(refused)}",
            hint=f"commit or copy the work, or run `mahabharatha cleanup {feature} --force` to discard it",
        )
    if engine_error is not None:
        raise engine_error
    return 0


def _nothing_found(repo: str, feature: str) -> str:
    """Cleanup found nothing: likely a mistyped feature, so name the ones this repo has."""
    from ..edge.git import git

    refs = git(repo, "for-each-ref", "--format=%(refname:short)", "refs/heads/mahabharatha/", check=False)
    known = sorted({ref.split("/")[1] for ref in refs.splitlines() if ref.count("/") >= 2})
    if feature in known:
        return f"Nothing else to clean up for feature {feature}"
    return f"Nothing to clean up for feature {feature}; features with branches here: {', '.join(known) or 'none'}"


def cmd_build_image(args: argparse.Namespace) -> int:
    """Build the worker image from .devcontainer/Dockerfile (always rebuilds; the engine's cache keeps it fast)."""
    from ..edge import executor
    from ..edge.images import ensure_image

    from ..errors import ConfigError

    buildargs = {"INSTALL_CLAUDE": "0" if args.no_claude else "1"}
    if args.base_image:
        buildargs["BASE_IMAGE"] = args.base_image
    if getattr(args, "claude_version", None):
        buildargs["CLAUDE_CODE_VERSION"] = args.claude_version
    if getattr(args, "extra_ca_cert", None):
        from ..edge.safefs import read_regular

        try:
            pem = read_regular(args.extra_ca_cert, limit=96 << 10, what="--extra-ca-cert").decode("ascii")
        except UnicodeDecodeError:
            raise ConfigError(f"--extra-ca-cert {args.extra_ca_cert}: not PEM text", hint="pass a PEM certificate file") from None
        except FileNotFoundError:
            raise ConfigError(f"--extra-ca-cert {args.extra_ca_cert}: no such file") from None
        if "BEGIN CERTIFICATE" not in pem:
            raise ConfigError(f"--extra-ca-cert {args.extra_ca_cert}: no PEM certificate in it", hint="pass a PEM certificate file")
        buildargs["EXTRA_CA_CERT"] = pem
    client = executor.make_client(action=f"Cannot build image {args.tag}")
    image_id = ensure_image(client, args.tag, buildargs=buildargs, force=True, on_output=lambda line: print(line, flush=True))
    print(f"Built {args.tag} ({image_id[:19]})")
    return 0
