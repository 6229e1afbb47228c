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
                                       or, past the deadline: compensate
  RUNNING       StepFailed i transient, attempts left
                                       i RETRYING until at+delay         ScheduleWakeup
  RUNNING       StepFailed i transient, no attempts left / ambiguous
                                       i AMBIGUOUS; begin compensation
  RUNNING       StepFailed i definitive
                                       i FAILED; begin compensation
  RUNNING       StepWaiting i (a waiting step's action: its deadline)
                  signal already in the inbox: consume it, as StepSucceeded
                  otherwise            i WAITING; saga WAITING           ScheduleWakeup?
  WAITING       SignalReceived, awaited  as StepSucceeded with the payload
  live          SignalReceived, other  kept in the inbox (deduplicated by key)
  RUNNING/WAIT  CancelRequested        current step AMBIGUOUS (WAITING: FAILED;
                                       never ran: PENDING); begin compensation
  COMPENSATING  CancelRequested        recorded, nothing else
  COMPENSATING  CompensationSucceeded  j COMPENSATED; next or COMPENSATED Run/Finish
  COMPENSATING  CompensationFailed transient, attempts left
                                       j RETRYING                        ScheduleWakeup
  COMPENSATING  CompensationFailed otherwise
                                       j FAILED; saga FAILED             Finish
  RUNNING/WAIT  TimerFired, deadline passed: as CancelRequested
  live          TimerFired, retry due  attempt n+1 RUNNING               Run*
  WAITING       TimerFired, wait over  sleep: as StepSucceeded; signal timeout:
                                       compensate, FAILED, or continue with default
  live          TimerFired, not due    unchanged                         ScheduleWakeup
  live          Recovered, in flight   recoveries+1; same attempt again  Run*
                  ... past the limit   SUSPENDED                         Finish
  live          Recovered, idle        unchanged                         ScheduleWakeup?
  live          Suspended              SUSPENDED                         Finish
  SUSPENDED     Resumed                previous status; as Recovered     Run*/Schedule
  terminal      Recovered / TimerFired unchanged                         (none)
  terminal      SignalReceived / CancelRequested: recorded, ignored
  SUSPENDED     SignalReceived / CancelRequested: refused (kept in the store's
                inbox, applied once the saga is resumed)

"Begin compensation": status COMPENSATING; run the newest compensable step's
compensation (attempt 1), or finish COMPENSATED when there is none.
Any other (status, event) pair raises `InvalidTransitionError`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import msgspec
from msgspec.structs import replace

from ._commands import Command, Finish, RunCompensation, RunStep, ScheduleWakeup
from ._definition import Saga
from ._errors import InvalidTransitionError
from ._events import (
    CancelRequested,
    CompensationFailed,
    CompensationSucceeded,
    Event,
    Recovered,
    Resumed,
    SagaStarted,
    SignalReceived,
    StepFailed,
    StepSucceeded,
    StepWaiting,
    Suspended,
    TimerFired,
)
from ._model import (
    FORWARD,
    LIVE,
    CompensationStatus,
    ErrorInfo,
    FailureKind,
    SagaState,
    SagaStatus,
    Signal,
    StepState,
    StepStatus,
)
from ._waits import Continue, OnTimeout, SignalSpec


class Transition(NamedTuple):
    """The result of `transition`: the next snapshot and the commands to carry out."""

    state: SagaState
    commands: Sequence[Command]


_UNDER_WAY = frozenset({StepStatus.RUNNING, StepStatus.RETRYING, StepStatus.WAITING})
_json = msgspec.json.Encoder().encode
_MAY_HAVE_TAKEN_EFFECT = frozenset({StepStatus.SUCCEEDED, StepStatus.AMBIGUOUS})


def initial_state(saga: Saga, saga_id: str) -> SagaState:
    """The state before `SagaStarted`: every step pending, seq 0."""
    return SagaState(
        saga_id=saga_id,
        saga_name=saga.name,
        definition_version=saga.version,
        steps=_pending_steps(len(saga.steps)),
    )


@functools.cache
def _pending_steps(count: int) -> tuple[StepState, ...]:
    # StepStates are frozen: every new saga of a definition can share one tuple.
    return tuple(StepState() for _ in range(count))


def start(saga: Saga, saga_id: str, at: float) -> Transition:
    """The first transition of a new saga: its snapshot already holds step 0's intent."""
    return transition(saga, initial_state(saga, saga_id), SagaStarted(at=at))


def transition(saga: Saga, state: SagaState, event: Event) -> Transition:
    """Apply `event` to `state`. Pure. Raises `InvalidTransitionError` if it does not apply."""
    if len(state.steps) != len(saga.steps) or state.saga_name != saga.name:
        raise InvalidTransitionError(
            f"snapshot of saga {state.saga_id!r} does not match definition {saga.name!r}"
        )
    handler = _HANDLERS.get(type(event))
    if handler is not None:  # one dict lookup, not a chain of isinstance checks
        return handler(saga, state, event)
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


def _deadline_passed(state: SagaState, at: float) -> bool:
    return state.deadline_at is not None and at >= state.deadline_at


def _error(kind: str, message: str) -> ErrorInfo:
    return ErrorInfo(type=f"saga.{kind}", message=message)


_DEADLINE = _error("DeadlineExceeded", "the saga's deadline passed")


def _on_started(saga: Saga, state: SagaState, event: SagaStarted) -> Transition:
    if state.seq != 0:
        raise _reject(state, event, "already started")
    first = StepState(status=StepStatus.RUNNING, attempts=1)
    new = _advance(
        state,
        event,
        status=SagaStatus.RUNNING,
        started_at=event.at,
        deadline_at=None if saga.deadline is None else event.at + saga.deadline,
        steps=_with_step(state.steps, 0, first),
    )
    return Transition(new, (RunStep(0, 1),))


def _running_step(state: SagaState, event: StepSucceeded | StepFailed | StepWaiting) -> StepState:
    if state.status is not SagaStatus.RUNNING:
        raise _reject(state, event, "no forward step runs in this status")
    if not 0 <= event.step < len(state.steps):
        raise _reject(state, event, f"no step {event.step}")
    step = state.steps[event.step]
    if step.status is not StepStatus.RUNNING or step.attempts != event.attempt:
        raise _reject(state, event, f"step {event.step} attempt {event.attempt} is not running")
    return step


def _step_done(
    saga: Saga, state: SagaState, event: Event, index: int, result: msgspec.Raw
) -> Transition:
    """Step `index` succeeded with `result`: start the next step, or complete."""
    step = state.steps[index]
    done = replace(step, status=StepStatus.SUCCEEDED, result=result, retry_at=None, wait_until=None)
    steps = _with_step(state.steps, index, done)
    following = index + 1
    if following == len(steps):
        new = _advance(
            state,
            event,
            status=SagaStatus.COMPLETED,
            steps=steps,
            recoveries=0,
            waiting_for=None,
        )
        return Transition(new, (Finish(SagaStatus.COMPLETED),))
    if _deadline_passed(state, event.at):
        return _begin_compensation(
            saga,
            state,
            event,
            steps,
            None,
            _error("DeadlineExceeded", "the saga's deadline passed"),
        )
    started = StepState(status=StepStatus.RUNNING, attempts=1)
    new = _advance(
        state,
        event,
        status=SagaStatus.RUNNING,
        steps=_with_step(steps, following, started),
        recoveries=0,
        waiting_for=None,
    )
    return Transition(new, (RunStep(following, 1),))


def _on_step_failed(saga: Saga, state: SagaState, event: StepFailed) -> Transition:
    step = _running_step(state, event)
    policy = saga.steps[event.step].retry
    retryable = event.kind is FailureKind.TRANSIENT
    if (
        retryable
        and policy.allows_another_attempt(step.attempts)
        and not _deadline_passed(state, event.at)
    ):
        retry_at = event.at + policy.delay(step.attempts, event.jitter)
        backing_off = replace(
            step, status=StepStatus.RETRYING, retry_at=retry_at, error=event.error
        )
        new = _advance(
            state, event, steps=_with_step(state.steps, event.step, backing_off), recoveries=0
        )
        return Transition(new, (ScheduleWakeup(new.wake_at or retry_at),))
    outcome = StepStatus.FAILED if event.kind is FailureKind.DEFINITIVE else StepStatus.AMBIGUOUS
    ended = replace(step, status=outcome, error=event.error, retry_at=None)
    steps = _with_step(state.steps, event.step, ended)
    return _begin_compensation(saga, state, event, steps, event.step, event.error)


def _on_step_waiting(saga: Saga, state: SagaState, event: StepWaiting) -> Transition:
    step = _running_step(state, event)
    spec = saga.steps[event.step].wait
    if spec is None:
        raise _reject(state, event, f"step {event.step} is not a waiting step")
    if isinstance(spec, SignalSpec):
        for position, signal in enumerate(state.inbox):
            if signal.name == spec.signal:  # it arrived before the saga got here
                inbox = (*state.inbox[:position], *state.inbox[position + 1 :])
                return _step_done(
                    saga, replace(state, inbox=inbox), event, event.step, signal.payload
                )
    waiting = replace(step, status=StepStatus.WAITING, wait_until=event.until)
    new = _advance(
        state,
        event,
        status=SagaStatus.WAITING,
        steps=_with_step(state.steps, event.step, waiting),
        waiting_for=spec.signal if isinstance(spec, SignalSpec) else None,
        recoveries=0,
    )
    return Transition(new, _wake_command(new))


def _waiting_step(saga: Saga, state: SagaState, signal: str) -> int | None:
    if state.status is not SagaStatus.WAITING:
        return None
    for index, step in enumerate(state.steps):
        spec = saga.steps[index].wait
        if (
            step.status is StepStatus.WAITING
            and isinstance(spec, SignalSpec)
            and spec.signal == signal
        ):
            return index
    return None


def _on_signal(saga: Saga, state: SagaState, event: SignalReceived) -> Transition:
    if state.status is SagaStatus.SUSPENDED:
        raise _reject(state, event, "a suspended saga takes its signals when resumed")
    if state.status.is_terminal or (event.key is not None and event.key in state.signal_keys):
        return Transition(_advance(state, event), ())  # recorded, and ignored
    keys = state.signal_keys if event.key is None else (*state.signal_keys, event.key)
    index = _waiting_step(saga, state, event.name)
    if index is not None:
        return _step_done(saga, replace(state, signal_keys=keys), event, index, event.payload)
    kept = Signal(name=event.name, payload=event.payload, key=event.key, at=event.at)
    return Transition(_advance(state, event, signal_keys=keys, inbox=(*state.inbox, kept)), ())


def _on_cancel(saga: Saga, state: SagaState, event: CancelRequested) -> Transition:
    if state.status is SagaStatus.SUSPENDED:
        raise _reject(state, event, "a suspended saga takes its cancellation when resumed")
    if state.status not in FORWARD:
        return Transition(_advance(state, event), ())  # already rolling back, or ended
    return _stop_forward(saga, state, event, _error("Cancelled", event.reason), event.not_started)


def _stop_forward(
    saga: Saga, state: SagaState, event: Event, error: ErrorInfo, not_started: int | None
) -> Transition:
    """End the forward path now (cancel, deadline) and compensate what may have taken effect."""
    steps = state.steps
    current: int | None = None
    for index, step in enumerate(steps):
        if step.status in _UNDER_WAY:
            current = index
            break
    if current is not None:
        step = steps[current]
        if step.status is StepStatus.WAITING:
            ended = replace(step, status=StepStatus.FAILED, wait_until=None, error=error)
        elif current == not_started and step.attempts == 1:
            ended = StepState()  # its action never ran: it never started
        else:
            ended = replace(step, status=StepStatus.AMBIGUOUS, retry_at=None, error=error)
        steps = _with_step(steps, current, ended)
    return _begin_compensation(saga, state, event, steps, current, error)


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
    failed_step: int | None,
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
        waiting_for=None,
    )
    return _compensate_next(saga, base)


def _compensate_next(saga: Saga, state: SagaState) -> Transition:
    """Start the next compensation of `state` (already advanced), or finish."""
    target = _next_compensation(saga, state.steps)
    if target is None:
        done = replace(state, status=SagaStatus.COMPENSATED)
        return Transition(done, (Finish(SagaStatus.COMPENSATED),))
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


def _wake_command(state: SagaState) -> Sequence[Command]:
    wake_at = state.wake_at
    return () if wake_at is None else (ScheduleWakeup(wake_at),)


def _on_timer(saga: Saga, state: SagaState, event: TimerFired) -> Transition:
    if state.status not in LIVE or state.in_flight:
        return Transition(state, ())
    if state.status in FORWARD and _deadline_passed(state, event.at):
        return _stop_forward(saga, state, event, _DEADLINE, None)
    for index, step in enumerate(state.steps):
        if step.status is StepStatus.WAITING and step.wait_until is not None:
            if step.wait_until <= event.at:
                return _wait_over(saga, state, event, index)
        elif step.status is StepStatus.RETRYING and step.retry_at is not None:
            if step.retry_at <= event.at:
                again = replace(
                    step, status=StepStatus.RUNNING, attempts=step.attempts + 1, retry_at=None
                )
                new = _advance(state, event, steps=_with_step(state.steps, index, again))
                return Transition(new, (RunStep(index, again.attempts),))
        elif (
            step.compensation is CompensationStatus.RETRYING
            and step.compensation_retry_at is not None
            and step.compensation_retry_at <= event.at
        ):
            attempt = step.compensation_attempts + 1
            again = replace(
                step,
                compensation=CompensationStatus.RUNNING,
                compensation_attempts=attempt,
                compensation_retry_at=None,
            )
            new = _advance(state, event, steps=_with_step(state.steps, index, again))
            return Transition(new, (RunCompensation(index, attempt),))
    return Transition(state, _wake_command(state))  # early or stale: wait on


def _wait_over(saga: Saga, state: SagaState, event: TimerFired, index: int) -> Transition:
    """The wait of step `index` reached its time: a sleep ends; a signal wait times out."""
    step = state.steps[index]
    spec = saga.steps[index].wait
    assert step.wait_until is not None
    if not isinstance(spec, SignalSpec):
        return _step_done(saga, state, event, index, msgspec.Raw(_json(step.wait_until)))
    if isinstance(spec.on_timeout, Continue):
        assert spec.default is not None
        return _step_done(saga, state, event, index, msgspec.Raw(spec.default))
    error = _error("SignalTimeout", f"no {spec.signal!r} signal within {spec.timeout} s")
    failed = replace(step, status=StepStatus.FAILED, wait_until=None, error=error)
    steps = _with_step(state.steps, index, failed)
    if spec.on_timeout is OnTimeout.FAIL:
        new = _advance(
            state,
            event,
            status=SagaStatus.FAILED,
            steps=steps,
            failed_step=index,
            failure=error,
            waiting_for=None,
        )
        return Transition(new, (Finish(SagaStatus.FAILED),))
    return _begin_compensation(saga, state, event, steps, index, error)


def _carry_on(state: SagaState) -> Sequence[Command]:
    """What to do for a live saga loaded from its snapshot, with no new event."""
    in_flight = _in_flight(state)
    return (in_flight,) if in_flight is not None else _wake_command(state)


def _on_recovered(state: SagaState, event: Recovered) -> Transition:
    if state.status not in LIVE:
        return Transition(state, ())
    in_flight = _in_flight(state)
    if in_flight is None:
        return Transition(state, _carry_on(state))
    recoveries = state.recoveries + 1
    if recoveries > event.max_recoveries:
        reason = (
            f"recovered {recoveries} times in a row while {_describe(in_flight)} "
            "was in flight, without progress"
        )
        return _suspend(state, event, reason, recoveries=recoveries)
    # The interrupted attempt runs again with the same number: a crash is
    # not the step's failure and costs nothing from its retry budget.
    return Transition(_advance(state, event, recoveries=recoveries), (in_flight,))


def _describe(command: Command) -> str:
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
    if state.status not in LIVE:
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


def _on_step_succeeded(saga: Saga, state: SagaState, event: StepSucceeded) -> Transition:
    _running_step(state, event)
    return _step_done(saga, state, event, event.step, event.result)


_HANDLERS: dict[type[Event], Callable[[Saga, SagaState, Any], Transition]] = {
    SagaStarted: _on_started,
    StepSucceeded: _on_step_succeeded,
    StepFailed: _on_step_failed,
    StepWaiting: _on_step_waiting,
    SignalReceived: _on_signal,
    CancelRequested: _on_cancel,
    CompensationSucceeded: _on_compensation_succeeded,
    CompensationFailed: _on_compensation_failed,
    TimerFired: _on_timer,
    Recovered: lambda saga, state, event: _on_recovered(state, event),
    Suspended: lambda saga, state, event: _on_suspended(state, event),
    Resumed: lambda saga, state, event: _on_resumed(state, event),
}
"""`transition`'s dispatch: each event type's handler (event types are final)."""
