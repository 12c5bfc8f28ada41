"""``mahabharatha kurukshetra``: plan, launch, orchestrate. The ``--dry-run`` branch lives in :mod:`.dryrun`."""

from __future__ import annotations

import argparse

from ..errors import MahabharathaError

__all__ = ["cmd_kurukshetra"]


def cmd_kurukshetra(args: argparse.Namespace) -> int:
    if getattr(args, "dry_run", False):
        from .dryrun import run_dry_run

        return run_dry_run(args)
    raise MahabharathaError("launch not implemented yet", hint="use --dry-run to see the plan")
