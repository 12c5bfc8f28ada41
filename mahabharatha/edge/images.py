"""Worker images: check that an image exists locally, build it from the Dockerfile when asked.

Images are never pulled: the executor only uses what is on the engine (``images.get``), so a missing image is
a clear "build it" message instead of a surprise download. Building uses the engine's classic builder
through docker-py with a context holding only the Dockerfile (it copies nothing from the repository), so a
build sends a few KB instead of the whole checkout.

The Dockerfile ships inside the package (``mahabharatha/data/Dockerfile``), so ``mahabharatha build-image`` works
from an installed wheel; ``.devcontainer/Dockerfile`` in a checkout is a byte-identical copy (a unit test keeps
them equal) for the documented ``docker build -f .devcontainer/Dockerfile .``.
"""

from __future__ import annotations

import io
import re
import tarfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..errors import LaunchError

__all__ = [
    "BUILD_COMMAND",
    "DEFAULT_IMAGE",
    "default_dockerfile",
    "image_exists",
    "ensure_image",
]

DEFAULT_IMAGE = "mahabharatha-worker"
BUILD_COMMAND = "docker build -t mahabharatha-worker -f .devcontainer/Dockerfile ."


# Docker hands each build arg to RUN as an environment variable; Linux refuses to exec with one string over
# MAX_ARG_STRLEN (32 pages: 128 KiB), so the build would fail with a bare "argument list too long".
MAX_BUILD_ARG_BYTES = 128 * 1024 - 1
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_RUN_STEP = re.compile(r"The command '.*' returned a non-zero code", re.S)


def default_dockerfile() -> Path:
    """The worker image's Dockerfile shipped in the package (``mahabharatha/data/Dockerfile``); the same bytes as
    ``.devcontainer/Dockerfile`` of a checkout."""
    return Path(__file__).resolve().parents[1] / "data" / "Dockerfile"


def _check_buildargs(buildargs: Mapping[str, str]) -> None:
    for name, value in buildargs.items():
        size = len(value.encode())
        if size > MAX_BUILD_ARG_BYTES:
            hint = "pass only the proxy's CA certificate, not a whole CA bundle" if name == "EXTRA_CA_CERT" else None
            raise LaunchError(
                f"build arg {name} is {size} bytes; Docker passes build args to RUN as environment variables, "
                f"which Linux caps at {MAX_BUILD_ARG_BYTES + 1} bytes",
                hint=hint,
            )


def _default_base(dockerfile: Path) -> str | None:
    """The default of ``ARG BASE_IMAGE=...`` in a Dockerfile, if it declares one."""
    for line in dockerfile.read_text().splitlines():
        words = line.split()
        if len(words) == 2 and words[0].upper() == "ARG" and words[1].startswith("BASE_IMAGE="):
            return words[1].split("=", 1)[1] or None
    return None


def image_exists(client: Any, tag: str) -> bool:
    """True when ``tag`` is present on the engine. Never pulls. A name the engine rejects (``BAD IMAGE``) or an
    engine that cannot answer is a :class:`LaunchError`."""
    import docker.errors

    try:
        client.images.get(tag)
    except docker.errors.ImageNotFound:
        return False
    except docker.errors.APIError as exc:
        if exc.status_code == 400:
            raise LaunchError(
                f"image {tag!r} is not a valid Docker image reference ({exc.explanation or exc})",
                hint="use a name like mahabharatha-worker or registry:5000/team/worker:tag",
            ) from None
        raise LaunchError(f"the Docker engine could not look up image {tag}: {exc.explanation or exc}") from None
    return True


def _context(dockerfile: Path, context: Path | None) -> tuple[Any, bool, str]:
    """(build source, custom_context, dockerfile name) for ``api.build``."""
    if context is not None:
        try:
            rel = str(dockerfile.resolve().relative_to(context.resolve()))
        except ValueError:
            rel = str(dockerfile.resolve())
        return str(context), False, rel
    buf = io.BytesIO()
    data = dockerfile.read_bytes()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(data)
        info.mode = 0o644
        tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    return buf, True, "Dockerfile"


def ensure_image(
    client: Any,
    tag: str,
    *,
    dockerfile: str | Path | None = None,
    context: str | Path | None = None,
    buildargs: Mapping[str, str] | None = None,
    force: bool = False,
    on_output: Callable[[str], None] | None = None,
) -> str:
    """Return the id of image ``tag``, building it from ``dockerfile`` first when it is missing (or ``force``).

    ``context`` is the build context directory; by default the context holds only the Dockerfile.
    ``on_output`` receives the builder's output lines (progress for the CLI). Build failures raise
    :class:`LaunchError` with the builder's last message.
    """
    import docker.errors

    if not force:
        try:
            return str(client.images.get(tag).id)
        except docker.errors.ImageNotFound:
            pass
    path = Path(dockerfile) if dockerfile is not None else default_dockerfile()
    _check_buildargs(buildargs or {})
    if not path.is_file():
        raise LaunchError(
            f"Cannot build image {tag}: Dockerfile {path} not found",
            hint=f"run `{BUILD_COMMAND}` in a mahabharatha checkout",
        )
    source, custom, name = _context(path, Path(context) if context is not None else None)
    kwargs: dict[str, Any] = {
        "tag": tag,
        "dockerfile": name,
        "buildargs": dict(buildargs or {}),
        "rm": True,
        "forcerm": True,
        "decode": True,
    }
    if custom:
        kwargs.update(fileobj=source, custom_context=True)
    else:
        kwargs["path"] = source
    tail: list[str] = []
    try:
        for chunk in client.api.build(**kwargs):
            if "error" in chunk or "errorDetail" in chunk:
                detail = chunk.get("error") or chunk.get("errorDetail", {}).get("message", "unknown error")
                # The classic builder quotes the whole RUN line; the step's own output (the tail) says more.
                detail = _RUN_STEP.sub("a RUN step returned a non-zero code", str(detail))
                last = " | ".join(line for line in tail[-3:] if line)
                hint = f"last build output: {last}" if last else None
                base = (buildargs or {}).get("BASE_IMAGE") or _default_base(path)
                if base and not image_exists(client, base):
                    hint = (
                        f"the base image {base} is not on the engine and could not be pulled; offline, build "
                        "one with `scripts/build_offline_base.sh`, then `mahabharatha build-image --base-image "
                        "mahabharatha-base:trixie`"
                    )
                raise LaunchError(f"Building image {tag} from {path} failed: {str(detail).strip()}", hint=hint)
            text = chunk.get("stream") or chunk.get("status") or ""
            for line in _ANSI.sub("", text).splitlines():
                if not line.strip():
                    continue
                if not line.startswith((" ---> ", "Removing intermediate container")):  # builder chatter
                    tail.append(line.rstrip())
                if on_output is not None:
                    on_output(line.rstrip())
            del tail[:-20]
    except docker.errors.DockerException as exc:
        raise LaunchError(f"Building image {tag} from {path} failed: {exc}") from None
    try:
        return str(client.images.get(tag).id)
    except docker.errors.ImageNotFound:
        raise LaunchError(f"Building image {tag} from {path} finished but the image is missing") from None
