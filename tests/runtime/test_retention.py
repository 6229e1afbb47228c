"""Retention: ended sagas are pruned with everything of theirs, nothing else ever is, and
a pruned id keeps its start exactly-once through its tombstone (SQLite and PostgreSQL)."""

from __future__ import annotations

import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from runtime import (
    DuplicateSagaError,
    Runtime,
    RuntimeNotRunningError,
    SagaCompensated,
    SagaFailed,
    SagaNotFound,
    SagaPrunedError,
    SagaStatus,
)
from saga import NonRetryableError, RetryPolicy, Saga, SagaContext, StepContext, VirtualClock
from tests.runtime.long_running_helpers import WAIT, until, until_status

ONCE = RetryPolicy(maximum_attempts=1)
runs: Counter[str] = Counter()


@pytest.fixture(autouse=True)
def _fresh_runs() -> None:
    runs.clear()


async def effect(ctx: StepContext, what: str) -> str:
    runs[f"{ctx.saga_id}:{what}"] += 1
    if what == "fail":
        raise NonRetryableError("declined")
    return what


async def undo(ctx: StepContext, what: str, result: str) -> None:
    if what == "stuck":
        raise NonRetryableError("cannot undo")


async def order_body(ctx: SagaContext, plan: dict[str, Any]) -> str:
    await ctx.step("first", effect, plan.get("undo", "ok"), compensate=undo, retry=ONCE)
    if plan.get("wait"):
        await ctx.wait_for_signal("go")
    await ctx.step("second", effect, plan.get("second", "ok"), retry=ONCE)
    return "done"


ORDER = Saga("order", order_body)


async def parent_body(ctx: SagaContext, n: int) -> str:
    await ctx.child(ORDER, {}, saga_id=f"child-{n}")
    return "parent done"


PARENT = Saga("parent", parent_body)

ENDED: dict[str, dict[str, Any]] = {"ok-1": {}, "ok-2": {}, "rolled-back": {"second": "fail"}}
KEPT: dict[str, dict[str, Any]] = {
    "failed": {"second": "fail", "undo": "stuck"},
    "waiting": {"wait": True},
}


async def _settle(rt: Runtime) -> None:
    for saga_id, plan in {**ENDED, **KEPT}.items():
        handle = await rt.spawn(ORDER, plan, saga_id=saga_id)
        if plan.get("wait"):
            await until_status(rt, saga_id, SagaStatus.WAITING)
            continue
        with pytest.raises((SagaCompensated, SagaFailed)) if "second" in plan else _nothing():
            await handle.result(timeout=WAIT)


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


async def test_prune_deletes_ended_sagas_only_and_leaves_tombstones(database: str) -> None:
    clock = VirtualClock()
    async with Runtime(database, sagas=[ORDER], clock=clock) as rt:
        await _settle(rt)
        assert await rt.prune(older_than=60) == 0  # nothing is old enough yet
        clock.advance(120)
        assert await rt.prune(older_than=60, dry_run=True) == 3
        assert await rt.prune(older_than=60) == 3
        for saga_id in ENDED:
            with pytest.raises(SagaPrunedError, match="pruned"):
                await rt.status(saga_id)
            with pytest.raises(SagaNotFound):  # a SagaPrunedError is a SagaNotFound
                await rt.handle(saga_id).result()
            with pytest.raises(SagaPrunedError):
                await rt.store.history(saga_id)
        assert (await rt.status("failed")).status is SagaStatus.FAILED
        assert (await rt.status("waiting")).status is SagaStatus.WAITING
        listed = {item.saga_id for item in (await rt.list()).items}
        assert listed == set(KEPT)
        # An operator may prune failed sagas on purpose; suspended ones never.
        assert await rt.prune(older_than=60, statuses=["failed"]) == 1
        with pytest.raises(ValueError, match="suspended"):
            await rt.prune(older_than=60, statuses=["suspended"])
        with pytest.raises(ValueError, match="waiting"):
            await rt.prune(older_than=60, statuses=["waiting"])
        with pytest.raises(ValueError, match="older_than"):
            await rt.prune(older_than=-1)
        with pytest.raises(ValueError, match="not a valid SagaStatus"):
            await rt.prune(older_than=60, statuses=["gone"])
        assert {item.saga_id for item in (await rt.list()).items} == {"waiting"}  # none lost
        # The waiting saga is untouched: it still runs to its end.
        await rt.signal("waiting", "go")
        assert await rt.handle("waiting").result(timeout=WAIT) == "done"


async def test_a_late_duplicate_of_a_pruned_saga_starts_nothing(database: str) -> None:
    clock = VirtualClock()
    async with Runtime(database, sagas=[ORDER, PARENT], clock=clock) as rt:
        assert await (await rt.spawn(ORDER, {}, saga_id="late")).result(timeout=WAIT) == "done"
        clock.advance(10)
        assert await rt.prune(older_than=1) == 1
        handle = await rt.spawn(ORDER, {}, saga_id="late")  # the same input: starts nothing
        with pytest.raises(SagaPrunedError):
            await handle.result(timeout=WAIT)
        with pytest.raises(DuplicateSagaError, match="different input"):
            await rt.spawn(ORDER, {"second": "other"}, saga_id="late")
        with pytest.raises(DuplicateSagaError, match="'order' saga"):
            await rt.spawn(PARENT, 1, saga_id="late")
    async with Runtime(database, sagas=[ORDER], clock=clock) as rt:  # across a restart too
        with pytest.raises(SagaPrunedError):
            await (await rt.spawn(ORDER, {}, saga_id="late")).result(timeout=WAIT)
    assert runs["late:ok"] == 2  # its two steps, once each: never again


async def test_a_tombstone_expires_after_its_window(tmp_path: Path) -> None:
    clock = VirtualClock()
    db = tmp_path / "sagas.db"
    async with Runtime(db, sagas=[ORDER], clock=clock, tombstone_window=100) as rt:
        await (await rt.spawn(ORDER, {}, saga_id="again")).result(timeout=WAIT)
        clock.advance(10)
        assert await rt.prune(older_than=1) == 1
        clock.advance(101)
        assert await rt.prune(older_than=1) == 0  # a pass also clears expired tombstones
        with sqlite3.connect(db) as conn:
            assert conn.execute("SELECT count(*) FROM tombstones").fetchone() == (0,)
        # Past the window the id is free: a new saga of that id runs.
        assert await (await rt.spawn(ORDER, {}, saga_id="again")).result(timeout=WAIT) == "done"
    assert runs["again:ok"] == 4


async def test_a_child_goes_only_after_its_parent(database: str) -> None:
    clock = VirtualClock()
    async with Runtime(database, sagas=[ORDER, PARENT], clock=clock) as rt:
        for n in range(3):
            assert (
                await (await rt.spawn(PARENT, n, saga_id=f"parent-{n}")).result(timeout=WAIT)
                == "parent done"
            )
        clock.advance(10)
        assert await rt.prune(older_than=1, dry_run=True) == 6
        assert await rt.prune(older_than=1) == 6  # parents in one pass, children the next
        for n in range(3):
            with pytest.raises(SagaPrunedError):
                await rt.status(f"child-{n}")


async def test_a_completed_child_of_a_live_parent_is_kept(tmp_path: Path) -> None:
    async def waits_after_child(ctx: SagaContext, n: int) -> str:
        await ctx.child(ORDER, {}, saga_id="kept-child")
        await ctx.wait_for_signal("go")
        return "ok"

    parent = Saga("parent", waits_after_child)
    clock = VirtualClock()
    async with Runtime(tmp_path / "s.db", sagas=[ORDER, parent], clock=clock) as rt:
        await rt.spawn(parent, 1, saga_id="live-parent")

        async def parent_waits_for_go() -> bool:
            return bool((await rt.list(waiting_for="go")).items)

        await until(parent_waits_for_go, what="the parent past its child")
        assert (await rt.status("kept-child")).status is SagaStatus.COMPLETED
        clock.advance(10)
        assert await rt.prune(older_than=1) == 0  # its parent may still ask it to roll back
        await rt.cancel("live-parent")
        with pytest.raises(SagaCompensated):
            await rt.handle("live-parent").result(timeout=WAIT)
        assert (await rt.status("kept-child")).status is SagaStatus.COMPENSATED
        clock.advance(10)
        assert await rt.prune(older_than=1) == 2


async def test_background_retention_prunes_what_ended(database: str) -> None:
    async with Runtime(database, sagas=[ORDER], retention=0, retention_interval=0.01) as rt:
        for n in range(20):
            await (await rt.spawn(ORDER, {}, saga_id=f"bg-{n}")).result(timeout=WAIT)
        await rt.spawn(ORDER, {"wait": True}, saga_id="bg-waiting")

        async def only_the_waiting_one_is_left() -> bool:
            return [item.saga_id for item in (await rt.list()).items] == ["bg-waiting"]

        await until(only_the_waiting_one_is_left, what="the background pruner")
        assert [item.saga_id for item in (await rt.list()).items] == ["bg-waiting"]


async def test_prune_outside_the_runtime_block_is_refused(tmp_path: Path) -> None:
    rt = Runtime(tmp_path / "s.db", sagas=[ORDER])
    with pytest.raises(RuntimeNotRunningError):
        await rt.prune(older_than=0)


def test_prune_refuses_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="retention"):
        Runtime(tmp_path / "s.db", sagas=[ORDER], retention=-1)
    with pytest.raises(ValueError, match="retention_interval"):
        Runtime(tmp_path / "s.db", sagas=[ORDER], retention=1, retention_interval=0)
    with pytest.raises(ValueError, match="tombstone_window"):
        Runtime(tmp_path / "s.db", sagas=[ORDER], tombstone_window=float("nan"))
