"""Events: the inputs of the state machine, appended to each saga's history.

Each carries `at`, the time it happened (the machine reads no clock), and
whatever randomness its transition needs (`jitter`, in [0, 1)).
"""

from __future__ import annotations

import msgspec

from ._model import NULL, ErrorInfo, FailureKind


class _Event(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, tag_field="event"):
    at: float


class SagaStarted(_Event, tag="started"):
    pass


class StepSucceeded(_Event, tag="step_succeeded"):
    step: int
    attempt: int
    result: msgspec.Raw = NULL


class StepFailed(_Event, tag="step_failed"):
    step: int
    attempt: int
    error: ErrorInfo
    kind: FailureKind
    jitter: float = 0.0


class CompensationSucceeded(_Event, tag="compensation_succeeded"):
    step: int
    attempt: int


class CompensationFailed(_Event, tag="compensation_failed"):
    step: int
    attempt: int
    error: ErrorInfo
    kind: FailureKind
    jitter: float = 0.0


class TimerFired(_Event, tag="timer_fired"):
    pass


class Recovered(_Event, tag="recovered"):
    """The saga's actor (re)started from the snapshot: after a crash, a restart or a reopen."""

    max_recoveries: int


class Suspended(_Event, tag="suspended"):
    reason: str


class Resumed(_Event, tag="resumed"):
    pass


Event = (
    SagaStarted
    | StepSucceeded
    | StepFailed
    | CompensationSucceeded
    | CompensationFailed
    | TimerFired
    | Recovered
    | Suspended
    | Resumed
)
