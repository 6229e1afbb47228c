"""A readable timeline of one saga, rebuilt by replaying its history through the machine."""

from __future__ import annotations

from collections.abc import Sequence

from ._commands import Finish, RunCompensation, RunStep, ScheduleWakeup
from ._definition import Saga
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
from ._machine import initial_state, transition
from ._model import FailureKind, StepStatus


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
        for command in commands:
            match command:
                case RunStep(index, attempt):
                    again = " again (interrupted attempt)" if isinstance(event, Recovered) else ""
                    label = saga.steps[index].name
                    say(event.at, f"step {label} attempt {attempt} started{again}")
                case RunCompensation(index, attempt):
                    label = saga.steps[index].name
                    say(event.at, f"compensation of {label} attempt {attempt} started")
                case ScheduleWakeup(at) if state is not before:
                    say(event.at, f"retry due in {at - event.at:.3f}s")
                case Finish(status):
                    say(event.at, f"saga {status}")
    return lines


def _step_name(saga: Saga, event: Event) -> str:
    step = getattr(event, "step", None)
    return f"step {saga.steps[step].name}" if isinstance(step, int) else ""
