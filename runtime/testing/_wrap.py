"""A saga's clone whose actions and compensations go through the kit.

The clone has the same name, steps, policies and types; only the callables
are wrapped (and a timeout is shortened where the plan injects one, so a
hung attempt is cut after milliseconds of real time). The wrapper records
every call in the journal, injects the step faults and crashes the plan
targets at it, and otherwise calls the user's callable unchanged.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Awaitable, Callable, Collection
from typing import Any, NoReturn, Protocol

import anyio

from saga import Saga, Step, StepContext
from saga.engine import InterceptedStep

from ._errors import InjectedPermanentError, InjectedTransientError
from ._journal import CallKind, Journal
from ._plan import Crash, CrashPoint, StepFault

FAULT_TIMEOUT = 0.02
"""Seconds of real time a step (or compensation) timeout is cut to when the plan injects one."""


class Injector(Protocol):
    """What the wrappers need from the harness running the example."""

    journal: Journal

    async def alive(self) -> None:
        """Return at once, unless the runtime is crashing: then never (the dead run nothing)."""
        ...

    def take_crash(
        self, saga_id: str, at: CrashPoint, step: str, attempt: int, compensating: bool
    ) -> Crash | None:
        """The unfired crash targeted at this point, now fired (None if none or past the cap)."""
        ...

    def take_step_fault(
        self, saga_id: str, step: str, attempt: int, compensating: bool
    ) -> StepFault | None:
        """The unfired step fault targeted at this attempt, now fired."""
        ...

    def saw_step(self, label: str, compensable: bool) -> None:
        """A code saga called step `label` (the kit learns a code saga's shape by running it)."""
        ...

    def may_have_taken_effect(self, saga_id: str, step: str, kind: CallKind) -> bool:
        """Whether a call of this step (or compensation) may already have taken effect."""
        ...

    async def crash(self, saga_id: str, why: str) -> NoReturn:
        """Abandon the runtime now (cancel its scope); never returns."""
        ...


def wrap_saga(saga: Saga, injector: Injector, timeouts: Collection[tuple[str, bool]]) -> Saga:
    """The clone of `saga` wired to `injector`.

    `timeouts` lists (step, compensating) pairs the plan injects a timeout
    into: their timeout is cut to `FAULT_TIMEOUT`.
    """
    if saga.body is not None:
        return saga.intercepted(functools.partial(_intercept, injector, timeouts))
    clone = copy.copy(saga)
    clone.steps = tuple(_wrap_step(step, injector, timeouts) for step in saga.steps)
    return clone


def _label(ctx: StepContext) -> str:
    """A code saga's call label (`name` or `name#k`), from its key `saga_id:label[:compensate]`."""
    label = ctx.idempotency_key[len(ctx.saga_id) + 1 :]
    return label.removesuffix(":compensate") if ctx.compensating else label


def _intercept(
    injector: Injector, timeouts: Collection[tuple[str, bool]], step: InterceptedStep
) -> InterceptedStep:
    """A code saga's `ctx.step` call wired to `injector`; faults target its label."""
    action, compensate = step.action, step.compensate
    names = {(label.partition("#")[0], undo) for label, undo in timeouts}

    async def wrapped_action(ctx: StepContext, *args: Any) -> Any:
        label = _label(ctx)
        injector.saw_step(label, compensate is not None)
        return await _call(injector, "action", ctx, None, lambda: action(ctx, *args), label)

    wrapped_compensate = None
    if compensate is not None:
        undo = compensate

        async def wrapped_compensate(ctx: StepContext, *args: Any) -> Any:
            result = args[-1]
            return await _call(
                injector, "compensation", ctx, result, lambda: undo(ctx, *args), _label(ctx)
            )

    timeout, compensation_timeout = step.timeout, step.compensation_timeout
    if (step.name, False) in names:
        timeout = _shorter(timeout)
    if (step.name, True) in names:
        compensation_timeout = _shorter(compensation_timeout)
    return InterceptedStep(
        step.name, wrapped_action, wrapped_compensate, timeout, compensation_timeout
    )


def _wrap_step(step: Step, injector: Injector, timeouts: Collection[tuple[str, bool]]) -> Step:
    if step.wait is not None:
        return step  # Sleep and WaitForSignal: the actor handles them, no callable runs
    clone = copy.copy(step)
    action = step.action
    compensate = step.compensate

    async def wrapped_action(ctx: StepContext, saga_input: Any) -> Any:
        return await _call(injector, "action", ctx, None, lambda: action(ctx, saga_input))

    clone.action = wrapped_action
    if (step.name, False) in timeouts:
        clone.timeout = _shorter(step.timeout)
    if compensate is not None:

        async def wrapped_compensate(ctx: StepContext, saga_input: Any, result: Any) -> Any:
            return await _call(
                injector, "compensation", ctx, result, lambda: compensate(ctx, saga_input, result)
            )

        clone.compensate = wrapped_compensate
        if (step.name, True) in timeouts:
            clone.compensation_timeout = _shorter(step.compensation_timeout)
    return clone


def _shorter(timeout: float | None) -> float:
    return FAULT_TIMEOUT if timeout is None else min(timeout, FAULT_TIMEOUT)


def describe_error(error: BaseException) -> str:
    if isinstance(error, anyio.get_cancelled_exc_class()):
        return "interrupted (cancelled)"
    return f"raised {type(error).__name__}: {error}"


async def _call(
    injector: Injector,
    kind: CallKind,
    ctx: StepContext,
    given: Any,
    real: Callable[[], Awaitable[Any]],
    label: str | None = None,
) -> Any:
    await injector.alive()
    journal = injector.journal
    saga_id, step, attempt = ctx.saga_id, label or ctx.step, ctx.attempt
    compensating = kind == "compensation"
    what = f"{kind} {step} attempt {attempt}"

    def begin(fault: str | None) -> int:
        return journal.begin(
            saga_id=saga_id,
            step=step,
            attempt=attempt,
            kind=kind,
            key=ctx.idempotency_key,
            fault=fault,
            given_result=(given is not None) if compensating else None,
        )

    crash = injector.take_crash(saga_id, "before_call", step, attempt, compensating)
    if crash is not None:
        index = begin("crash_before_call")
        journal.finish(index, took_effect=False, error="interrupted by the crash")
        await injector.crash(saga_id, f"crash before {what}")

    fault = injector.take_step_fault(saga_id, step, attempt, compensating)
    kind_of_fault = fault.kind if fault is not None else None
    if kind_of_fault == "permanent" and injector.may_have_taken_effect(saga_id, step, kind):
        journal.note(
            saga_id,
            f"fault 'permanent' not injected into {what}: an earlier attempt may have "
            "taken effect, so a definitive failure would be a lie",
        )
        kind_of_fault = None
    index = begin(kind_of_fault)
    if kind_of_fault in ("transient", "outage"):
        error: Exception = InjectedTransientError(f"injected {kind_of_fault} error in {what}")
        journal.finish(index, took_effect=False, error=describe_error(error))
        raise error
    if kind_of_fault == "permanent":
        error = InjectedPermanentError(f"injected permanent error in {what}")
        journal.finish(index, took_effect=False, error=describe_error(error))
        raise error

    result = await _real_call(journal, index, real)
    if kind_of_fault == "duplicate":
        index = begin("duplicate")  # the same request, delivered again
        result = await _real_call(journal, index, real)

    crash = injector.take_crash(saga_id, "after_effect", step, attempt, compensating)
    if crash is not None:
        journal.finish(index, error="interrupted by the crash before its outcome was recorded")
        await injector.crash(saga_id, f"crash after the effect of {what}")
    if kind_of_fault == "effect_then_error":
        error = InjectedTransientError(f"injected error after the effect of {what}")
        journal.finish(index, error=describe_error(error))
        raise error
    if kind_of_fault == "timeout":
        journal.finish(index, error="hung until the timeout cut it")
        await anyio.sleep_forever()
    return result


async def _real_call(journal: Journal, index: int, real: Callable[[], Awaitable[Any]]) -> Any:
    try:
        result = await real()
    except BaseException as exc:
        journal.finish(index, took_effect=None, error=describe_error(exc))
        raise
    journal.finish(index, took_effect=True)
    return result
