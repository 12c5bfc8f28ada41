"""A scripted, deterministic stand-in for a coding agent (``python3 -m mahabharatha_worker.scripted_agent``).

Used by ``mahabharatha demo``, the tests and the benchmark: no network, no API key. It reads the task from
``$MAHABHARATHA_TASK_JSON`` and writes each file of ``files.create`` and appends to each of ``files.modify``.
A task may carry an optional ``scripted`` object (an extra field, ignored by everything else) to script
behaviour:

- ``"content": {"path": "text", ...}``: exact content for created files (default: a header naming the task);
- ``"exit": {"<attempt>": code}``: exit with ``code`` on that attempt (e.g. ``{"1": 2}``: context limit once);
- ``"allocate_mb": {"<attempt>": mb}``: allocate and touch that much memory first (e.g. to be OOM-killed);
- ``"sleep": seconds`` or ``{"<attempt>": seconds}``: sleep before writing (e.g. to be stopped mid-task);
- ``"draft": "path"``: write that file (a draft) first: uncommitted work when stopped or killed mid-task.

Standard library only.
"""

from __future__ import annotations

import json
import os
import sys
import time


def main() -> int:
    with open(os.environ["MAHABHARATHA_TASK_JSON"], encoding="utf-8") as fh:
        task = json.load(fh)
    attempt = os.environ.get("MAHABHARATHA_TASK_ATTEMPT", "1")
    script = task.get("scripted") or {}
    draft = script.get("draft")
    if isinstance(draft, str) and draft:
        with open(draft, "w", encoding="utf-8") as fh:
            fh.write(f"draft of task {task['id']}\n")
    mb = int((script.get("allocate_mb") or {}).get(attempt, 0))
    if mb:
        print(f"scripted agent: allocating {mb} MB", flush=True)
        hog = bytearray(mb * 1024 * 1024)
        for i in range(0, len(hog), 4096):
            hog[i] = 1
    sleep = script.get("sleep") or 0
    if isinstance(sleep, dict):
        sleep = sleep.get(attempt, 0)
    if sleep:
        time.sleep(float(sleep))
    code = (script.get("exit") or {}).get(attempt)
    if code is not None:
        print(f"scripted agent: exiting {code} on attempt {attempt}", flush=True)
        return int(code)
    files = task.get("files") or {}
    content = script.get("content") or {}
    for path in files.get("create") or ():
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(content.get(path, f"# {path}\n# created by task {task['id']}: {task.get('title', '')}\n"))
    for path in files.get("modify") or ():
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(f"# modified by task {task['id']}: {task.get('title', '')}\n")
    print(f"scripted agent: task {task['id']} wrote {len(files.get('create') or ())} file(s), "
          f"modified {len(files.get('modify') or ())}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
