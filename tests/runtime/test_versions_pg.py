"""Edge cases of versions on PostgreSQL with runtimes of different version sets."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from runtime import Runtime, SagaCompensated
from saga import Saga, SagaContext, SagaStatus, StepContext
from tests.runtime.long_running_helpers import until_status

RAN: Counter[str] = Counter()


@pytest.fixture(autouse=True)
def _fresh() -> None:
    RAN.clear()


async def act(ctx: StepContext, n: Any) -> Any:
    RAN[f"{ctx.step}:{ctx.saga_id}"] += 1
    return n


async def undo(ctx: StepContext, n: Any, result: Any) -> None:
    RAN[f"undo-{ctx.step}:{ctx.saga_id}"] += 1


async def v1(ctx: SagaContext, n: int) -> int:
    await ctx.step("a1", act, n, compensate=undo)
    await ctx.wait_for_signal("approved")
    return n


async def v2(ctx: SagaContext, n: int) -> int:
    await ctx.step("a2", act, n, compensate=undo)
    await ctx.wait_for_signal("approved")
    return n


V1 = Saga("co", v1, version=1)
V2 = Saga("co", v2, version=2)


def pg_runtime(dsn: str, name: str, *sagas: Saga[Any, Any]) -> Runtime:
    from runtime.postgres import PostgresStore

    return Runtime(PostgresStore(dsn, name=name, lease=2.0, poll_interval=0.1), sagas=sagas)


async def test_cancel_through_a_runtime_lacking_the_version_is_done_by_one_that_has_it(
    pg_dsn: str,
) -> None:
    async with pg_runtime(pg_dsn, "v1-era", V1) as rt:
        for n in range(3):
            await rt.spawn(V1, n, saga_id=f"old-{n}")
        for n in range(3):
            await until_status(rt, f"old-{n}", SagaStatus.WAITING)
    async with (
        pg_runtime(pg_dsn, "both", V1, V2) as both,
        pg_runtime(pg_dsn, "new-only", V2) as new_only,
    ):
        for n in range(3):
            await new_only.cancel(f"old-{n}", "nope")
        for n in range(3):
            with pytest.raises(SagaCompensated):
                await both.handle(f"old-{n}").result(timeout=20)
        await new_only.spawn("co", 5, saga_id="fresh")
        await until_status(new_only, "fresh", SagaStatus.WAITING)
        await both.signal("fresh", "approved")
        assert await new_only.handle("fresh").result(timeout=20) == 5
        assert (await both.status("fresh")).version == 2
    assert set(RAN.values()) == {1}
    assert not [k for k in RAN if "a2:old" in k]
