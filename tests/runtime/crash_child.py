"""The child process of the crash-recovery tests, and the checkout saga they run.

Run as `python -m tests.runtime.crash_child --db D --ledger L --count N ...`:
it opens a `Runtime` on D (which resumes whatever a killed predecessor left
unfinished), spawns sagas `order-000` .. `order-{N-1}` (exactly-once, so the
ones already spawned are just looked up), prints `READY` once every spawn is
durable, waits for them all and prints `DONE`. The parent SIGKILLs it at a
random moment after `READY`.

Each saga's behaviour is a `Plan` derived from its id, so the parent knows
what every saga must end as. Every action and compensation writes a ledger
record as its side effect (`tests/runtime/ledger.py`), between small random
pauses so that kills land inside steps, before and after the effect.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio

from runtime import Runtime, SagaCompensated
from saga import Action, Compensation, NonRetryableError, RetryPolicy, Saga, Step, StepContext

from .ledger import Ledger

STEPS = ("create_order", "charge_payment", "reserve_inventory", "send_confirmation")
MAX_ATTEMPTS = 4
MAX_PAUSE = 0.01

READY = "READY"
BLOCKED = "BLOCKED"
DONE = "DONE"


class ServiceUnavailable(Exception):
    """A transient failure (a 503): retried; may come after the effect was applied."""


class OutOfStock(Exception):
    """Declared non-retryable by reserve_inventory's policy: a definitive failure."""


class CardDeclined(NonRetryableError):
    """A definitive failure whatever the policy says."""


class WrongContext(NonRetryableError):
    """Raised by a step whose `StepContext` is not what the runtime promises."""


@dataclass(frozen=True, kw_only=True)
class Plan:
    """How one saga behaves, and what it must end as.

    `transient` fails the first n attempts of a step with `ServiceUnavailable`
    (n >= MAX_ATTEMPTS exhausts its retries); with `effect_before_failure`
    those attempts apply their effect before failing. `definitive` fails a
    step at once, before any effect. `compensation_transient` fails the first
    n attempts of a compensation, after its effect.
    """

    name: str
    outcome: Literal["completed", "compensated"]
    transient: Mapping[str, int] = field(default_factory=dict)
    effect_before_failure: bool = False
    definitive: Mapping[str, type[Exception]] = field(default_factory=dict)
    compensation_transient: Mapping[str, int] = field(default_factory=dict)
    failed_step: str | None = None
    compensated: tuple[str, ...] = ()
    """The steps compensated, newest first."""


PLANS: tuple[Plan, ...] = (
    Plan(name="happy", outcome="completed"),
    Plan(name="flaky-charge", outcome="completed", transient={"charge_payment": 2}),
    Plan(
        name="flaky-after-effect",
        outcome="completed",
        transient={"reserve_inventory": 1, "send_confirmation": 2},
        effect_before_failure=True,
    ),
    Plan(
        name="out-of-stock",
        outcome="compensated",
        definitive={"reserve_inventory": OutOfStock},
        compensation_transient={"charge_payment": 1},
        failed_step="reserve_inventory",
        compensated=("charge_payment", "create_order"),
    ),
    Plan(
        name="inventory-unavailable",
        outcome="compensated",
        transient={"reserve_inventory": MAX_ATTEMPTS},
        effect_before_failure=True,
        failed_step="reserve_inventory",
        compensated=("reserve_inventory", "charge_payment", "create_order"),
    ),
    Plan(
        name="payment-unavailable",
        outcome="compensated",
        transient={"charge_payment": MAX_ATTEMPTS},
        compensation_transient={"create_order": 2},
        failed_step="charge_payment",
        compensated=("charge_payment", "create_order"),
    ),
    Plan(
        name="card-declined",
        outcome="compensated",
        definitive={"charge_payment": CardDeclined},
        failed_step="charge_payment",
        compensated=("create_order",),
    ),
)


def saga_id(index: int) -> str:
    return f"order-{index:03d}"


def plan_for(saga_id: str) -> Plan:
    """The plan of `order-NNN`: PLANS[NNN % len(PLANS)]."""
    return PLANS[int(saga_id.rsplit("-", 1)[1]) % len(PLANS)]


def order_input(saga_id: str) -> dict[str, Any]:
    return {"order_id": saga_id, "amount": 100 + int(saga_id.rsplit("-", 1)[1])}


def expected_attempts(plan: Plan, step: str) -> int:
    """The attempts the step's final status must show (a crash costs none)."""
    index = STEPS.index(step)
    if plan.failed_step is not None and index > STEPS.index(plan.failed_step):
        return 0
    if step in plan.definitive:
        return 1
    return min(plan.transient.get(step, 0) + 1, MAX_ATTEMPTS)


STEP_RETRY = RetryPolicy(
    maximum_attempts=MAX_ATTEMPTS,
    initial_interval=0.001,
    backoff_coefficient=2.0,
    maximum_interval=0.005,
    non_retryable_error_types=(OutOfStock,),
)
COMPENSATION_RETRY = RetryPolicy(
    maximum_attempts=None, initial_interval=0.001, backoff_coefficient=2.0, maximum_interval=0.005
)


class _Services:
    """The step actions and compensations, writing to `ledger` between random pauses."""

    def __init__(
        self,
        ledger: Ledger,
        rng: random.Random,
        block_at: str | None,
        on_blocked: Callable[[], None],
        max_pause: float,
    ) -> None:
        self.ledger = ledger
        self.rng = rng
        self.block_at = block_at
        self.on_blocked = on_blocked
        self.max_pause = max_pause

    async def pause(self) -> None:
        await anyio.sleep(self.rng.uniform(0, self.max_pause))

    def action(self, name: str) -> Action:
        earlier = set(STEPS[: STEPS.index(name)])

        async def act(ctx: StepContext, order: dict[str, Any]) -> dict[str, Any]:
            order_id: str = order["order_id"]
            plan = plan_for(order_id)
            if ctx.step != name or set(ctx.results) != earlier or ctx.compensating:
                raise WrongContext(f"{name}: step {ctx.step!r}, results {sorted(ctx.results)}")
            await self.pause()
            definitive = plan.definitive.get(name)
            if definitive is not None:
                raise definitive(f"{name} refused order {order_id}")
            failing = ctx.attempt <= plan.transient.get(name, 0)
            if failing and not plan.effect_before_failure:
                raise ServiceUnavailable(f"{name}: 503 before anything happened")
            self.ledger.record(
                key=ctx.idempotency_key,
                kind="effect",
                saga_id=order_id,
                step=name,
                attempt=ctx.attempt,
            )
            if name == self.block_at:
                self.on_blocked()
                await anyio.sleep_forever()
            await self.pause()
            if failing:
                raise ServiceUnavailable(f"{name}: 503 after the effect was applied")
            return {"step": name, "key": ctx.idempotency_key}

        act.__name__ = name
        return act

    def compensation(self, name: str) -> Compensation:
        async def undo(ctx: StepContext, order: dict[str, Any], result: Any) -> None:
            order_id: str = order["order_id"]
            plan = plan_for(order_id)
            if ctx.step != name or not ctx.compensating:
                raise WrongContext(f"undo {name}: step {ctx.step!r}")
            await self.pause()
            self.ledger.record(
                key=ctx.idempotency_key,
                kind="compensation",
                saga_id=order_id,
                step=name,
                attempt=ctx.attempt,
                has_result=result is not None,
            )
            await self.pause()
            if ctx.attempt <= plan.compensation_transient.get(name, 0):
                raise ServiceUnavailable(f"undo {name}: 503 after the undo was applied")

        undo.__name__ = f"undo_{name}"
        return undo


def build_checkout(
    ledger: Ledger,
    rng: random.Random,
    *,
    block_at: str | None = None,
    on_blocked: Callable[[], None] = lambda: None,
    max_pause: float = MAX_PAUSE,
) -> Saga:
    """The checkout saga; `block_at` makes that step hang forever after its effect.

    Each action and compensation pauses twice, up to `max_pause` seconds each.
    """
    services = _Services(ledger, rng, block_at, on_blocked, max_pause)
    steps = [
        Step(
            name,
            services.action(name),
            compensate=services.compensation(name) if name != "send_confirmation" else None,
            retry=STEP_RETRY,
            compensation_retry=COMPENSATION_RETRY,
        )
        for name in STEPS
    ]
    return Saga("checkout", steps)


def _say(line: str) -> None:
    print(line, flush=True)


async def _run(args: argparse.Namespace) -> None:
    ledger = Ledger(args.ledger)
    checkout = build_checkout(
        ledger,
        random.Random(args.seed),
        block_at=args.block_at,
        on_blocked=lambda: _say(BLOCKED),
    )
    try:
        async with Runtime(
            args.db,
            sagas=[checkout],
            max_recoveries=args.max_recoveries,
            rng=random.Random(args.seed + 1),
        ) as rt:
            ids = [saga_id(i) for i in range(args.count)]
            handles = [await rt.spawn(checkout, order_input(sid), saga_id=sid) for sid in ids]
            _say(READY)
            with anyio.fail_after(args.timeout):
                for handle in handles:
                    with contextlib.suppress(SagaCompensated):
                        await handle.result()
            _say(DONE)
    finally:
        ledger.close()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--db", required=True)
    parser.add_argument("--ledger", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--max-recoveries", type=int, default=5)
    parser.add_argument("--block-at", choices=STEPS, default=None)
    parser.add_argument("--timeout", type=float, default=60.0)
    anyio.run(_run, parser.parse_args(argv))


if __name__ == "__main__":
    # Run the module's own copy, not __main__'s, so that error types carry
    # their importable names (tests.runtime.crash_child.OutOfStock).
    from tests.runtime.crash_child import main as canonical_main

    canonical_main(sys.argv[1:])
