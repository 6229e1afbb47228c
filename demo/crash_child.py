"""The process the demo SIGKILLs: it starts a checkout and hangs inside reserve_inventory."""

from __future__ import annotations

import sys

import anyio

from runtime import Runtime
from saga import StepContext

from .checkout import FakeServices, Order, build_checkout, order

CRASH_POINT = "inside reserve_inventory"


class HangingServices(FakeServices):
    async def reserve_inventory(self, ctx: StepContext, order: Order) -> list[str]:
        print(f"{CRASH_POINT} attempt {ctx.attempt}", flush=True)
        await anyio.sleep_forever()
        raise AssertionError("unreachable")


async def main(database: str) -> None:
    services = HangingServices()
    async with Runtime(database, sagas=[build_checkout(services)]) as rt:
        handle = await rt.spawn("checkout", order("order-1004", ("lamp", 1)), saga_id="order-1004")
        await handle.result()


if __name__ == "__main__":
    anyio.run(main, sys.argv[1])
