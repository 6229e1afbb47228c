"""`ctx.patched()` over drawn histories: an instance recorded before the patch replays
without `NonDeterminismError` and keeps the old path exactly where its history already
passed the patch point, and takes the new path where it reaches the point live; a new
instance always takes the new path."""

from __future__ import annotations

from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import anyio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime import Runtime, SagaStatus
from saga import Saga, SagaContext, StepContext
from tests.runtime.long_running_helpers import WAIT, until_status

ran: list[str] = []


async def note(ctx: StepContext, label: str) -> str:
    ran.append(f"{ctx.saga_id}:{label}")
    return label


def old_body(steps: int, wait_after: int) -> Any:
    async def body(ctx: SagaContext, _: Any) -> None:
        for i in range(steps):
            await ctx.step(f"s{i}", note, f"s{i}")
            if i == wait_after:
                await ctx.wait_for_signal("go")

    return body


def new_body(steps: int, wait_after: int, patch_at: int) -> Any:
    async def body(ctx: SagaContext, _: Any) -> None:
        for i in range(steps):
            if i == patch_at and ctx.patched("the-fix"):
                await ctx.step("fixed", note, "fixed")
            await ctx.step(f"s{i}", note, f"s{i}")
            if i == wait_after:
                await ctx.wait_for_signal("go")
        if patch_at == steps and ctx.patched("the-fix"):
            await ctx.step("fixed", note, "fixed")

    return body


async def deploy(db: Path, steps: int, wait_after: int, patch_at: int) -> None:
    async with Runtime(db, sagas=[Saga("patching", old_body(steps, wait_after))]) as rt:
        await rt.spawn("patching", None, saga_id="before")
        await until_status(rt, "before", SagaStatus.WAITING)
    patched = Saga("patching", new_body(steps, wait_after, patch_at))
    async with Runtime(db, sagas=[patched]) as rt:
        await rt.spawn(patched, None, saga_id="after")
        for saga_id in ("before", "after"):
            await until_status(rt, saga_id, SagaStatus.WAITING)
            await rt.signal(saga_id, "go", None)
            await rt.handle(saga_id).result(timeout=WAIT)  # no NonDeterminismError


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_patched_splits_old_and_new_instances_where_their_history_says(
    data: st.DataObject,
) -> None:
    steps = data.draw(st.integers(1, 4), label="steps")
    wait_after = data.draw(st.integers(0, steps - 1), label="wait after step")
    patch_at = data.draw(st.integers(0, steps), label="patch before step (steps: at the end)")
    ran.clear()
    with TemporaryDirectory() as folder:
        anyio.run(deploy, Path(folder) / "s.db", steps, wait_after, patch_at)
    old_path = [f"s{i}" for i in range(steps)]
    new_path = [*old_path[:patch_at], "fixed", *old_path[patch_at:]]
    # The old instance's history passed the patch point iff it lies before the wait.
    before = new_path if patch_at > wait_after else old_path
    assert [r.split(":")[1] for r in ran if r.startswith("before:")] == before
    assert [r.split(":")[1] for r in ran if r.startswith("after:")] == new_path
