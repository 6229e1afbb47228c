"""What every part of the state machine shares: the result type and small helpers.

The machine's rules live in `_machine` (its theory and table), `_compensation`
and `_interruptions`; this module holds only what they all build on.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import NamedTuple

from msgspec.structs import replace

from ._calls import Reaction
from ._commands import Advance, Command, RunCompensation, RunStep, ScheduleWakeup
from ._errorinfo import ErrorInfo
from ._errors import InvalidTransitionError
from ._events import Event
from ._model import CompensationStatus, SagaState, SagaStatus, StepState, StepStatus


class Transition(NamedTuple):
    """The result of `transition`: the next snapshot and the commands to carry out."""

    state: SagaState
    commands: Sequence[Command]

    @property
    def needs_reaction(self) -> bool:
        """The event finished a group of a code saga but lacks the body's reaction."""
        commands = self.commands
        return bool(commands) and type(commands[-1]) is Advance


UNDER_WAY = frozenset({StepStatus.RUNNING, StepStatus.RETRYING, StepStatus.WAITING})
FINAL = frozenset({StepStatus.SUCCEEDED, StepStatus.FAILED, StepStatus.AMBIGUOUS})
MAY_HAVE_TAKEN_EFFECT = frozenset({StepStatus.SUCCEEDED, StepStatus.AMBIGUOUS})
COMPENSATION_UNDER_WAY = frozenset(
    {CompensationStatus.RUNNING, CompensationStatus.RETRYING, CompensationStatus.WAITING}
)
ADVANCE = (Advance(),)


def advance(state: SagaState, event: Event, **changes: object) -> SagaState:
    return replace(state, seq=state.seq + 1, updated_at=event.at, **changes)


def with_step(steps: tuple[StepState, ...], index: int, step: StepState) -> tuple[StepState, ...]:
    return (*steps[:index], step, *steps[index + 1 :])


def reject(state: SagaState, event: Event, why: str) -> InvalidTransitionError:
    return InvalidTransitionError(
        f"saga {state.saga_id!r} (status {state.status}, seq {state.seq}): "
        f"cannot apply {type(event).__name__}: {why}"
    )


def deadline_passed(state: SagaState, at: float) -> bool:
    return state.deadline_at is not None and at >= state.deadline_at


def saga_error(kind: str, message: str) -> ErrorInfo:
    return ErrorInfo(type=f"saga.{kind}", message=message)


DEADLINE = saga_error("DeadlineExceeded", "the saga's deadline passed")


def wake_command(state: SagaState) -> Sequence[Command]:
    wake_at = state.wake_at
    return () if wake_at is None else (ScheduleWakeup(wake_at),)


class Reactions:
    """The body's reactions an event carries, taken in order by the groups it finishes."""

    __slots__ = ("_left",)

    def __init__(self, reactions: Iterable[Reaction]) -> None:
        self._left: Iterator[Reaction] = iter(reactions)

    def next(self) -> Reaction | None:
        return next(self._left, None)


def in_flight(state: SagaState) -> tuple[Command, ...]:
    """The commands whose intents are durable but whose outcomes are not."""
    if state.status is SagaStatus.RUNNING:
        return tuple(
            RunStep(index, step.attempts)
            for index, step in enumerate(state.steps)
            if step.status is StepStatus.RUNNING
        )
    if state.status is SagaStatus.COMPENSATING:
        return tuple(
            RunCompensation(index, step.compensation_attempts)
            for index, step in enumerate(state.steps)
            if step.compensation is CompensationStatus.RUNNING
        )
    return ()
