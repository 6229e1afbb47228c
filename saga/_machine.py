"""The saga state machine: `transition(saga, state, event) -> Transition(state, commands)`.

Theory of operation
-------------------
A saga instance is a `SagaState` snapshot. Everything that happens to it
arrives as an `Event`; `transition` computes the next snapshot and the
`Command`s to carry out. It does no I/O, reads no clock and draws no random
number: time and jitter arrive inside events. That makes it a plain function
Hypothesis can drive, and it makes recovery trivial: the driver persists the
new snapshot (and appends the event to the history) before it carries out any
command, so after a crash the snapshot says exactly what was in flight.

Forward, one step runs at a time. Its attempt's intent ("step i, attempt n,
running") is in the snapshot before the action runs. Compensation runs newest
first over the steps that may have taken effect: SUCCEEDED or AMBIGUOUS and
having a compensation. FAILED (definitive) and PENDING steps are never
compensated. Once compensation begins no forward step ever runs again.

If `transition` returns the very same state object, nothing changed and there
is nothing to persist (a stale timer, a recovery with nothing in flight).

Transition table (saga status, event -> effect)
-----------------------------------------------
  (seq 0)       SagaStarted            step 0 RUNNING(1)                 RunStep
  RUNNING       StepSucceeded i        i SUCCEEDED; i+1 RUNNING(1)       RunStep
                                       or, after the last: COMPLETED     Finish
  RUNNING       StepFailed i transient, attempts left
                                       i RETRYING until at+delay         ScheduleWakeup
  RUNNING       StepFailed i transient, no attempts left / ambiguous
                                       i AMBIGUOUS; begin compensation
  RUNNING       StepFailed i definitive
                                       i FAILED; begin compensation
  COMPENSATING  CompensationSucceeded  j COMPENSATED; next or COMPENSATED Run/Finish
  COMPENSATING  CompensationFailed transient, attempts left
                                       j RETRYING                        ScheduleWakeup
  COMPENSATING  CompensationFailed otherwise
                                       j FAILED; saga FAILED             Finish
  RUNNING/COMP  TimerFired, retry due  attempt n+1 RUNNING               Run*
  RUNNING/COMP  TimerFired, not due    unchanged                         ScheduleWakeup
  live          Recovered, in flight   recoveries+1; same attempt again  Run*
                  ... past the limit   SUSPENDED                         Finish
  live          Recovered, backing off unchanged                         ScheduleWakeup
  live          Suspended              SUSPENDED                         Finish
  SUSPENDED     Resumed                previous status; as Recovered     Run*/Schedule
  terminal      Recovered / TimerFired unchanged                         (none)

"Begin compensation": status COMPENSATING; run the newest compensable step's
compensation (attempt 1), or finish COMPENSATED when there is none.
Any other (status, event) pair raises `InvalidTransitionError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from msgspec.structs import replace

from ._commands import Command, Finish, RunCompensation, RunStep, ScheduleWakeup
from ._definition import Saga
from ._errors import InvalidTransitionError
from ._events import (
    CompensationFailed,
    CompensationSucceeded,
    Event,
    Recovered,
    Resumed,
    SagaStarted,
    StepFailed,
    StepSucceeded,
    Suspended,
    TimerFired,
)
from ._model import (
    CompensationStatus,
    ErrorInfo,
    FailureKind,
    SagaState,
    SagaStatus,
    StepState,
    StepStatus,
)


class Transition(NamedTuple):
    """The result of `transition`: the next snapshot and the commands to carry out."""

    state: SagaState
    commands: Sequence[Command]


_LIVE = frozenset({SagaStatus.RUNNING, SagaStatus.WAITING, SagaStatus.COMPENSATING})
_MAY_HAVE_TAKEN_EFFECT = frozenset({StepStatus.SUCCEEDED, StepStatus.AMBIGUOUS})


def initial_state(saga: Saga, saga_id: str) -> SagaState:
    """The state before `SagaStarted`: every step pending, seq 0."""
    return SagaState(
        saga_id=saga_id,
        saga_name=saga.name,
        definition_version=saga.version,
        steps=tuple(StepState() for _ in saga.steps),
    )


def start(saga: Saga, saga_id: str, at: float) -> Transition:
    """The first transition of a new saga: its snapshot already holds step 0's intent."""
    return transition(saga, initial_state(saga, saga_id), SagaStarted(at=at))


def transition(saga: Saga, state: SagaState, event: Event) -> Transition:
    """Apply `event` to `state`. Pure. Raises `InvalidTransitionError` if it does not apply."""
    if len(state.steps) != len(saga.steps) or state.saga_name != saga.name:
        raise InvalidTransitionError(
            f"snapshot of saga {state.saga_id!r} does not match definition {saga.name!r}"
        )
    match event:
        case SagaStarted():
            return _on_started(state, event)
        case StepSucceeded():
            return _on_step_succeeded(state, event)
        case StepFailed():
            return _on_step_failed(saga, state, event)
        case CompensationSucceeded():
            return _on_compensation_succeeded(saga, state, event)
        case CompensationFailed():
            return _on_compensation_failed(saga, state, event)
        case TimerFired():
            return _on_timer(state, event)
        case Recovered():
            return _on_recovered(state, event)
        case Suspended():
            return _on_suspended(state, event)
        case Resumed():
            return _on_resumed(state, event)
    raise InvalidTransitionError(f"unknown event {event!r}")  # pragma: no cover


def _advance(state: SagaState, event: Event, **changes: object) -> SagaState:
    return replace(state, seq=state.seq + 1, updated_at=event.at, **changes)


def _with_step(steps: tuple[StepState, ...], index: int, step: StepState) -> tuple[StepState, ...]:
    return (*steps[:index], step, *steps[index + 1 :])


def _reject(state: SagaState, event: Event, why: str) -> InvalidTransitionError:
    return InvalidTransitionError(
        f"saga {state.saga_id!r} (status {state.status}, seq {state.seq}): "
        f"cannot apply {type(event).__name__}: {why}"
    )


def _on_started(state: SagaState, event: SagaStarted) -> Transition:
    if state.seq != 0:
        raise _reject(state, event, "already started")
    first = StepState(status=StepStatus.RUNNING, attempts=1)
    new = _advance(
        state,
        event,
        status=SagaStatus.RUNNING,
        started_at=event.at,
        steps=_with_step(state.steps, 0, first),
    )
    return Transition(new, (RunStep(0, 1),))


def _running_step(state: SagaState, event: StepSucceeded | StepFailed) -> StepState:
    if state.status is not SagaStatus.RUNNING:
        raise _reject(state, event, "no forward step runs in this status")
    if not 0 <= event.step < len(state.steps):
        raise _reject(state, event, f"no step {event.step}")
    step = state.steps[event.step]
    if step.status is not StepStatus.RUNNING or step.attempts != event.attempt:
        raise _reject(state, event, f"step {event.step} attempt {event.attempt} is not running")
    return step


def _on_step_succeeded(state: SagaState, event: StepSucceeded) -> Transition:
    step = _running_step(state, event)
    done = replace(step, status=StepStatus.SUCCEEDED, result=event.result, retry_at=None)
    steps = _with_step(state.steps, event.step, done)
    following = event.step + 1
    if following == len(steps):
        new = _advance(state, event, status=SagaStatus.COMPLETED, steps=steps, recoveries=0)
        return Transition(new, (Finish(SagaStatus.COMPLETED),))
    started = StepState(status=StepStatus.RUNNING, attempts=1)
    new = _advance(state, event, steps=_with_step(steps, following, started), recoveries=0)
    return Transition(new, (RunStep(following, 1),))


def _on_step_failed(saga: Saga, state: SagaState, event: StepFailed) -> Transition:
    step = _running_step(state, event)
    policy = saga.steps[event.step].retry
    if event.kind is FailureKind.TRANSIENT and policy.allows_another_attempt(step.attempts):
        retry_at = event.at + policy.delay(step.attempts, event.jitter)
        backing_off = replace(
            step, status=StepStatus.RETRYING, retry_at=retry_at, error=event.error
        )
        new = _advance(
            state, event, steps=_with_step(state.steps, event.step, backing_off), recoveries=0
        )
        return Transition(new, (ScheduleWakeup(retry_at),))
    outcome = StepStatus.FAILED if event.kind is FailureKind.DEFINITIVE else StepStatus.AMBIGUOUS
    ended = replace(step, status=outcome, error=event.error, retry_at=None)
    steps = _with_step(state.steps, event.step, ended)
    return _begin_compensation(saga, state, event, steps, event.step, event.error)


def _next_compensation(saga: Saga, steps: tuple[StepState, ...]) -> int | None:
    for index in range(len(steps) - 1, -1, -1):
        step = steps[index]
        if (
            step.status in _MAY_HAVE_TAKEN_EFFECT
            and saga.steps[index].compensate is not None
            and step.compensation is not CompensationStatus.COMPENSATED
        ):
            return index
    return None


def _begin_compensation(
    saga: Saga,
    state: SagaState,
    event: Event,
    steps: tuple[StepState, ...],
    failed_step: int,
    failure: ErrorInfo,
) -> Transition:
    base = _advance(
        state,
        event,
        status=SagaStatus.COMPENSATING,
        steps=steps,
        failed_step=failed_step,
        failure=failure,
        recoveries=0,
    )
    return _compensate_next(saga, base)


def _compensate_next(saga: Saga, state: SagaState) -> Transition:
    """Start the next compensation of `state` (already advanced), or finish."""
    target = _next_compensation(saga, state.steps)
    if target is None:
        return Transition(
            replace(state, status=SagaStatus.COMPENSATED), (Finish(SagaStatus.COMPENSATED),)
        )
    step = replace(
        state.steps[target], compensation=CompensationStatus.RUNNING, compensation_attempts=1
    )
    new = replace(state, steps=_with_step(state.steps, target, step))
    return Transition(new, (RunCompensation(target, 1),))


def _compensating_step(
    state: SagaState, event: CompensationSucceeded | CompensationFailed
) -> StepState:
    if state.status is not SagaStatus.COMPENSATING:
        raise _reject(state, event, "no compensation runs in this status")
    if not 0 <= event.step < len(state.steps):
        raise _reject(state, event, f"no step {event.step}")
    step = state.steps[event.step]
    if (
        step.compensation is not CompensationStatus.RUNNING
        or step.compensation_attempts != event.attempt
    ):
        raise _reject(
            state, event, f"compensation of step {event.step} attempt {event.attempt} not running"
        )
    return step


def _on_compensation_succeeded(
    saga: Saga, state: SagaState, event: CompensationSucceeded
) -> Transition:
    step = _compensating_step(state, event)
    done = replace(step, compensation=CompensationStatus.COMPENSATED, compensation_retry_at=None)
    base = _advance(state, event, steps=_with_step(state.steps, event.step, done), recoveries=0)
    return _compensate_next(saga, base)


def _on_compensation_failed(saga: Saga, state: SagaState, event: CompensationFailed) -> Transition:
    step = _compensating_step(state, event)
    policy = saga.steps[event.step].compensation_retry
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
        new = _advance(
            state, event, steps=_with_step(state.steps, event.step, backing_off), recoveries=0
        )
        return Transition(new, (ScheduleWakeup(retry_at),))
    failed = replace(step, compensation=CompensationStatus.FAILED, compensation_error=event.error)
    new = _advance(
        state,
        event,
        status=SagaStatus.FAILED,
        steps=_with_step(state.steps, event.step, failed),
        recoveries=0,
    )
    return Transition(new, (Finish(SagaStatus.FAILED),))


def _in_flight(state: SagaState) -> Command | None:
    """The command whose intent is durable but whose outcome is not, if any."""
    for index, step in enumerate(state.steps):
        if step.status is StepStatus.RUNNING and state.status is SagaStatus.RUNNING:
            return RunStep(index, step.attempts)
        if step.compensation is CompensationStatus.RUNNING:
            return RunCompensation(index, step.compensation_attempts)
    return None


def _pending_wakeup(state: SagaState) -> tuple[int, float, bool] | None:
    """(step, due time, is_compensation) of the retry the saga is backing off for."""
    for index, step in enumerate(state.steps):
        if step.status is StepStatus.RETRYING and step.retry_at is not None:
            return index, step.retry_at, False
        if (
            step.compensation is CompensationStatus.RETRYING
            and step.compensation_retry_at is not None
        ):
            return index, step.compensation_retry_at, True
    return None


def _on_timer(state: SagaState, event: TimerFired) -> Transition:
    if state.status not in _LIVE:
        return Transition(state, ())
    pending = _pending_wakeup(state)
    if pending is None:
        return Transition(state, ())
    index, due, is_compensation = pending
    if due > event.at:
        return Transition(state, (ScheduleWakeup(due),))
    step = state.steps[index]
    command: Command
    if is_compensation:
        attempt = step.compensation_attempts + 1
        step = replace(
            step,
            compensation=CompensationStatus.RUNNING,
            compensation_attempts=attempt,
            compensation_retry_at=None,
        )
        command = RunCompensation(index, attempt)
    else:
        attempt = step.attempts + 1
        step = replace(step, status=StepStatus.RUNNING, attempts=attempt, retry_at=None)
        command = RunStep(index, attempt)
    new = _advance(state, event, steps=_with_step(state.steps, index, step))
    return Transition(new, (command,))


def _carry_on(state: SagaState) -> Sequence[Command]:
    """What to do for a live saga loaded from its snapshot, with no new event."""
    in_flight = _in_flight(state)
    if in_flight is not None:
        return (in_flight,)
    pending = _pending_wakeup(state)
    if pending is not None:
        return (ScheduleWakeup(pending[1]),)
    return ()


def _on_recovered(state: SagaState, event: Recovered) -> Transition:
    if state.status not in _LIVE:
        return Transition(state, ())
    in_flight = _in_flight(state)
    if in_flight is None:
        return Transition(state, _carry_on(state))
    recoveries = state.recoveries + 1
    if recoveries > event.max_recoveries:
        reason = (
            f"recovered {recoveries} times in a row while {_describe(in_flight, state)} "
            "was in flight, without progress"
        )
        return _suspend(state, event, reason, recoveries=recoveries)
    # The interrupted attempt runs again with the same number: a crash is
    # not the step's failure and costs nothing from its retry budget.
    return Transition(_advance(state, event, recoveries=recoveries), (in_flight,))


def _describe(command: Command, state: SagaState) -> str:
    if isinstance(command, RunStep):
        return f"step {command.step} attempt {command.attempt}"
    if isinstance(command, RunCompensation):
        return f"the compensation of step {command.step}"
    return repr(command)  # pragma: no cover


def _suspend(state: SagaState, event: Event, reason: str, **changes: object) -> Transition:
    new = _advance(
        state,
        event,
        status=SagaStatus.SUSPENDED,
        suspended_reason=reason,
        resume_status=state.status,
        **changes,
    )
    return Transition(new, (Finish(SagaStatus.SUSPENDED),))


def _on_suspended(state: SagaState, event: Suspended) -> Transition:
    if state.status not in _LIVE:
        raise _reject(state, event, "only a live saga can be suspended")
    return _suspend(state, event, event.reason)


def _on_resumed(state: SagaState, event: Resumed) -> Transition:
    if state.status is not SagaStatus.SUSPENDED or state.resume_status is None:
        raise _reject(state, event, "only a suspended saga can be resumed")
    new = _advance(
        state,
        event,
        status=state.resume_status,
        resume_status=None,
        suspended_reason=None,
        recoveries=0,
    )
    return Transition(new, _carry_on(new))
