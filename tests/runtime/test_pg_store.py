"""What only `PostgresStore` does: several runtimes on one database.

Migrations under concurrent opens, leases and epoch fencing, claiming
(one saga, orphans, SKIP LOCKED), hand-backs, NOTIFY wake-ups and schemas.
Leases are lapsed by hand on the database's clock, never waited out.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
import asyncpg
import msgspec
import pytest

from runtime import Runtime, SchemaVersionError, StoreError
from runtime.postgres import PostgresStore
from runtime.postgres._connections import borrowed, retryable
from runtime.postgres._schema import SCHEMA_VERSION
from saga import Saga, Step, StepContext
from saga.engine import Resumed, transition
from saga.store import InboxItem, LeaseLostError, Notice, StaleStateError, UnfinishedSaga
from tests.runtime.test_store_contract import (
    GATE,
    PAIR,
    T0,
    create_waiting,
    new_saga,
    signal,
    step_succeeded,
    suspend,
)

WAIT = 5.0  # bound on anything a test waits for; every wait ends far sooner
LONG_LEASE = 60.0  # no renewal (every lease / 3) happens during a test: lapses are by hand


@asynccontextmanager
async def raw(dsn: str, schema: str = "sagaloop") -> AsyncIterator[asyncpg.Connection]:
    """A connection of our own, outside every store."""
    conn = await asyncpg.connect(dsn, server_settings={"search_path": schema})
    try:
        yield conn
    finally:
        await conn.close()


async def rows(dsn: str, sql: str, *args: object) -> list[tuple[Any, ...]]:
    async with raw(dsn) as conn:
        return [tuple(row) for row in await conn.fetch(sql, *args)]


async def lapse(dsn: str, store: PostgresStore) -> None:
    """End `store`'s lease now, as if its process had paused past it."""
    async with raw(dsn) as conn:
        await conn.execute(
            "UPDATE runtimes SET lease_until = clock_timestamp() - interval '1 second' "
            "WHERE runtime_id = $1",
            store.runtime_id,
        )


async def owners(dsn: str) -> dict[str, tuple[str | None, int]]:
    return {
        saga_id: (owner, epoch)
        for saga_id, owner, epoch in await rows(dsn, "SELECT saga_id, owner, epoch FROM sagas")
    }


async def barrier(store: PostgresStore, name: str) -> None:
    """A write of our own: once it is durable, every write queued before it is too."""
    assert await store.create(*new_saga(f"barrier-{name}")) is None


class Notices:
    """A store's notice handler that keeps what it heard."""

    def __init__(self) -> None:
        self.seen: list[Notice] = []
        self._changed = anyio.Event()

    def __call__(self, notice: Notice) -> None:
        self.seen.append(notice)
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_until(self, predicate: Callable[[list[Notice]], bool]) -> None:
        with anyio.fail_after(WAIT):
            while not predicate(self.seen):
                await self._changed.wait()

    async def listening(self) -> None:
        """The store sends Notice(None) once its LISTEN connection is up."""
        await self.wait_until(lambda seen: Notice(None) in seen)


# -- migrations ----------------------------------------------------------------------


async def test_stores_opening_at_once_on_a_fresh_database_migrate_it_once(pg_dsn: str) -> None:
    stores = [PostgresStore(pg_dsn, name=f"rt-{n}") for n in range(5)]
    async with AsyncExitStack() as stack:
        async with anyio.create_task_group() as tg:
            for store in stores:
                tg.start_soon(stack.enter_async_context, store)
        applied = await rows(pg_dsn, "SELECT version FROM schema_version ORDER BY version")
        assert applied == [(version,) for version in range(1, SCHEMA_VERSION + 1)]  # each once
        assert len(await rows(pg_dsn, "SELECT runtime_id FROM runtimes")) == 5
        for n, store in enumerate(stores):
            assert await store.create(*new_saga(f"s{n}")) is None
        for store in stores:  # each sees what every other one wrote
            assert [row.saga_id for row in await store.list_sagas()] == [f"s{n}" for n in range(5)]


async def test_a_newer_schema_version_is_refused(pg_dsn: str) -> None:
    async with PostgresStore(pg_dsn):
        pass
    async with raw(pg_dsn) as conn:
        await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", SCHEMA_VERSION + 1)
    with pytest.raises(SchemaVersionError, match=str(SCHEMA_VERSION + 1)):
        async with PostgresStore(pg_dsn):
            pass
    assert await rows(pg_dsn, "SELECT * FROM runtimes") == []  # the refused one never joined


# -- leases and fencing --------------------------------------------------------------


async def test_a_runtime_whose_lease_lapsed_is_fenced_off_by_the_one_that_claimed(
    pg_dsn: str,
) -> None:
    async with (
        PostgresStore(pg_dsn, lease=LONG_LEASE) as a,
        PostgresStore(pg_dsn, lease=LONG_LEASE) as b,
    ):
        saga, started = new_saga("s")
        assert await a.create(saga, started) is None
        assert a.holds("s")
        assert not await b.claim("s")  # A's lease is live
        assert not b.holds("s")

        await lapse(pg_dsn, a)
        assert await b.claim("s")
        assert (await owners(pg_dsn))["s"] == (b.runtime_id, 2)

        state, event = step_succeeded(saga.state, 0)
        with pytest.raises(LeaseLostError):
            await a.save(state, event)
        assert not a.holds("s")
        assert (await b.load("s")).state == saga.state  # A wrote nothing
        assert len(await b.history("s")) == 1

        await b.save(state, event)
        assert (await a.load("s")).state == state
        assert not await a.claim("s")  # B's lease is live now
        with pytest.raises(LeaseLostError):
            await a.save(*step_succeeded(state, 1))
        assert (await owners(pg_dsn))["s"] == (b.runtime_id, 2)


async def test_a_suspended_saga_can_be_claimed_from_any_owner_an_ended_one_by_none(
    pg_dsn: str,
) -> None:
    async with (
        PostgresStore(pg_dsn, lease=LONG_LEASE) as a,
        PostgresStore(pg_dsn, lease=LONG_LEASE) as b,
    ):
        saga, started = new_saga("parked")
        await a.create(saga, started)
        suspended = await suspend(a, PAIR, saga.state)
        assert (await owners(pg_dsn))["parked"] == (None, 1)  # suspending hands it back
        assert not a.holds("parked")

        # Even a suspended row that still names a live owner is an operator's to take.
        async with raw(pg_dsn) as conn:
            await conn.execute("UPDATE sagas SET owner = $1 WHERE saga_id = 'parked'", a.runtime_id)
        assert await b.claim("parked")
        assert (await owners(pg_dsn))["parked"] == (b.runtime_id, 2)
        event = Resumed(at=T0 + 50)
        resumed = transition(PAIR, suspended, event).state
        await b.save(resumed, event)
        assert (await b.load("parked")).state == resumed

        done, started = new_saga("done")
        await a.create(done, started)
        state = done.state
        for step in (0, 1):
            state, event_ = step_succeeded(state, step)
            await a.save(state, event_)
        assert not await b.claim("done")
        assert not await a.claim("done")
        assert not await b.claim("nobody")


async def test_release_hands_a_saga_back_only_with_the_epoch_held(pg_dsn: str) -> None:
    async with (
        PostgresStore(pg_dsn, lease=LONG_LEASE) as a,
        PostgresStore(pg_dsn, lease=LONG_LEASE) as b,
    ):
        for saga_id in ("kept", "given"):
            await a.create(*new_saga(saga_id))
        a.release("given")
        assert not a.holds("given")
        await barrier(a, "1")
        assert (await owners(pg_dsn))["given"] == (None, 1)
        assert (await owners(pg_dsn))["kept"] == (a.runtime_id, 1)

        await lapse(pg_dsn, a)
        assert await b.claim("kept")  # epoch 2; A still thinks it holds epoch 1
        a.release("kept")
        await barrier(a, "2")
        assert (await owners(pg_dsn))["kept"] == (b.runtime_id, 2)  # a stale release is a no-op

        b.release("kept")
        await barrier(b, "3")
        assert (await owners(pg_dsn))["kept"] == (None, 2)
        b.release("kept")  # not held any more: nothing to do
        assert not b.holds("kept")


# -- claiming orphans ----------------------------------------------------------------


async def test_claim_orphans_takes_sagas_with_work_and_no_live_owner(pg_dsn: str) -> None:
    async with (
        PostgresStore(pg_dsn, lease=LONG_LEASE) as a,
        PostgresStore(pg_dsn, lease=LONG_LEASE) as b,
        PostgresStore(pg_dsn, lease=LONG_LEASE) as c,
    ):
        for owner, prefix in ((a, "a"), (c, "c")):
            await owner.create(*new_saga(f"{prefix}-in-flight"))
            await create_waiting(owner, f"{prefix}-due", until=T0 + 10)
            await create_waiting(owner, f"{prefix}-inbox")
            assert await owner.deliver(signal(f"{prefix}-inbox"))
            await create_waiting(owner, f"{prefix}-later", until=T0 + 1000)
            await create_waiting(owner, f"{prefix}-idle")
        parked = await create_waiting(a, "a-parked-with-mail")
        assert await a.deliver(signal("a-parked-with-mail"))
        await suspend(a, GATE, parked)

        await lapse(pg_dsn, a)  # A's sagas are orphans now; C is alive and keeps its own
        claimed = await b.claim_orphans(T0 + 100, 100)
        assert {(u.saga_id, u.saga_name) for u in claimed} == {
            ("a-in-flight", "pair"),
            ("a-due", "gate"),
            ("a-inbox", "gate"),
        }
        assert all(b.holds(u.saga_id) for u in claimed)
        table = await owners(pg_dsn)
        assert {saga_id for saga_id, (owner, _) in table.items() if owner == b.runtime_id} == {
            u.saga_id for u in claimed
        }
        assert all(table[u.saga_id][1] == 2 for u in claimed)
        assert all(owner == c.runtime_id for s, (owner, _) in table.items() if s[0] == "c")
        assert await b.claim_orphans(T0 + 100, 100) == []  # B owns them now, alive
        assert await c.claim_orphans(T0 + 100, 100) == []


async def test_claim_orphans_skips_rows_locked_by_another_claimer(pg_dsn: str) -> None:
    async with PostgresStore(pg_dsn, lease=LONG_LEASE) as a:
        for saga_id in ("x", "y", "z"):
            await a.create(*new_saga(saga_id))
    async with raw(pg_dsn) as locker, PostgresStore(pg_dsn, lease=LONG_LEASE) as b:
        async with locker.transaction():
            await locker.execute("SELECT 1 FROM sagas WHERE saga_id = 'y' FOR UPDATE")
            with anyio.fail_after(WAIT):  # does not wait for the lock
                claimed = await b.claim_orphans(T0, 10)
            assert sorted(u.saga_id for u in claimed) == ["x", "z"]
        assert [u.saga_id for u in await b.claim_orphans(T0, 10)] == ["y"]
        assert await b.claim_orphans(T0, 10) == []


async def test_concurrent_sweeps_never_claim_the_same_saga(pg_dsn: str) -> None:
    ids = [f"s{n:03}" for n in range(120)]
    async with PostgresStore(pg_dsn) as a, anyio.create_task_group() as tg:
        for saga_id in ids:
            tg.start_soon(a.create, *new_saga(saga_id))
    # A left cleanly: every saga is an orphan with work (its first step in flight).
    claims: dict[str, list[str]] = {}
    async with AsyncExitStack() as stack:
        sweepers = [
            await stack.enter_async_context(PostgresStore(pg_dsn, lease=LONG_LEASE))
            for _ in range(4)
        ]

        async def sweep(store: PostgresStore) -> None:
            got = claims[store.runtime_id] = []
            while True:
                page: list[UnfinishedSaga] = list(await store.claim_orphans(T0, 7))
                got.extend(u.saga_id for u in page)
                if not page:
                    return

        async with anyio.create_task_group() as tg:
            for store in sweepers:
                tg.start_soon(sweep, store)

        # Every first sweep was in flight at once (there are 120 sagas): all took part.
        assert all(len(got) >= 7 for got in claims.values())
        every = [saga_id for got in claims.values() for saga_id in got]
        assert sorted(every) == ids  # each claimed once, by one sweeper
        table = await owners(pg_dsn)
        for runtime_id, got in claims.items():
            assert all(table[saga_id] == (runtime_id, 2) for saga_id in got)


# -- notices -------------------------------------------------------------------------


async def test_a_delivery_to_a_saga_owned_elsewhere_notifies_its_owner(pg_dsn: str) -> None:
    heard = Notices()
    a = PostgresStore(pg_dsn, lease=LONG_LEASE)
    a.on_notice(heard)
    async with a, PostgresStore(pg_dsn, lease=LONG_LEASE) as b:
        await heard.listening()
        await create_waiting(a, "mine")
        await create_waiting(a, "other")

        def saga_notices(seen: list[Notice]) -> list[Notice]:
            return [n for n in seen if n.saga_id is not None]  # not the sweep requests

        assert await a.deliver(signal("other"))  # A's own delivery: nobody to tell
        assert await b.deliver(signal("mine", n=1))
        await heard.wait_until(lambda seen: len(saga_notices(seen)) >= 1)
        assert saga_notices(heard.seen) == [Notice("mine", cancel=False)]

        await b.deliver(InboxItem(0, "mine", "cancel", "stop", at=T0 + 2))
        await heard.wait_until(lambda seen: len(saga_notices(seen)) >= 2)
        assert saga_notices(heard.seen) == [Notice("mine"), Notice("mine", cancel=True)]
        assert [i.kind for i in await a.inbox("mine")] == ["signal", "cancel"]


async def test_a_clean_close_hands_every_saga_back_and_tells_the_others(pg_dsn: str) -> None:
    heard = Notices()
    b = PostgresStore(pg_dsn, lease=LONG_LEASE)
    b.on_notice(heard)
    async with b:
        await heard.listening()
        before = len(heard.seen)
        async with PostgresStore(pg_dsn, lease=LONG_LEASE) as a:
            await a.create(*new_saga("in-flight"))
            await create_waiting(a, "waiting", until=T0 + 5)
            assert {owner for owner, _ in (await owners(pg_dsn)).values()} == {a.runtime_id}
        await heard.wait_until(lambda seen: Notice(None) in seen[before:])
        assert {owner for owner, _ in (await owners(pg_dsn)).values()} == {None}
        assert await rows(pg_dsn, "SELECT runtime_id FROM runtimes") == [(b.runtime_id,)]
        # No lease to wait out: B takes them at once.
        claimed = await b.claim_orphans(T0 + 10, 10)
        assert sorted(u.saga_id for u in claimed) == ["in-flight", "waiting"]


# -- schemas -------------------------------------------------------------------------


async def test_two_schemas_in_one_database_are_two_separate_stores(pg_dsn: str) -> None:
    async with (
        PostgresStore(pg_dsn, schema="one", lease=LONG_LEASE) as one,
        PostgresStore(pg_dsn, schema="two", lease=LONG_LEASE) as two,
    ):
        first, started = new_saga("x", b'{"in":"one"}')
        assert await one.create(first, started) is None
        second, started = new_saga("x", b'{"in":"two"}')
        assert await two.create(second, started) is None  # no clash with one's "x"
        assert (await one.load("x")).input == b'{"in":"one"}'
        assert (await two.load("x")).input == b'{"in":"two"}'
        await one.save(*step_succeeded(first.state, 0))
        assert (await two.load("x")).state == second.state
        assert [r.saga_id for r in await two.list_sagas()] == ["x"]
        async with raw(pg_dsn, "public") as conn:
            schemas = await conn.fetch(
                "SELECT table_schema, count(*) FROM information_schema.tables "
                "WHERE table_name IN ('sagas', 'history', 'inbox', 'runtimes', 'schema_version') "
                "GROUP BY table_schema ORDER BY table_schema"
            )
        assert [tuple(r) for r in schemas] == [("one", 5), ("two", 5)]
    with pytest.raises(ValueError, match="schema"):
        PostgresStore(pg_dsn, schema="one; DROP TABLE sagas")


async def test_a_stale_save_on_a_held_saga_is_not_a_lost_lease(pg_dsn: str) -> None:
    async with PostgresStore(pg_dsn, lease=LONG_LEASE) as a:
        saga, started = new_saga("s")
        await a.create(saga, started)
        state, event = step_succeeded(saga.state, 0)
        ahead = msgspec.structs.replace(state, seq=state.seq + 1)
        with pytest.raises(StaleStateError) as caught:
            await a.save(ahead, event)
        assert not isinstance(caught.value, LeaseLostError)
        assert a.holds("s")  # still ours: the right write goes through
        await a.save(state, event)


async def test_sagas_spawned_for_a_pool_run_once_on_whichever_runtime_claims_them(
    pg_dsn: str,
) -> None:
    ran: dict[str, list[str]] = {}

    def pooled(who: str) -> Saga:
        async def work(ctx: StepContext, n: int) -> int:
            ran.setdefault(ctx.saga_id, []).append(who)
            return n

        return Saga("pooled", [Step("work", work)], input_type=int)

    # A long poll: only the notice sent with the new sagas explains a prompt claim.
    spawner = PostgresStore(pg_dsn, run_spawned_here=False, poll_interval=30, name="spawner")
    worker = PostgresStore(pg_dsn, poll_interval=30, name="worker")
    async with (
        Runtime(spawner, sagas=[pooled("spawner")]) as front,
        Runtime(worker, sagas=[pooled("worker")]),
    ):
        handles = [await front.spawn("pooled", n, saga_id=f"p{n:02d}") for n in range(40)]
        with anyio.fail_after(10):
            outputs = [await handle.result() for handle in handles]
        assert outputs == [{"work": n} for n in range(40)]
        epochs = await _pg_rows(pg_dsn, "SELECT saga_id, epoch FROM sagaloop.sagas")
    assert sorted(ran) == [f"p{n:02d}" for n in range(40)]
    assert all(len(runners) == 1 for runners in ran.values()), ran
    # Created at epoch 1 owned by nobody, then claimed once (a saga kept by its
    # spawner would still be at epoch 1).
    assert {epoch for _, epoch in epochs} == {2}


async def _pg_rows(dsn: str, sql: str) -> list[Any]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(sql))
    finally:
        await conn.close()


async def test_a_delegating_store_refuses_a_shared_store(pg_dsn: str) -> None:
    from runtime import DelegatingStore

    with pytest.raises(TypeError, match="cannot wrap a shared store"):
        DelegatingStore(PostgresStore(pg_dsn))


async def test_a_reserved_word_is_a_usable_schema_name(pg_dsn: str) -> None:
    saga, started = new_saga("s")
    async with PostgresStore(pg_dsn, schema="user") as store:
        assert await store.create(saga, started) is None
        assert (await store.load("s")).state == saga.state


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"lease": 0}, "lease and poll_interval must be positive"),
        ({"poll_interval": -1}, "lease and poll_interval must be positive"),
        ({"pool_size": 1}, "pool_size must be at least 2"),
        ({"schema": "Bad-Name"}, "schema must be a lowercase identifier"),
    ],
)
def test_bad_store_options_are_refused_at_once(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PostgresStore("postgresql://nobody@127.0.0.1:1/none", **options)


async def test_an_unreachable_server_is_a_store_error_that_hides_the_password() -> None:
    saga = Saga("s", [Step("one", _echo)])
    with pytest.raises(StoreError, match="cannot open PostgreSQL") as caught:
        async with Runtime("postgresql://app:s3cret@127.0.0.1:1/orders", sagas=[saga]):
            pass
    assert "s3cret" not in str(caught.value)
    assert "app:***@127.0.0.1:1/orders" in str(caught.value)


async def _echo(ctx: StepContext, value: Any) -> Any:
    return value


async def test_a_wake_at_edited_to_no_time_is_reported_not_swept(pg_dsn: str) -> None:
    async with PostgresStore(pg_dsn, lease=LONG_LEASE) as store:
        for saga_id in ("nan", "inf", "fine"):
            saga, started = new_saga(saga_id)
            await store.create(saga, started)
        async with raw(pg_dsn) as conn:
            await conn.execute("UPDATE sagas SET wake_at = 'NaN' WHERE saga_id = 'nan'")
            await conn.execute("UPDATE sagas SET wake_at = '-Infinity' WHERE saga_id = 'inf'")
        assert sorted(await store.unreadable_wake_ups()) == [
            ("inf", "its wake_at column holds -Infinity, not a time"),
            ("nan", "its wake_at column holds NaN, not a time"),
        ]


async def test_a_connection_asyncpg_left_mid_protocol_is_closed_not_pooled_again(
    pg_dsn: str,
) -> None:
    # After a server restart asyncpg can hand out a connection whose protocol still waits
    # for a reply (MagicStack/asyncpg#1069); every statement on it then raises this.
    pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=1)
    try:
        async with borrowed(pool) as conn:
            stuck_pid = conn.get_server_pid()

        async def hit_the_stuck_protocol() -> None:
            async with borrowed(pool) as conn:
                assert conn.get_server_pid() == stuck_pid  # the pool's only connection
                raise asyncpg.InternalClientError("cannot switch to state 12")

        with pytest.raises(asyncpg.InternalClientError):
            await hit_the_stuck_protocol()
        async with borrowed(pool) as conn:
            assert conn.get_server_pid() != stuck_pid  # a new session, not the stuck one
            assert await conn.fetchval("SELECT 1") == 1
    finally:
        await pool.close()
    assert retryable(asyncpg.InternalClientError("cannot switch to state 12"))
