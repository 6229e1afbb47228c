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


class Advance(msgspec.Struct, frozen=True, gc=False):
    """A code saga's body must react to the outcomes it waited for before the transition
    can finish: the driver asks the body, then applies the event again with its reaction.

    Never persisted: only a transition that still lacks a reaction returns it.
    """


Command = RunStep | RunCompensation | ScheduleWakeup | Finish | Advance
