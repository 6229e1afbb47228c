"""Running one attempt of a step or compensation and turning its end into an event."""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import msgspec

from ._context import StepContext
from ._definition import Step
from ._errors import NonRetryableError, PayloadError
from ._events import CompensationFailed, CompensationSucceeded, Event, StepFailed, StepSucceeded
from ._model import NULL, ErrorInfo, FailureKind
from ._payload import encode_payload
from ._waits import SignalSpec, SleepSpec


def error_info(error: BaseException, *, timed_out: bool = False) -> ErrorInfo:
    cls = type(error)
    return ErrorInfo(
        type=f"{cls.__module__}.{cls.__qualname__}", message=str(error), timed_out=timed_out
    )


class StepTimeout(Exception):
    """An attempt ran past its step's `timeout`."""

    def __init__(self, seconds: float | None) -> None:
        super().__init__(f"attempt timed out after {seconds} s")


def classify(step: Step, error: Exception, *, compensating: bool) -> FailureKind:
    policy = step.compensation_retry if compensating else step.retry
    if isinstance(error, (NonRetryableError, *policy.non_retryable_error_types)):
        return FailureKind.DEFINITIVE
    return FailureKind.TRANSIENT


async def call_with_timeout(
    seconds: float | None, func: Callable[..., Awaitable[Any]], *args: Any
) -> Any:
    """Await `func(*args)`, raising `StepTimeout` after `seconds` (None: no limit)."""
    if seconds is None:
        return await func(*args)
    with anyio.move_on_after(seconds):
        return await func(*args)
    raise StepTimeout(seconds)


async def attempt_step(
    step: Step,
    index: int,
    ctx: StepContext,
    saga_input: Any,
    now: Callable[[], float],
    rng: random.Random,
) -> Event:
    """Run one attempt of `step`'s action; its outcome as an event."""
    try:
        if step.timeout is None:  # the usual case: no cancel scope, no extra frame
            value = await step.action(ctx, saga_input)
        else:
            value = await call_with_timeout(step.timeout, step.action, ctx, saga_input)
    except StepTimeout as exc:
        return _step_failed(
            index, ctx, error_info(exc, timed_out=True), FailureKind.TRANSIENT, now, rng
        )
    except Exception as exc:
        kind = classify(step, exc, compensating=False)
        return _step_failed(index, ctx, error_info(exc), kind, now, rng)
    try:
        result = encode_payload(value, "result of step", step.name)
    except PayloadError as exc:
        # It returned, so it took effect: ambiguous, compensated with None.
        return _step_failed(index, ctx, error_info(exc), FailureKind.AMBIGUOUS, now, rng)
    raw = msgspec.Raw(result) if result != b"null" else NULL
    return StepSucceeded(at=now(), step=index, attempt=ctx.attempt, result=raw)


def _step_failed(
    index: int,
    ctx: StepContext,
    error: ErrorInfo,
    kind: FailureKind,
    now: Callable[[], float],
    rng: random.Random,
) -> StepFailed:
    return StepFailed(
        at=now(), step=index, attempt=ctx.attempt, error=error, kind=kind, jitter=rng.random()
    )


async def attempt_compensation(
    step: Step,
    index: int,
    ctx: StepContext,
    saga_input: Any,
    recorded: Any,
    now: Callable[[], float],
    rng: random.Random,
) -> Event:
    """Run one attempt of `step`'s compensation; its outcome as an event."""
    assert step.compensate is not None
    error: ErrorInfo
    try:
        if step.compensation_timeout is None:  # as in `attempt_step`: no extra frame
            await step.compensate(ctx, saga_input, recorded)
        else:
            await call_with_timeout(
                step.compensation_timeout, step.compensate, ctx, saga_input, recorded
            )
    except StepTimeout as exc:
        error, kind = error_info(exc, timed_out=True), FailureKind.TRANSIENT
    except Exception as exc:
        error, kind = error_info(exc), classify(step, exc, compensating=True)
    else:
        return CompensationSucceeded(at=now(), step=index, attempt=ctx.attempt)
    return CompensationFailed(
        at=now(), step=index, attempt=ctx.attempt, error=error, kind=kind, jitter=rng.random()
    )


def wait_deadline(
    spec: SleepSpec | SignalSpec, ctx: StepContext, saga_input: Any, now: float
) -> float | None:
    """When a waiting step stops waiting (None: only its signal ends it).

    Raises whatever a `Sleep(until=...)` function raises, or `TypeError`
    if it returns neither an aware datetime nor a number.
    """
    if isinstance(spec, SignalSpec):
        return None if spec.timeout is None else now + spec.timeout
    if spec.seconds is not None:
        return now + spec.seconds
    assert spec.until is not None
    until = spec.until(ctx, saga_input)
    if isinstance(until, dt.datetime):
        if until.tzinfo is None:
            raise TypeError("Sleep(until=...) must return an aware datetime (with tzinfo)")
        return until.timestamp()
    if isinstance(until, int | float) and not isinstance(until, bool):
        return float(until)
    raise TypeError(f"Sleep(until=...) returned {until!r}, not a datetime or epoch seconds")
