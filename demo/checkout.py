"""The checkout saga of the mission, against small in-memory fake services.

Each fake service deduplicates by idempotency key, as real payment and
inventory APIs do, so a step that runs twice (a retry after a crash) takes
effect once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec

from saga import NonRetryableError, RetryPolicy, Saga, Step, StepContext


class LineItem(msgspec.Struct, frozen=True):
    sku: str
    quantity: int


class Order(msgspec.Struct, frozen=True, kw_only=True):
    order_id: str
    customer: str
    items: tuple[LineItem, ...]
    total_cents: int


class Charge(msgspec.Struct, frozen=True):
    charge_id: str
    amount_cents: int


class CardDeclined(NonRetryableError):
    """The bank said no: retrying will not change its mind."""


class OutOfStock(Exception):
    """Not enough stock; declared non-retryable in the step's policy."""


class GatewayUnavailable(Exception):
    """A transient 503 from the payment gateway."""


@dataclass
class FakeServices:
    """Orders, payments, inventory and mail, with a log of every effect."""

    stock: dict[str, int] = field(default_factory=lambda: {"book": 10, "lamp": 2, "chair": 0})
    gateway_failures: dict[str, int] = field(default_factory=dict)
    orders: dict[str, str] = field(default_factory=dict)
    charges: dict[str, Charge] = field(default_factory=dict)
    reservations: dict[str, tuple[LineItem, ...]] = field(default_factory=dict)
    mails: list[str] = field(default_factory=list)
    log: list[str] = field(default_factory=list)

    async def create_order(self, ctx: StepContext, order: Order) -> str:
        if ctx.idempotency_key not in self.orders:
            self.orders[ctx.idempotency_key] = "created"
            self.log.append(f"orders: created {order.order_id}")
        return order.order_id

    async def cancel_order(self, ctx: StepContext, order: Order, result: str | None) -> None:
        key = ctx.idempotency_key.removesuffix(":compensate")
        if self.orders.get(key) == "created":
            self.orders[key] = "cancelled"
            self.log.append(f"orders: cancelled {order.order_id}")

    async def charge_payment(self, ctx: StepContext, order: Order) -> Charge:
        if ctx.idempotency_key in self.charges:
            return self.charges[ctx.idempotency_key]
        left = self.gateway_failures.get(order.order_id, 0)
        if left:
            self.gateway_failures[order.order_id] = left - 1
            self.log.append(f"payments: 503 for {order.order_id} (attempt {ctx.attempt})")
            raise GatewayUnavailable("payment gateway returned 503")
        if order.total_cents > 100_000:
            raise CardDeclined(f"card declined for {order.total_cents / 100:.2f}")
        charge = Charge(f"ch_{order.order_id}", order.total_cents)
        self.charges[ctx.idempotency_key] = charge
        self.log.append(f"payments: charged {charge.amount_cents / 100:.2f} for {order.order_id}")
        return charge

    async def refund_payment(self, ctx: StepContext, order: Order, charge: Charge | None) -> None:
        key = ctx.idempotency_key.removesuffix(":compensate")
        # charge is None when the charge's outcome was never recorded: look it up by key.
        recorded = self.charges.pop(key, None)
        if recorded is not None:
            self.log.append(f"payments: refunded {recorded.amount_cents / 100:.2f}")

    async def reserve_inventory(self, ctx: StepContext, order: Order) -> list[str]:
        if ctx.idempotency_key in self.reservations:
            return [item.sku for item in order.items]
        for item in order.items:
            if self.stock.get(item.sku, 0) < item.quantity:
                raise OutOfStock(f"only {self.stock.get(item.sku, 0)} {item.sku!r} left")
        for item in order.items:
            self.stock[item.sku] -= item.quantity
        self.reservations[ctx.idempotency_key] = order.items
        self.log.append(f"inventory: reserved {', '.join(i.sku for i in order.items)}")
        return [item.sku for item in order.items]

    async def release_inventory(
        self, ctx: StepContext, order: Order, reserved: list[str] | None
    ) -> None:
        items = self.reservations.pop(ctx.idempotency_key.removesuffix(":compensate"), ())
        for item in items:
            self.stock[item.sku] += item.quantity
        if items:
            self.log.append("inventory: released")

    async def send_confirmation(self, ctx: StepContext, order: Order) -> None:
        if ctx.idempotency_key not in self.mails:
            self.mails.append(ctx.idempotency_key)
            self.log.append(f"mail: confirmation sent to {order.customer}")


def build_checkout(services: FakeServices) -> Saga:
    """The checkout saga wired to `services`."""
    fast = RetryPolicy(initial_interval=0.05, backoff_coefficient=2.0, maximum_interval=1.0)
    return Saga(
        "checkout",
        [
            Step("create_order", services.create_order, compensate=services.cancel_order),
            Step(
                "charge_payment",
                services.charge_payment,
                compensate=services.refund_payment,
                retry=RetryPolicy(
                    maximum_attempts=5,
                    initial_interval=0.05,
                    backoff_coefficient=2.0,
                    maximum_interval=1.0,
                    non_retryable_error_types=(CardDeclined,),
                ),
                timeout=10.0,
                result_type=Charge,
            ),
            Step(
                "reserve_inventory",
                services.reserve_inventory,
                compensate=services.release_inventory,
                retry=RetryPolicy(
                    maximum_attempts=3,
                    initial_interval=0.05,
                    non_retryable_error_types=(OutOfStock,),
                ),
            ),
            Step("send_confirmation", services.send_confirmation, retry=fast),
        ],
        input_type=Order,
    )


def order(order_id: str, *items: tuple[str, int], total_cents: int = 4200) -> Order:
    return Order(
        order_id=order_id,
        customer=f"{order_id}@example.com",
        items=tuple(LineItem(sku, quantity) for sku, quantity in items),
        total_cents=total_cents,
    )
