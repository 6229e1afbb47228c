"""The fault kit on code sagas it has never seen: a correct shop passes, four planted bugs
are each found by `check` (drawn inputs and faults), and a plan replays by call labels."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pytest
from hypothesis import Phase, settings
from hypothesis import strategies as st

from runtime import SagaStatus
from runtime.testing import (
    FAULT_KINDS,
    Crash,
    FaultInjection,
    FaultPlan,
    FaultReport,
    InvariantViolation,
    StepFault,
    fault_injection,
)
from runtime.testing._plan import STORE_FAULT_KINDS
from saga import NonRetryableError, RetryPolicy, Saga, SagaContext, StepContext, StepFailedError

FAST = RetryPolicy(initial_interval=0.1, maximum_attempts=3)
STEP_AND_CRASH_FAULTS = [k for k in FAULT_KINDS if k not in STORE_FAULT_KINDS]
PLACED_AT = 1_750_000_000.0  # the kit's virtual clock starts here


class Order(msgspec.Struct, frozen=True):
    order_id: str
    skus: tuple[str, ...]
    total: int
    placed_at: float = PLACED_AT


class Refused(NonRetryableError):
    """The fraud check refused the order."""


@dataclass
class Shop:
    """Fake services that deduplicate by idempotency key, as real ones do."""

    reserved: dict[str, str] = field(default_factory=dict)
    charged: dict[str, int] = field(default_factory=dict)
    refunded: Counter[str] = field(default_factory=Counter)
    charges: Counter[str] = field(default_factory=Counter)

    async def reserve(self, ctx: StepContext, sku: str) -> str:
        self.reserved.setdefault(ctx.idempotency_key, sku)
        return sku

    async def release(self, ctx: StepContext, sku: str, reserved: str | None) -> None:
        self.reserved.pop(ctx.idempotency_key.removesuffix(":compensate"), None)

    async def charge(self, ctx: StepContext, order_id: str, total: int) -> int:
        if ctx.idempotency_key not in self.charged:
            self.charged[ctx.idempotency_key] = total
            self.charges[ctx.saga_id] += 1
        return total

    async def refund(self, ctx: StepContext, order_id: str, total: int, paid: int | None) -> None:
        key = ctx.idempotency_key.removesuffix(":compensate")
        if self.charged.pop(key, None) is not None:
            self.refunded[key] += 1

    async def fraud_check(self, ctx: StepContext, total: int) -> None:
        if total > 900:
            raise Refused(f"{total} needs a human")

    async def review(self, ctx: StepContext, order_id: str) -> None:
        return None


def build_shop(shop: Shop) -> Saga[Order, int]:
    async def checkout(ctx: SagaContext, order: Order) -> int:
        for sku in order.skus:  # a loop: reserve#2, reserve#3, ...
            await ctx.step("reserve", shop.reserve, sku, compensate=shop.release, retry=FAST)
        paid, _ = await ctx.parallel(
            ctx.step(
                "charge",
                shop.charge,
                order.order_id,
                order.total,
                compensate=shop.refund,
                retry=FAST,
            ),
            ctx.step("hold", shop.reserve, "gift-wrap", compensate=shop.release, retry=FAST),
        )
        await ctx.step("fraud_check", shop.fraud_check, order.total, retry=FAST)
        return paid

    return Saga("shop", checkout, input_type=Order)


orders = st.builds(
    Order,
    order_id=st.sampled_from(["o1", "o2"]),
    skus=st.lists(st.sampled_from(["book", "pen", "mug"]), min_size=1, max_size=3).map(tuple),
    total=st.sampled_from([100, 950]),
)


def nothing_left_behind(shop: Shop, report: FaultReport) -> None:
    """A compensated order holds no reservation and no charge; a completed one both."""
    for saga_id in report.with_status(SagaStatus.COMPENSATED):
        held = {k: v for k, v in shop.reserved.items() if k.startswith(f"{saga_id}:")}
        assert not held, f"{saga_id} compensated, yet still reserved: {held}"
        paid = {k: v for k, v in shop.charged.items() if k.startswith(f"{saga_id}:")}
        assert not paid, f"{saga_id} compensated, yet still charged: {paid}"


def refunded_at_most_once(shop: Shop, report: FaultReport) -> None:
    twice = {key: n for key, n in shop.refunded.items() if n > 1}
    assert not twice, f"refunded more than once: {twice}"


def charged_at_most_once(shop: Shop, report: FaultReport) -> None:
    twice = {saga_id: n for saga_id, n in shop.charges.items() if n > 1}
    assert not twice, f"charged more than once: {twice}"


INVARIANTS = [nothing_left_behind, refunded_at_most_once, charged_at_most_once]


def kit(services: type[Shop], build: Any = build_shop, **options: Any) -> FaultInjection[Shop, Any]:
    options.setdefault("faults", STEP_AND_CRASH_FAULTS)
    options.setdefault("invariants", INVARIANTS)
    return fault_injection(build, inputs=orders, services=services, **options)


def find(fault_kit: FaultInjection[Shop, Any], examples: int = 200) -> InvariantViolation:
    # Found, not shrunk (test_kit.py shows shrinking): the search alone, in seconds.
    quick = settings(database=None, phases=[Phase.explicit, Phase.generate])
    with pytest.raises(InvariantViolation) as caught:
        fault_kit.check(max_examples=examples, seed=3, settings=quick)
    return caught.value


# -- a correct saga passes; plans target call labels ---------------------------------------


def test_a_correct_code_saga_passes_drawn_faults_and_crashes() -> None:
    kit(Shop, sagas_per_example=2).check(max_examples=20, seed=1, settings=settings(database=None))


def test_a_plan_targets_a_loops_calls_by_label_and_crashes_recover_by_replay() -> None:
    plan = FaultPlan(
        StepFault(saga=0, step="reserve#2", attempt=1, kind="transient"),
        Crash(saga=0, at="after_effect", step="charge", attempt=1),
        StepFault(saga=0, step="hold", attempt=1, compensating=True, kind="transient"),
    )
    big = Order("o1", ("book", "pen"), 950)
    report = kit(Shop).run([big], plan)
    assert report.status("shop-0") is SagaStatus.COMPENSATED  # the fraud check refused it
    assert report.crashes == 1
    assert {c.step for c in report.calls_of("shop-0", kind="action")} == {
        "reserve",
        "reserve#2",
        "charge",
        "hold",
        "fraud_check",
    }
    assert len(report.calls_of("shop-0", "reserve#2", "action")) == 2  # the transient, a retry
    undone = [c.step for c in report.calls_of("shop-0", kind="compensation") if c.took_effect]
    assert undone[-2:] == ["reserve#2", "reserve"]  # the loop, newest first, after the group
    assert set(undone[:-2]) == {"charge", "hold"}


# -- planted bugs ----------------------------------------------------------------------------


class DoubleRefundShop(Shop):
    """BUG: a non-idempotent compensation: refunds on every call, not once per charge."""

    async def refund(self, ctx: StepContext, order_id: str, total: int, paid: int | None) -> None:
        key = ctx.idempotency_key.removesuffix(":compensate")
        self.charged.pop(key, None)
        self.refunded[key] += 1


def test_planted_non_idempotent_compensation_is_found() -> None:
    found = find(kit(DoubleRefundShop))
    assert "refunded more than once" in str(found)


class KeylessShop(Shop):
    """BUG: the charge ignores its idempotency key: a retried or redelivered call charges again."""

    async def charge(self, ctx: StepContext, order_id: str, total: int) -> int:
        self.charged[f"{ctx.idempotency_key}#{self.charges[ctx.saga_id]}"] = total
        self.charges[ctx.saga_id] += 1
        return total


def test_planted_step_that_ignores_its_idempotency_key_is_found() -> None:
    found = find(kit(KeylessShop, invariants=[charged_at_most_once]))
    assert "charged more than once" in str(found)


def build_clock_branching_shop(shop: Shop) -> Saga[Order, int]:
    async def checkout(ctx: SagaContext, order: Order) -> int:
        await ctx.step("reserve", shop.reserve, order.skus[0], compensate=shop.release)
        # BUG: reads the wall clock, not ctx.now(): a replay later takes the other branch.
        if time.time() - order.placed_at > 3600:
            await ctx.step("review", shop.review, order.order_id)
        return await ctx.step(
            "charge", shop.charge, order.order_id, order.total, compensate=shop.refund
        )

    return Saga("shop", checkout, input_type=Order)


def test_planted_branch_on_time_time_is_found_as_non_determinism() -> None:
    found = find(kit(Shop, build_clock_branching_shop), examples=20)
    text = str(found)
    assert "is not deterministic" in text
    assert "step 'charge'" in text
    assert "step 'review'" in text


def build_uncompensated_branch_shop(shop: Shop) -> Saga[Order, int]:
    async def checkout(ctx: SagaContext, order: Order) -> int:
        paid, _ = await ctx.parallel(
            ctx.step("charge", shop.charge, order.order_id, order.total, compensate=shop.refund),
            ctx.step("hold", shop.reserve, order.skus[0]),  # BUG: no compensate=
        )
        await ctx.step("fraud_check", shop.fraud_check, order.total)
        return paid

    return Saga("shop", checkout, input_type=Order)


def test_planted_fan_out_branch_without_compensation_is_found() -> None:
    found = find(kit(Shop, build_uncompensated_branch_shop), examples=50)
    assert "compensated, yet still reserved" in str(found)


def test_the_manual_style_catching_step_failed_error_passes_too() -> None:
    def build(shop: Shop) -> Saga[Order, int]:
        async def unreserve(ctx: StepContext, sku: str) -> None:
            shop.reserved.pop(f"{ctx.saga_id}:reserve", None)

        async def checkout(ctx: SagaContext, order: Order) -> int:
            sku = order.skus[0]
            try:
                await ctx.step("reserve", shop.reserve, sku, retry=FAST)
                paid = await ctx.step("charge", shop.charge, order.order_id, order.total)
                await ctx.step("fraud_check", shop.fraud_check, order.total, retry=FAST)
            except StepFailedError:
                await ctx.step("release", unreserve, sku)
                raise
            return paid

        return Saga("shop", checkout, input_type=Order)

    def released(shop: Shop, report: FaultReport) -> None:
        for saga_id in report.with_status(SagaStatus.COMPENSATED):
            assert not any(k.startswith(f"{saga_id}:reserve") for k in shop.reserved)

    # The body's own release step runs under the same faults; the leftover charge of a
    # refused order is the body's to handle (it does not), so only the release is checked.
    # No permanent faults or outages: a release that fails for good is the body's own leak.
    faults = [k for k in STEP_AND_CRASH_FAULTS if k not in ("permanent", "outage")]
    fault_injection(
        build, inputs=orders, services=Shop, invariants=[released], faults=faults
    ).check(max_examples=12, seed=2, settings=settings(database=None))
