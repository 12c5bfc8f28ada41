"""``mahabharatha kurukshetra --dry-run`` and ``mahabharatha render``: print the launch plan and touch nothing
(no Docker, no cluster needed).

Four forms of the same plan (``--render``): ``text`` (the default: the plan in words, then one ``docker run``
line per worker), ``json`` (the canonical plan; ``--json`` is the old spelling), ``docker`` (only the
``docker run`` lines), ``swarm`` (the Engine API service specs a Swarm run creates) and ``k8s`` (the
Kubernetes Secret and Jobs, for a remote-transport plan).
"""

from __future__ import annotations

import argparse
import sys

from ..core.model import LaunchPlan
from ..errors import ConfigError
from ..planning import plan

__all__ = ["run_dry_run", "cmd_render"]


def run_dry_run(args: argparse.Namespace) -> int:
    """Print the plan in the form ``--render`` names (``--json`` means ``--render json``)."""
    form = _form(args)
    _print(_plan(args), form, namespace=getattr(args, "namespace", None) or "default")
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    """``mahabharatha render FORMAT``: the same as ``kurukshetra --dry-run --render FORMAT``."""
    _print(_plan(args), args.format, namespace=getattr(args, "namespace", None) or "default")
    return 0


def _form(args: argparse.Namespace) -> str:
    render = getattr(args, "render", None)
    if getattr(args, "json", False):
        if render not in (None, "json"):
            raise ConfigError(f"--json and --render {render} ask for two forms; use one of them")
        return "json"
    return render or "text"


def _plan(args: argparse.Namespace) -> LaunchPlan:
    return plan(
        getattr(args, "repo", "."),
        feature=getattr(args, "feature", None),
        workers=getattr(args, "workers", None),
        mode=getattr(args, "mode", None),
    )


def _print(launch_plan: LaunchPlan, form: str, *, namespace: str) -> None:
    from ..core.render import render_docker_run, render_json, render_text

    if form == "json":
        out = sys.stdout.buffer
        out.write(render_json(launch_plan) + b"\n")
        out.flush()
        return
    if form == "swarm":
        from ..core.render_swarm import render_swarm_json

        sys.stdout.write(render_swarm_json(launch_plan))
        sys.stdout.flush()
        return
    if form == "k8s":
        from ..core.render_k8s import render_k8s_yaml

        sys.stdout.write(render_k8s_yaml(launch_plan, namespace=namespace))
        sys.stdout.flush()
        return
    lines = []
    if form == "text":
        heading = "Equivalent docker run commands (for debugging by hand):"
        if launch_plan.mode != "container":  # the limits, mounts and names above apply to containers only
            heading = (
                "Subprocess mode runs workers on the host, without the container limits and mounts above; "
                "with --mode container they would be (docker run, for debugging by hand):"
            )
        lines += [render_text(launch_plan), heading]
    secrets = launch_plan.workers[0].secret_environment if launch_plan.workers else ()
    for s in secrets:
        where = "it is set there" if s.source == "environment" else f"it was found in {s.source}"
        lines.append(f"# {s.name} is passed as -e {s.name}: export it in your shell first ({where})")
    lines.extend(render_docker_run(spec) for spec in launch_plan.workers)
    sys.stdout.write("\n".join(lines) + "\n")
    sys.stdout.flush()
