"""The demo's checkout saga under the fault-injection kit: how a user tests their own saga.

The fake services play the outside world (orders, payments, inventory,
mail) and survive every simulated crash; the invariants below are the
business rules that must hold whatever the kit injects. SAGALOOP_SOAK=1
runs many more examples.
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

from hypothesis import strategies as st

from demo.checkout import Charge, FakeServices, LineItem, Order, build_checkout
from runtime import SagaStatus
from runtime.testing import FaultReport, fault_injection
from saga import StepContext

SOAK = os.environ.get("SAGALOOP_SOAK") == "1"
EXAMPLES = 2000 if SOAK else 150

START_STOCK = FakeServices().stock


class AuditedServices(FakeServices):
    """The demo's services, counting each real charge (a money movement) per key."""

    def __init__(self) -> None:
        super().__init__()
        self.charged: Counter[str] = Counter()

    async def charge_payment(self, ctx: StepContext, order: Order) -> Charge:
        before = ctx.idempotency_key in self.charges
        charge = await super().charge_payment(ctx, order)
        if not before:
            self.charged[ctx.idempotency_key] += 1
        return charge


def orders() -> st.SearchStrategy[Order]:
    """Mostly orders that can succeed; some out of stock (chair) or declined (large)."""
    items = st.lists(
        st.builds(LineItem, st.sampled_from(["book", "book", "lamp", "chair"]), st.integers(1, 2)),
        min_size=1,
        max_size=2,
        unique_by=lambda item: item.sku,
    )
    totals = st.sampled_from([4200, 4200, 4200, 250_000])
    return st.builds(order_of, items, totals)


def order_of(items: list[LineItem], total_cents: int) -> Order:
    return Order(order_id="order", customer="ann", items=tuple(items), total_cents=total_cents)


def _key(saga_id: str, step: str) -> str:
    return f"{saga_id}:{step}"


def stock_is_conserved_and_back_for_compensated_orders(
    services: AuditedServices, report: FaultReport
) -> None:
    held: Counter[str] = Counter()
    for items in services.reservations.values():
        for item in items:
            held[item.sku] += item.quantity
    for sku, start in START_STOCK.items():
        assert services.stock[sku] + held[sku] == start, (
            f"{sku}: {services.stock[sku]} in stock + {held[sku]} reserved != {start}"
        )
    for saga_id in report.with_status(SagaStatus.COMPENSATED):
        key = _key(saga_id, "reserve_inventory")
        assert key not in services.reservations, f"{saga_id} compensated, stock still reserved"
    for saga_id in report.with_status(SagaStatus.COMPLETED):
        reserved = services.reservations.get(_key(saga_id, "reserve_inventory"))
        order: Any = report.inputs[saga_id]
        assert reserved == order.items, f"{saga_id} completed, reserved {reserved}"


def each_charge_key_charged_at_most_once(services: AuditedServices, report: FaultReport) -> None:
    twice = {key: n for key, n in services.charged.items() if n > 1}
    assert not twice, f"charged more than once: {twice}"


def money_matches_the_outcome(services: AuditedServices, report: FaultReport) -> None:
    for saga_id in report.with_status(SagaStatus.COMPENSATED):
        charge = services.charges.get(_key(saga_id, "charge_payment"))
        assert charge is None, f"{saga_id} compensated, yet {charge} is not refunded"
    for saga_id in report.with_status(SagaStatus.COMPLETED):
        order: Any = report.inputs[saga_id]
        charge = services.charges.get(_key(saga_id, "charge_payment"))
        assert charge is not None, f"{saga_id} completed without a charge"
        assert charge.amount_cents == order.total_cents, f"{saga_id} charged {charge}"


def orders_match_the_outcome(services: AuditedServices, report: FaultReport) -> None:
    for saga_id in report.with_status(SagaStatus.COMPLETED):
        assert services.orders.get(_key(saga_id, "create_order")) == "created", saga_id
        assert services.mails.count(_key(saga_id, "send_confirmation")) == 1, saga_id
    for saga_id in report.with_status(SagaStatus.COMPENSATED):
        state = services.orders.get(_key(saga_id, "create_order"))
        assert state in (None, "cancelled"), f"{saga_id} compensated, order {state}"


def test_checkout_survives_faults() -> None:
    fault_injection(
        build_checkout,
        inputs=orders(),
        services=AuditedServices,
        invariants=[
            stock_is_conserved_and_back_for_compensated_orders,
            each_charge_key_charged_at_most_once,
            money_matches_the_outcome,
            orders_match_the_outcome,
        ],
        sagas_per_example=3,
    ).check(max_examples=EXAMPLES)
