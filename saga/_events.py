"""Events: the inputs of the state machine, appended to each saga's history.

Each carries `at`, the time it happened (the machine reads no clock), and
whatever randomness its transition needs (`jitter`, in [0, 1)).
"""

from __future__ import annotations

import msgspec

from ._model import NULL, ErrorInfo, FailureKind


# gc=False: frozen scalars and raw JSON cannot form cycles (see `_model`).
class _Event(
    msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, tag_field="event", gc=False
):
    at: float


class SagaStarted(_Event, frozen=True, tag="started"):
    """The saga was spawned: its first step starts."""


class StepSucceeded(_Event, frozen=True, tag="step_succeeded"):
    """Attempt `attempt` of step `step` returned `result` (JSON)."""

    step: int
    attempt: int
    result: msgspec.Raw = NULL


class StepFailed(_Event, frozen=True, tag="step_failed"):
    """Attempt `attempt` of step `step` raised; `kind` says what that proves."""

    step: int
    attempt: int
    error: ErrorInfo
    kind: FailureKind
    jitter: float = 0.0


class StepWaiting(_Event, frozen=True, tag="step_waiting"):
    """Waiting step `step` began waiting, until `until` (None: for its signal only)."""

    step: int
    attempt: int
    until: float | None = None


class SignalReceived(_Event, frozen=True, tag="signal_received"):
    """Signal `name` was delivered from the durable inbox."""

    name: str
    payload: msgspec.Raw = NULL
    key: str | None = None


class CancelRequested(_Event, frozen=True, tag="cancel_requested"):
    """An operator cancelled the saga. `not_started` is a running step whose action never ran."""

    reason: str
    not_started: int | None = None


class CompensationSucceeded(_Event, frozen=True, tag="compensation_succeeded"):
    """The compensation of step `step` returned."""

    step: int
    attempt: int


class CompensationFailed(_Event, frozen=True, tag="compensation_failed"):
    """Attempt `attempt` of the compensation of step `step` raised."""

    step: int
    attempt: int
    error: ErrorInfo
    kind: FailureKind
    jitter: float = 0.0


class TimerFired(_Event, frozen=True, tag="timer_fired"):
    """A scheduled wake-up fell due (a retry may start)."""


class Recovered(_Event, frozen=True, tag="recovered"):
    """The saga's actor (re)started from the snapshot: after a crash, a restart or a reopen."""

    max_recoveries: int


class Suspended(_Event, frozen=True, tag="suspended"):
    """The runtime parked the saga for an operator, for `reason`."""

    reason: str


class Resumed(_Event, frozen=True, tag="resumed"):
    """An operator resumed a suspended saga."""


Event = (
    SagaStarted
    | StepSucceeded
    | StepFailed
    | CompensationSucceeded
    | CompensationFailed
    | StepWaiting
    | SignalReceived
    | CancelRequested
    | TimerFired
    | Recovered
    | Suspended
    | Resumed
)
