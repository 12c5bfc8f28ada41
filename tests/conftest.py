"""Shared test settings: never let tests reach for testcontainers' Ryuk (its image cannot be pulled here)."""

import os

os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
