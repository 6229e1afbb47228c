"""Events: the inputs of the state machine, appended to each saga's history.

Each carries `at`, the time it happened (the machine reads no clock), and
whatever randomness its transition needs (`jitter`, in [0, 1)). In a code
saga, an event that gives the calls its body waits for their final outcome
also carries `then`: what the body did next (see `_calls`).
"""

from __future__ import annotations

import msgspec

from ._calls import Reaction
from ._errorinfo import NULL, ErrorInfo, FailureKind
from ._model import ParentRef, SagaStatus

Reactions = tuple[Reaction, ...]


# gc=False: frozen scalars and raw JSON cannot form cycles (see `_model`).
class _Event(
    msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, tag_field="event", gc=False
):
    """Base of every event: `at` is when it happened, on the runtime's clock; `event` (the
    tag) names its type in the history's JSON."""

    at: float


class SagaStarted(_Event, frozen=True, tag="started"):
    """The saga was spawned: its first step starts (a code saga: its body's first calls).

    `parent` is set for a child saga started by a parent's `ctx.child`.
    """

    then: Reactions = ()
    parent: ParentRef | None = None


class StepSucceeded(_Event, frozen=True, tag="step_succeeded"):
    """Attempt `attempt` of step `step` returned `result` (JSON)."""

    step: int
    attempt: int
    result: msgspec.Raw = NULL
    then: Reactions = ()


class StepFailed(_Event, frozen=True, tag="step_failed"):
    """Attempt `attempt` of step `step` raised; `kind` says what that proves."""

    step: int
    attempt: int
    error: ErrorInfo
    kind: FailureKind
    jitter: float = 0.0
    then: Reactions = ()


class StepWaiting(_Event, frozen=True, tag="step_waiting"):
    """Waiting step `step` began waiting, until `until` (None: for its signal only).

    For a code saga's child call: the child exists and runs; the call waits for it.
    """

    step: int
    attempt: int
    until: float | None = None


class SignalReceived(_Event, frozen=True, tag="signal_received"):
    """Signal `name` was delivered from the durable inbox."""

    name: str
    payload: msgspec.Raw = NULL
    key: str | None = None
    then: Reactions = ()


class CancelRequested(_Event, frozen=True, tag="cancel_requested"):
    """An operator cancelled the saga.

    `not_started`: running steps (one, or several of a parallel group)
    whose actions the driver did not start, because the cancellation was
    waiting; the machine decides which of them never ran at all.
    """

    reason: str
    not_started: int | tuple[int, ...] | None = None


class CompensateRequested(_Event, frozen=True, tag="compensate_requested"):
    """The parent of a child saga compensates it: a completed child rolls back as a unit,
    a live one stops its forward path as if cancelled."""

    reason: str
    not_started: int | tuple[int, ...] | None = None


class ChildEnded(_Event, frozen=True, tag="child_ended"):
    """The child saga of call `step` reached `status` (its output or its error with it)."""

    step: int
    child: str
    status: SagaStatus
    result: msgspec.Raw = NULL
    error: ErrorInfo | None = None
    then: Reactions = ()


class CompensationWaiting(_Event, frozen=True, tag="compensation_waiting"):
    """The compensation of child call `step` was requested from the child: it waits for it."""

    step: int
    attempt: int


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

    then: Reactions = ()


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
    | CompensateRequested
    | ChildEnded
    | CompensationWaiting
    | TimerFired
    | Recovered
    | Suspended
    | Resumed
)
