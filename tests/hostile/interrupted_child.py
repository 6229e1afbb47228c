"""A process whose saga step raises Ctrl-C or `sys.exit`: the runtime stops, the
application catches the stop and returns, and the interpreter must then exit
(tests/hostile/test_misbehaving_steps.py). A thread left behind by the store
would keep it alive forever."""

from __future__ import annotations

import sys
from pathlib import Path

import anyio

from runtime import Runtime
from saga import Saga, Step, StepContext

STOPS: dict[str, type[BaseException]] = {"ctrl-c": KeyboardInterrupt, "exit": SystemExit}


def interrupted(stop: type[BaseException]) -> Saga:
    async def press(ctx: StepContext, value: int) -> int:
        raise stop

    async def fine(ctx: StepContext, value: int) -> int:
        return value

    return Saga("interrupted", [Step("first", fine), Step("press", press)])


async def _until_stopped(db: Path, saga: Saga) -> None:
    async with Runtime(db, sagas=[saga]) as rt:
        await rt.spawn(saga, 1, saga_id="pressed")
        await anyio.sleep_forever()  # the step's stop ends the runtime


def main(db: Path, stop_name: str) -> None:
    stop = STOPS[stop_name]
    try:
        anyio.run(_until_stopped, db, interrupted(stop))
    except stop:
        print("STOPPED", flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
