"""Versions side by side: every instance runs to its end on the version it started with,
across restarts; a version no runtime has suspends its instances until it is given again."""

from __future__ import annotations

import logging
import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from runtime import Runtime, SagaCompensated, SagaSuspendedError, UnregisteredSagaError
from saga import (
    DefinitionError,
    RetryPolicy,
    Saga,
    SagaContext,
    SagaStatus,
    Step,
    StepContext,
    WaitForSignal,
)
from saga.engine import Suspended
from tests.child_process import REPO
from tests.runtime.long_running_helpers import until, until_status

RAN: Counter[str] = Counter()
"""Which version's steps ran, by `version:step`."""


def step(label: str) -> Any:
    async def run(ctx: StepContext, n: int) -> str:
        RAN[f"{label}:{ctx.saga_id}"] += 1
        return label

    return run


async def body_v1(ctx: SagaContext, n: int) -> str:
    await ctx.step("reserve", step("v1-reserve"), n)
    await ctx.wait_for_signal("approved")
    return await ctx.step("charge", step("v1-charge"), n)


async def body_v2(ctx: SagaContext, n: int) -> str:
    await ctx.step("reserve", step("v2-reserve"), n)
    await ctx.step("fraud-check", step("v2-fraud"), n)  # incompatible with v1's history
    await ctx.wait_for_signal("approved")
    return await ctx.step("charge", step("v2-charge"), n)


CODE_V1 = Saga("checkout", body_v1, version=1)
CODE_V2 = Saga("checkout", body_v2, version=2)
LIST_V1 = Saga(
    "refund",
    [Step("find", step("v1-find")), WaitForSignal("approved"), Step("pay", step("v1-pay"))],
    version=1,
)
LIST_V2 = Saga(
    "refund",
    [
        Step("find", step("v2-find")),
        Step("check", step("v2-check")),
        WaitForSignal("approved"),
        Step("pay", step("v2-pay")),
    ],
    version=2,
)


@pytest.fixture(autouse=True)
def _fresh_counts() -> None:
    RAN.clear()


def test_two_definitions_of_one_name_and_version_are_refused(tmp_path: Path) -> None:
    other = Saga("checkout", body_v2, version=1)
    with pytest.raises(DefinitionError, match="'checkout' version 1"):
        Runtime(tmp_path / "s.db", sagas=[CODE_V1, other])
    Runtime(tmp_path / "s.db", sagas=[CODE_V1, CODE_V1, CODE_V2])  # the same one twice: fine


async def test_a_name_starts_the_newest_version_and_a_definition_its_own(tmp_path: Path) -> None:
    async with Runtime(tmp_path / "s.db", sagas=[CODE_V2, CODE_V1]) as rt:
        await rt.spawn("checkout", 1, saga_id="by-name")
        await rt.spawn(CODE_V1, 2, saga_id="exact")
        assert (await until_status(rt, "by-name", SagaStatus.WAITING)).version == 2
        assert (await until_status(rt, "exact", SagaStatus.WAITING)).version == 1
        page = await rt.list(version=1)
        assert [(item.saga_id, item.version) for item in page.items] == [("exact", 1)]
        assert [item.version for item in (await rt.list()).items] == [2, 1]
        with pytest.raises(UnregisteredSagaError, match="'checkout' version 3"):
            await rt.spawn(Saga("checkout", body_v1, version=3), 1)
        with pytest.raises(ValueError, match="version"):
            await rt.list(version=0)


async def deploy_v1(db: Path) -> None:
    """Instances of v1 left waiting for their approval (code and list sagas)."""
    async with Runtime(db, sagas=[CODE_V1, LIST_V1]) as rt:
        for n in range(3):
            await rt.spawn(CODE_V1, n, saga_id=f"c{n}")
            await rt.spawn(LIST_V1, n, saga_id=f"r{n}")
        for n in range(3):
            await until_status(rt, f"c{n}", SagaStatus.WAITING)
            await until_status(rt, f"r{n}", SagaStatus.WAITING)


async def test_old_instances_end_on_their_version_beside_the_new_one(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    await deploy_v1(db)
    async with Runtime(db, sagas=[CODE_V1, CODE_V2, LIST_V1, LIST_V2]) as rt:
        await rt.spawn("checkout", 9, saga_id="c-new")
        await rt.spawn("refund", 9, saga_id="r-new")
        for saga_id in ("c0", "c1", "c2", "r0", "r1", "r2", "c-new", "r-new"):
            await until_status(rt, saga_id, SagaStatus.WAITING)
            await rt.signal(saga_id, "approved", None)
        for n in range(3):
            assert await rt.handle(f"c{n}").result(timeout=10) == "v1-charge"
            assert (await rt.handle(f"r{n}").result(timeout=10))["pay"] == "v1-pay"
        assert await rt.handle("c-new").result(timeout=10) == "v2-charge"
        assert (await rt.handle("r-new").result(timeout=10))["pay"] == "v2-pay"
    assert set(RAN.values()) == {1}  # nothing ran twice
    assert not [key for key in RAN if key.startswith("v2") and not key.endswith("new")]


async def test_a_version_no_longer_given_suspends_its_sagas_until_it_is(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    await deploy_v1(db)
    async with Runtime(db, sagas=[CODE_V2, LIST_V2]) as rt:
        for saga_id, name in (("c0", "checkout"), ("r0", "refund")):
            with pytest.raises(UnregisteredSagaError, match=f"{name} v1 is not registered"):
                await rt.signal(saga_id, "approved", None)  # it could not check it
            await rt.cancel(saga_id, "customer")  # wakes it: its actor looks
            info = await until_status(rt, saga_id, SagaStatus.SUSPENDED)
            assert info.suspended_reason == f"{name} v1 is not registered"
            assert info.version == 1
            with pytest.raises(SagaSuspendedError, match=f"{name} v1 is not registered"):
                await rt.handle(saga_id).result(timeout=10)
            with pytest.raises(UnregisteredSagaError, match=f"{name} v1 is not registered"):
                await rt.resume(saga_id)
        assert {(i.saga_id, i.version) for i in (await rt.list(status="suspended")).items} == {
            ("c0", 1),
            ("r0", 1),
        }
    ran_before = dict(RAN)
    async with Runtime(db, sagas=[CODE_V1, CODE_V2, LIST_V1, LIST_V2]) as rt:
        for saga_id in ("c0", "r0"):
            await rt.resume(saga_id)
            # The cancellation that woke it was kept through the suspension, applied on v1.
            with pytest.raises(SagaCompensated, match="customer"):
                await rt.handle(saga_id).result(timeout=10)
        await rt.signal("c1", "approved", None)
        assert await rt.handle("c1").result(timeout=10) == "v1-charge"
    assert set(RAN.values()) == {1}
    assert {key for key in RAN if key not in ran_before} == {"v1-charge:c1"}


async def test_a_running_saga_of_a_missing_version_is_suspended_at_start(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    async with Runtime(db, sagas=[CODE_V1]) as rt:
        await rt.spawn(CODE_V1, 1, saga_id="c")
        await until_status(rt, "c", SagaStatus.WAITING)
    with sqlite3.connect(db) as conn:  # as if it was running when the runtime stopped
        conn.execute("UPDATE sagas SET runnable = 1")
    async with Runtime(db, sagas=[CODE_V2]) as rt:
        info = await until_status(rt, "c", SagaStatus.SUSPENDED)
        assert info.suspended_reason == "checkout v1 is not registered"
        last = info.history[-1].event
        assert isinstance(last, Suspended)  # through the machine: resume undoes it
        assert last.reason == "checkout v1 is not registered"


def test_the_cli_lists_and_shows_versions(tmp_path: Path) -> None:
    import anyio

    db = tmp_path / "s.db"

    async def spawn() -> None:
        async with Runtime(db, sagas=[CODE_V1, CODE_V2]) as rt:
            await rt.spawn(CODE_V1, 1, saga_id="old")
            await rt.spawn("checkout", 1, saga_id="new")
            await until_status(rt, "old", SagaStatus.WAITING)
            await until_status(rt, "new", SagaStatus.WAITING)

    anyio.run(spawn)

    def cli(*args: str) -> str:
        ended = subprocess.run(
            [sys.executable, "-m", "runtime", *args], cwd=REPO, capture_output=True, text=True
        )
        assert ended.returncode == 0, ended.stderr
        return ended.stdout

    listed = {line.split()[0]: line.split() for line in cli("list", str(db)).splitlines()[1:]}
    assert "v1" in listed["old"]
    assert "v2" in listed["new"]
    assert "version: 1" in cli("show", str(db), "old")
    versions = cli("list", str(db), "--version", "2").splitlines()[1:]
    assert [line.split()[0] for line in versions] == ["new"]


async def test_a_database_from_before_versions_gets_each_sagas_version(tmp_path: Path) -> None:
    """Migration 4 fills the new column from each snapshot (an edited one stays 1)."""

    db = tmp_path / "old.db"
    async with Runtime(db, sagas=[CODE_V1, CODE_V2]) as rt:
        await rt.spawn(CODE_V2, 1, saga_id="two")
        await rt.spawn(CODE_V1, 1, saga_id="one")
        await until_status(rt, "two", SagaStatus.WAITING)
        await until_status(rt, "one", SagaStatus.WAITING)
    with sqlite3.connect(db) as conn:  # back to schema 3: no version column
        conn.execute("DROP INDEX sagas_by_age")  # migration 5
        conn.execute("DROP TABLE tombstones")
        conn.execute("ALTER TABLE sagas DROP COLUMN parent_id")
        conn.execute("ALTER TABLE sagas DROP COLUMN version")
        conn.execute("DELETE FROM schema_version WHERE version >= 4")
        conn.execute("UPDATE sagas SET snapshot = 'not json' WHERE saga_id = 'one'")
    async with Runtime(db, sagas=[CODE_V1, CODE_V2]) as rt:
        versions = {item.saga_id: item.version for item in (await rt.list()).items}
    assert versions == {"one": 1, "two": 2}


async def test_postgresql_lists_versions_and_migrates_them(pg_dsn: str) -> None:
    async with Runtime(pg_dsn, sagas=[CODE_V1, CODE_V2]) as rt:
        await rt.spawn(CODE_V2, 1, saga_id="two")
        await rt.spawn(CODE_V1, 1, saga_id="one")
        await until_status(rt, "two", SagaStatus.WAITING)
        assert [i.saga_id for i in (await rt.list(version=2)).items] == ["two"]
        assert (await rt.status("one")).version == 1


def pg_runtime(dsn: str, name: str, *sagas: Saga[Any, Any]) -> Runtime:
    from runtime.postgres import PostgresStore

    return Runtime(PostgresStore(dsn, name=name, lease=2.0, poll_interval=0.1), sagas=sagas)


async def test_on_postgresql_a_runtime_leaves_a_version_it_lacks_to_one_that_has_it(
    pg_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with pg_runtime(pg_dsn, "v1-era", CODE_V1) as rt:
        for n in range(4):
            await rt.spawn(CODE_V1, n, saga_id=f"old-{n}")
        for n in range(4):
            await until_status(rt, f"old-{n}", SagaStatus.WAITING)
    from runtime.postgres import PostgresStore

    caplog.set_level(logging.WARNING, logger="runtime")
    # A live runtime that claims nothing but counts as having every version (a store
    # opened alone advertises no list): the lacking runtime must leave old-2 to it.
    async with (
        PostgresStore(pg_dsn, name="has-every-version", lease=2.0) as _,
        pg_runtime(pg_dsn, "new-only", CODE_V2) as new_only,
    ):
        with pytest.raises(UnregisteredSagaError, match="checkout v1 is not registered"):
            await new_only.signal("old-0", "approved", None)  # it could not check it
        await new_only.cancel("old-2", "customer")

        async def left() -> bool:
            return "'old-2' left to another runtime: checkout v1 is not registered here" in (
                caplog.text
            )

        await until(left, what="old-2 left to another runtime")
        assert (await new_only.status("old-2")).status is SagaStatus.WAITING  # not suspended
    async with (
        pg_runtime(pg_dsn, "new-only", CODE_V2) as new_only,
        pg_runtime(pg_dsn, "both", CODE_V1, CODE_V2) as both,
    ):
        for n in range(2):
            await both.signal(f"old-{n}", "approved", None)
        for n in range(2):
            assert await both.handle(f"old-{n}").result(timeout=20) == "v1-charge"
            assert await new_only.handle(f"old-{n}").result(timeout=20) == "v1-charge"
        with pytest.raises(SagaCompensated, match="customer"):
            await both.handle("old-2").result(timeout=20)
    assert not [key for key in RAN if key.startswith("v2")]
    assert set(RAN.values()) == {1}
    # With no runtime that has v1 left, the last one is suspended with the reason.
    async with pg_runtime(pg_dsn, "new-only-again", CODE_V2) as new_only:
        await new_only.cancel("old-3", "customer")
        info = await until_status(new_only, "old-3", SagaStatus.SUSPENDED)
        assert info.suspended_reason == "checkout v1 is not registered"
    async with pg_runtime(pg_dsn, "v1-back", CODE_V1, CODE_V2) as rt:
        await rt.resume("old-3")
        with pytest.raises(SagaCompensated, match="customer"):  # its cancellation kept
            await rt.handle("old-3").result(timeout=20)


async def test_on_postgresql_a_due_saga_of_a_version_nobody_has_is_suspended_by_the_sweep(
    pg_dsn: str,
) -> None:
    """Nothing wakes it but its retry timer, so no runtime activates it by itself: the
    sweep of a runtime that has its name claims it once it has seen every live runtime
    (a lease after it opened), and suspends it with the reason."""
    from runtime.postgres import PostgresStore

    async def flaky(ctx: StepContext, n: int) -> str:
        raise ConnectionError("down")

    backing_off = Saga("retry", [Step("call", flaky, retry=RetryPolicy(initial_interval=0.2))])
    newer = Saga("retry", [Step("call", step("v2-call"))], version=2)
    async with pg_runtime(pg_dsn, "v1", backing_off) as rt:
        await rt.spawn(backing_off, 1, saga_id="r")
        await until_status(rt, "r", SagaStatus.RUNNING)
        await until(lambda: _attempts_at_least(rt, "r", 2), what="a retry")
    store = PostgresStore(pg_dsn, name="v2-only", lease=0.5, poll_interval=0.05)
    async with Runtime(store, sagas=[newer]) as rt:
        info = await until_status(rt, "r", SagaStatus.SUSPENDED)
        assert info.suspended_reason == "retry v1 is not registered"
    assert not RAN  # v2's step never ran


async def _attempts_at_least(rt: Runtime, saga_id: str, attempts: int) -> bool:
    return (await rt.status(saga_id)).steps[0].attempts >= attempts
