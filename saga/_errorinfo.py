"""Recorded values every layer of the saga model shares: errors as data, and JSON null."""

from __future__ import annotations

import enum

import msgspec

NULL = msgspec.Raw(b"null")
"""The recorded result of a step that has none (yet)."""


class FailureKind(enum.StrEnum):
    """What a failed attempt proves about its effect."""

    TRANSIENT = "transient"
    """May be retried; if retries run out the step is ambiguous."""
    DEFINITIVE = "definitive"
    """Proves the attempt took no effect; never retried."""
    AMBIGUOUS = "ambiguous"
    """Not retried, yet may have taken effect (e.g. an unserializable result)."""


class ErrorInfo(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    """An error as recorded: its type's qualified name and its message."""

    type: str
    message: str
    timed_out: bool = False

    def __str__(self) -> str:
        return f"{self.type}: {self.message}" if self.message else self.type
