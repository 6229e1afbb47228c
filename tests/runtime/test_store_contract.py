"""The `Store` contract, run against every store: `SqliteStore` and `PostgresStore`.

Exactly-once create, fenced saves of snapshot and history in one
transaction, group commit, the inbox, the listings the runtime and its timer
service read, corrupt rows and a closed store. Backend-only behaviour lives
in test_sqlite_store.py and test_pg_store.py.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import anyio
import asyncpg
import msgspec
import pytest

from runtime import (
    CorruptSagaError,
    SagaNotFound,
    SagaStatus,
    SqliteStore,
    StaleStateError,
    StoreClosedError,
    StoreError,
)
from runtime.postgres import PostgresStore
from saga import (
    ErrorInfo,
    FailureKind,
    Saga,
    SagaEndedError,
    Step,
    StepContext,
    StepStatus,
    WaitForSignal,
)
from saga.engine import (
    Event,
    SagaStarted,
    SignalReceived,
    StepFailed,
    StepSucceeded,
    StepWaiting,
    Suspended,
    initial_state,
    transition,
)
from saga.store import HistoryEntry, InboxItem, SagaState, StoredSaga

AnyStore = SqliteStore | PostgresStore
Kind = Literal["sqlite", "postgres"]


async def _noop(ctx: StepContext, saga_input: Any) -> Any:
    return None


PAIR = Saga("pair", [Step("first", _noop), Step("second", _noop)])
GATE = Saga("gate", [WaitForSignal("approve"), Step("after", _noop)])
T0 = 1_000.0


def new_saga(
    saga_id: str, data: bytes = b'{"n":1}', at: float = T0, saga: Saga = PAIR
) -> tuple[StoredSaga, Event]:
    """A saga as `Runtime.spawn` stores it: the snapshot after `SagaStarted` (seq 1)."""
    started = SagaStarted(at=at)
    first = transition(saga, initial_state(saga, saga_id), started)
    return StoredSaga(saga_id, saga.name, data, first.state), started


def step_succeeded(
    state: SagaState, step: int, result: bytes = b'{"ok":true}'
) -> tuple[SagaState, Event]:
    event = StepSucceeded(at=state.updated_at + 1, step=step, attempt=1, result=msgspec.Raw(result))
    return transition(PAIR, state, event).state, event


async def create_waiting(
    store: AnyStore, saga_id: str, *, until: float | None = None, at: float = T0
) -> SagaState:
    """A `gate` saga waiting for its `approve` signal (until `until`, if given)."""
    saga, started = new_saga(saga_id, at=at, saga=GATE)
    assert await store.create(saga, started) is None
    event = StepWaiting(at=at + 1, step=0, attempt=1, until=until)
    state = transition(GATE, saga.state, event).state
    await store.save(state, event)
    return state


async def suspend(store: AnyStore, saga: Saga, state: SagaState) -> SagaState:
    event = Suspended(at=state.updated_at + 1, reason="operator")
    suspended = transition(saga, state, event).state
    await store.save(suspended, event)
    return suspended


def signal(saga_id: str, name: str = "approve", key: str | None = None, n: int = 0) -> InboxItem:
    return InboxItem(0, saga_id, "signal", name, b'{"n":%d}' % n, key, T0 + n)


# -- the backends ---------------------------------------------------------------


@dataclass(frozen=True)
class Backend:
    """One database, of either kind: new store objects on it, and raw SQL from outside."""

    kind: Kind
    path: Path
    dsn: str

    def new_store(self) -> AnyStore:
        return SqliteStore(self.path) if self.kind == "sqlite" else PostgresStore(self.dsn)

    async def rows(self, sql: str, *params: object) -> list[tuple[Any, ...]]:
        """Run `sql` (`?` placeholders, unqualified table names) outside any store."""
        if self.kind == "sqlite":
            with sqlite3.connect(self.path) as lite:
                return lite.execute(sql, params).fetchall()
        numbered = iter(range(1, len(params) + 1))
        pg_sql = re.sub(r"\?", lambda _: f"${next(numbered)}", sql)
        pg = await asyncpg.connect(self.dsn, server_settings={"search_path": "sagaloop"})
        try:
            return [tuple(row) for row in await pg.fetch(pg_sql, *params)]
        finally:
            await pg.close()


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    kind: Kind = request.param
    # Only the PostgreSQL variant needs (and makes) a database on the server.
    dsn: str = request.getfixturevalue("pg_dsn") if kind == "postgres" else ""
    return Backend(kind, tmp_path / "sagas.db", dsn)


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[AnyStore]:
    async with backend.new_store() as opened:
        yield opened


@asynccontextmanager
async def reopened(backend: Backend) -> AsyncIterator[AnyStore]:
    """A new store on the same database (for PostgreSQL: a new runtime)."""
    async with backend.new_store() as opened:
        yield opened


@asynccontextmanager
async def another_runtimes_store(store: AnyStore, backend: Backend) -> AsyncIterator[AnyStore]:
    """On PostgreSQL a second store on the database; SQLite has one runtime: `store` itself."""
    if backend.kind == "postgres":
        async with backend.new_store() as other:
            yield other
    else:
        yield store


# -- create ----------------------------------------------------------------------


async def test_create_then_load_and_history(store: AnyStore) -> None:
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
    store: AnyStore,
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
    store: AnyStore, backend: Backend
) -> None:
    saga, event = new_saga("x", b'{"v":1}')
    await store.create(saga, event)
    again, again_event = new_saga("x", b'{"v":2}', at=T0 + 5)
    assert await store.create(again, again_event) == saga
    assert (await store.load("x")).input == b'{"v":1}'
    assert [entry.event for entry in await store.history("x")] == [event]
    async with another_runtimes_store(store, backend) as other:
        assert await other.create(again, again_event) == saga


async def test_group_commit_shares_one_transaction_between_sagas(store: AnyStore) -> None:
    before = store.batches_committed
    async with anyio.create_task_group() as tg:
        for n in range(20):
            saga, event = new_saga(f"g{n:02}")
            tg.start_soon(store.create, saga, event)
    assert store.batches_committed == before + 1
    assert [row.saga_id for row in await store.list_sagas()] == [f"g{n:02}" for n in range(20)]


# -- save --------------------------------------------------------------------------


async def test_save_writes_snapshot_and_history_in_one_transaction(
    store: AnyStore, backend: Backend
) -> None:
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
    assert await backend.rows("SELECT status, seq FROM sagas WHERE saga_id = ?", "s") == [
        ("running", state.seq)
    ]


async def test_failed_history_insert_rolls_the_snapshot_back(
    store: AnyStore, backend: Backend
) -> None:
    saga, started = new_saga("s")
    await store.create(saga, started)
    state, event = step_succeeded(saga.state, 0)
    # Occupy the history slot the save needs, from outside the store.
    await backend.rows(
        "INSERT INTO history(saga_id, seq, at, event) VALUES ('s', ?, 0, '{}')", state.seq
    )
    with pytest.raises(StoreError):
        await store.save(state, event)
    assert (await store.load("s")).state == saga.state  # the snapshot did not move alone


@pytest.mark.parametrize("skip", [2, 5], ids=["one-ahead", "far-ahead"])
async def test_save_with_a_wrong_seq_is_stale_and_writes_nothing(
    store: AnyStore, skip: int
) -> None:
    saga, started = new_saga("s")
    await store.create(saga, started)
    state, event = step_succeeded(saga.state, 0)
    ahead = msgspec.structs.replace(state, seq=saga.state.seq + skip)
    with pytest.raises(StaleStateError) as caught:
        await store.save(ahead, event)
    assert type(caught.value) is StaleStateError  # not a lost lease: the seq is wrong
    assert (await store.load("s")).state == saga.state
    assert len(await store.history("s")) == 1
    await store.save(state, event)  # the right seq still goes through
    assert (await store.load("s")).state == state


async def test_save_of_a_saga_whose_row_is_gone_raises_saga_not_found(
    store: AnyStore, backend: Backend
) -> None:
    saga, started = new_saga("gone")
    await store.create(saga, started)
    await backend.rows("DELETE FROM sagas WHERE saga_id = ?", "gone")
    with pytest.raises(SagaNotFound):
        await store.save(*step_succeeded(saga.state, 0))


async def test_save_of_a_never_created_saga_raises_saga_not_found(store: AnyStore) -> None:
    saga, _ = new_saga("ghost")
    with pytest.raises(SagaNotFound):
        await store.save(*step_succeeded(saga.state, 0))


async def test_replayed_save_is_stale_and_does_not_fail_other_sagas(store: AnyStore) -> None:
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

    before = store.batches_committed
    async with anyio.create_task_group() as tg:  # one batch: the replay and an innocent save
        tg.start_soon(save, "x replayed", x2, x_event)
        tg.start_soon(save, "y", y2, y_event)
    assert store.batches_committed == before + 1
    assert type(outcomes["x replayed"]) is StaleStateError
    assert outcomes["y"] is None
    assert (await store.load("y")).state == y2
    assert len(await store.history("x")) == 2


# -- listings --------------------------------------------------------------------


async def test_unfinished_lists_only_live_sagas_in_creation_order(store: AnyStore) -> None:
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

    await suspend(store, PAIR, (await store.load("parked")).state)
    await store.quarantine("quarantined", "bad bytes")

    listed = [(u.saga_id, u.saga_name) for u in await store.unfinished()]
    assert listed == [("live-1", "pair"), ("retrying", "pair"), ("live-2", "pair")]


async def test_runnable_after_a_restart_is_in_flight_work_and_inbox_items(
    backend: Backend,
) -> None:
    async with backend.new_store() as store:
        await store.create(*new_saga("in-flight"))
        await create_waiting(store, "idle")
        await create_waiting(store, "signalled")
        assert await store.deliver(signal("signalled"))
        await create_waiting(store, "timed", until=T0 + 5)  # a timer's business, not runnable
        for saga_id in ("done", "done-asked-to-compensate"):
            done, event = new_saga(saga_id)
            await store.create(done, event)
            state = done.state
            for step in (0, 1):
                state, event = step_succeeded(state, step)
                await store.save(state, event)
        # A completed child whose parent asked it to roll back (its runtime stopped then).
        asked = InboxItem(0, "done-asked-to-compensate", "compensate", "undo", b"null", "c", T0)
        assert await store.deliver(asked)
        parked = await create_waiting(store, "parked-with-mail")
        assert await store.deliver(signal("parked-with-mail"))
        await suspend(store, GATE, parked)
    # Reopened (on PostgreSQL: a new runtime, the old one having handed its sagas back).
    async with reopened(backend) as store:
        runnable = {(u.saga_id, u.saga_name) for u in await store.runnable()}
    assert runnable == {
        ("in-flight", "pair"),
        ("signalled", "gate"),
        ("done-asked-to-compensate", "pair"),
    }


async def test_due_pages_by_wake_time_then_id_and_next_wake_at(store: AnyStore) -> None:
    wakes = {"d": T0 + 30, "b": T0 + 10, "a": T0 + 20, "c": T0 + 20, "late": T0 + 99}
    for saga_id, until in wakes.items():
        await create_waiting(store, saga_id, until=until)
    await create_waiting(store, "no-timer")
    parked = await create_waiting(store, "parked", until=T0 + 1)
    await suspend(store, GATE, parked)  # a suspended saga wakes for nobody

    pages: list[list[tuple[str, float]]] = []
    after: tuple[float, str] | None = None
    while True:
        page = await store.due(T0 + 30, after=after, limit=2)
        pages.append([(d.saga_id, d.wake_at) for d in page])
        if len(page) < 2:
            break
        after = (page[-1].wake_at, page[-1].saga_id)
    assert pages == [
        [("b", T0 + 10), ("a", T0 + 20)],
        [("c", T0 + 20), ("d", T0 + 30)],
        [],
    ]
    assert {d.saga_name for d in await store.due(T0 + 99)} == {"gate"}
    assert await store.due(T0 + 9) == []

    assert await store.next_wake_at() == T0 + 10
    assert await store.next_wake_at(after=T0 + 10) == T0 + 20
    assert await store.next_wake_at(after=T0 + 30) == T0 + 99
    assert await store.next_wake_at(after=T0 + 99) is None


async def test_list_sagas_filters_and_pages_in_bytewise_id_order(store: AnyStore) -> None:
    ids = ["b", "B", "a", "Z", "é", "ab", "a b", "a-1", "a_1", "~", "日本"]
    for n, saga_id in enumerate(ids):
        if n % 2:
            await create_waiting(store, saga_id, at=T0 + n)
        else:
            await store.create(*new_saga(saga_id, at=T0 + n))
    bytewise = sorted(ids, key=lambda saga_id: saga_id.encode())

    listed: list[str] = []
    after: str | None = None
    while True:
        page = await store.list_sagas(after=after, limit=3)
        listed += [row.saga_id for row in page]
        if len(page) < 3:
            break
        after = page[-1].saga_id
    assert listed == bytewise

    waiting = [saga_id for n, saga_id in enumerate(ids) if n % 2]
    by_status = await store.list_sagas(status="waiting")
    assert [row.saga_id for row in by_status] == sorted(waiting, key=str.encode)
    assert {(row.saga_name, row.status, row.waiting_for) for row in by_status} == {
        ("gate", "waiting", "approve")
    }
    by_name = await store.list_sagas(saga_name="pair")
    assert [row.saga_id for row in by_name] == [i for i in bytewise if i not in waiting]
    assert all(row.waiting_for is None and row.status == "running" for row in by_name)
    assert await store.list_sagas(waiting_for="approve", saga_name="pair") == []
    assert [row.saga_id for row in await store.list_sagas(waiting_for="approve", limit=2)] == (
        sorted(waiting, key=str.encode)[:2]
    )
    first = (await store.list_sagas(status="running", limit=1))[0]
    assert (first.saga_id, first.wake_at, first.updated_at) == ("a", None, T0 + 2)


# -- the inbox ---------------------------------------------------------------------


async def test_deliver_keeps_items_in_order_and_drops_a_duplicate_key(store: AnyStore) -> None:
    await create_waiting(store, "w")
    assert await store.deliver(signal("w", "approve", key="k1", n=1))
    assert await store.deliver(InboxItem(0, "w", "cancel", "customer left", at=T0 + 2))
    assert not await store.deliver(signal("w", "approve", key="k1", n=3))  # the duplicate
    assert await store.deliver(signal("w", "approve", key="k2", n=4))
    assert await store.deliver(signal("w", "other", n=5))  # no key: never a duplicate
    assert await store.deliver(signal("w", "other", n=6))
    items = await store.inbox("w")
    assert [(i.kind, i.name, i.payload, i.key, i.at) for i in items] == [
        ("signal", "approve", b'{"n":1}', "k1", T0 + 1),
        ("cancel", "customer left", b"null", None, T0 + 2),
        ("signal", "approve", b'{"n":4}', "k2", T0 + 4),
        ("signal", "other", b'{"n":5}', None, T0 + 5),
        ("signal", "other", b'{"n":6}', None, T0 + 6),
    ]
    assert [i.id for i in items] == sorted(i.id for i in items)
    assert all(i.saga_id == "w" for i in items)
    assert await store.inbox("nobody") == []


async def test_deliver_to_an_ended_or_unknown_saga_raises(store: AnyStore) -> None:
    saga, started = new_saga("done")
    await store.create(saga, started)
    state = saga.state
    for step in (0, 1):
        state, event = step_succeeded(state, step)
        await store.save(state, event)
    with pytest.raises(SagaEndedError) as ended:
        await store.deliver(signal("done"))
    assert ended.value.saga_id == "done"
    with pytest.raises(SagaNotFound):
        await store.deliver(signal("nobody"))
    assert await store.inbox("done") == []
    assert await store.inbox("nobody") == []


async def test_a_consumed_inbox_item_goes_in_the_saves_transaction(store: AnyStore) -> None:
    waiting = await create_waiting(store, "w")
    assert await store.deliver(signal("w", key="k", n=1))
    assert await store.deliver(signal("w", "later", n=2))
    first, later = await store.inbox("w")
    event = SignalReceived(at=T0 + 3, name="approve", payload=msgspec.Raw(b'{"n":1}'), key="k")
    received = transition(GATE, waiting, event).state

    stale = msgspec.structs.replace(received, seq=received.seq + 1)
    with pytest.raises(StaleStateError):
        await store.save(stale, event, consumed=first.id)
    assert await store.inbox("w") == [first, later]  # a refused save consumes nothing

    await store.save(received, event, consumed=first.id)
    assert await store.inbox("w") == [later]
    assert (await store.load("w")).state == received
    assert (await store.history("w"))[-1] == HistoryEntry(received.seq, event)


# -- corruption and a closed store --------------------------------------------------


async def test_corrupt_snapshot_raises_on_load_and_can_be_quarantined(
    store: AnyStore, backend: Backend
) -> None:
    for n, saga_id in enumerate(("a", "b", "c")):
        await store.create(*new_saga(saga_id, at=T0 + n))
    await backend.rows("UPDATE sagas SET snapshot = 'garbage' WHERE saga_id = 'a'")
    # A well-formed snapshot filed under the wrong saga is corrupt too.
    (c_snapshot,) = (await backend.rows("SELECT snapshot FROM sagas WHERE saga_id = 'c'"))[0]
    await backend.rows("UPDATE sagas SET snapshot = ? WHERE saga_id = 'b'", c_snapshot)
    for saga_id in ("a", "b"):
        with pytest.raises(CorruptSagaError) as caught:
            await store.load(saga_id)
        assert caught.value.saga_id == saga_id
    assert await store.quarantine_reason("a") is None
    await store.quarantine("a", "undecodable")
    assert await store.quarantine_reason("a") == "undecodable"
    assert await backend.rows("SELECT status, snapshot FROM sagas WHERE saga_id = 'a'") == [
        ("suspended", "garbage")  # kept as it is, for an operator
    ]
    assert [u.saga_id for u in await store.unfinished()] == ["b", "c"]
    with pytest.raises(SagaNotFound):
        await store.quarantine_reason("nope")


async def test_corrupt_row_found_by_create_raises_corrupt_saga_error(
    store: AnyStore, backend: Backend
) -> None:
    saga, started = new_saga("x")
    await store.create(saga, started)
    await backend.rows("UPDATE sagas SET snapshot = '{' WHERE saga_id = 'x'")
    with pytest.raises(CorruptSagaError):
        await store.create(saga, started)


async def test_closed_store_refuses_reads_and_writes(backend: Backend) -> None:
    store = backend.new_store()
    saga, event = new_saga("s")
    with pytest.raises(StoreClosedError):
        await store.create(saga, event)
    with pytest.raises(StoreClosedError):
        await store.load("s")
    async with store:
        await store.create(saga, event)
    calls = {
        "load": store.load("s"),
        "history": store.history("s"),
        "inbox": store.inbox("s"),
        "unfinished": store.unfinished(),
        "runnable": store.runnable(),
        "due": store.due(T0),
        "next_wake_at": store.next_wake_at(),
        "list_sagas": store.list_sagas(),
        "create": store.create(*new_saga("t")),
        "deliver": store.deliver(signal("s")),
        "quarantine": store.quarantine("s", "why"),
    }
    refused: dict[str, str] = {}
    for name, call in calls.items():
        try:
            await call
        except StoreClosedError:
            refused[name] = "StoreClosedError"
        except Exception as exc:
            refused[name] = type(exc).__name__
        else:
            refused[name] = "accepted"
    assert refused == dict.fromkeys(calls, "StoreClosedError")
    async with reopened(backend) as again:  # and nothing got through
        assert (await again.load("s")).state == saga.state
        assert await again.inbox("s") == []
        assert [row.saga_id for row in await again.list_sagas()] == ["s"]


async def test_closed_store_refuses_a_save(backend: Backend) -> None:
    saga, event = new_saga("s")
    async with backend.new_store() as store:
        await store.create(saga, event)
    with pytest.raises(StoreClosedError):
        await store.save(*step_succeeded(saga.state, 0))
    async with reopened(backend) as again:
        assert (await again.load("s")).state == saga.state
