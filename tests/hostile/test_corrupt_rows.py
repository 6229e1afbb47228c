"""A row edited by hand into nonsense harms that saga only: drawn corruptions of every
column of the sagas, history and inbox tables, then a runtime opened on the file must
list every page, report every other saga as it was, wake and finish the sagas that
wait, and take new spawns; the edited saga is readable or a typed error."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sqlite3
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime import (
    CorruptSagaError,
    Runtime,
    SagaCompensated,
    SagaSuspendedError,
    SqliteStore,
    UnregisteredSagaError,
)
from saga import NonRetryableError, Saga, SagaStatus, Sleep, Step, StepContext, WaitForSignal
from saga.store import InboxItem

FINISHED = ("done-0", "done-1", "done-2")
WAITING = "waiting"
"""Waits for a signal: after the corruption it must still take it and finish."""
SLEEPING = "sleeping"
"""Sleeps a moment: after the corruption its timer must still fire."""


async def double(ctx: StepContext, value: int) -> int:
    return value * 2


async def refuse(ctx: StepContext, value: int) -> int:
    raise NonRetryableError("refused")


async def undo(ctx: StepContext, value: int, result: object) -> None:
    return None


PROBE = Saga(
    "probe",
    [Step("double", double, compensate=undo), Step("refuse", refuse)],
    input_type=int,
)
WAITER = Saga(
    "waiter",
    [
        Step("double", double),
        WaitForSignal("go", payload_type=int),
        WaitForSignal("then", payload_type=int),
    ],
)
SLEEPER = Saga("sleeper", [Sleep("nap", seconds=0.05), Step("double", double)])
SAGAS = [PROBE, WAITER, SLEEPER]


def _connect(db: Path) -> sqlite3.Connection:
    return sqlite3.connect(db, isolation_level=None)


async def seed(db: Path) -> dict[str, tuple[SagaStatus, int]]:
    """Three finished sagas, one waiting for a signal; their status and history length."""
    async with Runtime(db, sagas=SAGAS) as rt:
        for saga_id in FINISHED:
            with pytest.raises(SagaCompensated):
                await (await rt.spawn(PROBE, 1, saga_id=saga_id)).result(timeout=10)
        await rt.spawn(WAITER, 2, saga_id=WAITING)
        await rt.signal(WAITING, "then", 7)  # kept for its step
        with anyio.fail_after(10):
            # The public API has no event for "signal taken": read until it is there
            # (started, double, waiting for go, then received).
            while len((await rt.status(WAITING)).history) < 4:  # noqa: ASYNC110
                await anyio.sleep(0.01)
    async with SqliteStore(db) as store:
        # As if the process died between `signal` and its delivery: a row in the inbox.
        await store.deliver(InboxItem(0, WAITING, "signal", "go", b"5", None, 0.0))
        return {
            sid: ((await store.load(sid)).state.status, len(await store.history(sid)))
            for sid in (*FINISHED, WAITING)
        }


TABLES = {
    "sagas": (
        "saga_name",
        "status",
        "seq",
        "input",
        "snapshot",
        "wake_at",
        "owner",
        "epoch",
        "error",
        "created_at",
        "updated_at",
        "runnable",
        "waiting_for",
    ),
    "history": ("seq", "event"),
    "inbox": ("kind", "name", "payload", "key"),
}
CORRUPTIONS = st.one_of(
    st.none(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.binary(max_size=8),
    st.sampled_from(
        [
            '{"a": ',
            "[]",
            "{}",
            "null",
            '"\\ud800"',
            "running",
            "waiting",
            "bogus",
            "probe",
            "x" * 5000,
        ]
    ),
)
TYPED = (CorruptSagaError, UnregisteredSagaError)
"""What `status()` of the edited saga may raise instead of answering."""


def corrupt(db: Path, table: str, column: str, victim: str, value: Any) -> bool:
    """Write `value` into `column` of the victim's rows; False if SQLite refuses it."""
    with _connect(db) as conn:
        try:
            conn.execute(f"UPDATE {table} SET {column} = ? WHERE saga_id = ?", (value, victim))
        except sqlite3.IntegrityError:  # NOT NULL, or a duplicate (saga_id, seq)
            return False
    return True


async def check_unharmed(db: Path, before: dict[str, tuple[SagaStatus, int]], victim: str) -> None:
    async with Runtime(db, sagas=SAGAS) as rt:
        listed: list[str] = []
        after: str | None = None
        while True:
            page = await rt.list(after=after, limit=2)
            listed += [item.saga_id for item in page.items]
            if page.next_after is None:
                break
            after = page.next_after
        assert set(listed) == set(before)
        for saga_id, (status, length) in before.items():
            if saga_id == victim:
                with contextlib.suppress(*TYPED):
                    await rt.status(saga_id)
                continue
            if saga_id == WAITING:
                continue  # it took its "go" from the inbox: checked by its result below
            info = await rt.status(saga_id)
            assert (info.status, len(info.history)) == (status, length), saga_id
        if victim != WAITING:  # its "go" waited in the inbox
            result = await rt.handle(WAITING).result(timeout=10)
            assert (result["go"], result["then"]) == (5, 7)
        # A new saga that sleeps: the timer service is not stuck on the bad row.
        assert (await (await rt.spawn(SLEEPER, 4, saga_id=SLEEPING)).result(timeout=10))[
            "double"
        ] == 8
        with pytest.raises(SagaCompensated):
            await (await rt.spawn(PROBE, 1, saga_id="fresh")).result(timeout=10)


SOAK = os.environ.get("SAGALOOP_SOAK") == "1"


# The suite draws the same examples every run; SAGALOOP_SOAK=1 draws new ones, and more.
@settings(
    max_examples=2_000 if SOAK else 150,
    derandomize=not SOAK,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    table_column=st.sampled_from([(t, c) for t, cols in TABLES.items() for c in cols]),
    victim=st.sampled_from([*FINISHED, WAITING]),
    value=CORRUPTIONS,
)
def test_a_corrupt_column_harms_only_its_saga(
    tmp_path_factory: pytest.TempPathFactory,
    table_column: tuple[str, str],
    victim: str,
    value: Any,
) -> None:
    db = tmp_path_factory.mktemp("corrupt") / "sagas.db"
    before = anyio.run(seed, db)
    table, column = table_column
    if corrupt(db, table, column, victim, value):
        anyio.run(check_unharmed, db, before, victim)


# -- the regressions the sweep found ------------------------------------------------


async def test_a_bogus_status_is_listed_suspended_with_its_reason(tmp_path: Path) -> None:
    db = tmp_path / "sagas.db"
    await seed(db)
    with _connect(db) as conn:
        conn.execute("DELETE FROM inbox")  # the waiting saga keeps waiting
        conn.execute("UPDATE sagas SET status = 'bogus' WHERE saga_id = 'done-1'")
    async with Runtime(db, sagas=SAGAS) as rt:
        page = await rt.list()
        statuses = {item.saga_id: item.status for item in page.items}
        assert statuses == {
            "done-0": SagaStatus.COMPENSATED,
            "done-1": SagaStatus.SUSPENDED,
            "done-2": SagaStatus.COMPENSATED,
            WAITING: SagaStatus.WAITING,
        }
        # Its snapshot is intact: what it reports stands, the reason is on the row.
        with pytest.raises(SagaCompensated):
            await rt.handle("done-1").result(timeout=10)
    async with SqliteStore(db) as store:
        assert await store.quarantine_reason("done-1") == (
            "its status column holds 'bogus', not a saga status"
        )


@pytest.mark.parametrize(
    ("wake_at", "shown"), [("soon", "'soon'"), (9e999, "Inf"), (-9e999, "-Inf")]
)
async def test_a_wake_at_that_is_not_a_time_is_quarantined_and_delays_no_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, wake_at: object, shown: str
) -> None:
    db = tmp_path / "sagas.db"
    await seed(db)
    with _connect(db) as conn:
        conn.execute("DELETE FROM inbox")  # the waiting saga keeps waiting
        conn.execute("UPDATE sagas SET wake_at = ? WHERE saga_id = ?", (wake_at, WAITING))
    with caplog.at_level(logging.ERROR, logger="runtime"):
        async with Runtime(db, sagas=SAGAS) as rt:
            sleeper = await rt.spawn(SLEEPER, 1, saga_id=SLEEPING)
            assert (await sleeper.result(timeout=10))["double"] == 2
            with pytest.raises(
                SagaSuspendedError, match=f"wake_at column holds {re.escape(shown)}, not a time"
            ):
                await rt.handle(WAITING).result(timeout=10)
    assert "waking due sagas failed" not in caplog.text
