"""Edges of the runtime's life on the embedded store: stopping while work arrives,
a store that fails the timer service, racing operators, bad ids, forgotten waiters."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest

from runtime import (
    DelegatingStore,
    Runtime,
    SagaNotSuspendedError,
    SqliteStore,
    StoreError,
)
from saga import Saga, Sleep, Step, StepContext, WaitForSignal
from saga.engine import Suspended, transition
from saga.store import DueSaga

WAIT = 10.0  # bound on anything a test waits for; every wait ends far sooner


async def test_no_actor_starts_while_the_runtime_stops(tmp_path: Path) -> None:
    started: list[str] = []
    working = anyio.Event()

    async def stubborn(ctx: StepContext, _: Any) -> None:
        started.append("stubborn")
        # A thread cannot be cancelled: stopping waits for it.
        await anyio.to_thread.run_sync(time.sleep, 1.0)

    async def work(ctx: StepContext, _: Any) -> None:
        started.append("work")
        working.set()
        await anyio.sleep(30)

    one = Saga("one", [Step("stubborn", stubborn)])
    two = Saga("two", [Step("work", work), WaitForSignal("go")])
    began = 0.0
    with anyio.fail_after(WAIT):
        async with Runtime(tmp_path / "s.db", sagas=[one, two]) as rt:
            await rt.spawn(one, None, saga_id="one")
            await rt.spawn(two, None, saga_id="two")
            await working.wait()
            await rt.signal("two", "go")  # early: kept in the inbox, the actor is nudged
            began = time.monotonic()
    took = time.monotonic() - began
    # Before, the stopped actor of "two" was brought back for its inbox and ran
    # its step again while the runtime waited for "stubborn".
    assert started.count("work") == 1, started
    assert took < 2.5, took


class FlakyDue(DelegatingStore):
    """The wake-up index fails `failures` times, then works."""

    def __init__(self, inner: SqliteStore, failures: int) -> None:
        super().__init__(inner)
        self.failures = failures
        self.calls = 0

    async def due(
        self, now: float, *, after: tuple[float, str] | None = None, limit: int = 500
    ) -> Sequence[DueSaga]:
        self.calls += 1
        if self.calls <= self.failures:
            raise StoreError("the wake-up index is unreachable")
        return await self.inner.due(now, after=after, limit=limit)


async def test_the_timer_service_outlives_store_errors(tmp_path: Path) -> None:
    async def done(ctx: StepContext, _: Any) -> str:
        return "woke"

    nap = Saga("nap", [Sleep("nap", seconds=0.2), Step("done", done)])
    store = FlakyDue(SqliteStore(tmp_path / "s.db"), failures=2)
    # keep_warm=0: the saga passivates and only the store's wake-up index brings it back.
    async with Runtime(store, sagas=[nap], keep_warm=0) as rt:
        handle = await rt.spawn(nap, None, saga_id="n")
        output = await handle.result(timeout=WAIT)
    assert output["done"] == "woke"
    assert store.calls > store.failures  # it failed, waited, and looked again


async def test_two_resumes_of_one_suspended_saga_start_it_once(tmp_path: Path) -> None:
    runs: list[int] = []
    blocked = anyio.Event()

    async def slow(ctx: StepContext, _: Any) -> str:
        runs.append(ctx.attempt)
        if len(runs) == 1:
            blocked.set()
            await anyio.sleep_forever()  # interrupted by the runtime's stop
        return "ok"

    saga = Saga("s", [Step("slow", slow)])
    database = tmp_path / "s.db"
    async with Runtime(database, sagas=[saga]) as rt:
        await rt.spawn(saga, None, saga_id="x")
        await blocked.wait()
    # An operator's view: the saga parked (suspended) with its step in flight.
    async with SqliteStore(database) as store:
        state = (await store.load("x")).state
        event = Suspended(at=state.updated_at + 1, reason="parked for the test")
        await store.save(transition(saga, state, event).state, event)
    async with Runtime(database, sagas=[saga]) as rt:
        outcomes: list[str] = []

        async def resume() -> None:
            try:
                await rt.resume("x")
                outcomes.append("resumed")
            except SagaNotSuspendedError:
                outcomes.append("refused")

        async with anyio.create_task_group() as tg:
            tg.start_soon(resume)
            tg.start_soon(resume)
        assert sorted(outcomes) == ["refused", "resumed"]
        assert await rt.handle("x").result(timeout=WAIT) == {"slow": "ok"}
    assert len(runs) == 2, runs  # once before the park, once after the one resume


@pytest.mark.parametrize(
    ("saga_id", "message"),
    [("a\x00b", "NUL"), ("x" * 1001, "at most 1000 bytes")],
    ids=["nul", "too-long"],
)
async def test_an_unstorable_saga_id_is_refused_and_costs_others_nothing(
    tmp_path: Path, saga_id: str, message: str
) -> None:
    async def ok(ctx: StepContext, n: int) -> int:
        return n

    saga = Saga("ok", [Step("ok", ok)], input_type=int)
    async with Runtime(tmp_path / "s.db", sagas=[saga]) as rt:
        with pytest.raises(ValueError, match=message):
            await rt.spawn(saga, 1, saga_id=saga_id)
        handles = [await rt.spawn(saga, n, saga_id=f"good-{n}") for n in range(5)]
        assert [await h.result(timeout=WAIT) for h in handles] == [{"ok": n} for n in range(5)]
        with pytest.raises(ValueError, match="NUL"):
            await rt.cancel("good-0", reason="a\x00b")


async def test_results_read_from_the_store_leave_no_waiter_behind(tmp_path: Path) -> None:
    async def ok(ctx: StepContext, n: int) -> int:
        return n

    saga = Saga("ok", [Step("ok", ok)], input_type=int)
    async with Runtime(tmp_path / "s.db", sagas=[saga]) as rt:
        handle = await rt.spawn(saga, 1, saga_id="done")
        await handle.result(timeout=WAIT)
        for _ in range(100):
            assert await rt.handle("done").result(timeout=WAIT) == {"ok": 1}
        assert rt._host._waiters == {}
