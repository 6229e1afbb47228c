"""A readable timeline of one saga, rebuilt by replaying its history through the machine.

Each event type has one describer (`_DESCRIBERS`), which sees the state
before and after the event; then the commands the transition issued are
described the same way for every event. A code saga's new calls are the
positions that appear after an event (its body's reaction).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from . import _program as program
from ._calls import CallKind, Raised
from ._commands import Command, Finish, RunCompensation, RunStep, ScheduleWakeup
from ._definition import Saga
from ._events import (
    CancelRequested,
    ChildEnded,
    CompensateRequested,
    CompensationFailed,
    CompensationSucceeded,
    CompensationWaiting,
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


@dataclass(frozen=True, slots=True)
class _Moment:
    """One event as a describer sees it: the states around it and what it caused."""

    saga: Saga[Any, Any]
    before: SagaState
    after: SagaState
    event: Any
    commands: Sequence[Command]

    def name(self, index: int) -> str:
        return f"step {program.label(self.saga, self.after, index)}"

    def kind(self, index: int) -> CallKind:
        return program.kind(self.saga, self.after, index)


def timeline(saga: Saga[Any, Any], saga_id: str, events: Sequence[Event]) -> list[str]:
    """One line per thing that happened, with seconds since the saga started."""
    if not events:
        return []
    origin = events[0].at
    state = initial_state(saga, saga_id)
    lines: list[str] = []
    for event in events:
        after, commands = transition(saga, state, event)
        moment = _Moment(saga, state, after, event, commands)
        texts = [*_DESCRIBERS[type(event)](moment), *_new_calls(moment)]
        texts += [text for command in commands if (text := _command(moment, command))]
        lines += [f"+{event.at - origin:8.3f}s  {text}" for text in texts]
        state = after
    return lines


def _started(m: _Moment) -> list[str]:
    parent = m.after.parent
    if parent is None:
        return ["saga started"]
    return [f"saga started, as child call {parent.position + 1} of saga {parent.saga_id!r}"]


def _succeeded(m: _Moment) -> list[str]:
    return [f"{m.name(m.event.step)} succeeded"]


def _failed(m: _Moment) -> list[str]:
    event: StepFailed = m.event
    lines = [f"{m.name(event.step)} attempt {event.attempt} failed: {event.error}"]
    ended = m.after.steps[event.step].status
    if ended is StepStatus.FAILED:
        lines.append(f"{m.name(event.step)} failed definitively (took no effect)")
    elif ended is StepStatus.AMBIGUOUS:
        why = "retries exhausted" if event.kind is FailureKind.TRANSIENT else "not retryable"
        lines.append(f"{m.name(event.step)} gave up ({why}); it may have taken effect")
    return lines


def _waiting(m: _Moment) -> list[str]:
    event: StepWaiting = m.event
    index = event.step
    name = m.name(index)
    if m.kind(index) is CallKind.CHILD:
        call = m.after.steps[index].call
        target = call.target if call is not None else None
        return [f"{name}: child saga {target!r} started; waiting for it"]
    step = m.after.steps[index]
    if step.status is not StepStatus.WAITING:
        return [f"{name}: its signal had already arrived"]
    signal = program.signal_name(m.saga, m.after, index)
    if signal is not None:
        limit = "" if event.until is None else f" (at most {event.until - event.at:.3f}s)"
        return [f"{name} waiting for signal {signal!r}{limit}"]
    assert event.until is not None
    return [f"{name} sleeping {event.until - event.at:.3f}s"]


def _signal(m: _Moment) -> list[str]:
    lines = [f"signal {m.event.name!r} received"]
    for index, (old, new) in enumerate(zip(m.before.steps, m.after.steps, strict=False)):
        if old.status is StepStatus.WAITING and new.status is StepStatus.SUCCEEDED:
            lines.append(f"{m.name(index)} got its signal")
    return lines


def _cancel(m: _Moment) -> list[str]:
    return [f"cancellation requested: {m.event.reason}"]


def _compensate_requested(m: _Moment) -> list[str]:
    return [f"its parent asked it to compensate: {m.event.reason}"]


def _child_ended(m: _Moment) -> list[str]:
    event: ChildEnded = m.event
    return [f"child saga {event.child!r} ended {event.status}"]


def _compensated(m: _Moment) -> list[str]:
    return [f"{m.name(m.event.step)} compensated"]


def _compensation_failed(m: _Moment) -> list[str]:
    event: CompensationFailed = m.event
    return [f"{m.name(event.step)} compensation attempt {event.attempt} failed: {event.error}"]


def _compensation_waiting(m: _Moment) -> list[str]:
    return [f"{m.name(m.event.step)}: its child saga was asked to compensate"]


def _timer(m: _Moment) -> list[str]:
    lines = []
    for index, (old, new) in enumerate(zip(m.before.steps, m.after.steps, strict=False)):
        if old.status is StepStatus.WAITING and new.status is not StepStatus.WAITING:
            verdict = "timed out" if new.status is StepStatus.FAILED else "stopped waiting"
            lines.append(f"{m.name(index)} {verdict}")
    failure = m.after.failure
    if m.before.failure is None and failure and failure.type == "saga.DeadlineExceeded":
        lines.append("the saga's deadline passed")
    return lines


def _recovered(m: _Moment) -> list[str]:
    return ["recovered from the last snapshot after an interruption"]


def _suspended(m: _Moment) -> list[str]:
    return [f"suspended: {m.event.reason}"]


def _resumed(m: _Moment) -> list[str]:
    return ["resumed by an operator"]


_DESCRIBERS: dict[type[Event], Callable[[_Moment], list[str]]] = {
    SagaStarted: _started,
    StepSucceeded: _succeeded,
    StepFailed: _failed,
    StepWaiting: _waiting,
    SignalReceived: _signal,
    CancelRequested: _cancel,
    CompensateRequested: _compensate_requested,
    ChildEnded: _child_ended,
    CompensationSucceeded: _compensated,
    CompensationFailed: _compensation_failed,
    CompensationWaiting: _compensation_waiting,
    TimerFired: _timer,
    Recovered: _recovered,
    Suspended: _suspended,
    Resumed: _resumed,
}
"""What each event type says happened, given the states around it."""


def _new_calls(m: _Moment) -> list[str]:
    """A code saga's body reacted: the waits it began, or the error it raised."""
    lines = []
    for reaction in getattr(m.event, "then", ()):
        if isinstance(reaction, Raised):
            lines.append(f"the saga's body raised {reaction.error}")
    for index in range(len(m.before.steps), len(m.after.steps)):
        step = m.after.steps[index]
        call = step.call
        if call is None or call.kind not in (CallKind.SLEEP, CallKind.SIGNAL):
            continue
        if call.kind is CallKind.SLEEP:
            assert call.until is not None
            lines.append(f"{m.name(index)} until +{call.until - m.event.at:.3f}s")
        elif step.status is StepStatus.SUCCEEDED:
            lines.append(f"{m.name(index)}: its signal had already arrived")
        else:
            limit = "" if call.timeout is None else f" (at most {call.timeout:.3f}s)"
            lines.append(f"{m.name(index)} waiting for signal {call.name!r}{limit}")
    return lines


def _command(m: _Moment, command: Command) -> str | None:
    match command:
        case RunStep(index, attempt):
            if isinstance(m.event, Recovered):
                return f"{m.name(index)} attempt {attempt} was interrupted: run again"
            return f"{m.name(index)} attempt {attempt} started"
        case RunCompensation(index, attempt):
            return (
                f"compensation of {program.label(m.saga, m.after, index)} attempt {attempt} started"
            )
        case ScheduleWakeup(at) if isinstance(m.event, StepFailed | CompensationFailed):
            return f"retry due in {at - m.event.at:.3f}s"
        case Finish(status):
            return f"saga {status}"
    return None
