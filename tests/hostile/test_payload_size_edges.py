"""Edge cases of max_payload_bytes at its edge and on every path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from runtime import Runtime, SagaCompensated
from saga import (
    Parallel,
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
CALLS: list[str] = []


@pytest.fixture(autouse=True)
def _fresh() -> None:
    CALLS.clear()


def sized(name: str, size: int) -> Any:
    async def run(ctx: StepContext, value: object) -> str:
        CALLS.append(name)
        return "x" * (size - 2)  # JSON: size bytes with the quotes

    return run


def undo(name: str) -> Any:
    async def run(ctx: StepContext, value: object, result: object) -> None:
        CALLS.append(f"undo {name} {result is None}")

    return run


async def test_exactly_the_limit_is_accepted_one_more_refused(tmp_path: Path) -> None:
    saga = Saga(
        "s",
        [
            Step("fits", sized("fits", LIMIT), compensate=undo("fits")),
            WaitForSignal("go"),
        ],
    )
    async with Runtime(tmp_path / "s.db", sagas=[saga], max_payload_bytes=LIMIT) as rt:
        await rt.spawn(saga, "y" * (LIMIT - 2), saga_id="edge")
        with pytest.raises(PayloadError):
            await rt.spawn(saga, "y" * (LIMIT - 1), saga_id="over")
        with pytest.raises(SagaNotFound):
            await rt.status("over")
        await until_status(rt, "edge", SagaStatus.WAITING)
        with pytest.raises(PayloadError):
            await rt.signal("edge", "go", "z" * (LIMIT - 1))
        assert (await rt.status("edge")).status is SagaStatus.WAITING
        await rt.signal("edge", "go", "z" * (LIMIT - 2))
        out = await rt.result("edge", timeout=10)
        assert len(out["fits"]) == LIMIT - 2
    assert CALLS == ["fits"]


async def test_oversize_result_in_a_parallel_branch_is_ambiguous_and_compensated(
    tmp_path: Path,
) -> None:
    saga = Saga(
        "s",
        [
            Parallel(
                "g",
                [
                    Step("small", sized("small", 10), compensate=undo("small")),
                    Step("big", sized("big", LIMIT + 1), compensate=undo("big")),
                ],
            )
        ],
    )
    async with Runtime(tmp_path / "s.db", sagas=[saga], max_payload_bytes=LIMIT) as rt:
        with pytest.raises(SagaCompensated):
            await (await rt.spawn(saga, 1, saga_id="p")).result(timeout=10)
        info = await rt.status("p")
    big = next(s for s in info.steps if s.name == "big")
    assert big.status is StepStatus.AMBIGUOUS
    assert big.attempts == 1
    assert sorted(CALLS) == sorted(["small", "big", "undo big True", "undo small False"])


async def test_code_saga_oversize_result_is_compensated_and_child_input_refused(
    tmp_path: Path,
) -> None:
    async def kid(ctx: SagaContext, value: str) -> str:
        return await ctx.step("k", sized("k", 10), value)

    kid_saga = Saga("kid", kid)

    async def body(ctx: SagaContext, value: int) -> str:
        await ctx.step("first", sized("first", 10), value, compensate=undo("first"))
        return await ctx.child(kid_saga, "c" * LIMIT, saga_id="the-kid")

    saga = Saga("s", body)
    async with Runtime(tmp_path / "s.db", sagas=[saga, kid_saga], max_payload_bytes=LIMIT) as rt:
        with pytest.raises(SagaCompensated):
            await (await rt.spawn(saga, 1, saga_id="c")).result(timeout=10)
        with pytest.raises(SagaNotFound):
            await rt.status("the-kid")
    assert CALLS == ["first", "undo first False"]
