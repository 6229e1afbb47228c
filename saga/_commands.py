"""Commands: what the state machine asks its driver (the saga actor) to do next."""

from __future__ import annotations

from dataclasses import dataclass

from ._model import SagaStatus


@dataclass(frozen=True, slots=True)
class RunStep:
    """Run attempt `attempt` of step `step` (its intent is already durable)."""

    step: int
    attempt: int


@dataclass(frozen=True, slots=True)
class RunCompensation:
    """Run attempt `attempt` of the compensation of step `step`."""

    step: int
    attempt: int


@dataclass(frozen=True, slots=True)
class ScheduleWakeup:
    """Deliver `TimerFired` once the clock reaches `at`."""

    at: float


@dataclass(frozen=True, slots=True)
class Finish:
    """Stop driving the saga: it reached `status` (terminal, or suspended)."""

    status: SagaStatus


Command = RunStep | RunCompensation | ScheduleWakeup | Finish
