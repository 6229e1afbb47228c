"""`Runtime(max_payload_bytes=...)`: an oversize input or signal is refused with nothing
stored; an oversize step result is that step's ambiguous failure, compensated as such."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from runtime import Runtime, SagaCompensated
from saga import (
    PayloadError,
    Saga,
    SagaContext,
    SagaNotFound,
    SagaStatus,
    Step,
    StepContext,
    StepStatus,
    WaitForSignal,
)
from tests.runtime.long_running_helpers import until_status

LIMIT = 1_000


class Ledger:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def step(self, name: str, size: int = 10) -> Any:
        async def run(ctx: StepContext, value: object) -> str:
            self.calls.append(name)
            return "x" * size

        return run

    def undo(self, name: str) -> Any:
        async def run(ctx: StepContext, value: object, result: object) -> None:
            self.calls.append(f"undo {name} {result!r}")

        return run


async def test_an_oversize_input_is_refused_and_nothing_is_stored(tmp_path: Path) -> None:
    ledger = Ledger()
    saga = Saga("s", [Step("only", ledger.step("only"))])
    async with Runtime(tmp_path / "s.db", sagas=[saga], max_payload_bytes=LIMIT) as rt:
        with pytest.raises(PayloadError, match=r"input of saga 's' is 1,0\d\d bytes .* 1,000"):
            await rt.spawn(saga, "y" * LIMIT, saga_id="big")
        with pytest.raises(SagaNotFound):
            await rt.status("big")
        await (await rt.spawn(saga, "y" * 100, saga_id="small")).result(timeout=10)
    assert ledger.calls == ["only"]


async def test_an_oversize_signal_is_refused_and_the_saga_waits_on(tmp_path: Path) -> None:
    ledger = Ledger()
    saga = Saga("s", [WaitForSignal("go"), Step("after", ledger.step("after"))])
    async with Runtime(tmp_path / "s.db", sagas=[saga], max_payload_bytes=LIMIT) as rt:
        await rt.spawn(saga, None, saga_id="w")
        await until_status(rt, "w", SagaStatus.WAITING)
        with pytest.raises(PayloadError, match="payload of signal 'go'"):
            await rt.signal("w", "go", "z" * LIMIT)
        info = await rt.status("w")
        assert info.status is SagaStatus.WAITING
        assert ledger.calls == []
        await rt.signal("w", "go", "fits")
        await rt.handle("w").result(timeout=10)
    assert ledger.calls == ["after"]


@pytest.mark.parametrize("style", ["list", "code"])
async def test_an_oversize_step_result_is_an_ambiguous_failure_compensated(
    tmp_path: Path, style: str
) -> None:
    ledger = Ledger()
    first, big = ledger.step("first"), ledger.step("big", size=LIMIT)
    undo_first, undo_big = ledger.undo("first"), ledger.undo("big")
    saga: Saga[Any, Any]
    if style == "list":
        saga = Saga(
            "s",
            [Step("first", first, compensate=undo_first), Step("big", big, compensate=undo_big)],
        )
    else:

        async def body(ctx: SagaContext, value: object) -> object:
            await ctx.step("first", first, value, compensate=undo_first)
            return await ctx.step("big", big, value, compensate=undo_big)

        saga = Saga("s", body)
    async with Runtime(tmp_path / "s.db", sagas=[saga], max_payload_bytes=LIMIT) as rt:
        with pytest.raises(SagaCompensated, match="over the limit of 1,000") as raised:
            await (await rt.spawn(saga, 1, saga_id="s")).result(timeout=10)
        info = await rt.status("s")
    assert raised.value.step == "big"
    big_step = next(step for step in info.steps if step.name == "big")
    assert big_step.status is StepStatus.AMBIGUOUS
    assert big_step.attempts == 1  # it ran once: its effect may stand, so it is undone
    assert ledger.calls == ["first", "big", "undo big None", "undo first 'xxxxxxxxxx'"]


async def test_the_default_is_two_mebibytes_and_none_lifts_it(tmp_path: Path) -> None:
    ledger = Ledger()
    saga = Saga("s", [Step("only", ledger.step("only"))])
    async with Runtime(tmp_path / "a.db", sagas=[saga]) as rt:
        with pytest.raises(PayloadError, match="2,097,152"):
            await rt.spawn(saga, "y" * (2 * 1024 * 1024), saga_id="big")
    async with Runtime(tmp_path / "b.db", sagas=[saga], max_payload_bytes=None) as rt:
        await (await rt.spawn(saga, "y" * (2 * 1024 * 1024), saga_id="big")).result(timeout=10)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="max_payload_bytes"):
            Runtime(tmp_path / "c.db", sagas=[saga], max_payload_bytes=bad)  # type: ignore[arg-type]
