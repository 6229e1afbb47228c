"""What each position of a saga is, for the state machine: one answer for both kinds of saga.

A step-list saga's positions are its definition's steps (a `Parallel`
element spans several). A code saga's positions are the calls its body
made, each recorded with its `CallSpec`. The machine asks these functions,
never the definition or the spec directly, so its rules are written once.
"""

from __future__ import annotations

from ._calls import Backoff, CallKind, CallSpec
from ._definition import Saga
from ._model import SagaState
from ._policy import DEFAULT_COMPENSATION_RETRY, DEFAULT_STEP_RETRY
from ._waits import Continue, OnTimeout, SignalSpec, SleepSpec

_DEFAULT_STEP = DEFAULT_STEP_RETRY.backoff
_DEFAULT_COMPENSATION = DEFAULT_COMPENSATION_RETRY.backoff


def spec(state: SagaState, index: int) -> CallSpec | None:
    """The recorded call at `index` (None in a step-list saga)."""
    return state.steps[index].call


def kind(saga: Saga, state: SagaState, index: int) -> CallKind:
    """What position `index` is: a step, a child, a sleep, a signal wait, a recorded value."""
    call = state.steps[index].call
    if call is not None:
        return call.kind
    wait = saga.steps[index].wait
    if wait is None:
        return CallKind.STEP
    return CallKind.SIGNAL if isinstance(wait, SignalSpec) else CallKind.SLEEP


def retry(saga: Saga, state: SagaState, index: int) -> Backoff:
    """The retry policy of position `index`'s action, as numbers."""
    call = state.steps[index].call
    if call is None:
        return saga.steps[index].retry.backoff
    return call.retry or _DEFAULT_STEP


def compensation_retry(saga: Saga, state: SagaState, index: int) -> Backoff:
    """The retry policy of position `index`'s compensation, as numbers."""
    call = state.steps[index].call
    if call is None:
        return saga.steps[index].compensation_retry.backoff
    return call.compensation_retry or _DEFAULT_COMPENSATION


def compensable(saga: Saga, state: SagaState, index: int) -> bool:
    """Whether position `index` has a compensation (a child saga always has: its own)."""
    call = state.steps[index].call
    if call is None:
        return saga.steps[index].compensate is not None
    return call.compensable


def group(saga: Saga, state: SagaState, index: int) -> range:
    """The positions of the group `index` belongs to (a parallel group, or itself alone)."""
    call = state.steps[index].call
    if call is None:
        return saga.element_at[index]
    if call.group is None:
        return range(index, index + 1)
    first, last = call.group, call.group
    steps = state.steps
    while last + 1 < len(steps):
        following = steps[last + 1].call
        if following is None or following.group != first:
            break
        last += 1
    return range(first, last + 1)


def list_group(saga: Saga, index: int) -> range:
    """A step list's positions of the element holding `index`."""
    return saga.element_at[index]


def signal_name(saga: Saga, state: SagaState, index: int) -> str | None:
    """The signal position `index` waits for, if it is a signal wait."""
    call = state.steps[index].call
    if call is not None:
        return call.name if call.kind is CallKind.SIGNAL else None
    wait = saga.steps[index].wait
    return wait.signal if isinstance(wait, SignalSpec) else None


def on_timeout(
    saga: Saga, state: SagaState, index: int
) -> tuple[OnTimeout | Continue, bytes | None]:
    """What a signal wait does on timeout, and a `Continue` default (encoded).

    A code saga's wait fails definitively (its body gets `StepFailedError`).
    """
    call = state.steps[index].call
    if call is not None:
        return OnTimeout.COMPENSATE, None
    wait = saga.steps[index].wait
    assert isinstance(wait, SignalSpec)
    return wait.on_timeout, wait.default


def timeout_of(saga: Saga, state: SagaState, index: int) -> float | None:
    """A signal wait's timeout in seconds, for messages."""
    call = state.steps[index].call
    if call is not None:
        return call.timeout
    wait = saga.steps[index].wait
    return wait.timeout if isinstance(wait, SignalSpec) else None


def is_sleep(saga: Saga, state: SagaState, index: int) -> bool:
    """Whether position `index` is a durable sleep."""
    call = state.steps[index].call
    if call is not None:
        return call.kind is CallKind.SLEEP
    return isinstance(saga.steps[index].wait, SleepSpec)


def label(saga: Saga, state: SagaState, index: int) -> str:
    """The position's name for people: the step's name, or the call's `name#k`."""
    call = state.steps[index].call
    if call is not None:
        return call.label
    return saga.steps[index].name


def next_element(saga: Saga, index: int) -> range | None:
    """A step list's positions after the element holding `index` (None: it was the last)."""
    return saga.next_element_at[index]
