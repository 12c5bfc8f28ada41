"""What verifying a worker's result costs per task: :func:`mahabharatha.edge.importer.import_bundle`.

A worker's private repository (the user's objects as alternates, as in a container) commits a task's files,
bundles the commit, and the host imports it onto the worker branch (list-heads, fetch with fsck, descent and
file-ownership checks, compare-and-swap). Measured per task for results of 1, 10 and 100 files, against a
baseline measured in the same run: one ``git rev-parse`` (what a single host git call costs here; before the
isolation work the host spent nothing per task, since workers wrote the repository themselves).

    python benchmarks/import_bench.py [--tasks 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mahabharatha.edge.importer import import_bundle
from mahabharatha.worker.gitsetup import Repo


def _git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@x", "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@x"}
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True, env=env).stdout.strip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=20)
    args = parser.parse_args()
    os.environ.update({"GIT_AUTHOR_NAME": "w", "GIT_AUTHOR_EMAIL": "w@x", "GIT_COMMITTER_NAME": "w", "GIT_COMMITTER_EMAIL": "w@x"})
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        repo = root / "repo"
        repo.mkdir()
        _git(repo, "init", "-q", "-b", "main")
        for i in range(200):  # a repository with some history to verify against
            (repo / f"src{i % 20}").mkdir(exist_ok=True)
            (repo / f"src{i % 20}" / f"m{i}.py").write_text(f"x = {i}\n" * 50)
        _git(repo, "add", "-A")
        _git(repo, "commit", "-qm", "init")
        branch = "mahabharatha/bench/worker-0"
        _git(repo, "branch", branch)
        ws, private = root / "ws", root / "private"
        ws.mkdir()
        worker = Repo(str(ws), str(private), branch, str(repo / ".git" / "objects"))
        worker.ensure()
        start = _git(repo, "rev-parse", branch)
        worker.checkout(start)

        baseline = []
        for _ in range(args.tasks):
            t0 = time.perf_counter()
            _git(repo, "rev-parse", "HEAD")
            baseline.append(time.perf_counter() - t0)
        base_ms = statistics.median(baseline) * 1000

        print(f"import per task, median of {args.tasks} (ms); baseline: one git call = {base_ms:.1f} ms")
        print(f"{'files':>6} {'bundle KB':>10} {'import ms':>10} {'x git call':>11}")
        n = 0
        for files in (1, 10, 100):
            times, sizes = [], []
            for _ in range(args.tasks):
                n += 1
                for f in range(files):
                    (ws / f"out{n}_{f}.txt").write_text(f"task {n} file {f}\n" * 20)
                commit = worker.snapshot(start, f"task {n}")
                assert commit is not None
                blob = worker.bundle(worker.ref, commit, start)
                sizes.append(len(blob))
                t0 = time.perf_counter()
                import_bundle(
                    str(repo), blob, expected_ref=f"refs/heads/{branch}", commit=commit, dest_ref=f"refs/heads/{branch}",
                    incoming_ref="refs/mahabharatha/incoming/bench/worker-0", start=start, foreign={"src0/m0.py": "other"},
                )
                times.append(time.perf_counter() - t0)
                worker.checkout(commit)
                start = commit
            ms = statistics.median(times) * 1000
            print(f"{files:>6} {statistics.median(sizes) / 1024:>10.1f} {ms:>10.1f} {ms / base_ms:>10.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
