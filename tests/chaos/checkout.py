"""The chaos suite's checkout saga, its per-saga plans, and a model of how each must end.

Every saga carries its plan in its input (`Order.plan`): for each step, how
its action misbehaves (a 503 before or after the effect, a timeout, a card
declined, a result that cannot be recorded) and how often its compensation
fails. The services are deterministic given (plan, step, attempt), so
`expected` says exactly how a saga must end whatever crashes and store
faults hit it on the way: a crash or a store fault costs no attempt.

The services write every effect and compensation to a `Ledger` (in memory,
or a SQLite file that survives SIGKILL, `ledger.py`) and pass through
`Hooks` just before and just after the effect, where a test crashes the
runtime or pauses.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import anyio
import msgspec

from saga import (
    Action,
    Compensation,
    NonRetryableError,
    PayloadError,
    RetryPolicy,
    Saga,
    SagaStatus,
    Step,
    StepContext,
    StepStatus,
)
from tests.runtime.ledger import Kind, Record

STEPS = ("create_order", "charge_payment", "reserve_inventory", "send_confirmation")
COMPENSABLE = frozenset(STEPS[:3])
MAX_ATTEMPTS = 3


class ServiceUnavailable(Exception):
    """A transient failure (a 503): retried; it may come after the effect was applied."""


class CardDeclined(NonRetryableError):
    """A definitive failure, raised before any effect."""


class WrongContext(NonRetryableError):
    """Raised by a service when the runtime breaks a promise (context, recorded result)."""


class Unrecordable:
    """A step result msgspec cannot serialize: the step took effect, its result is lost."""


def type_name(cls: type[BaseException]) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


class Fault(enum.StrEnum):
    """How one step's action misbehaves."""

    OK = "ok"
    TRANSIENT = "transient"
    """The first `failures` attempts fail with a 503 before the effect."""
    TRANSIENT_AFTER = "transient_after"
    """The first `failures` attempts apply the effect, then fail with a 503."""
    TIMEOUT = "timeout"
    """The first `failures` attempts apply the effect, then hang past the step's timeout."""
    DEFINITIVE = "definitive"
    """The card is declined at once, before any effect."""
    UNRECORDABLE = "unrecordable"
    """The effect is applied and the result cannot be recorded: ambiguous at once."""


RETRIED = frozenset({Fault.TRANSIENT, Fault.TRANSIENT_AFTER, Fault.TIMEOUT})
MISBEHAVIOURS = tuple(fault for fault in Fault if fault is not Fault.OK)


class StepPlan(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    fault: Fault = Fault.OK
    failures: int = 0
    compensation_failures: int = 0
    """The first n attempts of the compensation fail with a 503."""
    compensation_fails_after_undo: bool = False


class Order(msgspec.Struct, frozen=True, kw_only=True):
    """The saga input: an order and its plan, one `StepPlan` per step."""

    order_id: str
    amount: int
    plan: tuple[StepPlan, ...]


HAPPY = tuple(StepPlan() for _ in STEPS)


def make_order(saga_id: str, plan: Sequence[StepPlan], amount: int = 100) -> Order:
    if len(plan) != len(STEPS):
        raise ValueError(f"a plan has one StepPlan per step ({len(STEPS)})")
    return Order(order_id=saga_id, amount=amount, plan=tuple(plan))


def random_plan(
    rng: random.Random,
    fault_share: float = 0.35,
    faults: Sequence[Fault] = MISBEHAVIOURS,
) -> tuple[StepPlan, ...]:
    """A plan where each step misbehaves (one of `faults`) with probability `fault_share`."""
    plan = []
    for step in STEPS:
        fault = Fault.OK
        failures = 0
        if rng.random() < fault_share:
            fault = rng.choice(faults)
            if fault in RETRIED:
                failures = rng.randint(1, MAX_ATTEMPTS)
        undo_failures = rng.choice((0, 0, 0, 1, 2)) if step in COMPENSABLE else 0
        plan.append(
            StepPlan(
                fault=fault,
                failures=failures,
                compensation_failures=undo_failures,
                compensation_fails_after_undo=undo_failures > 0 and rng.random() < 0.5,
            )
        )
    return tuple(plan)


# -- the reference model ---------------------------------------------------------


@dataclass(frozen=True)
class Expected:
    """How a saga with a given plan must end."""

    status: SagaStatus
    steps: tuple[tuple[StepStatus, int], ...]
    """Each step's final status and attempt count."""
    failed_step: int | None
    failure_type: str | None
    """The failing step's error type (a timeout: the error is marked `timed_out`)."""
    timed_out: bool
    compensated: tuple[int, ...]
    """The compensated steps, newest first."""
    compensation_attempts: tuple[int, ...]


def expected(order: Order) -> Expected:
    """The model: what the runtime must make of `order.plan`."""
    steps: list[tuple[StepStatus, int]] = []
    failed: int | None = None
    failure_type: str | None = None
    timed_out = False
    for index, plan in enumerate(order.plan):
        if failed is not None:
            steps.append((StepStatus.PENDING, 0))
        elif plan.fault in RETRIED and plan.failures >= MAX_ATTEMPTS:
            steps.append((StepStatus.AMBIGUOUS, MAX_ATTEMPTS))
            failed = index
            timed_out = plan.fault is Fault.TIMEOUT
            failure_type = None if timed_out else type_name(ServiceUnavailable)
        elif plan.fault in RETRIED:
            steps.append((StepStatus.SUCCEEDED, plan.failures + 1))
        elif plan.fault is Fault.DEFINITIVE:
            steps.append((StepStatus.FAILED, 1))
            failed, failure_type = index, type_name(CardDeclined)
        elif plan.fault is Fault.UNRECORDABLE:
            steps.append((StepStatus.AMBIGUOUS, 1))
            failed, failure_type = index, type_name(PayloadError)
        else:
            steps.append((StepStatus.SUCCEEDED, 1))
    compensated: tuple[int, ...] = ()
    if failed is not None:
        compensated = tuple(
            index
            for index in reversed(range(len(STEPS)))
            if steps[index][0] in (StepStatus.SUCCEEDED, StepStatus.AMBIGUOUS)
            and STEPS[index] in COMPENSABLE
        )
    return Expected(
        status=SagaStatus.COMPLETED if failed is None else SagaStatus.COMPENSATED,
        steps=tuple(steps),
        failed_step=failed,
        failure_type=failure_type,
        timed_out=timed_out,
        compensated=compensated,
        compensation_attempts=tuple(
            order.plan[i].compensation_failures + 1 if i in compensated else 0
            for i in range(len(STEPS))
        ),
    )


def step_result(saga_id: str, step: str) -> dict[str, str]:
    """What a step returns (and so what later steps and its compensation must see)."""
    return {"step": step, "key": f"{saga_id}:{step}"}


def expected_output(saga_id: str) -> dict[str, Any]:
    return {step: step_result(saga_id, step) for step in STEPS}


# -- the ledger and the hooks -------------------------------------------------------

Where = Literal["before", "after"]


class Ledger(Protocol):
    def record(
        self,
        *,
        key: str,
        kind: Kind,
        saga_id: str,
        step: str,
        attempt: int,
        has_result: bool | None = None,
    ) -> bool:
        """Append one record; return whether (key, kind) was already there."""
        ...

    def records(self) -> list[Record]:
        """Every record, in ledger order."""
        ...


class MemoryLedger:
    """A ledger for one process (the runtime and the checks share it)."""

    def __init__(self) -> None:
        self._records: list[Record] = []
        self._seen: set[tuple[str, str]] = set()

    def record(
        self,
        *,
        key: str,
        kind: Kind,
        saga_id: str,
        step: str,
        attempt: int,
        has_result: bool | None = None,
    ) -> bool:
        duplicate = (key, kind) in self._seen
        self._seen.add((key, kind))
        seq = len(self._records) + 1
        self._records.append(
            Record(seq, key, kind, saga_id, step, attempt, 0, duplicate, has_result)
        )
        return duplicate

    def records(self) -> list[Record]:
        return list(self._records)


class Hooks(Protocol):
    async def checkpoint(self, ctx: StepContext, where: Where) -> None:
        """Called just before and just after a service applies its effect."""
        ...


class NoHooks:
    async def checkpoint(self, ctx: StepContext, where: Where) -> None:
        return None


# -- the services and the saga ----------------------------------------------------------


@dataclass(frozen=True)
class Timing:
    retry_interval: float
    max_interval: float
    step_timeout: float
    """Real seconds (a step's timeout runs on the event loop's clock)."""


VIRTUAL = Timing(retry_interval=1.0, max_interval=4.0, step_timeout=0.25)
"""Retries on a `VirtualClock`: only an advance of the clock brings them on."""
REAL = Timing(retry_interval=0.001, max_interval=0.005, step_timeout=30.0)
"""Retries on the wall clock, in milliseconds; no plan may use `Fault.TIMEOUT` with it."""


def _check(ctx: StepContext, order: Order, name: str, *, compensating: bool) -> None:
    key = f"{ctx.saga_id}:{name}" + (":compensate" if compensating else "")
    if (
        ctx.step != name
        or ctx.compensating is not compensating
        or ctx.idempotency_key != key
        or ctx.saga_id != order.order_id
        or len(order.plan) != len(STEPS)
    ):
        raise WrongContext(f"{name}: unexpected context {ctx!r}")


def _action(name: str, ledger: Ledger, hooks: Hooks) -> Action:
    index = STEPS.index(name)
    earlier = STEPS[:index]

    async def act(ctx: StepContext, order: Order) -> Any:
        _check(ctx, order, name, compensating=False)
        if dict(ctx.results) != {s: step_result(ctx.saga_id, s) for s in earlier}:
            raise WrongContext(f"{name}: results {dict(ctx.results)!r}")
        plan = order.plan[index]
        await hooks.checkpoint(ctx, "before")
        if plan.fault is Fault.DEFINITIVE:
            raise CardDeclined(f"{name}: card declined for {order.order_id}")
        failing = plan.fault in RETRIED and ctx.attempt <= plan.failures
        if failing and plan.fault is Fault.TRANSIENT:
            raise ServiceUnavailable(f"{name}: 503 before anything happened")
        ledger.record(
            key=ctx.idempotency_key,
            kind="effect",
            saga_id=ctx.saga_id,
            step=name,
            attempt=ctx.attempt,
        )
        await hooks.checkpoint(ctx, "after")
        if failing and plan.fault is Fault.TRANSIENT_AFTER:
            raise ServiceUnavailable(f"{name}: 503 after the effect was applied")
        if failing and plan.fault is Fault.TIMEOUT:
            await anyio.sleep_forever()  # the service hangs; the step's timeout ends it
        if plan.fault is Fault.UNRECORDABLE:
            return Unrecordable()
        return step_result(ctx.saga_id, name)

    act.__name__ = name
    return act


def _compensation(name: str, ledger: Ledger, hooks: Hooks) -> Compensation:
    index = STEPS.index(name)

    async def undo(ctx: StepContext, order: Order, result: Any) -> None:
        _check(ctx, order, name, compensating=True)
        if result is not None and result != step_result(ctx.saga_id, name):
            raise WrongContext(f"undo {name}: recorded result {result!r}")
        plan = order.plan[index]
        await hooks.checkpoint(ctx, "before")
        failing = ctx.attempt <= plan.compensation_failures
        if failing and not plan.compensation_fails_after_undo:
            raise ServiceUnavailable(f"undo {name}: 503 before anything happened")
        ledger.record(
            key=ctx.idempotency_key,
            kind="compensation",
            saga_id=ctx.saga_id,
            step=name,
            attempt=ctx.attempt,
            has_result=result is not None,
        )
        await hooks.checkpoint(ctx, "after")
        if failing:
            raise ServiceUnavailable(f"undo {name}: 503 after the undo was applied")

    undo.__name__ = f"undo_{name}"
    return undo


def build_checkout(ledger: Ledger, hooks: Hooks | None = None, timing: Timing = VIRTUAL) -> Saga:
    """The checkout saga on deterministic fake services writing to `ledger`."""
    hooks = hooks if hooks is not None else NoHooks()
    retry = RetryPolicy(
        maximum_attempts=MAX_ATTEMPTS,
        initial_interval=timing.retry_interval,
        backoff_coefficient=2.0,
        maximum_interval=timing.max_interval,
    )
    compensation_retry = RetryPolicy(
        maximum_attempts=None,
        initial_interval=timing.retry_interval,
        backoff_coefficient=2.0,
        maximum_interval=timing.max_interval,
    )
    steps = [
        Step(
            name,
            _action(name, ledger, hooks),
            compensate=_compensation(name, ledger, hooks) if name in COMPENSABLE else None,
            retry=retry,
            timeout=timing.step_timeout,
            compensation_retry=compensation_retry,
        )
        for name in STEPS
    ]
    return Saga("checkout", steps, input_type=Order)
