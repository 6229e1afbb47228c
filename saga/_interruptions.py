"""Interruptions: recovery after a crash, suspension for an operator, resumption.

Part of the state machine (see `_machine` for its theory and table).
"""

from __future__ import annotations

from collections.abc import Sequence

from msgspec.structs import replace

from ._commands import Command, Finish, RunCompensation, RunStep
from ._definition import Saga
from ._events import Event, Recovered, Resumed, Suspended
from ._model import LIVE, SagaState, SagaStatus, StepState, StepStatus
from ._transitions import Transition, advance, in_flight, reject, wake_command


def carry_on(state: SagaState) -> Sequence[Command]:
    """What to do for a live saga loaded from its snapshot, with no new event."""
    return in_flight(state) or wake_command(state)


def _mark_interrupted(state: SagaState) -> tuple[StepState, ...]:
    """In-flight forward intents outlive this interruption: their actions may have run."""
    if state.status is not SagaStatus.RUNNING:
        return state.steps
    return tuple(
        replace(step, interrupted=True)
        if step.status is StepStatus.RUNNING and not step.interrupted
        else step
        for step in state.steps
    )


def on_recovered(saga: Saga, state: SagaState, event: Recovered) -> Transition:
    if state.status not in LIVE:
        return Transition(state, ())
    running = in_flight(state)
    if not running:
        return Transition(state, carry_on(state))
    recoveries = state.recoveries + 1
    if recoveries > event.max_recoveries:
        reason = (
            f"recovered {recoveries} times in a row while {_describe(running[0])} "
            "was in flight, without progress"
        )
        return suspend(state, event, reason, recoveries=recoveries)
    # The interrupted attempt runs again with the same number: a crash is
    # not the step's failure and costs nothing from its retry budget.
    new = advance(state, event, recoveries=recoveries, steps=_mark_interrupted(state))
    return Transition(new, running)


def _describe(command: Command) -> str:
    if isinstance(command, RunStep):
        return f"step {command.step} attempt {command.attempt}"
    if isinstance(command, RunCompensation):
        return f"the compensation of step {command.step}"
    return repr(command)  # pragma: no cover


def suspend(state: SagaState, event: Event, reason: str, **changes: object) -> Transition:
    new = advance(
        state,
        event,
        status=SagaStatus.SUSPENDED,
        suspended_reason=reason,
        resume_status=state.status,
        **changes,
    )
    return Transition(new, (Finish(SagaStatus.SUSPENDED),))


def on_suspended(saga: Saga, state: SagaState, event: Suspended) -> Transition:
    return suspend(state, event, event.reason)


def on_resumed(saga: Saga, state: SagaState, event: Resumed) -> Transition:
    if state.resume_status is None:
        raise reject(state, event, "it has no status to resume")
    new = advance(
        state,
        event,
        status=state.resume_status,
        resume_status=None,
        suspended_reason=None,
        recoveries=0,
        steps=_mark_interrupted(replace(state, status=state.resume_status)),
    )
    return Transition(new, carry_on(new))
