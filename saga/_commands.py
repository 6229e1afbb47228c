"""Commands: what the state machine asks its driver (the saga actor) to do next."""

from __future__ import annotations

from dataclasses import dataclass

from ._model import SagaStatus


@dataclass(frozen=True, slots=True)
class RunStep:
    step: int
    attempt: int


@dataclass(frozen=True, slots=True)
class RunCompensation:
    step: int
    attempt: int


@dataclass(frozen=True, slots=True)
class ScheduleWakeup:
    at: float


@dataclass(frozen=True, slots=True)
class Finish:
    """Stop driving the saga: it reached `status` (terminal, or suspended)."""

    status: SagaStatus


Command = RunStep | RunCompensation | ScheduleWakeup | Finish
