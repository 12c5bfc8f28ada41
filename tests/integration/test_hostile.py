"""Hostile agents in real containers: what a worker's agent does must never reach the user's repository or host.

Every test runs a normal feature run (real orchestrator, real worker runtime, real containers) in which some
tasks are hostile and the others honest. The agent is ``hostile_agent.py``, committed in the user's
repository (the workspace is a checkout of it): a task's ``hostile`` field lists shell ``steps`` (each run,
its exit code and output recorded in ``attack-<task>.json``), a ``stream`` command whose output goes to the
worker's stdout, and ``py`` code (channel attacks); then it writes the task's files like the scripted agent.

Each test checks, as applicable: the user's refs, ``HEAD``, config, hooks, info, reflogs and index are
byte-for-byte unchanged, no ``commondir``/``worktrees``/alternates appeared, no object disappeared and every
loose object or pack file is unchanged (new objects of the run are expected; new refs only in the run's
namespaces); the user's own git with hooks enabled (``git status``, ``git commit``, ``git checkout``, also of
the run's base branch) runs nothing planted (planted commands touch ``PWNED-*`` markers in a host directory no
container sees; the user's own harmless hooks log that hooks did run); no file appears at any symlink target
and nothing is removed through one; ``mahabharatha status`` and ``cleanup`` stay within a time bound and a
1 GiB address-space limit; the honest tasks are done and merged; the hostile task did not get its forbidden
change merged.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mahabharatha.core.graph import load_graph
from mahabharatha.edge.orchestrator import orchestrate
from mahabharatha.worker import state as S

pytestmark = pytest.mark.docker

BASE = "mahabharatha/feat/base"
RUN_NAMESPACES = ("refs/heads/mahabharatha/feat/", "refs/mahabharatha/")
HOST_BOUND_S = 30.0  # `mahabharatha status` / `cleanup` on a hostile leftover
HOST_AS_LIMIT = 1 << 30  # RLIMIT_AS for host commands: 1 GiB of address space, not just resident memory

AGENT = r'''
"""A hostile agent for the tests (see tests/integration/test_hostile.py); honest when a task has no `hostile`."""
import json, os, subprocess, sys, time

task = json.load(open(os.environ["MAHABHARATHA_TASK_JSON"]))
h = task.get("hostile") or {}
record = {}
for i, cmd in enumerate(h.get("steps") or ()):
    t0 = time.monotonic()
    try:
        p = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True, timeout=60)
        record[str(i)] = {"cmd": cmd[:4000], "rc": p.returncode, "out": (p.stdout + p.stderr)[-600:],
                          "s": round(time.monotonic() - t0, 2)}
    except Exception as exc:
        record[str(i)] = {"cmd": cmd[:4000], "rc": None, "out": repr(exc)[-600:]}
if h.get("stream"):
    subprocess.run(["sh", "-c", h["stream"]])
if h.get("py"):
    exec(compile(h["py"], "attack", "exec"), {"record": record, "task": task, "__name__": "attack"})
if record:
    with open("attack-%s.json" % task["id"], "w") as fh:
        json.dump(record, fh, indent=1, sort_keys=True)
    print("ATTACK-RECORD %s %s" % (task["id"], json.dumps(record, sort_keys=True)), flush=True)
files = task.get("files") or {}
for path in files.get("create") or ():
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as fh:
        fh.write("created by task %s\n" % task["id"])
for path in files.get("modify") or ():
    with open(path, "a") as fh:
        fh.write("modified by task %s\n" % task["id"])
sys.exit(int(h.get("exit", 0)))
'''


# ------------------------------------------------------------------------------------------------------------
# Helpers


def git(repo: Path, *args: str, check: bool = True) -> str:
    proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"git {' '.join(args)}: {proc.stderr}")
    return proc.stdout.strip()


def task(tid: str, level: int, deps: tuple[str, ...] = (), create: tuple[str, ...] = (), modify: tuple[str, ...] = (),
         verify: str = "", **hostile: Any) -> dict[str, Any]:
    t: dict[str, Any] = {
        "id": tid, "title": f"title {tid}", "level": level, "dependencies": list(deps),
        "files": {"create": list(create), "modify": list(modify), "read": []},
        "verification": {"command": verify, "timeout_seconds": 60},
    }
    if hostile:
        t["hostile"] = hostile
    return t


def write_graph(repo: Path, tasks: list[dict[str, Any]]) -> Any:
    spec = repo / ".gsd" / "specs" / "feat"
    spec.mkdir(parents=True, exist_ok=True)
    path = spec / "task-graph.json"
    path.write_text(json.dumps({"feature": "feat", "tasks": tasks}))
    return load_graph(str(path), path.read_text())


def config(*, pids: int = 256, memory: str = "256m", timeout_minutes: int = 2) -> str:
    return (
        "workers:\n  agent_command: python3 hostile_agent.py\n  retry_attempts: 0\n"
        f"  timeout_minutes: {timeout_minutes}\n"
        f"resources:\n  container_memory_limit: {memory}\n  container_cpu_limit: 1.0\n  pids_limit: {pids}\n"
    )


def state_of(repo: Path) -> dict[str, Any]:
    return json.loads((repo / ".mahabharatha" / "state" / "feat" / "state.json").read_text())


def attack_record(repo: Path, tid: str) -> dict[str, Any]:
    """The hostile task's own record of its attempts: from the base branch when its result was merged, else
    from the workers' host logs (the agent prints it too)."""
    proc = subprocess.run(["git", "-C", str(repo), "show", f"{BASE}:attack-{tid}.json"], capture_output=True, text=True)
    if proc.returncode == 0:
        return json.loads(proc.stdout)
    prefix = f"ATTACK-RECORD {tid} ".encode()
    for log in sorted((repo / ".mahabharatha" / "logs" / "workers").glob("*/*.log")):
        with open(log, "rb") as fh:
            for line in fh:
                if line.startswith(prefix):
                    return json.loads(line[len(prefix):])
    raise AssertionError(f"no attack record of task {tid}")


def step(record: dict[str, Any], fragment: str) -> dict[str, Any]:
    hits = [r for r in record.values() if fragment in r["cmd"]]
    assert hits, f"no step {fragment!r} in {sorted(r['cmd'][:60] for r in record.values())}"
    return hits[0]


def refused(record: dict[str, Any], fragment: str) -> None:
    """The step ran and failed because what it wrote is read-only or absent in the container."""
    r = step(record, fragment)
    assert r["rc"] not in (0, None), r
    assert any(w in r["out"] for w in ("Read-only file system", "read-only", "No such file", "Permission denied",
                                       "cannot lock", "unable to", "fatal", "cannot create")), r


class Snapshot:
    """The user's repository as the user owns it: everything but the run's refs and the new objects."""

    FILES = ("HEAD", "config", "index", "description", "packed-refs", "FETCH_HEAD", "ORIG_HEAD", "logs/HEAD",
             "logs/refs/heads/main", "logs/refs/heads/user-work")
    ABSENT = ("commondir", "worktrees", "objects/info/alternates", "objects/info/http-alternates", "shallow",
              "info/grafts", "gitdir", "modules")

    def __init__(self, repo: Path) -> None:
        gd = repo / ".git"
        self.files: dict[str, Any] = {}
        for rel in self.FILES:
            self.files[rel] = _content(gd / rel)
        for sub in ("hooks", "info"):
            for p in sorted((gd / sub).rglob("*")):
                self.files[str(p.relative_to(gd))] = _content(p)
        self.absent = {rel: os.path.lexists(gd / rel) for rel in self.ABSENT}
        self.objects_files = {str(p.relative_to(gd)): _content(p) for p in sorted((gd / "objects").rglob("*"))
                              if p.is_file() and not p.is_symlink()}
        self.objects = set(git(repo, "cat-file", "--batch-all-objects", "--batch-check=%(objectname)").split())
        self.refs = dict(line.split(" ", 1)[::-1] for line in git(repo, "for-each-ref", "--format=%(objectname) %(refname)").splitlines())

    def assert_kept_by(self, after: Snapshot) -> None:
        assert after.files == self.files, {k for k in self.files.keys() | after.files.keys() if self.files.get(k) != after.files.get(k)}
        assert after.absent == self.absent
        lost = {k for k, v in self.objects_files.items() if after.objects_files.get(k) != v}
        assert not lost, f"object files changed or gone: {sorted(lost)[:5]}"
        assert self.objects <= after.objects, f"objects gone: {sorted(self.objects - after.objects)[:5]}"
        user_after = {r: c for r, c in after.refs.items() if not r.startswith(RUN_NAMESPACES)}
        assert user_after == self.refs


def _content(p: Path) -> Any:
    if p.is_symlink():
        return ("symlink", os.readlink(p))
    if p.is_dir():
        return ("dir", oct(p.stat().st_mode))
    if p.exists():
        return (p.read_bytes(), oct(p.stat().st_mode))
    return None


class Host:
    """The test's host side: the user's repository with an unpushed branch, own hooks and config; a marker
    directory no container sees; symlink targets that must stay absent; a victim directory that must survive."""

    def __init__(self, repo: Path, tmp: Path) -> None:
        self.repo = repo
        self.markers = tmp / "markers"
        self.targets = tmp / "targets"
        self.markers.mkdir()
        (self.targets / "victim").mkdir(parents=True)
        (self.targets / "victim" / "keep.txt").write_text("keep me\n")
        self.absent = [self.targets / n for n in ("absent-file", "absent-dir", "lock-target", "progress-target", "state-target")]
        git(repo, "config", "user.name", "The User")
        git(repo, "config", "user.email", "user@example.invalid")
        git(repo, "config", "alias.st", "status --short")
        (repo / "hostile_agent.py").write_text(AGENT)
        (repo / ".gitignore").write_text(".gsd/\n")  # .mahabharatha/ deliberately not ignored: the user's git sees it
        git(repo, "add", "hostile_agent.py", ".gitignore")
        git(repo, "commit", "-qm", "add the test agent")
        git(repo, "checkout", "-qb", "user-work")
        (repo / "unpushed.txt").write_text("the user's unpushed work\n")
        git(repo, "add", "unpushed.txt")
        git(repo, "commit", "-qm", "unpushed work")
        self.unpushed = git(repo, "rev-parse", "HEAD")
        git(repo, "checkout", "-q", "main")
        for name in ("pre-commit", "post-checkout", "post-commit"):
            hook = repo / ".git" / "hooks" / name
            hook.write_text(f"#!/bin/sh\necho {name} >> {self.markers}/user-hooks.log\n")
            hook.chmod(0o755)
        self.passwd = hashlib.sha256(Path("/etc/passwd").read_bytes()).hexdigest()
        self.before = Snapshot(repo)

    def pwned(self) -> list[str]:
        return sorted(p.name for p in self.markers.iterdir() if p.name.startswith("PWNED"))

    def planted(self, name: str) -> str:
        """A command that leaves marker ``name`` if it ever runs on the host."""
        return f"touch {self.markers}/PWNED-{name}"

    def assert_repo_untouched(self) -> None:
        self.before.assert_kept_by(Snapshot(self.repo))
        assert git(self.repo, "rev-parse", "refs/heads/user-work") == self.unpushed
        assert git(self.repo, "cat-file", "-t", self.unpushed) == "commit"
        assert git(self.repo, "fsck", "--no-dangling", "--no-progress") == ""

    def user_git(self) -> None:
        """The user's own commands with hooks enabled (plain git: the user's config, the user's hooks)."""
        (self.markers / "user-hooks.log").unlink(missing_ok=True)
        for args in (("status",), ("st",), ("log", "--all", "--oneline"), ("diff",),
                     ("commit", "-q", "--allow-empty", "-m", "x"), ("checkout", "-q", "-b", "probe"),
                     ("checkout", "-q", "main"), ("checkout", "-q", "--detach", BASE), ("status",),
                     ("checkout", "-q", "main"), ("checkout", "-q", "user-work"), ("checkout", "-q", "main")):
            proc = subprocess.run(["git", "-C", str(self.repo), *args], capture_output=True, text=True, timeout=60)
            assert proc.returncode == 0, (args, proc.stderr)
        ran = (self.markers / "user-hooks.log").read_text().split()
        assert {"pre-commit", "post-commit", "post-checkout"} <= set(ran), ran  # hooks were enabled
        assert self.pwned() == [], self.pwned()

    def assert_symlink_targets_absent(self) -> None:
        assert [p for p in self.absent if os.path.lexists(p)] == []
        assert sorted(p.name for p in self.targets.iterdir()) == ["victim"]
        assert [p.name for p in (self.targets / "victim").iterdir()] == ["keep.txt"]
        assert (self.targets / "victim" / "keep.txt").read_text() == "keep me\n"
        assert hashlib.sha256(Path("/etc/passwd").read_bytes()).hexdigest() == self.passwd
        assert (self.repo / "README.md").read_text() == "hello\n"

    def host_command(self, *args: str, timeout: float = HOST_BOUND_S) -> tuple[int, str, float, int]:
        """``python -m mahabharatha ARGS`` in a subprocess limited to 1 GiB of address space: (exit code, output,
        seconds, peak resident KiB). Fails the test when it runs longer than ``timeout``."""
        def limit() -> None:
            resource.setrlimit(resource.RLIMIT_AS, (HOST_AS_LIMIT, HOST_AS_LIMIT))

        started = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", "mahabharatha", *args, "--repo", str(self.repo)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, preexec_fn=limit)
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            assert proc.stdout is not None
            out = proc.stdout.read().decode("utf-8", "replace")
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        seconds = time.monotonic() - started
        code = os.waitstatus_to_exitcode(status)
        assert seconds < timeout, f"mahabharatha {' '.join(args)} took {seconds:.1f} s: {out[-500:]}"
        assert "MemoryError" not in out and "Traceback" not in out, out[-2000:]
        return code, out, seconds, usage.ru_maxrss

    def status_and_cleanup(self) -> dict[str, str]:
        """``status`` and ``cleanup --force`` on what the run left (hostile files included): bounded, and
        cleanup removes the workspaces and private git directories without following what is in them."""
        code, out, s_status, kib_status = self.host_command("status", "--feature", "feat")
        assert code == 0, out
        code, out, s_cleanup, kib_cleanup = self.host_command("cleanup", "feat", "--force")
        assert code == 0, out
        assert not (self.repo / ".mahabharatha" / "runtime" / "feat").exists(), out
        assert not (self.repo.parent / ".mahabharatha-worktrees" / "feat").exists(), out
        return {"status": f"{s_status:.1f} s {kib_status >> 10} MiB", "cleanup": f"{s_cleanup:.1f} s {kib_cleanup >> 10} MiB"}


@pytest.fixture
def host(git_repo: Path, tmp_path: Path) -> Iterator[Host]:
    yield Host(git_repo, tmp_path)


def run(host: Host, make_plan: Any, docker_client: Any, graph: Any, workers: int, **cfg: Any) -> tuple[Any, list[str], float]:
    plan = make_plan(workers, config=config(**cfg))
    lines: list[str] = []
    started = time.monotonic()
    result = orchestrate(plan, graph, out=lambda text: lines.append(f"{time.monotonic() - started:5.1f} {text}"), client=docker_client)
    return result, lines, time.monotonic() - started


def base_files(repo: Path) -> set[str]:
    return set(git(repo, "ls-tree", "-r", "--name-only", BASE).splitlines())


def show(repo: Path, path: str, ref: str = BASE) -> str:
    return git(repo, "show", f"{ref}:{path}")


# ------------------------------------------------------------------------------------------------------------
# Attacks on git, the task graph and the state, from inside a worker


def _git_attacks(host: Host) -> list[str]:
    """Shell steps of a hostile agent going for the user's .git, .gsd, the run's state and the host through
    git configuration it can write (its private repository)."""
    repo = host.repo
    priv = f"{repo}/.mahabharatha/runtime/feat/worker-$ZERG_WORKER_ID/git"  # the private git dir's host path
    hooks = ("pre-commit", "post-commit", "post-checkout", "reference-transaction", "post-index-change",
             "pre-auto-gc", "post-rewrite", "fsmonitor-watchman")
    plant_hooks = "; ".join(
        f'printf "#!/bin/sh\\n{host.planted("hook-" + h)}\\n" > $D/hooks/{h}; chmod +x $D/hooks/{h}' for h in hooks
    )
    evil_config = (
        f"[core]\\n\\tfsmonitor = {host.planted('fsmonitor')}\\n\\thooksPath = {priv}/evil/hooks\\n"
        f"\\tpager = {host.planted('pager')}\\n\\tsshCommand = {host.planted('ssh')}\\n"
        f"[alias]\\n\\tstatus = !{host.planted('alias')}\\n"
    )
    other = "mahabharatha/feat/worker-$(( (ZERG_WORKER_ID + 1) % 3 ))"
    t = host.targets
    return [
        # A planted common directory with its own config and hooks, then .git/commondir pointing at it.
        f'D=/workspace/.git-worktree/evil; mkdir -p $D/hooks $D/refs $D/objects; printf "{evil_config}" > $D/config; '
        f"{plant_hooks}; echo planted",
        f"printf '%s\\n' {priv}/evil > /repo/.git/commondir",
        "printf '../../.mahabharatha/runtime/feat/worker-0/git/evil\\n' > /repo/.git/commondir",
        "ln -s /workspace/.git-worktree/evil /repo/.git/commondir",
        "printf 'ref: refs/heads/planted\\n' > /repo/.git/HEAD",
        f'printf "{evil_config}" >> /repo/.git/config',
        f"D=/repo/.git; {plant_hooks}",
        f'printf "{priv}/evil/objects\\n" > /repo/.git/objects/info/alternates',
        # The user's unpushed commit, and every object.
        "git --git-dir=/repo/.git update-ref -d refs/heads/user-work",
        "git --git-dir=/repo/.git reflog expire --expire=now --all && git --git-dir=/repo/.git gc -q --prune=now",
        "rm -rf /repo/.git/objects/pack /repo/.git/refs/heads/main",
        "find /repo/.git/objects -type f -delete",
        # Other workers' branches and the base.
        f"git --git-dir=/repo/.git branch -D {other}",
        f"git --git-dir=/repo/.git branch -m {other} stolen",
        f"git --git-dir=/repo/.git update-ref refs/heads/{BASE} $(git rev-parse HEAD~1)",
        # The graph other tasks' verification comes from, the current feature, the run's state.
        "sed -i 's/test -f/true || test -f/g' /repo/.gsd/specs/feat/task-graph.json",
        "printf '{}' > /repo/.gsd/specs/feat/task-graph.json",
        "ln -sf /dev/zero /repo/.gsd/.current-feature",
        f"ln -sf {t}/progress-target /repo/.gsd/specs/feat/progress.md",
        f"mkdir -p /repo/.mahabharatha/state/feat && ln -sf {t}/lock-target /repo/.mahabharatha/state/feat/lock",
        f"ln -sf {t}/state-target /opt/mahabharatha/channel/lock",
        "rm -f /opt/mahabharatha/channel/worker.sock",
        # Where the state used to be mounted: harmless now, never read by the host.
        f"mkdir -p /workspace/.mahabharatha/state/feat && ln -sf {t}/lock-target /workspace/.mahabharatha/state/feat/lock "
        f"&& ln -sf {t}/state-target /workspace/.mahabharatha/state/feat/state.json && echo ok",
        # Its own private repository: config and hooks that must not affect the host (nor the worker's commits).
        f'printf "{evil_config}\\tworktree = {repo}\\n" >> /workspace/.git-worktree/config && '
        f"D=/workspace/.git-worktree && mkdir -p $D/hooks && {plant_hooks} && echo ok",
        "printf 'gitdir: /repo/.git\\n' > /workspace/.git",
        # Symlinks to host paths: in the workspace (committed), in its private git dir, at a mount point.
        f"ln -s /etc/passwd passwd-link && ln -s {repo} repo-link && ln -s / root-link && ln -s {t}/absent-file file-link "
        f"&& ln -s {t}/absent-dir dir-link && ln -s {t}/victim victim-link && ln -s {repo}/.git git-link && echo ok",
        f"cd /workspace/.git-worktree && ln -s {t}/victim victim-link && ln -s {repo} repo-link && ln -s / root-link "
        f"&& ln -s {t}/absent-file info/attributes && echo ok",
        # Its own commit with the planted hooks enabled (runs them in the container: harmless to the host).
        "git add -A && git commit -qm 'agent commit' --no-verify; git log --oneline -1",
    ]


def test_git_state_and_symlink_attacks_leave_the_user_repository_untouched(
    host: Host, make_plan: Any, docker_client: Any
) -> None:
    repo = host.repo
    graph = write_graph(repo, [
        task("H", 1, create=("h.txt",), steps=_git_attacks(host)),
        task("A", 1, create=("a.txt",), verify="test -f a.txt"),
        # Modifies a file another task of its level owns: its result must be rejected, never merged.
        task("M", 1, create=("m.txt",), steps=["echo 'stolen by M' > a.txt"]),
        task("B", 2, ("A",), create=("b.txt",), modify=("a.txt",), verify="test -f b.txt && grep -q 'task B' a.txt"),
        task("C", 2, ("A",), create=("c.txt",), verify="test -f c.txt"),
    ])
    result, lines, seconds = run(host, make_plan, docker_client, graph, 3)
    tasks = state_of(repo)["tasks"]
    # The honest tasks are done and merged; level 2 built on level 1.
    assert {t: tasks[t]["status"] for t in "ABC"} == dict.fromkeys("ABC", "done"), (tasks, lines)
    assert {"a.txt", "b.txt", "c.txt"} <= base_files(repo)
    assert show(repo, "a.txt") == "created by task A\nmodified by task B"
    # M's change to A's file was rejected and kept aside, not merged.
    assert tasks["M"]["status"] == "failed" and "a.txt (task A)" in tasks["M"]["error"], tasks["M"]
    assert "m.txt" not in base_files(repo)
    assert show(repo, "a.txt", "refs/mahabharatha/failed/feat/M") == "stolen by M"
    assert result.status == "failed" and result.message == "failed: M", (result, lines)
    # Every attack on what is read-only or not mounted failed for that reason.
    record = attack_record(repo, "H")
    for fragment in ("/repo/.git/commondir", "ln -s /workspace/.git-worktree/evil /repo/.git/commondir",
                     "> /repo/.git/HEAD", ">> /repo/.git/config", "objects/info/alternates", "update-ref -d refs/heads/user-work",
                     "gc -q --prune=now", "rm -rf /repo/.git/objects/pack", "branch -D", "branch -m", f"update-ref refs/heads/{BASE}",
                     "sed -i", "printf '{}' > /repo/.gsd", "/repo/.gsd/.current-feature", "progress.md",
                     "/repo/.mahabharatha/state", "/opt/mahabharatha/channel/lock", "printf 'gitdir: /repo/.git"):
        refused(record, fragment)
    assert step(record, "D=/workspace/.git-worktree/evil")["rc"] == 0  # the planted payload existed
    assert step(record, "find /repo/.git/objects")["rc"] != 0
    assert (repo / ".mahabharatha" / "state" / "feat" / "channel").is_dir()
    assert tasks["H"]["status"] == "done", tasks["H"]  # nothing it did was a forbidden change
    assert {"h.txt", "file-link", "dir-link", "repo-link"} <= base_files(repo)
    assert git(repo, "cat-file", "-p", f"{BASE}:file-link") == f"{host.targets}/absent-file"  # just data
    # The planted hooks are real: run by a git told to use them, they fire (a control, in a scratch repo).
    wid = tasks["H"]["worker"]
    planted_hooks = repo / ".mahabharatha" / "runtime" / "feat" / f"worker-{wid}" / "git" / "evil" / "hooks"
    scratch = host.markers.parent / "scratch"
    subprocess.run(["git", "init", "-q", str(scratch)], check=True)
    subprocess.run(["git", "-C", str(scratch), "-c", f"core.hooksPath={planted_hooks}", "-c", "user.name=c",
                    "-c", "user.email=c@c", "commit", "-q", "--allow-empty", "-m", "control"], check=True)
    assert {"PWNED-hook-pre-commit", "PWNED-hook-post-commit"} <= set(host.pwned()), host.pwned()
    for p in host.markers.glob("PWNED-*"):
        p.unlink()

    host.assert_repo_untouched()
    host.user_git()
    assert git(repo, "log", "-1", "--format=%s", "main") == "x"
    times = host.status_and_cleanup()
    host.assert_symlink_targets_absent()
    assert host.pwned() == []
    assert seconds < 60, lines
    print(f"run {seconds:.1f} s; host commands {times}")


# ------------------------------------------------------------------------------------------------------------
# Attacks on the channel: forged results, malformed and oversized messages, floods


# What every channel attack below starts with: recording a step, and git in the workspace.
ATTACK_HELPERS = r'''
import subprocess

def note(name, rc, out):
    record[name] = {"cmd": name, "rc": rc, "out": str(out)[-600:]}

def g(*args, env=None, input=None):
    p = subprocess.run(["git", *args], capture_output=True, text=True, env=env, input=input)
    if p.returncode:
        raise RuntimeError("git %s: %s" % (args[0], p.stderr))
    return p.stdout.strip()
'''

CHANNEL_ATTACKS = ATTACK_HELPERS + r'''
import os, socket, subprocess, time
from mahabharatha_worker.channel import Channel
from mahabharatha_worker import protocol as P

SOCK = "/opt/mahabharatha/channel/worker.sock"
wid = int(os.environ["ZERG_WORKER_ID"])
mine = "refs/heads/" + os.environ["ZERG_BRANCH"]
other = "refs/heads/mahabharatha/feat/worker-%d" % ((wid + 1) % 2)

start = g("rev-parse", "HEAD")
root = g("rev-list", "--max-parents=0", "HEAD").split()[0]

def commit(parent, files, msg="forged"):
    env = dict(os.environ, GIT_INDEX_FILE="/tmp/forge.index")
    if parent:
        g("read-tree", parent, env=env)
    else:
        g("read-tree", "--empty", env=env)
    for path, text in files.items():
        blob = g("hash-object", "-w", "--stdin", input=text)
        g("update-index", "--add", "--cacheinfo", "100644,%s,%s" % (blob, path), env=env)
    tree = g("write-tree", env=env)
    return g("commit-tree", tree, *(["-p", parent] if parent else []), "-m", msg)

def bundle(refs, exclude=start):
    for ref, c in refs:
        g("update-ref", ref, c)
    g("bundle", "create", "-q", "/tmp/forged.bundle", *[r for r, _ in refs], "^" + exclude)
    data = open("/tmp/forged.bundle", "rb").read()
    for ref, _ in refs:
        if ref != mine:
            g("update-ref", "-d", ref)
    return data

ch = Channel(SOCK)
note("hello", 0, ch.request("hello"))
forged = commit(start, {"a.txt": "forged\n", "forged.txt": "forged\n"})
onto_user = commit(start, {"README.md": "overwritten\n"})
forge = task["hostile"]["forge"]
# Parking (keeping leftovers) is for a worker that just started: refused whatever the bundle.
note("park other worker's branch", 0, ch.request("park", bundle([(other, forged)]), kind="interrupted", commit=forged))
note("park the user's branch", 0, ch.request("park", bundle([("refs/heads/main", onto_user)]), kind="interrupted", commit=onto_user))
note("park two refs", 0, ch.request("park", bundle([(P.PARK_REF, forged), ("refs/heads/user-work", forged)]), kind="interrupted", commit=forged))
note("park garbage", 0, ch.request("park", b"# v2 git bundle\n" + os.urandom(4096), kind="interrupted", commit=forged))
note("finish another task", 0, ch.request("finish", bundle([(other, forged)]), task="A", status="done", commit=forged))
note("checkpoint another task", 0, ch.request("checkpoint", bundle([(P.PARK_REF, forged)]), task="A", commit=forged))
note("unknown op", 0, ch.request("merge", branch="main"))

def raw(data):
    s = socket.socket(socket.AF_UNIX)
    s.connect(SOCK)
    s.settimeout(20)
    try:
        s.sendall(data)
        got = s.recv(4096)
    except OSError as exc:
        got = repr(exc).encode()
    s.close()
    return got

# Malformed and oversized messages and floods (one task does them): progress lines, park requests (each
# would keep a ref and its objects in the user's repository), connections (each would hold an orchestrator
# thread and file descriptor).
if forge == "other-branch":
    note("oversized message", 0, raw(b'{"op":"progress","line":"' + b"x" * (2 << 20) + b'"}\n'))
    note("oversized blob", 0, raw(b'{"op":"park","kind":"interrupted","commit":"%s","blob":%d}\n' % (forged.encode(), 300 << 20)))
    note("negative blob", 0, raw(b'{"op":"park","blob":-5}\n'))
    note("not json", 0, raw(b"\xff\xfe not json\n"))
    note("json array", 0, raw(b"[1, 2, 3]\n"))
    note("deep json", 0, raw(b"[" * 100000 + b"\n"))

    n = 0
    t0 = time.monotonic()
    while n < 1000 and time.monotonic() - t0 < 8:
        ch.request("progress", line="flood %d " % n + "y" * 480)
        n += 1
    note("progress flood", 0, n)
    kept = 0
    for i in range(10):
        c = commit(start, {"leftover-%d.txt" % i: "x\n"})
        reply = ch.request("park", bundle([(P.PARK_REF, c)]), kind="interrupted", commit=c)
        kept += bool(reply.get("ok"))
    note("park flood", 0, kept)
    held = []
    for i in range(100):
        try:
            s = socket.socket(socket.AF_UNIX)
            s.connect(SOCK)
            held.append(s)
        except OSError:
            break
    time.sleep(0.5)
    alive = 0
    for s in held:
        s.setblocking(False)
        try:
            alive += s.recv(1) != b""
        except BlockingIOError:
            alive += 1
        except OSError:
            pass
    note("connection flood", 0, "%d %d" % (len(held), alive))
    for s in held:
        s.close()
note("channel still answers", 0, ch.request("progress", line="still here"))
# Its own task's result, forged: another worker's branch, the user's branch, or rewritten history (a root
# commit on its own branch). Each is rejected, and the task fails.
if forge == "other-branch":
    reply = ch.request("finish", bundle([(other, forged)]), task=task["id"], status="done", commit=forged)
elif forge == "dotgit":  # a tree with .GIT/hooks/post-checkout: a hook on a case-insensitive checkout
    hook = g("hash-object", "-w", "--stdin", input="#!/bin/sh\ntouch /tmp/PWNED\n")
    hooks = g("mktree", input="100755 blob %s\tpost-checkout\n" % hook)
    dotgit = g("mktree", input="040000 tree %s\thooks\n" % hooks)
    top = g("ls-tree", start) + "\n040000 tree %s\t.GIT\n" % dotgit
    planted = g("commit-tree", g("mktree", input=top), "-p", start, "-m", "planted")
    reply = ch.request("finish", bundle([(mine, planted)]), task=task["id"], status="done", commit=planted)
elif forge == "user-branch":
    reply = ch.request("finish", bundle([("refs/heads/main", onto_user)]), task=task["id"], status="done", commit=onto_user)
else:
    rewrite = commit(None, {"README.md": "history rewritten\n"})
    reply = ch.request("finish", bundle([(mine, rewrite)], exclude=root), task=task["id"], status="done", commit=rewrite)
note("forged finish", 0, reply)
'''


def test_forged_results_malformed_messages_and_floods_on_the_channel(
    host: Host, make_plan: Any, docker_client: Any
) -> None:
    repo = host.repo
    graph = write_graph(repo, [
        task("H", 1, create=("h.txt",), py=CHANNEL_ATTACKS, forge="other-branch"),
        task("A", 1, create=("a.txt",), verify="test -f a.txt"),
        task("U", 1, create=("u.txt",), py=CHANNEL_ATTACKS, forge="user-branch"),
        task("R", 1, create=("r.txt",), py=CHANNEL_ATTACKS, forge="rewrite"),
        task("G", 1, create=("g.txt",), py=CHANNEL_ATTACKS, forge="dotgit"),
        task("B", 2, ("A",), create=("b.txt",), modify=("a.txt",), verify="grep -q 'task B' a.txt"),
    ])
    peak = {"threads": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.2):
            peak["threads"] = max(peak["threads"], threading.active_count())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        result, lines, seconds = run(host, make_plan, docker_client, graph, 2)
    finally:
        done.set()
    tasks = state_of(repo)["tasks"]
    assert {t: tasks[t]["status"] for t in "AB"} == {"A": "done", "B": "done"}, (tasks, lines)
    assert show(repo, "a.txt") == "created by task A\nmodified by task B"
    assert "forged.txt" not in base_files(repo) and show(repo, "README.md") == "hello"
    for tid in "HURG":
        rec = {k: v["out"] for k, v in attack_record(repo, tid).items()}
        assert "'ok': True" in rec["hello"]
        for name in ("park other worker's branch", "park the user's branch", "park two refs", "park garbage"):
            assert "leftovers are kept once per worker start" in rec[name], (name, rec[name])
        assert "'status': 'lost'" in rec["finish another task"], rec
        assert "'status': 'lost'" in rec["checkpoint another task"], rec
        assert "unknown request" in rec["unknown op"], rec
        assert "'ok': True" in rec["channel still answers"]
        assert tasks[tid]["status"] == "failed", tasks[tid]
    rec = {k: v["out"] for k, v in attack_record(repo, "H").items()}
    for name in ("oversized message", "oversized blob", "negative blob", "not json", "json array", "deep json"):
        assert rec[name] in ("b''", "ConnectionResetError(104, 'Connection reset by peer')") or "Broken pipe" in rec[name], (name, rec[name])
    assert "the bundle carries 'refs/heads/mahabharatha/feat/worker-" in tasks["H"]["error"], tasks["H"]
    assert "the bundle carries 'refs/heads/main'" in tasks["U"]["error"], tasks["U"]
    assert "does not descend from" in tasks["R"]["error"], tasks["R"]
    assert "git refused the bundle" in tasks["G"]["error"] and ".git" in tasks["G"]["error"], tasks["G"]
    # No forged bundle moved a ref outside the run's namespaces, or a worker's branch.
    for wid in (0, 1):
        assert "forged.txt" not in git(repo, "ls-tree", "-r", "--name-only", f"mahabharatha/feat/worker-{wid}")
    host.assert_repo_untouched()
    # Floods stay bounded on the host.
    progress = repo / ".gsd" / "specs" / "feat" / "progress.md"
    assert progress.stat().st_size < 256 << 10, (progress.stat().st_size, rec["progress flood"])
    interrupted = git(repo, "for-each-ref", "--format=%(refname)", "refs/mahabharatha/interrupted/").splitlines()
    assert len(interrupted) <= 2, (len(interrupted), rec["park flood"])  # at most one per worker start
    assert peak["threads"] < 60, (peak, rec["connection flood"])
    from mahabharatha.edge.channel import MAX_CONNECTIONS

    opened, alive = map(int, rec["connection flood"].split())
    assert opened == 100 and alive <= MAX_CONNECTIONS - 2, rec["connection flood"]  # the worker's and the agent's own
    host.user_git()
    times = host.status_and_cleanup()
    host.assert_symlink_targets_absent()
    assert seconds < 60, lines
    print(f"run {seconds:.1f} s; host commands {times}; peak threads {peak}; {rec['progress flood']} progress lines; "
          f"{len(interrupted)} parked; connections {rec['connection flood']}")


# ------------------------------------------------------------------------------------------------------------
# Liveness: an agent that keeps giving its task back must not keep the run going forever


GIVE_BACK = r'''
from mahabharatha_worker.channel import Channel
ch = Channel("/opt/mahabharatha/channel/worker.sock")
how = task["hostile"]["give_back"]
if how == "release":
    reply = ch.request("release")
else:
    reply = ch.request("checkpoint", task=task["id"], commit="", usage={"cost_usd": 0.0})
record["give back"] = {"cmd": how, "rc": 0, "out": str(reply)}
'''


def _run_bounded(plan: Any, graph: Any, docker_client: Any, limit: float) -> tuple[Any, list[str], float]:
    """orchestrate() with a deadline: past it the run is stopped (so a hang fails the test, not the suite)."""
    from mahabharatha.edge import executor

    box: dict[str, Any] = {}
    lines: list[str] = []
    started = time.monotonic()
    runner = threading.Thread(target=lambda: box.update(result=orchestrate(plan, graph, out=lines.append, client=docker_client)), daemon=True)
    runner.start()
    runner.join(limit)
    if runner.is_alive():
        store = S.StateStore(plan.state_dir, plan.feature)
        with store.transaction() as d:
            S.mark_stopped(d, "stopped by the test: over its time")
        executor.stop_workers(docker_client, plan.repo, plan.feature, timeout=1)
        runner.join(60)
    return box.get("result"), lines, time.monotonic() - started


def test_an_agent_giving_its_task_back_forever_does_not_keep_the_run_going(
    host: Host, make_plan: Any, docker_client: Any
) -> None:
    repo = host.repo
    graph = write_graph(repo, [
        task("A", 1, create=("a.txt",), verify="test -f a.txt"),
        task("K", 1, create=("k.txt",), py=GIVE_BACK, give_back="checkpoint"),
        task("L", 1, create=("l.txt",), py=GIVE_BACK, give_back="release"),
        task("B", 2, ("A",), create=("b.txt",), verify="test -f b.txt"),
    ])
    plan = make_plan(2, config=config())
    result, lines, seconds = _run_bounded(plan, graph, docker_client, 45)
    tasks = state_of(repo)["tasks"]
    assert result is not None and result.status != "stopped", (seconds, tasks, lines[-20:])
    assert {t: tasks[t]["status"] for t in "AB"} == {"A": "done", "B": "done"}, (tasks, lines)
    assert tasks["K"]["status"] == tasks["L"]["status"] == "failed", tasks
    assert {"a.txt", "b.txt"} <= base_files(repo) and not {"k.txt", "l.txt"} & base_files(repo)
    host.assert_repo_untouched()
    print(f"run {seconds:.1f} s; attempts K {tasks['K']['attempts']}, L {tasks['L']['attempts']}")


# ------------------------------------------------------------------------------------------------------------
# Resources: a fork bomb against the pids limit, huge output, sparse files, many files


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


FORK_BOMB = r'''
import os, signal, time

def cg(name):
    for path in ("/sys/fs/cgroup/pids/" + name, "/sys/fs/cgroup/" + name):
        try:
            return open(path).read().strip()
        except OSError:
            pass
    return ""

bomb = os.fork()
if bomb == 0:
    os.setsid()
    os.execvp("sh", ["sh", "-c", "b() { b | b & }; b"])
limit = int(cg("pids.max") or 0)
peak, full, t0 = 0, None, time.monotonic()
while time.monotonic() - t0 < 20 and (full is None or time.monotonic() - full < 1):  # at the limit for a second
    peak = max(peak, int(cg("pids.current") or 0))
    if full is None and peak >= limit:
        full = time.monotonic()
    time.sleep(0.02)
os.killpg(bomb, signal.SIGKILL)  # the whole bomb: its own process group
os.waitpid(bomb, 0)
t0 = time.monotonic()
while time.monotonic() - t0 < 10 and int(cg("pids.current") or 0) > 10:  # init reaps the orphans
    try:
        os.killpg(bomb, signal.SIGKILL)
    except ProcessLookupError:
        pass
    time.sleep(0.05)
record["fork bomb"] = {"cmd": "fork bomb", "rc": 0, "out": "%s %d %s" % (cg("pids.max"), peak, cg("pids.current"))}
'''


def test_fork_bomb_sparse_files_and_many_files_stay_in_the_container(
    host: Host, make_plan: Any, docker_client: Any
) -> None:
    repo = host.repo
    graph = write_graph(repo, [
        task("F", 1, create=("f.txt",), py=FORK_BOMB),
        task("S", 1, create=("s.txt",), steps=[
            # Sparse files where the worker does not commit (its private git dir, the excluded .mahabharatha),
            # a FIFO and many files: the host's status and cleanup must stay bounded.
            "truncate -s 10G /workspace/.git-worktree/big.bin && mkdir -p .mahabharatha && truncate -s 10G .mahabharatha/big.bin "
            "&& mkfifo fifo /workspace/.git-worktree/fifo && echo ok",
            "mkdir -p /workspace/.git-worktree/many && cd /workspace/.git-worktree/many && "
            "python3 -c 'import os\nfor i in range(2000): open(\"f%d\" % i, \"w\").close()' && echo ok",
            # Its own private git dir filled with a sparse "pack": the worker's git must cope or fail, nothing more.
            "truncate -s 10G /workspace/.git-worktree/objects/pack/pack-0000000000000000000000000000000000000000.pack && echo ok",
        ]),
        # Huge output (lines): the host copies it line by line, in bounded memory.
        task("O", 1, create=("o.txt",), stream="yes 'a line of hostile output, over and over' | head -c 4M"),
        task("A", 1, create=("a.txt",), verify="test -f a.txt"),
        task("B", 2, ("A",), create=("b.txt",), verify="test -f b.txt"),
    ])
    before = _peak_rss_mib()
    result, lines, seconds = run(host, make_plan, docker_client, graph, 2, pids=128)
    tasks = state_of(repo)["tasks"]
    assert {t: tasks[t]["status"] for t in "AB"} == {"A": "done", "B": "done"}, (tasks, lines)
    # The bomb hit the pids limit and no further; the container recovered and the task finished.
    pids_max, peak, after = attack_record(repo, "F")["fork bomb"]["out"].split()
    # (A loaded machine forks slowly: the bomb gets 20 s to reach the limit; it must never pass it.)
    assert pids_max == "128" and 32 < int(peak) <= 128, (pids_max, peak)
    assert int(after) < 20, after
    assert tasks["F"]["status"] == "done" and "f.txt" in base_files(repo), tasks["F"]
    assert step(attack_record(repo, "S"), "truncate -s 10G /workspace/.git-worktree/big.bin")["rc"] == 0
    assert "big.bin" not in " ".join(base_files(repo)) and "fifo" not in base_files(repo)
    _wait_for_logs(repo)
    assert sum(p.stat().st_size for p in _logs(repo)) > 4 << 20
    assert _peak_rss_mib() - before < 100
    host.assert_repo_untouched()
    host.user_git()
    times = host.status_and_cleanup()
    host.assert_symlink_targets_absent()
    assert seconds < 60, lines
    print(f"run {seconds:.1f} s; host commands {times}; bomb peak {peak}/{pids_max}; S {tasks['S']['status']}")


def _logs(repo: Path) -> list[Path]:
    logs = sorted((repo / ".mahabharatha" / "logs" / "workers").rglob("*.log"))
    assert logs, "no worker logs on the host"
    return logs


def _wait_for_logs(repo: Path, limit: float = 60) -> None:
    """Until every worker's host log has its last line (the host copies container output in the background)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit and not all(p.read_bytes().endswith(b"exiting\n") for p in _logs(repo)):
        time.sleep(0.2)


def test_a_line_without_newline_is_cut_on_the_host(host: Host, make_plan: Any, docker_client: Any) -> None:
    repo = host.repo
    graph = write_graph(repo, [
        task("O", 1, create=("o.txt",), steps=["head -c 4M /dev/zero | tr '\\0' x > /proc/1/fd/1"]),
        task("A", 1, create=("a.txt",)),
    ])
    result, lines, seconds = run(host, make_plan, docker_client, graph, 2)
    assert result.status == "done", lines
    _wait_for_logs(repo)
    longest = max(len(line) for p in _logs(repo) for line in p.read_bytes().split(b"\n"))
    assert longest <= 1 << 20, f"a host log line of {longest} bytes"


def test_a_10_gib_sparse_file_in_the_workspace_fails_its_task_quickly(host: Host, make_plan: Any, docker_client: Any) -> None:
    repo = host.repo
    graph = write_graph(repo, [
        task("T", 1, create=("t.txt",), steps=["truncate -s 10G big.bin && echo ok"]),
        task("A", 1, create=("a.txt",)),
        task("B", 2, ("A",), create=("b.txt",)),
    ])
    result, lines, seconds = _run_bounded(make_plan(2, config=config()), graph, docker_client, 10)
    assert result is not None and result.status != "stopped", (seconds, lines[-10:])
    tasks = state_of(repo)["tasks"]
    assert tasks["T"]["status"] == "failed" and {tasks[t]["status"] for t in "AB"} == {"done"}, tasks
    sizes = git(repo, "cat-file", "--batch-all-objects", "--batch-check=%(objectsize)").split()
    assert max(map(int, sizes)) < 100 << 20
    host.assert_repo_untouched()


def test_a_process_left_behind_by_a_hostile_task_cannot_change_the_next_task(host: Host, make_plan: Any, docker_client: Any) -> None:
    repo = host.repo
    graph = write_graph(repo, [
        task("P", 1, create=("p.txt",), steps=[
            # Waits for the next task's file, then changes it (and adds one of its own) for a while.
            "setsid sh -c 'for i in $(seq 3000); do if [ -f /workspace/q.txt ]; then "
            "for j in $(seq 200); do echo tampered >> /workspace/q.txt; echo x >> /workspace/tampered.txt; sleep 0.02; done; "
            "break; fi; sleep 0.01; done' </dev/null >/dev/null 2>&1 & echo started",
        ]),
        task("Q", 2, ("P",), create=("q.txt",), verify="test -f q.txt"),
    ])
    result, lines, seconds = run(host, make_plan, docker_client, graph, 1)
    assert step(attack_record(repo, "P"), "setsid")["rc"] == 0
    assert state_of(repo)["tasks"]["Q"]["status"] == "done", lines
    assert show(repo, "q.txt") == "created by task Q", show(repo, "q.txt")
    assert "tampered.txt" not in base_files(repo)


def test_a_garbled_bundle_is_rejected_in_one_line(git_repo: Path) -> None:
    """(No container needed.) Bytes that only start like a bundle: a rejection, not a decoding error."""
    from mahabharatha.edge.importer import ImportRejected, import_bundle

    head = git(git_repo, "rev-parse", "HEAD")
    for blob in (b"# v2 git bundle\n" + bytes(range(256)) * 16, b"\xff" * 100, b""):
        with pytest.raises(ImportRejected):
            import_bundle(str(git_repo), blob, expected_ref="refs/mahabharatha/park", commit=head,
                          dest_ref="refs/mahabharatha/interrupted/feat/worker-0-1", incoming_ref="refs/mahabharatha/incoming/feat/worker-0")
    assert git(git_repo, "for-each-ref", "--format=%(refname)") == "refs/heads/main"


# ------------------------------------------------------------------------------------------------------------
# The remote transport: the channel is TCP; an agent reads its worker's URL, token and pin from /proc

REMOTE_ATTACKS = ATTACK_HELPERS + r'''
import hashlib, os, socket, ssl, subprocess
from mahabharatha_worker.channel import Channel
from mahabharatha_worker import protocol as P

def worker_env():
    """The worker's own environment (the agent's has no channel, no token): its process is an ancestor."""
    pid = os.getppid()
    while pid > 1:
        try:
            raw = open("/proc/%d/environ" % pid, "rb").read()
        except OSError:
            raw = b""
        env = dict(kv.split("=", 1) for kv in raw.decode(errors="replace").split("\0") if "=" in kv)
        if env.get(P.ENV_CHANNEL_TOKEN):
            return env
        pid = int(open("/proc/%d/stat" % pid).read().rsplit(")", 1)[1].split()[1])
    raise RuntimeError("no worker environment found")


env = worker_env()
url, token, pin = env[P.ENV_CHANNEL], env[P.ENV_CHANNEL_TOKEN], env[P.ENV_CHANNEL_PIN]
wid = int(os.environ["ZERG_WORKER_ID"])
other = "refs/heads/mahabharatha/feat/worker-%d" % ((wid + 1) % 2)
start = g("rev-parse", "HEAD")
idx = dict(os.environ, GIT_INDEX_FILE="/tmp/forge.index")
g("read-tree", start, env=idx)
blob = g("hash-object", "-w", "--stdin", input="forged\n")
g("update-index", "--add", "--cacheinfo", "100644,%s,forged.txt" % blob, env=idx)
forged = g("commit-tree", g("write-tree", env=idx), "-p", start, "-m", "forged")

def bundle(ref):
    g("update-ref", ref, forged)
    g("bundle", "create", "-q", "/tmp/forged.bundle", ref, "^" + start)
    return open("/tmp/forged.bundle", "rb").read()

ch = Channel(url, token=token, pin=pin)
note("hello", 0, {k: v for k, v in ch.request("hello").items() if k != "_blob"})
replies = [ch.request("park", bundle(P.PARK_REF), kind="interrupted", commit=forged) for _ in range(20)]
note("park flood", 0, sum(1 for r in replies if r.get("ok")))
note("park another worker's branch", 0, ch.request("park", bundle(other), kind="interrupted", commit=forged))
note("finish another task", 0, ch.request("finish", bundle(other), task="A", status="done", commit=forged))
try:
    Channel(url, token="guessed-" + token[8:], pin=pin)
    note("a guessed token", 0, "admitted")
except Exception as exc:
    note("a guessed token", 1, exc)
# an oversized first frame, before any token: dropped
host, _, port = url[len("tcp://"):].rpartition(":")
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
s = ctx.wrap_socket(socket.create_connection((host, int(port)), 20))
try:
    s.sendall(b'{"op":"auth","token":"' + b"x" * (1 << 20) + b'"}\n')
    got = s.recv(4096)
except OSError as exc:
    got = repr(exc).encode()
note("oversized auth frame", 0, got)
s.close()
opened = []
for _ in range(30):
    try:
        opened.append(Channel(url, token=token, pin=pin))
    except Exception:
        pass
alive = 0
for c in opened:
    try:
        alive += bool(c.request("progress", line="x").get("ok"))
    except Exception:
        pass
note("connection flood", 0, "%d %d" % (len(opened), alive))
'''


def test_channel_attacks_over_the_remote_transport_stay_bounded(host: Host, make_plan: Any, docker_client: Any) -> None:
    """A remote worker's agent takes its worker's URL, token and pin (from /proc) and speaks for it over TCP:
    it can neither fill the user's repository with parked refs, nor act for another worker or task, nor hold
    more than its worker's connections; the honest tasks finish and merge; the user's repository is untouched."""
    from mahabharatha.edge.channel import MAX_CONNECTIONS

    from .test_remote import bridge_gateway

    repo = host.repo
    graph = write_graph(repo, [
        task("H", 1, create=("h.txt",), py=REMOTE_ATTACKS),
        task("A", 1, create=("a.txt",), verify="test -f a.txt"),
        task("B", 2, ("A",), create=("b.txt",), modify=("a.txt",), verify="grep -q 'task B' a.txt"),
    ])
    remote = config().replace(
        "workers:\n", f"workers:\n  transport: remote\n  channel_address: {bridge_gateway(docker_client)}\n", 1)
    plan = make_plan(2, config=remote)
    assert plan.transport == "remote"
    lines: list[str] = []
    result = orchestrate(plan, graph, out=lines.append, client=docker_client)
    tasks = state_of(repo)["tasks"]
    assert {t: tasks[t]["status"] for t in "AB"} == {"A": "done", "B": "done"}, (tasks, lines, result)
    rec = {k: v["out"] for k, v in attack_record(repo, "H").items()}
    assert "'ok': True" in rec["hello"], rec
    assert rec["park flood"] == "1", rec  # once for the task it holds, then refused
    assert "leftovers are kept once per worker start" in rec["park another worker's branch"], rec
    assert "'status': 'lost'" in rec["finish another task"], rec
    assert "bad token" in rec["a guessed token"], rec
    dropped = rec["oversized auth frame"]  # closed unanswered: seen as EOF, a reset, or a broken pipe mid-send
    assert dropped == "b''" or "Connection reset" in dropped or "Broken pipe" in dropped, rec
    opened, alive = map(int, rec["connection flood"].split())
    # 30 asked for; the worker's and the agent's first connection hold two of its MAX_CONNECTIONS
    assert opened == alive <= MAX_CONNECTIONS - 2, rec["connection flood"]
    interrupted = git(repo, "for-each-ref", "--format=%(refname)", "refs/mahabharatha/interrupted/").splitlines()
    assert len(interrupted) <= 1, interrupted
    assert "forged.txt" not in base_files(repo)
    for wid in (0, 1):
        assert "forged.txt" not in git(repo, "ls-tree", "-r", "--name-only", f"mahabharatha/feat/worker-{wid}")
    host.assert_repo_untouched()
    host.user_git()
