"""``mahabharatha kurukshetra --dry-run``: print the launch plan and touch nothing (no Docker needed)."""

from __future__ import annotations

import argparse
import sys

from ..core.model import LaunchPlan
from ..core.render import render_docker_run, render_json, render_text
from ..planning import plan

__all__ = ["run_dry_run"]


def run_dry_run(args: argparse.Namespace) -> int:
    """Print the plan as text plus one ``docker run`` line per worker, or as JSON with ``--json``."""
    launch_plan = plan(
        getattr(args, "repo", "."),
        feature=getattr(args, "feature", None),
        workers=getattr(args, "workers", None),
        mode=getattr(args, "mode", None),
    )
    _print(launch_plan, as_json=getattr(args, "json", False))
    return 0


def _print(launch_plan: LaunchPlan, *, as_json: bool) -> None:
    if as_json:
        out = sys.stdout.buffer
        out.write(render_json(launch_plan) + b"\n")
        out.flush()
        return
    heading = "Equivalent docker run commands (for debugging by hand):"
    if launch_plan.mode != "container":  # the limits, mounts and names above apply to containers only
        heading = (
            "Subprocess mode runs workers on the host, without the container limits and mounts above; "
            "with --mode container they would be (docker run, for debugging by hand):"
        )
    lines = [render_text(launch_plan), heading]
    secrets = launch_plan.workers[0].secret_environment if launch_plan.workers else ()
    for s in secrets:
        where = "it is set there" if s.source == "environment" else f"it was found in {s.source}"
        lines.append(f"# {s.name} is passed as -e {s.name}: export it in your shell first ({where})")
    lines.extend(render_docker_run(spec) for spec in launch_plan.workers)
    sys.stdout.write("\n".join(lines) + "\n")
    sys.stdout.flush()
