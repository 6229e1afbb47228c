"""What only `SqliteStore` does: schema versions, pragmas, the file lock, its row counter,
corrupt column types. The `Store` contract both stores keep is in test_store_contract.py."""

from __future__ import annotations

import fcntl
import os
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from runtime import (
    CorruptSagaError,
    SchemaVersionError,
    SqliteStore,
    StoreLockedError,
)
from runtime.sqlite import _store as _sqlite_store
from runtime.sqlite import _writer as _sqlite_writer
from runtime.sqlite._schema import MIGRATIONS, SCHEMA_VERSION
from saga import ErrorInfo, FailureKind, StoreError
from saga.engine import Recovered, StepFailed, TimerFired, transition
from saga.store import StaleStateError
from tests.child_process import REPO
from tests.runtime.test_store_contract import PAIR, T0, new_saga, step_succeeded


def sqlite_rows(path: Path, query: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as conn:
        return conn.execute(query, params).fetchall()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "sagas.db"


@pytest.fixture
async def store(db_path: Path) -> AsyncIterator[SqliteStore]:
    async with SqliteStore(db_path) as opened:
        yield opened


# -- schema and pragmas -----------------------------------------------------


async def test_schema_is_created_and_versioned_once(db_path: Path) -> None:
    for _ in range(2):  # the second open must find the schema current and add nothing
        async with SqliteStore(db_path):
            pass
    assert sqlite_rows(db_path, "SELECT version FROM schema_version ORDER BY version") == [
        (v,) for v in range(1, SCHEMA_VERSION + 1)
    ]
    tables = {row[0] for row in sqlite_rows(db_path, "SELECT name FROM sqlite_master")}
    assert {"schema_version", "sagas", "history"} <= tables


async def test_default_pragmas_are_wal_and_synchronous_full(store: SqliteStore) -> None:
    assert sqlite_rows(store.path, "PRAGMA journal_mode") == [("wal",)]
    # synchronous is per connection: ask the one that writes.
    assert await store.write_pragmas() == {"journal_mode": "wal", "synchronous": 2}  # FULL


async def test_synchronous_is_configurable_and_validated(db_path: Path) -> None:
    async with SqliteStore(db_path, synchronous="NORMAL") as store:
        assert (await store.write_pragmas())["synchronous"] == 1
    with pytest.raises(ValueError, match="synchronous"):
        SqliteStore(db_path, synchronous="SOMETIMES")  # type: ignore[arg-type]


async def test_newer_schema_raises_and_releases_the_lock(db_path: Path) -> None:
    async with SqliteStore(db_path):
        pass
    with sqlite3.connect(db_path) as conn:
        conn.execute("INSERT INTO schema_version(version) VALUES (?)", (SCHEMA_VERSION + 1,))
    with pytest.raises(SchemaVersionError, match=str(SCHEMA_VERSION + 1)):
        async with SqliteStore(db_path):
            pass
    # Not StoreLockedError: the failed open let go of the file.
    with pytest.raises(SchemaVersionError):
        async with SqliteStore(db_path):
            pass


async def test_second_store_on_an_open_file_is_locked_out(
    store: SqliteStore, db_path: Path
) -> None:
    with pytest.raises(StoreLockedError):
        async with SqliteStore(db_path):
            pass
    saga, event = new_saga("still-usable")
    assert await store.create(saga, event) is None


async def test_the_lock_follows_the_file_not_the_path(store: SqliteStore, db_path: Path) -> None:
    (db_path.parent / "alias.db").symlink_to(db_path)
    os.link(db_path, db_path.parent / "hard.db")
    for other in ("alias.db", "hard.db"):
        with pytest.raises(StoreLockedError, match="another path"):
            async with SqliteStore(db_path.parent / other):
                pass
    saga, event = new_saga("still-usable")
    assert await store.create(saga, event) is None


async def test_a_file_flocked_elsewhere_is_locked_out(db_path: Path) -> None:
    async with SqliteStore(db_path):
        pass
    fd = os.open(db_path, os.O_RDWR)  # stands in for another process's runtime
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(StoreLockedError):
            async with SqliteStore(db_path):
                pass
    finally:
        os.close(fd)
    async with SqliteStore(db_path):  # released with its holder
        pass


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p / "missing" / "sagas.db", "folder .* does not exist"),
        (lambda p: p, "it is a folder"),
        (lambda p: _write(p / "notes.txt", b"shopping list\n"), "not an SQLite file"),
    ],
    ids=["missing-folder", "folder", "text-file"],
)
async def test_a_path_that_cannot_be_a_database_is_a_clear_store_error(
    tmp_path: Path, make: Callable[[Path], Path], message: str
) -> None:
    path = make(tmp_path)
    before = path.read_bytes() if path.is_file() else None
    with pytest.raises(StoreError, match=message):
        async with SqliteStore(path):
            pass
    if before is not None:
        assert path.read_bytes() == before  # nothing written to someone else's file
    assert not (tmp_path / "missing").exists()


def test_a_read_only_database_is_refused_on_entering_not_at_each_spawn(tmp_path: Path) -> None:
    # Root may write any file, so as root the child drops to an unprivileged uid, which
    # needs a folder it may enter (pytest's are private to their owner): one in /tmp.
    with tempfile.TemporaryDirectory(dir="/tmp" if os.geteuid() == 0 else tmp_path) as name:
        folder = Path(name)
        folder.chmod(0o755)
        db_path = folder / "sagas.db"
        anyio.run(_create_store, db_path)
        db_path.chmod(0o444)
        before = db_path.read_bytes()
        child = [
            *(sys.executable, "-m", "tests.hostile.read_only_child"),
            *(str(tmp_path / "warm-up.db"), str(db_path)),
        ]
        ended = subprocess.run(child, cwd=REPO, capture_output=True, text=True, timeout=60)
        assert ended.returncode == 0, ended.stderr
        assert ended.stdout.startswith("REFUSED "), ended.stdout + ended.stderr
        assert "no permission to read and write it" in ended.stdout
        assert db_path.read_bytes() == before


async def _create_store(path: Path) -> None:
    async with SqliteStore(path):
        pass


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


async def test_group_commit_counts_the_rows_of_one_transaction(store: SqliteStore) -> None:
    before_batches, before_rows = store.batches_committed, store.rows_committed
    async with anyio.create_task_group() as tg:
        for n in range(20):
            saga, event = new_saga(f"g{n}")
            tg.start_soon(store.create, saga, event)
    assert store.batches_committed == before_batches + 1
    assert store.rows_committed == before_rows + 20
    assert sqlite_rows(store.path, "SELECT count(*) FROM sagas") == [(20,)]


@pytest.mark.parametrize(
    ("value", "detail"),
    [
        (42, "Expected `object`, got `int`"),  # TEXT affinity stores it as '42'
        (b"\xff\xfe{", "corrupt snapshot"),  # a BLOB stays a BLOB
        (b'{"v":1}', "corrupt snapshot"),  # valid JSON, not a snapshot
    ],
    ids=["integer", "binary-blob", "json-blob"],
)
async def test_a_snapshot_of_another_sqlite_type_is_a_corrupt_saga(
    store: SqliteStore, value: object, detail: str
) -> None:
    # SQLite columns take any type: a row written by another program can hold anything.
    saga, event = new_saga("odd")
    await store.create(saga, event)
    with sqlite3.connect(store.path) as conn:
        conn.execute("UPDATE sagas SET snapshot = ? WHERE saga_id = 'odd'", (value,))
    with pytest.raises(CorruptSagaError, match=detail) as caught:
        await store.load("odd")
    assert caught.value.saga_id == "odd"
    with pytest.raises(CorruptSagaError):
        await store.create(saga, event)  # exactly-once create reads the row too
    await store.quarantine("odd", "wrong column type")
    assert await store.unfinished() == []


# -- the writer's two kinds of UPDATE ---------------------------------------------


async def test_indexed_columns_follow_every_save(store: SqliteStore) -> None:
    saga, started = new_saga("s")
    await store.create(saga, started)
    columns = "SELECT status, seq, runnable, wake_at FROM sagas WHERE saga_id='s'"
    assert sqlite_rows(store.path, columns) == [("running", 1, 1, None)]
    failed = StepFailed(
        at=T0 + 1,
        step=0,
        attempt=1,
        error=ErrorInfo(type="builtins.ConnectionError", message="503"),
        kind=FailureKind.TRANSIENT,
    )
    retrying = transition(PAIR, saga.state, failed).state
    await store.save(retrying, failed)  # a retry is due: wake_at and runnable move
    assert retrying.wake_at is not None
    assert sqlite_rows(store.path, columns) == [("running", retrying.seq, 0, retrying.wake_at)]
    again = transition(PAIR, retrying, TimerFired(at=retrying.wake_at)).state
    await store.save(again, TimerFired(at=retrying.wake_at))  # and back
    assert sqlite_rows(store.path, columns) == [("running", again.seq, 1, None)]


async def test_two_saves_of_one_saga_in_one_batch_land_in_order(store: SqliteStore) -> None:
    saga, started = new_saga("s")
    await store.create(saga, started)
    first, first_event = step_succeeded(saga.state, 0)  # indexed columns unchanged
    second, second_event = step_succeeded(first, 1)  # completed: status and runnable change
    before = store.batches_committed
    async with anyio.create_task_group() as tg:
        tg.start_soon(store.save, first, first_event)
        tg.start_soon(store.save, second, second_event)
    assert store.batches_committed == before + 1
    assert (await store.load("s")).state == second
    assert sqlite_rows(store.path, "SELECT status, seq, runnable FROM sagas") == [
        ("completed", second.seq, 0)
    ]
    assert [entry.seq for entry in await store.history("s")] == [1, first.seq, second.seq]


async def test_a_save_repairs_columns_another_program_changed(store: SqliteStore) -> None:
    # The writer remembers each saga's columns to leave them out of the next UPDATE;
    # the UPDATE checks them, so a row changed behind its back is written in full.
    saga, started = new_saga("s")
    await store.create(saga, started)
    first, first_event = step_succeeded(saga.state, 0)
    await store.save(first, first_event)
    with sqlite3.connect(store.path) as conn:
        conn.execute(
            "UPDATE sagas SET status='suspended', waiting_for='x', wake_at=1 WHERE saga_id='s'"
        )
    recovered = Recovered(at=T0 + 5, max_recoveries=5)  # changes the snapshot alone
    again = transition(PAIR, first, recovered).state
    await store.save(again, recovered)
    assert sqlite_rows(
        store.path, "SELECT status, seq, runnable, wake_at, waiting_for FROM sagas"
    ) == [("running", again.seq, 1, None, None)]
    assert (await store.load("s")).state == again


async def test_a_refused_save_in_a_batch_leaves_the_others_written(store: SqliteStore) -> None:
    # The unchecked path writes a whole batch or nothing; one stale save sends the
    # batch down the checked path, which refuses that save alone.
    for saga_id in ("a", "b"):
        saga, started = new_saga(saga_id)
        await store.create(saga, started)
    a = (await store.load("a")).state
    b = (await store.load("b")).state
    a1, a1_event = step_succeeded(a, 0)
    b1, _ = step_succeeded(b, 0)
    b2, b2_event = step_succeeded(b1, 1)  # skips b1: stale
    outcomes: dict[str, BaseException | None] = {}

    async def save(name: str, state: Any, event: Any) -> None:
        try:
            await store.save(state, event)
            outcomes[name] = None
        except Exception as exc:
            outcomes[name] = exc

    async with anyio.create_task_group() as tg:
        tg.start_soon(save, "a", a1, a1_event)
        tg.start_soon(save, "b", b2, b2_event)
    assert outcomes["a"] is None
    assert isinstance(outcomes["b"], StaleStateError)
    assert (await store.load("a")).state == a1
    assert (await store.load("b")).state == b
    assert [entry.seq for entry in await store.history("a")] == [1, a1.seq]
    assert [entry.seq for entry in await store.history("b")] == [1]


async def test_writes_build_no_temporary_table(store: SqliteStore) -> None:
    # A partial index on `status IN (...)` made SQLite build a temporary table at every
    # insert and status change (schema version 3 drops it): a few percent of each saga.
    indexes = {row[0] for row in sqlite_rows(store.path, "SELECT name FROM sqlite_master")}
    assert "sagas_live" not in indexes
    with sqlite3.connect(store.path) as conn:
        for sql in (
            _sqlite_writer._INSERT_NEW,
            _sqlite_writer._UPDATE_SNAPSHOT,
            _sqlite_writer._UPDATE_FULL,
        ):
            opcodes = [row[1] for row in conn.execute(f"EXPLAIN {sql}", [None] * sql.count("?"))]
            assert "OpenEphemeral" not in opcodes, sql


def test_timer_queries_read_the_wake_at_index(db_path: Path) -> None:
    # Through the status index they would read every live saga at each timer check:
    # a hundred thousand waiting sagas for the few that are due.
    with sqlite3.connect(db_path) as conn:
        for version in range(1, SCHEMA_VERSION + 1):
            for statement in MIGRATIONS[version]:
                conn.execute(statement)
        for sql, params in (
            (_sqlite_store.DUE + " ORDER BY wake_at, saga_id LIMIT 10", [1.0, "a", "b", "c"]),
            (_sqlite_store.NEXT_WAKE_AT, ["a", "b", "c"]),
        ):
            plan = " ".join(row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params))
            assert "USING INDEX sagas_wake_at" in plan, plan
