"""A cancellation interrupts a running forward step; compensations are never interrupted,
even when the step swallowed the interruption (found in review)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import anyio
import pytest

from runtime import Runtime, SagaCompensated
from saga import Saga, Step, StepContext


async def test_a_swallowed_interrupt_does_not_interrupt_a_compensation(tmp_path: Path) -> None:
    calls: list[str] = []
    second_started = anyio.Event()

    async def quick(ctx: StepContext, _: object) -> int:
        return 1

    async def slow_undo(ctx: StepContext, _: object, result: object) -> None:
        calls.append(f"undo {ctx.step}")
        try:
            await anyio.sleep(0.3)  # a slow refund call
        except asyncio.CancelledError:
            calls.append(f"undo {ctx.step} interrupted")
            raise

    async def swallowing(ctx: StepContext, _: object) -> int:
        second_started.set()
        # Swallowed, as asyncio.wait_for can on 3.11 when its inner call ends at that moment.
        with contextlib.suppress(asyncio.CancelledError):
            await anyio.sleep(5)
        return 2

    saga = Saga(
        "s",
        [
            Step("first", quick, compensate=slow_undo),
            Step("second", swallowing, compensate=slow_undo),
            Step("third", quick),
        ],
    )
    async with Runtime(tmp_path / "db.sqlite", sagas=[saga]) as rt:
        handle = await rt.spawn(saga, None, saga_id="x")
        with anyio.fail_after(5):
            await second_started.wait()
            await rt.cancel("x", "user")
            with pytest.raises(SagaCompensated):
                await handle.result()
    # The step swallowed the interruption, so it may have taken effect: compensated.
    assert calls == ["undo second", "undo first"]


async def test_an_interrupted_step_in_a_thread_finishes_before_its_compensation(
    tmp_path: Path,
) -> None:
    # anyio's to_thread waits for its thread even when cancelled: the interruption takes
    # effect once the call returns, so the refund cannot overtake the charge. (A plain
    # task.cancel() per actor, tried for speed, broke this: anyio shields ignore it.)
    calls: list[str] = []
    charging = anyio.Event()

    def blocking_charge() -> None:
        time.sleep(0.3)  # a blocking client call, in a worker thread
        calls.append("charged")

    async def charge(ctx: StepContext, _: object) -> int:
        charging.set()
        await anyio.to_thread.run_sync(blocking_charge)
        return 1

    async def refund(ctx: StepContext, _: object, result: object) -> None:
        calls.append("refunded")

    async def ship(ctx: StepContext, _: object) -> int:
        calls.append("shipped")
        return 2

    saga = Saga("pay", [Step("charge", charge, compensate=refund), Step("ship", ship)])
    async with Runtime(tmp_path / "db.sqlite", sagas=[saga]) as rt:
        handle = await rt.spawn(saga, None, saga_id="p")
        with anyio.fail_after(5):
            await charging.wait()
            await rt.cancel("p", "user")
            with pytest.raises(SagaCompensated):
                await handle.result()
    assert calls == ["charged", "refunded"]
