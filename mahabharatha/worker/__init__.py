"""The worker runtime: the program that runs *inside* a worker container.

Standard library and git only, so any image with ``python3`` and ``git`` can be a worker image. The host
bind-mounts this directory read-only into each container (see the plan's mounts) and runs
``python3 -m mahabharatha_worker``. Nothing here may import from the rest of ``mahabharatha``; the host side
imports :mod:`.protocol` and :mod:`.state` from here so both sides share one definition of the contract.
"""
