"""The process the demo SIGKILLs: it starts a checkout and hangs inside reserve_inventory.

`python -m demo.crash_child DATABASE [list|code]`: the step-list checkout
(order-1004) or the code-saga one (order-2004).
"""

from __future__ import annotations

import sys

import anyio

from runtime import Runtime
from saga import StepContext

from .checkout import FakeServices, Order, build_checkout, order
from .code_checkout import build_auto_checkout

CRASH_POINT = "inside reserve_inventory"


class HangingServices(FakeServices):
    async def reserve_inventory(self, ctx: StepContext, order: Order) -> list[str]:
        print(f"{CRASH_POINT} attempt {ctx.attempt}", flush=True)
        await anyio.sleep_forever()
        raise AssertionError("unreachable")


async def main(database: str, style: str) -> None:
    services = HangingServices()
    if style == "code":
        saga = build_auto_checkout(services)
        saga_id = "order-2004"
    else:
        saga, saga_id = build_checkout(services), "order-1004"
    async with Runtime(database, sagas=[saga]) as rt:
        handle = await rt.spawn(saga, order(saga_id, ("lamp", 1)), saga_id=saga_id)
        await handle.result()


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "list")
