"""A readable timeline of one saga, rebuilt by replaying its history through the machine."""

from __future__ import annotations

from collections.abc import Sequence

from ._commands import Finish, RunCompensation, RunStep, ScheduleWakeup
from ._definition import Saga
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
from ._machine import initial_state, transition
from ._model import FailureKind, SagaState, StepStatus
from ._waits import SignalSpec


def timeline(saga: Saga, saga_id: str, events: Sequence[Event]) -> list[str]:
    """One line per thing that happened, with seconds since the saga started."""
    if not events:
        return []
    origin = events[0].at
    state = initial_state(saga, saga_id)
    lines: list[str] = []

    def say(at: float, text: str) -> None:
        lines.append(f"+{at - origin:8.3f}s  {text}")

    for event in events:
        name = _step_name(saga, event)
        match event:
            case SagaStarted():
                say(event.at, "saga started")
            case StepSucceeded():
                say(event.at, f"{name} succeeded")
            case StepFailed():
                say(event.at, f"{name} attempt {event.attempt} failed: {event.error}")
            case CompensationSucceeded():
                say(event.at, f"{name} compensated")
            case CompensationFailed():
                say(event.at, f"{name} compensation attempt {event.attempt} failed: {event.error}")
            case Recovered():
                say(event.at, "recovered from the last snapshot after an interruption")
            case Suspended():
                say(event.at, f"suspended: {event.reason}")
            case Resumed():
                say(event.at, "resumed by an operator")
            case StepWaiting():
                pass  # described below, once the outcome is known
            case SignalReceived():
                say(event.at, f"signal {event.name!r} received")
            case CancelRequested():
                say(event.at, f"cancellation requested: {event.reason}")
            case TimerFired():
                pass
        before = state
        state, commands = transition(saga, state, event)
        if isinstance(event, StepFailed):
            ended = state.steps[event.step].status
            if ended is StepStatus.FAILED:
                say(event.at, f"{name} failed definitively (took no effect)")
            elif ended is StepStatus.AMBIGUOUS:
                why = (
                    "retries exhausted" if event.kind is FailureKind.TRANSIENT else "not retryable"
                )
                say(event.at, f"{name} gave up ({why}); it may have taken effect")
        if isinstance(event, StepWaiting):
            lines.extend(_describe_wait(saga, state, event, origin))
        if isinstance(event, SignalReceived):
            for index, (old, new) in enumerate(zip(before.steps, state.steps, strict=True)):
                if old.status is StepStatus.WAITING and new.status is StepStatus.SUCCEEDED:
                    say(event.at, f"step {saga.steps[index].name} got its signal")
        if isinstance(event, TimerFired):
            for index, (old, new) in enumerate(zip(before.steps, state.steps, strict=True)):
                if old.status is StepStatus.WAITING and new.status is not StepStatus.WAITING:
                    label = saga.steps[index].name
                    verdict = "timed out" if new.status is StepStatus.FAILED else "stopped waiting"
                    say(event.at, f"step {label} {verdict}")
            failure = state.failure
            if before.failure is None and failure and failure.type == "saga.DeadlineExceeded":
                say(event.at, "the saga's deadline passed")
        for command in commands:
            match command:
                case RunStep(index, attempt):
                    label = saga.steps[index].name
                    if isinstance(event, Recovered):
                        say(event.at, f"step {label} attempt {attempt} was interrupted: run again")
                    else:
                        say(event.at, f"step {label} attempt {attempt} started")
                case RunCompensation(index, attempt):
                    label = saga.steps[index].name
                    say(event.at, f"compensation of {label} attempt {attempt} started")
                case ScheduleWakeup(at) if isinstance(event, StepFailed | CompensationFailed):
                    say(event.at, f"retry due in {at - event.at:.3f}s")
                case Finish(status):
                    say(event.at, f"saga {status}")
    return lines


def _describe_wait(saga: Saga, state: SagaState, event: StepWaiting, origin: float) -> list[str]:
    step = state.steps[event.step]
    spec = saga.steps[event.step].wait
    name = saga.steps[event.step].name
    stamp = f"+{event.at - origin:8.3f}s  "
    if step.status is not StepStatus.WAITING:
        return [stamp + f"step {name}: its signal had already arrived"]
    if isinstance(spec, SignalSpec):
        limit = "" if event.until is None else f" (at most {event.until - event.at:.3f}s)"
        return [stamp + f"step {name} waiting for signal {spec.signal!r}{limit}"]
    assert event.until is not None
    return [stamp + f"step {name} sleeping {event.until - event.at:.3f}s"]


def _step_name(saga: Saga, event: Event) -> str:
    step = getattr(event, "step", None)
    return f"step {saga.steps[step].name}" if isinstance(step, int) else ""
