"""The same checkout as code sagas: the seed's `checkoutWorkflow`, and its automatic twin.

The seed document's workflow-engine example compensates by hand in a
try/except:

    async function checkoutWorkflow(order) {
        await activities.createOrder(order);
        try {
            await activities.chargePayment(order);
            await activities.reserveInventory(order);
        } catch (err) {
            await activities.refundPayment(order); // Compensation
            await activities.cancelOrder(order);
            throw err;
        }
    }

`build_manual_checkout` is that function in Python, line for line. The
manual style has to know what may have happened: here the refund looks the
charge up by the charge step's key, so refunding a charge that never
happened does nothing. `build_auto_checkout` says instead which step undoes
which (`compensate=`): the runtime runs exactly the compensations of the
steps that may have taken effect, newest first, and nothing else.
"""

from __future__ import annotations

from saga import RetryPolicy, Saga, SagaContext, StepContext, StepFailedError

from .checkout import CardDeclined, Charge, FakeServices, Order, OutOfStock

PAYMENT_RETRY = RetryPolicy(
    maximum_attempts=5,
    initial_interval=0.05,
    maximum_interval=1.0,
    non_retryable_error_types=(CardDeclined,),
)
STOCK_RETRY = RetryPolicy(
    maximum_attempts=3, initial_interval=0.05, non_retryable_error_types=(OutOfStock,)
)


def build_manual_checkout(services: FakeServices) -> Saga[Order, str]:
    """The seed's `checkoutWorkflow`: compensation written by hand in the body."""

    async def refund_payment(ctx: StepContext, order: Order) -> None:
        # A step of its own, so its key is its own: find the charge by the charge's key.
        charge = services.charges.pop(f"{ctx.saga_id}:charge_payment", None)
        if charge is not None:
            services.log.append(f"payments: refunded {charge.amount_cents / 100:.2f}")

    async def cancel_order(ctx: StepContext, order: Order) -> None:
        key = f"{ctx.saga_id}:create_order"
        if services.orders.get(key) == "created":
            services.orders[key] = "cancelled"
            services.log.append(f"orders: cancelled {order.order_id}")

    async def checkout_workflow(ctx: SagaContext, order: Order) -> str:
        await ctx.step("create_order", services.create_order, order)
        try:
            charge = await ctx.step(
                "charge_payment", services.charge_payment, order, retry=PAYMENT_RETRY
            )
            await ctx.step(
                "reserve_inventory", services.reserve_inventory, order, retry=STOCK_RETRY
            )
        except StepFailedError:
            await ctx.step("refund_payment", refund_payment, order)  # compensation
            await ctx.step("cancel_order", cancel_order, order)
            raise
        return charge.charge_id

    return Saga("checkout-manual", checkout_workflow, input_type=Order)


def build_auto_checkout(services: FakeServices) -> Saga[Order, str]:
    """The same checkout with automatic compensation: each step names its undo."""

    async def checkout(ctx: SagaContext, order: Order) -> str:
        await ctx.step(
            "create_order", services.create_order, order, compensate=services.cancel_order
        )
        charge: Charge = await ctx.step(
            "charge_payment",
            services.charge_payment,
            order,
            compensate=services.refund_payment,
            retry=PAYMENT_RETRY,
            timeout=10.0,
        )
        await ctx.step(
            "reserve_inventory",
            services.reserve_inventory,
            order,
            compensate=services.release_inventory,
            retry=STOCK_RETRY,
        )
        await ctx.step("send_confirmation", services.send_confirmation, order)
        return charge.charge_id

    return Saga("checkout-code", checkout, input_type=Order)
