"""Edge cases of stop_timeout and step timeouts with steps deaf to cancellation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from runtime import Runtime, SagaCompensated
from saga import Parallel, RetryPolicy, Saga, SagaContext, Step, StepContext

QUICK = RetryPolicy(initial_interval=0.01, maximum_attempts=3)


async def fine(ctx: StepContext, value: Any) -> Any:
    return value


class Deaf:
    def __init__(self) -> None:
        self.released = anyio.Event()
        self.running = anyio.Event()
        self.runs = 0

    async def __call__(self, ctx: StepContext, value: Any) -> Any:
        self.runs += 1
        if self.runs > 1:
            return value  # a later run behaves
        self.running.set()
        with anyio.CancelScope(shield=True):
            await self.released.wait()
        return value


async def test_the_same_runtime_entered_again_after_an_abandoned_step_runs_it_again(
    tmp_path: Path,
) -> None:
    """stop_timeout: a step that ignores its cancellation is left running, and runs again
    on the next start. Entering the same Runtime object again must not wait for it."""
    deaf = Deaf()
    saga = Saga("deaf", [Step("first", fine), Step("deaf", deaf)])
    rt = Runtime(tmp_path / "s.db", sagas=[saga], stop_timeout=0.2)
    try:
        async with rt:
            await rt.spawn(saga, 1, saga_id="s")
            await deaf.running.wait()
        with anyio.fail_after(5):  # hangs: the abandoned actor's name is still taken
            async with rt:
                assert (await rt.result("s", timeout=5))["deaf"] == 1
    finally:
        deaf.released.set()
    assert deaf.runs == 2


@pytest.mark.parametrize("style", ["parallel", "code"])
async def test_exit_is_bounded_with_a_deaf_step_in_a_group_or_code_saga(
    tmp_path: Path, style: str
) -> None:
    deaf = Deaf()
    if style == "parallel":
        saga = Saga("deaf", [Parallel("g", [Step("a", fine), Step("deaf", deaf)])])
    else:

        async def body(ctx: SagaContext, value: int) -> Any:
            return await ctx.parallel(ctx.step("a", fine, value), ctx.step("deaf", deaf, value))

        saga = Saga("deaf", body)
    db = tmp_path / "s.db"
    try:
        with anyio.fail_after(5):
            async with Runtime(db, sagas=[saga], stop_timeout=0.2) as rt:
                await rt.spawn(saga, 1, saga_id="s")
                await deaf.running.wait()
        async with Runtime(db, sagas=[saga]) as rt:
            await rt.result("s", timeout=10)
    finally:
        deaf.released.set()
    assert deaf.runs == 2


async def test_a_deaf_timed_out_code_step_is_ambiguous_not_retried(tmp_path: Path) -> None:
    deaf = Deaf()
    undone: list[object] = []

    async def undo_deaf(ctx: StepContext, value: int, result: object) -> None:
        undone.append(result)

    async def body(ctx: SagaContext, value: int) -> Any:
        return await ctx.step("deaf", deaf, value, compensate=undo_deaf, timeout=0.05, retry=QUICK)

    saga = Saga("deaf", body)
    try:
        async with Runtime(tmp_path / "s.db", sagas=[saga]) as rt:
            started = anyio.current_time()
            with pytest.raises(SagaCompensated) as raised:
                await (await rt.spawn(saga, 1, saga_id="s")).result(timeout=20)
            took = anyio.current_time() - started
            info = await rt.status("s")
    finally:
        deaf.released.set()
    assert raised.value.error is not None
    assert raised.value.error.timed_out
    assert deaf.runs == 1
    assert info.steps[0].attempts == 1
    assert undone == [None]
    assert took < 3


async def test_a_deaf_timed_out_step_with_the_runtime_stopping(tmp_path: Path) -> None:
    """The runtime stops while a timed-out step is deaf: exit bounded by stop_timeout."""
    deaf = Deaf()
    saga = Saga("deaf", [Step("deaf", deaf, timeout=30, retry=QUICK)])
    db = tmp_path / "s.db"
    try:
        start = anyio.current_time()
        async with Runtime(db, sagas=[saga], stop_timeout=0.2) as rt:
            await rt.spawn(saga, 1, saga_id="s")
            await deaf.running.wait()
        assert anyio.current_time() - start < 1.0 + 0.8  # stop_timeout, not ABANDON_AFTER
    finally:
        deaf.released.set()
