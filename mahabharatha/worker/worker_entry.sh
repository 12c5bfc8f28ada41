#!/bin/sh
# The worker container's entry step, for images or setups that want a script rather than
# `python3 -m mahabharatha_worker` (what mahabharatha's plans run). The runtime itself checks that git sees
# /workspace as this worker's worktree (the host mounts small overlay files over the worktree's git
# pointers, so nothing the host's git reads is rewritten), prints the ready line, then works the tasks.
set -eu
export PYTHONPATH="${PYTHONPATH:-/opt/mahabharatha/lib}"
exec python3 -m mahabharatha_worker "$@"
