"""The errors of the fault-injection kit: the ones it injects and the one it reports."""

from __future__ import annotations

from typing import TYPE_CHECKING

from saga import NonRetryableError

if TYPE_CHECKING:
    from ._report import FaultReport


class InjectedFault(Exception):  # noqa: N818 (public since 0.1; a fault, not an error of ours)
    """Base of the errors the kit raises inside a wrapped step to simulate a failure."""


class InjectedTransientError(InjectedFault):
    """Raised by a wrapped step or compensation for a "transient" or "effect_then_error" fault.

    Retryable under any policy that does not list it: the saga retries the attempt.
    """


class InjectedPermanentError(InjectedFault, NonRetryableError):
    """Raised by a wrapped step or compensation for a "permanent" fault, before the real call.

    A `NonRetryableError`: it fails the step definitively, which is only
    true when nothing took effect, so the kit never injects it once an
    earlier attempt of that step may have taken effect.
    """


class InvariantViolation(AssertionError):  # noqa: N818 (public since 0.1; an assertion)
    """Raised by `FaultInjection.check` and `.run` when a saga broke a guarantee under faults.

    Also raised when sagas did not end (a hang, a saga stuck with nothing to
    wake it) or a user invariant failed. `report` is the run's
    `FaultReport`; the message holds the timelines of the sagas involved,
    interleaved with the injected faults and crashes.
    """

    def __init__(self, message: str, report: FaultReport | None = None) -> None:
        super().__init__(message)
        self.report = report


for _cls in (InjectedFault, InjectedTransientError, InjectedPermanentError, InvariantViolation):
    _cls.__module__ = "runtime.testing"  # the name recorded in saga histories
