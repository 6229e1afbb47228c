"""Compensation: the positions that may have taken effect, undone newest group first.

Part of the state machine (see `_machine` for its theory and table).
"""

from __future__ import annotations

from msgspec.structs import replace

from . import _program as program
from ._commands import Finish, RunCompensation, ScheduleWakeup
from ._definition import Saga
from ._events import CompensationFailed, CompensationSucceeded, CompensationWaiting, Event
from ._model import CompensationStatus, ErrorInfo, FailureKind, SagaState, SagaStatus, StepState
from ._transitions import (
    COMPENSATION_UNDER_WAY,
    MAY_HAVE_TAKEN_EFFECT,
    Transition,
    advance,
    reject,
    wake_command,
    with_step,
)


def compensate(
    saga: Saga, state: SagaState, event: Event, failed_step: int | None, failure: ErrorInfo | None
) -> Transition:
    """Begin compensation (`state`'s steps already updated, not yet advanced)."""
    base = advance(
        state,
        event,
        status=SagaStatus.COMPENSATING,
        failed_step=failed_step,
        failure=failure,
        recoveries=0,
        waiting_for=None,
    )
    return compensate_next(saga, base)


def _to_compensate(saga: Saga, state: SagaState, index: int) -> bool:
    step = state.steps[index]
    return (
        step.status in MAY_HAVE_TAKEN_EFFECT
        and step.compensation is CompensationStatus.NONE
        and program.compensable(saga, state, index)
    )


def compensate_next(saga: Saga, state: SagaState) -> Transition:
    """Start the next group's compensations (`state` already advanced), or finish."""
    steps = state.steps
    if any(step.compensation in COMPENSATION_UNDER_WAY for step in steps):
        return Transition(state, wake_command(state))  # the rest of this group goes on
    if any(step.compensation is CompensationStatus.FAILED for step in steps):
        done = replace(state, status=SagaStatus.FAILED)
        return Transition(done, (Finish(SagaStatus.FAILED),))
    target = next(
        (index for index in range(len(steps) - 1, -1, -1) if _to_compensate(saga, state, index)),
        None,
    )
    if target is None:
        done = replace(state, status=SagaStatus.COMPENSATED)
        return Transition(done, (Finish(SagaStatus.COMPENSATED),))
    members = [i for i in program.group(saga, state, target) if _to_compensate(saga, state, i)]
    for index in members:
        running = replace(
            steps[index], compensation=CompensationStatus.RUNNING, compensation_attempts=1
        )
        steps = with_step(steps, index, running)
    new = replace(state, steps=steps)
    return Transition(new, tuple(RunCompensation(index, 1) for index in members))


def _compensating_step(
    state: SagaState, event: CompensationSucceeded | CompensationFailed | CompensationWaiting
) -> StepState:
    if not 0 <= event.step < len(state.steps):
        raise reject(state, event, f"no step {event.step}")
    step = state.steps[event.step]
    if (
        step.compensation is not CompensationStatus.RUNNING
        or step.compensation_attempts != event.attempt
    ):
        raise reject(
            state, event, f"compensation of step {event.step} attempt {event.attempt} not running"
        )
    return step


def compensation_done(saga: Saga, state: SagaState, event: Event, index: int) -> Transition:
    step = state.steps[index]
    done = replace(step, compensation=CompensationStatus.COMPENSATED, compensation_retry_at=None)
    base = advance(state, event, steps=with_step(state.steps, index, done), recoveries=0)
    return compensate_next(saga, base)


def compensation_gave_up(
    saga: Saga, state: SagaState, event: Event, index: int, error: ErrorInfo
) -> Transition:
    step = state.steps[index]
    failed = replace(step, compensation=CompensationStatus.FAILED, compensation_error=error)
    base = advance(state, event, steps=with_step(state.steps, index, failed), recoveries=0)
    return compensate_next(saga, base)


def on_compensation_succeeded(
    saga: Saga, state: SagaState, event: CompensationSucceeded
) -> Transition:
    _compensating_step(state, event)
    return compensation_done(saga, state, event, event.step)


def on_compensation_failed(saga: Saga, state: SagaState, event: CompensationFailed) -> Transition:
    step = _compensating_step(state, event)
    policy = program.compensation_retry(saga, state, event.step)
    if event.kind is FailureKind.TRANSIENT and policy.allows_another_attempt(
        step.compensation_attempts
    ):
        retry_at = event.at + policy.delay(step.compensation_attempts, event.jitter)
        backing_off = replace(
            step,
            compensation=CompensationStatus.RETRYING,
            compensation_retry_at=retry_at,
            compensation_error=event.error,
        )
        new = advance(
            state, event, steps=with_step(state.steps, event.step, backing_off), recoveries=0
        )
        return Transition(new, (ScheduleWakeup(new.wake_at or retry_at),))
    return compensation_gave_up(saga, state, event, event.step, event.error)


def on_compensation_waiting(saga: Saga, state: SagaState, event: CompensationWaiting) -> Transition:
    step = _compensating_step(state, event)
    waiting = replace(step, compensation=CompensationStatus.WAITING)
    new = advance(state, event, steps=with_step(state.steps, event.step, waiting))
    return Transition(new, ())
