"""`SqliteStore` on real SQLite files: schema, pragmas, exactly-once create, fenced saves,
snapshot and history in one transaction, group commit, corrupt rows."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from runtime import (
    CorruptSagaError,
    SagaNotFound,
    SagaStatus,
    SchemaVersionError,
    SqliteStore,
    StaleStateError,
    StoreClosedError,
    StoreError,
    StoreLockedError,
)
from runtime._schema import SCHEMA_VERSION
from saga import (
    ErrorInfo,
    Event,
    FailureKind,
    HistoryEntry,
    Saga,
    SagaStarted,
    SagaState,
    Step,
    StepContext,
    StepFailed,
    StepStatus,
    StepSucceeded,
    StoredSaga,
    Suspended,
    TimerFired,
    initial_state,
    transition,
)


async def _noop(ctx: StepContext, saga_input: Any) -> Any:
    return None


PAIR = Saga("pair", [Step("first", _noop), Step("second", _noop)])
T0 = 1_000.0


def new_saga(saga_id: str, data: bytes = b'{"n":1}', at: float = T0) -> tuple[StoredSaga, Event]:
    """A saga as `Runtime.spawn` stores it: the snapshot after `SagaStarted` (seq 1)."""
    started = SagaStarted(at=at)
    first = transition(PAIR, initial_state(PAIR, saga_id), started)
    return StoredSaga(saga_id, PAIR.name, data, first.state), started


def step_succeeded(
    state: SagaState, step: int, result: bytes = b'{"ok":true}'
) -> tuple[SagaState, Event]:
    event = StepSucceeded(at=state.updated_at + 1, step=step, attempt=1, result=msgspec.Raw(result))
    return transition(PAIR, state, event).state, event


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


async def test_closed_store_refuses_reads_and_writes(db_path: Path) -> None:
    store = SqliteStore(db_path)
    saga, event = new_saga("s")
    with pytest.raises(StoreClosedError):
        await store.create(saga, event)
    async with store:
        await store.create(saga, event)
    with pytest.raises(StoreClosedError):
        await store.load("s")
    with pytest.raises(StoreClosedError):
        await store.save(*step_succeeded(saga.state, 0))


# -- create ----------------------------------------------------------------


async def test_create_then_load_and_history(store: SqliteStore) -> None:
    saga, event = new_saga("a", b'{"amount":10}')
    assert await store.create(saga, event) is None
    loaded = await store.load("a")
    assert loaded == saga
    assert await store.history("a") == [HistoryEntry(saga.state.seq, event)]
    with pytest.raises(SagaNotFound):
        await store.load("nope")
    with pytest.raises(SagaNotFound):
        await store.history("nope")


async def test_concurrent_creates_of_one_id_in_one_batch_are_exactly_once(
    store: SqliteStore,
) -> None:
    first, first_event = new_saga("dup", b'{"who":"first"}')
    second, second_event = new_saga("dup", b'{"who":"second"}')
    results: dict[str, StoredSaga | None] = {}

    async def create(label: str, saga: StoredSaga, event: Event) -> None:
        results[label] = await store.create(saga, event)

    before = store.batches_committed
    async with anyio.create_task_group() as tg:
        tg.start_soon(create, "first", first, first_event)
        tg.start_soon(create, "second", second, second_event)
    assert store.batches_committed == before + 1  # both joined one batch
    winner = "first" if results["first"] is None else "second"
    loser = "second" if winner == "first" else "first"
    assert results[winner] is None
    stored = await store.load("dup")
    assert results[loser] == stored
    assert stored.input == (first if winner == "first" else second).input
    assert len(await store.history("dup")) == 1


async def test_create_of_an_existing_saga_returns_it_and_writes_nothing(
    store: SqliteStore,
) -> None:
    saga, event = new_saga("x", b'{"v":1}')
    await store.create(saga, event)
    again, again_event = new_saga("x", b'{"v":2}', at=T0 + 5)
    assert await store.create(again, again_event) == saga
    assert (await store.load("x")).input == b'{"v":1}'
    assert [entry.event for entry in await store.history("x")] == [event]


async def test_group_commit_shares_one_transaction_between_sagas(store: SqliteStore) -> None:
    before_batches, before_rows = store.batches_committed, store.rows_committed
    async with anyio.create_task_group() as tg:
        for n in range(20):
            saga, event = new_saga(f"g{n}")
            tg.start_soon(store.create, saga, event)
    assert store.batches_committed == before_batches + 1
    assert store.rows_committed == before_rows + 20
    assert sqlite_rows(store.path, "SELECT count(*) FROM sagas") == [(20,)]


# -- save --------------------------------------------------------------------


async def test_save_writes_snapshot_and_history_in_one_transaction(store: SqliteStore) -> None:
    saga, started = new_saga("s")
    await store.create(saga, started)
    state, event = step_succeeded(saga.state, 0, b'{"order_id":7}')
    before = store.batches_committed
    await store.save(state, event)
    assert store.batches_committed == before + 1
    loaded = (await store.load("s")).state
    assert loaded == state
    assert loaded.steps[0].status is StepStatus.SUCCEEDED
    history = await store.history("s")
    assert [entry.seq for entry in history] == [saga.state.seq, state.seq]
    assert history[-1].event == event
    rows = sqlite_rows(store.path, "SELECT status, seq FROM sagas WHERE saga_id='s'")
    assert rows == [("running", state.seq)]


async def test_failed_history_insert_rolls_the_snapshot_back(store: SqliteStore) -> None:
    saga, started = new_saga("s")
    await store.create(saga, started)
    state, event = step_succeeded(saga.state, 0)
    # Occupy the history slot the save needs, from outside the store.
    with sqlite3.connect(store.path) as conn:
        conn.execute(
            "INSERT INTO history(saga_id, seq, at, event) VALUES ('s', ?, 0, '{}')", (state.seq,)
        )
    with pytest.raises(StoreError):
        await store.save(state, event)
    assert (await store.load("s")).state == saga.state  # the snapshot did not move alone


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


@pytest.mark.parametrize("skip", [2, 5], ids=["one-ahead", "far-ahead"])
async def test_save_with_a_wrong_seq_is_stale_and_writes_nothing(
    store: SqliteStore, skip: int
) -> None:
    saga, started = new_saga("s")
    await store.create(saga, started)
    state, event = step_succeeded(saga.state, 0)
    ahead = msgspec.structs.replace(state, seq=saga.state.seq + skip)
    with pytest.raises(StaleStateError):
        await store.save(ahead, event)
    assert (await store.load("s")).state == saga.state
    assert len(await store.history("s")) == 1
    await store.save(state, event)  # the right seq still goes through
    assert (await store.load("s")).state == state


async def test_save_of_an_unknown_saga_raises_saga_not_found(store: SqliteStore) -> None:
    saga, _ = new_saga("ghost")
    with pytest.raises(SagaNotFound):
        await store.save(*step_succeeded(saga.state, 0))


async def test_replayed_save_is_stale_and_does_not_fail_other_sagas(
    store: SqliteStore,
) -> None:
    x, x_started = new_saga("x")
    y, y_started = new_saga("y")
    await store.create(x, x_started)
    await store.create(y, y_started)
    x2, x_event = step_succeeded(x.state, 0)
    await store.save(x2, x_event)
    y2, y_event = step_succeeded(y.state, 0)
    outcomes: dict[str, BaseException | None] = {}

    async def save(label: str, state: SagaState, event: Event) -> None:
        try:
            await store.save(state, event)
        except StoreError as exc:
            outcomes[label] = exc
        else:
            outcomes[label] = None

    async with anyio.create_task_group() as tg:  # one batch: the replay and an innocent save
        tg.start_soon(save, "x replayed", x2, x_event)
        tg.start_soon(save, "y", y2, y_event)
    assert isinstance(outcomes["x replayed"], StaleStateError)
    assert outcomes["y"] is None
    assert (await store.load("y")).state == y2


# -- listing and quarantine ----------------------------------------------------


async def test_unfinished_lists_only_live_sagas_in_creation_order(store: SqliteStore) -> None:
    for n, saga_id in enumerate(["live-1", "done", "retrying", "parked", "quarantined", "live-2"]):
        saga, event = new_saga(saga_id, at=T0 + n)
        await store.create(saga, event)

    done = (await store.load("done")).state
    for step in (0, 1):
        done, event = step_succeeded(done, step)
        await store.save(done, event)
    assert done.status is SagaStatus.COMPLETED

    retrying = (await store.load("retrying")).state
    failed = StepFailed(
        at=T0 + 10,
        step=0,
        attempt=1,
        error=ErrorInfo(type="builtins.ConnectionError", message="503"),
        kind=FailureKind.TRANSIENT,
    )
    retrying = transition(PAIR, retrying, failed).state
    await store.save(retrying, failed)
    assert retrying.steps[0].status is StepStatus.RETRYING

    parked = (await store.load("parked")).state
    suspend = Suspended(at=T0 + 11, reason="operator")
    await store.save(transition(PAIR, parked, suspend).state, suspend)

    await store.quarantine("quarantined", "bad bytes")

    listed = [(u.saga_id, u.saga_name) for u in await store.unfinished()]
    assert listed == [("live-1", "pair"), ("retrying", "pair"), ("live-2", "pair")]


async def test_corrupt_snapshot_raises_on_load_and_can_be_quarantined(
    store: SqliteStore,
) -> None:
    for saga_id in ("a", "b", "c"):
        await store.create(*new_saga(saga_id))
    with sqlite3.connect(store.path) as conn:
        conn.execute("UPDATE sagas SET snapshot='garbage' WHERE saga_id='a'")
        # A well-formed snapshot filed under the wrong saga is corrupt too.
        conn.execute(
            "UPDATE sagas SET snapshot=(SELECT snapshot FROM sagas WHERE saga_id='c') "
            "WHERE saga_id='b'"
        )
    for saga_id in ("a", "b"):
        with pytest.raises(CorruptSagaError) as caught:
            await store.load(saga_id)
        assert caught.value.saga_id == saga_id
    assert await store.quarantine_reason("a") is None
    await store.quarantine("a", "undecodable")
    assert await store.quarantine_reason("a") == "undecodable"
    assert sqlite_rows(store.path, "SELECT status, snapshot FROM sagas WHERE saga_id='a'") == [
        ("suspended", "garbage")  # kept as it is, for an operator
    ]
    assert [u.saga_id for u in await store.unfinished()] == ["b", "c"]
    with pytest.raises(SagaNotFound):
        await store.quarantine_reason("nope")
