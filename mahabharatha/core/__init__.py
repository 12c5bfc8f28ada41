"""The pure core: config, auth discovery, mounts, task graph and the LaunchPlan.

Nothing in this package talks to Docker, runs git, reads the clock or the real ``$HOME``: it reads only the
files it is handed and returns frozen msgspec Structs, so the same inputs give the same plan, byte for byte.
"""
