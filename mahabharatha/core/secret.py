"""Secrets are a type, not a string.

A :class:`Secret` holds a credential. Its ``repr``/``str``/format show only a redacted form such as
``sk-ant-…(redacted)``; msgspec refuses to encode it unless the caller passes :func:`redacting_enc_hook`
(which redacts) — so a forgotten hook fails closed instead of leaking. Only the executor calls
:meth:`Secret.reveal`, when it hands the value to the Docker API.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Secret", "redacting_enc_hook", "REDACTED"]

REDACTED = "…(redacted)"

# A well-known, non-secret prefix that helps a person recognise which kind of credential is meant.
_KNOWN_PREFIX = "sk-ant-"


class Secret:
    """An opaque credential. Compare and hash by value; never print it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError("Secret value must be a str")
        object.__setattr__(self, "_value", value)

    def __setattr__(self, name: str, value: Any) -> None:  # immutable, like the plans that carry it
        raise AttributeError("Secret is immutable")

    def reveal(self) -> str:
        """The real value. Only for handing to the Docker API; never log or render the result."""
        return self._value

    @property
    def redacted(self) -> str:
        """A recognisable but harmless form: the well-known prefix (if the value is long enough) plus a marker."""
        # Show the prefix only when plenty of the value stays hidden, so the output never contains the secret.
        if self._value.startswith(_KNOWN_PREFIX) and len(self._value) >= len(_KNOWN_PREFIX) + 16:
            return _KNOWN_PREFIX + REDACTED
        return REDACTED

    def __repr__(self) -> str:
        return f"Secret({self.redacted!r})"

    def __str__(self) -> str:  # str() and f-strings are redacted too
        return self.redacted

    def __format__(self, spec: str) -> str:
        return self.redacted

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __reduce__(self) -> Any:  # pickling would write the value somewhere; refuse
        raise TypeError("Secret cannot be pickled")


def redacting_enc_hook(obj: Any) -> Any:
    """msgspec ``enc_hook`` for every rendering: secrets become their redacted form."""
    if isinstance(obj, Secret):
        return obj.redacted
    raise NotImplementedError(f"cannot encode {type(obj).__name__}")
