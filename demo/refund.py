"""The refund saga of the demo: a refund above a threshold waits for a manager.

`approval` waits up to three days for the `manager_approval` signal; an
approval pays the refund, a rejection or no answer compensates (the hold
on the refund is released).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec

from saga import NonRetryableError, Saga, Step, StepContext, WaitForSignal

THREE_DAYS = 3 * 24 * 3600.0
APPROVAL_THRESHOLD_CENTS = 10_000


class Refund(msgspec.Struct, frozen=True, kw_only=True):
    refund_id: str
    order_id: str
    amount_cents: int


class Approval(msgspec.Struct, frozen=True):
    approved: bool
    manager: str


class RefundRejected(NonRetryableError):
    """The manager said no."""


@dataclass
class RefundDesk:
    holds: dict[str, int] = field(default_factory=dict)
    paid: dict[str, int] = field(default_factory=dict)
    log: list[str] = field(default_factory=list)

    async def hold_funds(self, ctx: StepContext, refund: Refund) -> None:
        if ctx.idempotency_key not in self.holds:
            self.holds[ctx.idempotency_key] = refund.amount_cents
            self.log.append(f"desk: held {refund.amount_cents / 100:.2f} for {refund.refund_id}")

    async def release_funds(self, ctx: StepContext, refund: Refund, result: None) -> None:
        if self.holds.pop(ctx.idempotency_key.removesuffix(":compensate"), None) is not None:
            self.log.append(f"desk: released the hold for {refund.refund_id}")

    async def pay_refund(self, ctx: StepContext, refund: Refund) -> str:
        approval: Approval = ctx.results["manager_approval"]
        if not approval.approved:
            raise RefundRejected(f"{approval.manager} rejected the refund")
        if ctx.idempotency_key not in self.paid:
            self.paid[ctx.idempotency_key] = refund.amount_cents
            self.log.append(f"desk: paid {refund.amount_cents / 100:.2f} ({approval.manager} ok)")
        return f"rf_{refund.refund_id}"


def build_refund(desk: RefundDesk) -> Saga:
    """A large refund: hold the funds, wait for a manager, then pay."""
    return Saga(
        "large_refund",
        [
            Step("hold_funds", desk.hold_funds, compensate=desk.release_funds),
            WaitForSignal("manager_approval", payload_type=Approval, timeout=THREE_DAYS),
            Step("pay_refund", desk.pay_refund),
        ],
        input_type=Refund,
    )
