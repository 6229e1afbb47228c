"""Running one attempt of a step or compensation and turning its end into an event.

Steps of step-list sagas (`Step`) and calls of code sagas (`PendingCall`)
run alike: both offer the action, the compensation, their policies and
timeouts (`Runnable`). A step-list action gets `(ctx, saga_input)`; a code
saga's gets `(ctx, *recorded_args)`; a compensation gets the same plus the
recorded result (or None when the step is ambiguous).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import random
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import anyio
import msgspec

from ._context import StepContext
from ._errorinfo import NULL, ErrorInfo, FailureKind
from ._errors import NonRetryableError, PayloadError, StepTimeoutError
from ._events import CompensationFailed, CompensationSucceeded, Event, StepFailed, StepSucceeded
from ._payload import check_size, decode_payload, encode_payload
from ._policy import RetryPolicy
from ._waits import SignalSpec, SleepSpec

_MAX_MESSAGE = 4000
"""Characters of an error message kept in the record: a 10 MB message is not an error's."""


class Runnable(Protocol):
    """What running an attempt needs of a step (`Step`) or of a code saga's call."""

    @property
    def name(self) -> str: ...
    @property
    def action(self) -> Callable[..., Awaitable[Any]] | None: ...
    @property
    def compensate(self) -> Callable[..., Awaitable[Any]] | None: ...
    @property
    def retry(self) -> RetryPolicy: ...
    @property
    def compensation_retry(self) -> RetryPolicy: ...
    @property
    def timeout(self) -> float | None: ...
    @property
    def compensation_timeout(self) -> float | None: ...
    @property
    def result_type(self) -> Any: ...


def error_info(error: BaseException, *, timed_out: bool = False) -> ErrorInfo:
    """`error` as recorded: always storable, whatever its type name or `__str__` do."""
    cls = type(error)
    try:
        message = str(error)
    except Exception as exc:  # a __str__ that raises must not fail the write
        message = f"<str() of the error raised {type(exc).__name__}>"
    if len(message) > _MAX_MESSAGE:
        message = message[:_MAX_MESSAGE] + f"... ({len(message)} characters)"
    return ErrorInfo(
        type=_storable(f"{cls.__module__}.{cls.__qualname__}"),
        message=_storable(message),
        timed_out=timed_out,
    )


def _storable(text: str) -> str:
    """`text` with lone surrogates (surrogateescape file names) written as escapes."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode()
    return text


def classify(step: Runnable, error: BaseException, *, compensating: bool) -> FailureKind:
    policy = step.compensation_retry if compensating else step.retry
    if isinstance(error, (NonRetryableError, *policy.non_retryable_error_types)):
        return FailureKind.DEFINITIVE
    if not isinstance(error, Exception):
        return FailureKind.AMBIGUOUS  # a BaseException: not retried, yet it may have acted
    return FailureKind.TRANSIENT


ABANDON_AFTER = 1.0
"""Seconds a timed-out attempt has to end once cancelled; then it is abandoned, still running."""


async def call_with_timeout(
    seconds: float | None, func: Callable[..., Awaitable[Any]], *args: Any
) -> Any:
    """Await `func(*args)`, raising `StepTimeoutError` after `seconds` (None: no limit).

    The call runs in a task of its own so that one which swallows its
    cancellation cannot hold the saga: `ABANDON_AFTER` seconds past the
    timeout it is left running, unawaited (`StepTimeoutError(abandoned=True)`).
    """
    if seconds is None:
        return await func(*args)

    async def bounded() -> tuple[bool, Any]:
        with anyio.move_on_after(seconds):  # re-cancels at every await, as anyio does
            return True, await func(*args)
        return False, None

    call = asyncio.get_running_loop().create_task(bounded())
    call.add_done_callback(_retrieved)  # an abandoned call's end is nobody's to log
    try:
        await asyncio.wait((call,), timeout=seconds + ABANDON_AFTER)
    except BaseException:  # we are cancelled (a stop): so is the call, as if it ran here
        call.cancel()
        with anyio.CancelScope(shield=True):
            await asyncio.wait((call,), timeout=ABANDON_AFTER)
        raise
    if not call.done():  # left to the loop, unawaited
        raise StepTimeoutError(seconds, abandoned=True)
    finished, value = call.result()  # the call's own error, if it raised
    if not finished:
        raise StepTimeoutError(seconds)
    return value


def _retrieved(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()


def _escapes(error: BaseException) -> bool:
    """Errors that are not the step's to keep: cancellation (an interrupt, a stop) and the
    process being told to stop (Ctrl-C, `sys.exit`: a clean stop, the step runs again)."""
    return isinstance(error, anyio.get_cancelled_exc_class() | KeyboardInterrupt | SystemExit)


async def attempt_step(
    step: Runnable,
    index: int,
    ctx: StepContext,
    args: tuple[Any, ...],
    now: Callable[[], float],
    rng: random.Random,
    *,
    max_bytes: int | None = None,
) -> Event:
    """Run one attempt of `step`'s action on `args`; its outcome as an event (a result
    over `max_bytes` of JSON is an ambiguous failure: it ran, its result cannot be kept)."""
    action = step.action
    assert action is not None
    try:
        if step.timeout is None:  # the usual case: no cancel scope, no extra frame
            value = await action(ctx, *args)
        else:
            value = await call_with_timeout(step.timeout, action, ctx, *args)
    except StepTimeoutError as exc:
        # Abandoned still running: it may yet act, so it is not retried beside itself.
        kind = FailureKind.AMBIGUOUS if exc.abandoned else FailureKind.TRANSIENT
        return _step_failed(index, ctx, error_info(exc, timed_out=True), kind, now, rng)
    except BaseException as exc:
        if _escapes(exc):
            raise
        kind = classify(step, exc, compensating=False)
        return _step_failed(index, ctx, error_info(exc), kind, now, rng)
    try:
        typed = step.result_type is not Any
        result = encode_payload(value, "result of step", step.name, decoded_next=typed)
        check_size(result, max_bytes, "result of step", step.name)
        if typed:
            decode_payload(result, step.result_type, "result of step", step.name)
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
    step: Runnable,
    index: int,
    ctx: StepContext,
    args: tuple[Any, ...],
    now: Callable[[], float],
    rng: random.Random,
) -> Event:
    """Run one attempt of `step`'s compensation on `args` (ending with the recorded result)."""
    compensate = step.compensate
    assert compensate is not None
    error: ErrorInfo
    try:
        if step.compensation_timeout is None:  # as in `attempt_step`: no extra frame
            await compensate(ctx, *args)
        else:
            await call_with_timeout(step.compensation_timeout, compensate, ctx, *args)
    except StepTimeoutError as exc:
        error, kind = error_info(exc, timed_out=True), FailureKind.TRANSIENT
    except BaseException as exc:
        if _escapes(exc):
            raise
        error, kind = error_info(exc), classify(step, exc, compensating=True)
        if kind is FailureKind.AMBIGUOUS:
            kind = FailureKind.TRANSIENT  # a compensation is retried: it must cope
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
    if it returns neither an aware datetime nor a finite number.
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
        if not math.isfinite(until):
            raise ValueError(f"Sleep(until=...) returned {until!r}, not a finite time")
        return float(until)
    raise TypeError(f"Sleep(until=...) returned {until!r}, not a datetime or epoch seconds")
