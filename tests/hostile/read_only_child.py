"""Child for the read-only test: enter a Runtime on a file this process may only read.

Run as root, it gives up root for an unprivileged uid first (root may write any file),
after a first run on a writable file has imported everything (the unprivileged uid
may not read this checkout). Prints the outcome of the second run.
"""

from __future__ import annotations

import os
import sys

import anyio

from runtime import Runtime, StoreError
from saga import Saga, Step, StepContext

NOBODY = 65534


async def noop(ctx: StepContext, value: int) -> int:
    return value


async def enter(path: str) -> str:
    saga = Saga("s", [Step("only", noop)])
    try:
        async with Runtime(path, sagas=[saga]) as rt:
            await rt.spawn(saga, 1)
    except StoreError as exc:
        return f"REFUSED {exc}"
    return "STARTED"


if __name__ == "__main__":
    warm_up, read_only = sys.argv[1:]
    assert anyio.run(enter, warm_up) == "STARTED"
    if os.geteuid() == 0:
        os.setgid(NOBODY)
        os.setuid(NOBODY)
    print(anyio.run(enter, read_only), flush=True)
