"""What a waiting step waits for: a duration or a time (`Sleep`), or a signal (`WaitForSignal`)."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


class OnTimeout(enum.StrEnum):
    """What a `WaitForSignal` step does when its timeout passes with no signal."""

    COMPENSATE = "compensate"
    """The wait fails definitively (it took no effect); earlier steps are compensated."""
    FAIL = "fail"
    """The saga ends `failed` at once, nothing compensated: an operator decides."""


@dataclass(frozen=True, slots=True)
class Continue:
    """On timeout, carry on as if the signal had arrived with `default` as its payload."""

    default: Any


UntilFunction = Callable[..., Any]
"""`until(ctx, saga_input) -> datetime | float`: when a `Sleep` ends (aware datetime or epoch)."""


@dataclass(frozen=True, slots=True)
class SleepSpec:
    """A durable sleep as the machine sees it: `seconds` from now, or `until(...)`."""

    seconds: float | None
    until: UntilFunction | None


@dataclass(frozen=True, slots=True)
class SignalSpec:
    """A wait for signal `signal` as the machine sees it, with its timeout and what a
    timeout does (fail the step, or `Continue` with `default`)."""

    signal: str
    payload_type: Any
    timeout: float | None
    on_timeout: OnTimeout | Continue
    default: bytes | None
    """The `Continue` default, encoded at declaration time (the machine stays pure)."""
