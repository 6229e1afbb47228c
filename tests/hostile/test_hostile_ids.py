"""Ids and names no store can hold (a lone surrogate, as from a surrogateescape file name,
a NUL, over 1,000 bytes) are a clear `ValueError` or `SagaNotFound`, never a bare codec
error, and leave the runtime serving everyone else."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from runtime import Runtime
from saga import Saga, SagaNotFound, Step, StepContext, WaitForSignal

SURROGATE = "file-\udc80.csv"


async def echo(ctx: StepContext, value: int) -> int:
    return value


SAGA = Saga("echo", [Step("echo", echo), WaitForSignal("go")])


@pytest.mark.parametrize(
    ("saga_id", "message"),
    [
        (SURROGATE, "valid Unicode text"),
        ("", "non-empty"),
        ("nul\x00id", "NUL"),
        ("x" * 1001, "at most 1000 bytes"),
    ],
    ids=["surrogate", "empty", "nul", "long"],
)
async def test_a_saga_id_no_store_can_hold_is_refused_at_spawn(
    tmp_path: Path, saga_id: str, message: str
) -> None:
    async with Runtime(tmp_path / "sagas.db", sagas=[SAGA]) as rt:
        with pytest.raises(ValueError, match=message):
            await rt.spawn(SAGA, 1, saga_id=saga_id)
        await rt.spawn(SAGA, 1, saga_id="fine")
        assert [item.saga_id for item in (await rt.list()).items] == ["fine"]


LOOKUPS: list[Callable[[Runtime, str], Awaitable[Any]]] = [
    lambda rt, sid: rt.status(sid),
    lambda rt, sid: rt.result(sid, timeout=1),
    lambda rt, sid: rt.signal(sid, "go"),
    lambda rt, sid: rt.cancel(sid),
    lambda rt, sid: rt.resume(sid),
]


@pytest.mark.parametrize("lookup", LOOKUPS, ids=["status", "result", "signal", "cancel", "resume"])
async def test_looking_up_an_id_no_store_can_hold_is_not_found(
    tmp_path: Path, lookup: Callable[[Runtime, str], Awaitable[Any]]
) -> None:
    async with Runtime(tmp_path / "sagas.db", sagas=[SAGA]) as rt:
        with pytest.raises(SagaNotFound):
            await lookup(rt, SURROGATE)


@pytest.mark.parametrize("field", ["saga_name", "waiting_for", "after"])
async def test_a_listing_filter_no_store_can_hold_is_a_value_error(
    tmp_path: Path, field: str
) -> None:
    async with Runtime(tmp_path / "sagas.db", sagas=[SAGA]) as rt:
        with pytest.raises(ValueError, match=f"{field} must be valid Unicode text"):
            await rt.list(**{field: SURROGATE})  # type: ignore[arg-type]


async def test_a_signal_name_or_key_no_store_can_hold_is_a_value_error(tmp_path: Path) -> None:
    async with Runtime(tmp_path / "sagas.db", sagas=[SAGA]) as rt:
        await rt.spawn(SAGA, 1, saga_id="s")
        with pytest.raises(ValueError, match="idempotency_key must be valid Unicode"):
            await rt.signal("s", "go", idempotency_key=SURROGATE)
        assert await rt.signal("s", "go")
        assert (await rt.handle("s").result(timeout=10))["echo"] == 1
