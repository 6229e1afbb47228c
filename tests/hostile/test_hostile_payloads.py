"""Values msgspec cannot carry faithfully: refused with `PayloadError` (at spawn) or
recorded as that step's ambiguous failure, compensated, the step run once; error texts
that cannot be encoded are made safe before they reach the shared writer, so one saga's
bad value never fails another saga's write."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from runtime import Runtime, SagaCompensated
from saga import PayloadError, RetryPolicy, Saga, Sleep, Step, StepContext

ONCE = RetryPolicy(maximum_attempts=1)


def cyclic() -> list[Any]:
    loop: list[Any] = []
    loop.append(loop)
    return loop


def nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


class StrRaises(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text for you")


class Counted:
    """A step action that returns (or raises) `make()` and counts its runs."""

    def __init__(self, make: Callable[[], Any]) -> None:
        self.make = make
        self.runs = 0

    async def __call__(self, ctx: StepContext, value: object) -> object:
        self.runs += 1
        made = self.make()
        if isinstance(made, BaseException):
            raise made
        return made


async def fine(ctx: StepContext, value: object) -> int:
    return 1


async def undo(ctx: StepContext, value: object, result: object) -> None:
    return None


BAD_RESULTS = {
    "cyclic": (cyclic, "nested too deeply"),
    "nested": (lambda: nested(1_100), "nested too deeply"),
    "raw-json": (lambda: msgspec.Raw(b'{"a": '), "raw JSON"),
    "nan": (lambda: math.nan, "NaN or an infinity"),
    "minus-inf": (lambda: -math.inf, "NaN or an infinity"),
}


@pytest.mark.parametrize("case", BAD_RESULTS, ids=str)
async def test_a_result_json_cannot_carry_fails_its_step_once_and_is_compensated(
    tmp_path: Path, case: str
) -> None:
    make, message = BAD_RESULTS[case]
    action = Counted(make)
    saga = Saga(
        "bad-result", [Step("first", fine, compensate=undo), Step("bad", action, retry=ONCE)]
    )
    async with Runtime(tmp_path / "sagas.db", sagas=[saga]) as rt:
        with pytest.raises(SagaCompensated) as raised:
            await (await rt.spawn(saga, None, saga_id="s")).result(timeout=10)
        info = await rt.status("s")
    assert raised.value.step == "bad"
    assert raised.value.error is not None
    assert "PayloadError" in raised.value.error.type
    assert message in raised.value.error.message
    assert action.runs == 1
    assert info.steps[0].compensation.value == "compensated"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (cyclic(), "nested too deeply"),
        (nested(1_100), "nested too deeply"),
        (math.nan, "NaN or an infinity"),
        ({"total": math.inf}, "NaN or an infinity"),
    ],
    ids=["cyclic", "nested", "nan", "inf-inside"],
)
async def test_an_input_json_cannot_carry_is_refused_at_spawn(
    tmp_path: Path, value: object, message: str
) -> None:
    saga = Saga("plain", [Step("first", fine)])
    async with Runtime(tmp_path / "sagas.db", sagas=[saga]) as rt:
        with pytest.raises(PayloadError, match=message):
            await rt.spawn(saga, value, saga_id="s")
        assert (await rt.list()).items == ()


@pytest.mark.parametrize(
    ("error", "shown"),
    [
        (ValueError("cannot open report-\udc80.csv"), "report-\\udc80.csv"),
        (StrRaises(), "str() of the error raised RuntimeError"),
    ],
    ids=["lone-surrogate", "str-raises"],
)
async def test_an_error_whose_text_cannot_be_stored_harms_no_other_saga(
    tmp_path: Path, error: BaseException, shown: str
) -> None:
    action = Counted(lambda: error)
    bad = Saga("bad", [Step("first", fine, compensate=undo), Step("fails", action, retry=ONCE)])
    calm = Saga("calm", [Step("one", fine), Step("two", fine)])
    async with Runtime(tmp_path / "sagas.db", sagas=[bad, calm]) as rt:

        async def spawn_calm(n: int) -> None:
            await rt.spawn(calm, n, saga_id=f"calm-{n}")

        async with anyio.create_task_group() as tg:  # their writes share batches
            for n in range(7):
                tg.start_soon(spawn_calm, n)
            handle = await rt.spawn(bad, None, saga_id="bad")
        with pytest.raises(SagaCompensated) as raised:
            await handle.result(timeout=10)
        for n in range(7):
            assert (await rt.handle(f"calm-{n}").result(timeout=10))["two"] == 1
            assert (await rt.status(f"calm-{n}")).steps[0].attempts == 1  # ran once
    assert raised.value.error is not None
    assert shown in raised.value.error.message
    assert action.runs == 1


async def test_a_sleep_until_nan_fails_its_step_instead_of_sleeping_forever(
    tmp_path: Path,
) -> None:
    saga = Saga(
        "nap",
        [
            Step("first", fine, compensate=undo),
            Sleep("nap", until=lambda ctx, value: math.nan),
            Step("after", fine),
        ],
    )
    async with Runtime(tmp_path / "sagas.db", sagas=[saga]) as rt:
        with pytest.raises(SagaCompensated, match="not a finite time"):
            await (await rt.spawn(saga, None, saga_id="s")).result(timeout=10)
