"""The code sagas of the SIGKILL chaos run: a cart that loops, fans out and starts a child.

`cart`: reserve each item (a loop: `reserve`, `reserve#2`, ...), charge and
print a label at once (a parallel group), sleep a little (a durable wait),
start `fulfil` as a child (which picks each item in its own loop), and, for a
cart marked `refuse`, fail a last step definitively, so that everything is
compensated: the child as a unit, then the group, then the loop, newest first.

Every action and compensation writes its effect to the ledger (which
survives SIGKILL), after a small random pause so that kills land inside
steps. How each cart must end follows from its id alone (`cart_of`).
"""

from __future__ import annotations

import random
from typing import Any

import anyio
import msgspec

from saga import NonRetryableError, RetryPolicy, Saga, SagaContext, StepContext
from tests.runtime.ledger import Ledger

MAX_PAUSE = 0.004
FAST = RetryPolicy(initial_interval=0.01, maximum_interval=0.05, maximum_attempts=None)


class Cart(msgspec.Struct, frozen=True):
    cart_id: str
    items: tuple[str, ...]
    refuse: bool


class Refused(NonRetryableError):
    """The shop refused the cart at the last step: the saga compensates."""


def cart_id(index: int) -> str:
    return f"cart-{index:04d}"


def cart_of(sid: str) -> Cart:
    """The cart of saga `sid`, the same in every process."""
    rng = random.Random(sid)
    items = tuple(rng.choice(("book", "pen", "mug", "lamp")) for _ in range(rng.randint(1, 4)))
    return Cart(sid, items, refuse=rng.random() < 0.4)


def cart_sagas(ledger: Ledger, rng: random.Random) -> tuple[Saga[Cart, int], Saga[Cart, int]]:
    """(cart, fulfil), their effects written to `ledger`."""

    async def effect(ctx: StepContext, *args: Any) -> str:
        await anyio.sleep(rng.uniform(0, MAX_PAUSE))
        ledger.record(
            key=ctx.idempotency_key,
            kind="effect",
            saga_id=ctx.saga_id,
            step=ctx.step,
            attempt=ctx.attempt,
        )
        await anyio.sleep(rng.uniform(0, MAX_PAUSE))
        return ctx.idempotency_key

    async def undo(ctx: StepContext, *args: Any) -> None:
        await anyio.sleep(rng.uniform(0, MAX_PAUSE))
        ledger.record(
            key=ctx.idempotency_key.removesuffix(":compensate"),
            kind="compensation",
            saga_id=ctx.saga_id,
            step=ctx.step,
            attempt=ctx.attempt,
            has_result=args[-1] is not None,
        )

    async def refuse(ctx: StepContext) -> None:
        raise Refused("refused at the last step")

    async def fulfil_body(ctx: SagaContext, cart: Cart) -> int:
        for item in cart.items:
            await ctx.step("pick", effect, item, compensate=undo, retry=FAST)
        return len(cart.items)

    fulfil = Saga("fulfil", fulfil_body, input_type=Cart)

    async def cart_body(ctx: SagaContext, cart: Cart) -> int:
        for item in cart.items:
            await ctx.step("reserve", effect, item, compensate=undo, retry=FAST)
        await ctx.parallel(
            ctx.step("charge", effect, compensate=undo, retry=FAST),
            ctx.step("label", effect, compensate=undo, retry=FAST),
        )
        await ctx.sleep(0.005)
        picked = await ctx.child(fulfil, cart)
        if cart.refuse:
            await ctx.step("confirm", refuse)
        return picked

    return Saga("cart", cart_body, input_type=Cart), fulfil


def expected_steps(cart: Cart) -> tuple[list[str], list[str], list[str]]:
    """The keys of (the loop, the group, the child's loop) of `cart`, in call order."""

    def loop(prefix: str, name: str) -> list[str]:
        return [
            f"{prefix}:{name}" if k == 1 else f"{prefix}:{name}#{k}"
            for k in range(1, len(cart.items) + 1)
        ]

    sid = cart.cart_id
    return loop(sid, "reserve"), [f"{sid}:charge", f"{sid}:label"], loop(f"{sid}:fulfil", "pick")
