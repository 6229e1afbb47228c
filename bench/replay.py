"""`python -m bench.replay`: the replay check of N unfinished code sagas, timed.

A fresh SQLite file gets N (default 10,000) checkouts written as code sagas,
each stopped waiting for an approval signal after two steps (as a deploy
finds them). Then `replay_check` runs them against the same definition
(compatible: every saga replays) and against one with a renamed step
(every saga is a problem), each timed from the call to its report. The
issue's target is 10,000 sagas in under 10 s; the figures are printed with
sagas per second.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import anyio

from runtime import Runtime
from runtime.testing import replay_check
from saga import Saga, SagaContext, SagaStatus, StepContext


async def reserve(ctx: StepContext, n: int) -> int:
    return n


async def charge(ctx: StepContext, n: int) -> int:
    return n * 10


async def waiting_checkout(ctx: SagaContext, n: int) -> int:
    await ctx.step("reserve", reserve, n)
    charged = await ctx.step("charge", charge, n)
    await ctx.wait_for_signal("approved")
    return charged


async def renamed_checkout(ctx: SagaContext, n: int) -> int:
    await ctx.step("reserve", reserve, n)
    charged = await ctx.step("capture", charge, n)
    await ctx.wait_for_signal("approved")
    return charged


ORIGINAL = Saga("checkout", waiting_checkout, input_type=int)
RENAMED = Saga("checkout", renamed_checkout, input_type=int)


async def fill(database: Path, n: int) -> None:
    async with Runtime(database, sagas=[ORIGINAL], synchronous="NORMAL") as rt:
        limiter = anyio.Semaphore(200)

        async def one(i: int) -> None:
            async with limiter:
                await rt.spawn(ORIGINAL, i, saga_id=f"order-{i:06d}")

        async with anyio.create_task_group() as tg:
            for i in range(n):
                tg.start_soon(one, i)
        # Until every saga has recorded its wait (there is no event to wait on for that).
        while (await rt.list(status=SagaStatus.RUNNING, limit=1)).items:  # noqa: ASYNC110
            await anyio.sleep(0.1)


async def timed(database: Path, saga: Saga[int, int]) -> tuple[float, int, int]:
    started = time.perf_counter()
    report = await replay_check(database, sagas=[saga])
    return time.perf_counter() - started, report.checked, len(report)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        database = Path(folder) / "replay.db"
        anyio.run(fill, database, args.n)
        print(f"{'definitions':<12} {'checked':>8} {'problems':>9} {'seconds':>8} {'sagas/s':>9}")
        for label, saga in (("compatible", ORIGINAL), ("renamed", RENAMED)):
            seconds, checked, problems = anyio.run(timed, database, saga)
            print(
                f"{label:<12} {checked:>8,} {problems:>9,} {seconds:>8.2f} "
                f"{checked / seconds:>9,.0f}"
            )


if __name__ == "__main__":
    main()
