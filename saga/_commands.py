"""Commands: what the state machine asks its driver (the saga actor) to do next."""

from __future__ import annotations

import msgspec

from ._model import SagaStatus

# Frozen msgspec Structs, not dataclasses: the state machine makes one or two per
# transition, and a frozen dataclass takes several times longer to build.


class RunStep(msgspec.Struct, frozen=True, gc=False):
    """Run attempt `attempt` of step `step` (its intent is already durable)."""

    step: int
    attempt: int


class RunCompensation(msgspec.Struct, frozen=True, gc=False):
    """Run attempt `attempt` of the compensation of step `step`."""

    step: int
    attempt: int


class ScheduleWakeup(msgspec.Struct, frozen=True, gc=False):
    """Deliver `TimerFired` once the clock reaches `at`."""

    at: float


class Finish(msgspec.Struct, frozen=True, gc=False):
    """Stop driving the saga: it reached `status` (terminal, or suspended)."""

    status: SagaStatus


Command = RunStep | RunCompensation | ScheduleWakeup | Finish
