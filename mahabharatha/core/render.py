"""Views of a :class:`~mahabharatha.core.model.LaunchPlan`: text, JSON and ``docker run`` lines.

All three are pure functions of the plan, so what users read in the dry-run is exactly what the executor
runs. Secrets appear only in redacted form; in ``docker run`` lines a secret is passed as ``-e NAME`` so
Docker takes the value from the caller's environment and it is never printed.
"""

from __future__ import annotations

import shlex

from ..worker import protocol as P
from .model import LaunchPlan, Mount, WorkerSpec
from .plan import plan_json

__all__ = ["render_text", "render_json", "render_docker_run", "mount_option"]


def render_json(plan: LaunchPlan) -> bytes:
    """The plan as canonical JSON (sorted keys, secrets redacted): byte-identical for equal plans."""
    return plan_json(plan)


def render_text(plan: LaunchPlan) -> str:
    """The plan in the words users know, one worker after another."""
    lines: list[str] = [f"Plan {plan.plan_id}: feature {plan.feature} in {plan.repo}"]
    if plan.containers:
        lines.append(f"Container mode: using image {plan.image}" + (" on a Docker Swarm" if plan.mode == "swarm" else " as Kubernetes Jobs" if plan.mode == "kubernetes" else ""))
        lines.append(f"Engine: {plan.engine} (from {plan.engine_source}); transport: {plan.transport}")
        if plan.transport == "remote":
            port = plan.channel.port or "PORT chosen when the run starts"
            lines.append(
                f"Channel: tcp://{plan.channel.host}:{port} on this machine; each worker proves itself with a token "
                "made at launch (a secret, never shown)"
            )
    else:
        lines.append(
            f"Subprocess mode: workers run on the host (use --mode container to run them in image {plan.image})"
        )
    capped = f", requested {plan.requested_workers}" if plan.requested_workers != len(plan.workers) else ""
    lines.append(f"Workers: {len(plan.workers)}{capped}")
    lines.append(f"Config: {plan.config_path or '(defaults)'}")
    lines.append(f"Base branch: {plan.base_branch}; state: {plan.state_dir}; logs: {plan.log_dir}")
    lines.append(f"Auth: {_auth_line(plan)}")
    lines.append(f"Retries after OOM: {plan.retry_attempts}; task attempt timeout: {plan.timeout_minutes} min")
    if plan.graph is not None:
        g = plan.graph
        lines.append(f"Task graph: {len(g.tasks)} tasks in {len(g.levels)} levels (validated)")
    else:
        lines.append(f"Task graph: none yet at .gsd/specs/{plan.feature}/task-graph.json (a run needs one)")
    if plan.workers:
        first = plan.workers[0]
        security = [f"user {first.user}"]
        if first.read_only:
            security.append("read-only root fs (tmpfs " + ", ".join(t.target for t in first.tmpfs) + ")")
        if first.cap_drop:
            security.append("cap-drop " + ",".join(first.cap_drop))
        security.extend(first.security_opt)
        if first.init:
            security.append("init")
        lines.append("Security: " + "; ".join(security))
    if plan.transport == "remote":
        lines.append(
            "Before start: nothing on this machine but each worker's branch; a worker fetches the worker runtime and "
            "a git pack of its start commit over the channel into its container, and its results come back as git "
            "bundles the orchestrator verifies before they reach a branch."
        )
    else:
        lines.append(
            "Before start: create each workspace, private git directory and branch below, and write its overlay "
            "files; results come back as git bundles the orchestrator verifies before they reach a branch."
        )
    for spec in plan.workers:
        lines.append("")
        lines.extend(_worker_lines(spec))
    if plan.notices:
        lines.append("")
        lines.append("Notices:")
        lines.extend(f"  - {notice}" for notice in plan.notices)
    return "\n".join(lines) + "\n"


def _auth_line(plan: LaunchPlan) -> str:
    a = plan.auth
    parts = [
        f"ANTHROPIC_API_KEY from {a.api_key_source}" if a.api_key_source else "ANTHROPIC_API_KEY not set",
        f"CLAUDE_CODE_OAUTH_TOKEN from {a.oauth_token_source}" if a.oauth_token_source else "CLAUDE_CODE_OAUTH_TOKEN not set",
        f"Claude login copied into each worker from {a.claude_login_copied} (nothing of ~/.claude is mounted)"
        if a.claude_login_copied else "Claude login: not copied (~/.claude is never mounted)",
    ]
    return "; ".join(parts)


def _show(value: str) -> str:
    """Values are shown as written unless they hold control characters (then escaped, one line)."""
    return value if value.isprintable() else repr(value)


def _worker_lines(spec: WorkerSpec) -> list[str]:
    limits = f"memory={spec.mem_limit}, cpus={spec.cpus}"
    lines = [f"Launching Worker {spec.worker_id}: {spec.name} ({limits})"]
    wt = spec.worktree
    if not spec.remote:
        lines.append(f"  worktree: {wt.path} on branch {wt.branch} (from {wt.base})")
    else:
        lines.append(f"  workspace: in the container ({', '.join(spec.volumes) or 'its filesystem'}), branch {wt.branch} (from {wt.base})")
    lines.append(f"  log: {spec.log_path}")
    if spec.pids_limit is not None:
        lines.append(f"  pids limit: {spec.pids_limit}")
    if spec.volumes:
        lines.append(f"  anonymous volumes (removed with the container): {', '.join(spec.volumes)}")
    if spec.remote:
        lines.append("  mounts: none (nothing of this machine is mounted)")
    else:
        lines.extend(_mount_lines(spec))
    lines.append("  environment:")
    lines.append("  environment:")
    for e in spec.environment:
        lines.append(f"    {e.name}={_show(e.value)}")
    for s in spec.secret_environment:
        lines.append(f"    {s.name}={s.value.redacted}  (secret, from {s.source})")
    lines.append(f"  command: {shlex.join(spec.command)}")
    return lines


def _mount_lines(spec: WorkerSpec) -> list[str]:
    lines = ["  mounts:"]
    width = max([len("TARGET"), *(len(m.target) for m in spec.mounts)])
    lines.append(f"    {'TARGET'.ljust(width)}  MODE  SOURCE")
    for m in spec.mounts:
        lines.append(f"    {m.target.ljust(width)}  {'ro' if m.read_only else 'rw'}    {m.source}")
    return lines


def mount_option(m: Mount) -> str:
    """The ``--mount`` value for a bind mount (fields CSV-quoted when they contain ``,`` or ``"``)."""
    fields = ["type=bind", f"source={m.source}", f"target={m.target}"]
    if m.read_only:
        fields.append("readonly")
    return ",".join(_csv_field(f) for f in fields)


def _csv_field(field: str) -> str:
    if "," in field or '"' in field:
        return '"' + field.replace('"', '""') + '"'
    return field


def render_docker_run(spec: WorkerSpec) -> str:
    """An equivalent, copy-pasteable ``docker run`` line for one worker (for debugging by hand).

    Secrets become ``-e NAME``: Docker reads the value from the caller's environment, so it is never printed.
    The worktree and overlay files must exist first (the executor creates them; so does a real launch).
    """
    args: list[str] = ["docker", "run", "--name", spec.name]
    if spec.init:
        args.append("--init")
    args += ["--user", spec.user, "--workdir", spec.working_dir]
    args += ["--memory", spec.mem_limit, "--cpus", repr(spec.cpus)]
    if spec.pids_limit is not None:
        args += ["--pids-limit", str(spec.pids_limit)]
    if spec.read_only:
        args.append("--read-only")
    for cap in spec.cap_drop:
        args += ["--cap-drop", cap]
    for opt in spec.security_opt:
        args += ["--security-opt", opt]
    for t in spec.tmpfs:
        args += ["--tmpfs", f"{t.target}:{t.options}" if t.options else t.target]
    for m in spec.mounts:
        args += ["--mount", mount_option(m)]
    for target in spec.volumes:
        args += ["--mount", f"type=volume,target={target}"]
    for label in spec.labels:
        args += ["--label", f"{label.key}={label.value}"]
    for e in spec.environment:
        args += ["-e", f"{e.name}={e.value}"]
    if not spec.remote:
        for s in spec.secret_environment:
            args += ["-e", s.name]  # value from the caller's environment, never printed
    else:  # remote transport: only the run's channel token goes through the engine (credentials: the channel)
        args += ["-e", P.ENV_CHANNEL_TOKEN]
    args.append(spec.image)
    args.extend(spec.command)
    return shlex.join(args)
