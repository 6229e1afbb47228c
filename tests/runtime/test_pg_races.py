"""Races of the PostgreSQL store and the runtime on it, found in review, each pinned down.

A claim that overtakes its own queued hand-back; a runtime whose lease
lapsed claiming sagas; a lost notice or a stranded saga of the runtime's
own; two runtimes resuming one saga; a bad id in a shared write batch;
a sweep claiming sagas the runtime has no definition for.
Leases are lapsed by hand on the database's clock, never waited out.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import asyncpg
import pytest

from runtime import Runtime, SagaCompensated, SagaNotSuspendedError
from runtime._writes import Save
from runtime.postgres import PostgresStore
from runtime.postgres._writer import PgBatch, commit_batch
from saga import Saga, Step, StepContext, WaitForSignal
from saga.store import StoredSaga
from tests.runtime.test_store_contract import T0, new_saga, step_succeeded, suspend

WAIT = 5.0  # bound on anything a test waits for; every wait ends far sooner
LONG_LEASE = 60.0  # no renewal (every lease / 3) happens during a test: lapses are by hand
POLL = 0.2


@asynccontextmanager
async def raw(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection of our own, outside every store."""
    conn = await asyncpg.connect(dsn, server_settings={"search_path": "sagaloop"})
    try:
        yield conn
    finally:
        await conn.close()


async def execute(dsn: str, sql: str, *args: object) -> None:
    async with raw(dsn) as conn:
        await conn.execute(sql, *args)


async def owners(dsn: str) -> dict[str, tuple[str | None, int]]:
    async with raw(dsn) as conn:
        rows = await conn.fetch("SELECT saga_id, owner, epoch FROM sagas")
    return {row["saga_id"]: (row["owner"], row["epoch"]) for row in rows}


async def lapse(dsn: str, store: PostgresStore) -> None:
    """End `store`'s lease now, as if its process had paused past it."""
    await execute(
        dsn,
        "UPDATE runtimes SET lease_until = clock_timestamp() - interval '1 second' "
        "WHERE runtime_id = $1",
        store.runtime_id,
    )


async def barrier(store: PostgresStore, name: str) -> None:
    """A write of our own: once it is durable, every write queued before it is too."""
    assert await store.create(*new_saga(f"barrier-{name}")) is None


def pg_store(dsn: str, cls: type[PostgresStore] = PostgresStore) -> PostgresStore:
    return cls(dsn, lease=LONG_LEASE, poll_interval=POLL)


async def _ok(ctx: StepContext, _: Any) -> str:
    return "ok"


# -- 1. a claim waits for its own queued hand-back ------------------------------------


async def test_a_claim_right_after_a_release_is_not_undone_by_that_release(pg_dsn: str) -> None:
    async with PostgresStore(pg_dsn, lease=LONG_LEASE) as a:
        saga, started = new_saga("s")
        assert await a.create(saga, started) is None  # A holds epoch 1
        a.release("s")  # queued: fenced on epoch 1
        # Before the hand-back commits: were the claim to run first, it would keep epoch 1
        # (A is still the owner) and the hand-back would then clear the owner it just took.
        assert await a.claim("s")
        await barrier(a, "1")
        assert (await owners(pg_dsn))["s"] == (a.runtime_id, 2)  # claimed after the hand-back
        assert a.holds("s")
        await a.save(*step_succeeded(saga.state, 0))  # A's epoch is the row's: it writes
        assert (await a.load("s")).state.seq == 2


async def test_a_release_for_an_older_epoch_in_a_batch_changes_nothing(pg_dsn: str) -> None:
    # What the claim above relies on: a hand-back is fenced on the epoch it was queued with.
    async with PostgresStore(pg_dsn, lease=LONG_LEASE) as a:
        saga, started = new_saga("s")
        await a.create(saga, started)
        a.release("s")
        await barrier(a, "1")  # handed back: no race with the claim below
        assert await a.claim("s")  # epoch 2
        state, event = step_succeeded(saga.state, 0)
        # One transaction: a save at epoch 2 and a stale hand-back of epoch 1.
        batch = PgBatch(saves=[Save(state, event, None, 2)], releases=[("s", 1)])
        async with raw(pg_dsn) as conn:
            await commit_batch(conn, batch, a.runtime_id, a.schema)
        assert batch.saves[0].error is None
        assert (await owners(pg_dsn))["s"] == (a.runtime_id, 2)
        assert (await a.load("s")).state == state


# -- 2. a runtime whose own lease lapsed claims nothing ---------------------------------


async def test_a_runtime_whose_lease_lapsed_claims_nothing_until_renewed(pg_dsn: str) -> None:
    async with (
        PostgresStore(pg_dsn, lease=LONG_LEASE) as a,
        PostgresStore(pg_dsn, lease=LONG_LEASE) as c,
    ):
        for saga_id in ("o1", "o2"):
            assert await c.create(*new_saga(saga_id)) is None
        await lapse(pg_dsn, c)  # C's sagas are orphans with work
        await lapse(pg_dsn, a)  # and A, paused past its lease, must not take them
        assert await a.claim_orphans(T0, 10) == []
        assert await a.claim("o1") is False
        assert not a.holds("o1")
        assert await owners(pg_dsn) == {"o1": (c.runtime_id, 1), "o2": (c.runtime_id, 1)}

        await execute(  # A's lease renewed
            pg_dsn,
            "UPDATE runtimes SET lease_until = clock_timestamp() + interval '60 seconds' "
            "WHERE runtime_id = $1",
            a.runtime_id,
        )
        assert await a.claim("o1") is True
        assert [u.saga_id for u in await a.claim_orphans(T0, 10)] == ["o2"]
        assert await owners(pg_dsn) == {"o1": (a.runtime_id, 2), "o2": (a.runtime_id, 2)}


# -- 3. the sweep checks the runtime's own sagas ---------------------------------------


async def test_a_cancel_whose_notice_was_lost_reaches_the_owner_by_its_sweep(
    pg_dsn: str,
) -> None:
    reached, interrupted, release = anyio.Event(), anyio.Event(), anyio.Event()

    async def blocked(ctx: StepContext, _: Any) -> str:
        reached.set()
        try:
            await release.wait()
        except anyio.get_cancelled_exc_class():
            interrupted.set()
            raise
        return "never"

    async def undo(ctx: StepContext, _: Any, __: Any) -> None:
        return None

    saga = Saga("blocking", [Step("a", _ok, compensate=undo), Step("b", blocked)])
    async with Runtime(pg_store(pg_dsn), sagas=[saga]) as rt:
        handle = await rt.spawn(saga, None, saga_id="lost")
        with anyio.fail_after(WAIT):
            await reached.wait()
        # A cancel made durable without a notice (as when A's LISTEN connection was
        # down when it was sent): only A's sweep of its own sagas can find it.
        await execute(
            pg_dsn,
            "INSERT INTO inbox (saga_id, kind, name, payload, key, at) "
            "VALUES ('lost', 'cancel', 'notice lost', 'null', NULL, $1)",
            time.time(),
        )
        started = time.monotonic()
        with anyio.fail_after(POLL + 2.0):
            await interrupted.wait()
        took = time.monotonic() - started
        with pytest.raises(SagaCompensated) as caught:
            await handle.result(timeout=WAIT)
    assert caught.value.step == "b"
    assert caught.value.error is not None
    assert caught.value.error.type == "saga.Cancelled"
    assert caught.value.error.message == "notice lost"
    assert took < POLL + 2.0


async def test_a_saga_owned_by_a_runtime_without_an_actor_for_it_is_run_by_that_runtime(
    pg_dsn: str,
) -> None:
    ran = anyio.Event()

    async def work(ctx: StepContext, _: Any) -> str:
        ran.set()
        return "done"

    saga = Saga("stranded", [Step("work", work)])
    async with PostgresStore(pg_dsn, lease=LONG_LEASE) as c:
        async with Runtime(pg_store(pg_dsn), sagas=[saga]) as rt:
            store = rt.store
            assert isinstance(store, PostgresStore)
            stored, started = new_saga("x", saga=saga)
            assert await c.create(stored, started) is None  # C's, live: no orphan
            # A's, as after a claim or a create whose reply never reached A: runnable,
            # owned by a live runtime (so no orphan sweep takes it), no actor anywhere.
            await execute(
                pg_dsn, "UPDATE sagas SET owner = $1 WHERE saga_id = 'x'", store.runtime_id
            )
            with anyio.fail_after(POLL + 2.0):
                await ran.wait()
            assert await rt.handle("x").result(timeout=WAIT) == {"work": "done"}
        assert (await owners(pg_dsn))["x"] == (None, 1)  # A kept the epoch it was given


# -- 4. two runtimes resume one suspended saga ------------------------------------------


class LoadsInStep(PostgresStore):
    """Its first load of saga "r" waits until the other runtime's has returned too:
    both resumes then see it suspended before either writes (the racy interleaving)."""

    both_loaded: anyio.Event
    loaded: list[str]

    async def load(self, saga_id: str) -> StoredSaga:
        stored = await super().load(saga_id)
        if saga_id == "r" and self.runtime_id not in self.loaded:
            self.loaded.append(self.runtime_id)
            if len(self.loaded) == 2:
                self.both_loaded.set()
            with anyio.fail_after(WAIT):
                await self.both_loaded.wait()
        return stored


async def test_two_runtimes_resuming_one_saga_at_once_start_it_once(pg_dsn: str) -> None:
    calls: list[str] = []
    called, gate = anyio.Event(), anyio.Event()

    async def work(ctx: StepContext, _: Any) -> str:
        calls.append(ctx.saga_id)
        called.set()
        await gate.wait()
        return "done"

    saga = Saga("resumable", [Step("work", work)])
    async with PostgresStore(pg_dsn, lease=LONG_LEASE) as c:
        stored, started = new_saga("r", saga=saga)
        await c.create(stored, started)
        await suspend(c, saga, stored.state)  # its first step was in flight

    both_loaded, loaded = anyio.Event(), list[str]()
    stores = [pg_store(pg_dsn, LoadsInStep) for _ in range(2)]
    for store in stores:
        assert isinstance(store, LoadsInStep)
        store.both_loaded, store.loaded = both_loaded, loaded
    outcome: dict[int, str] = {}
    async with (
        Runtime(stores[0], sagas=[saga]) as rt_a,
        Runtime(stores[1], sagas=[saga]) as rt_b,
    ):
        runtimes = [rt_a, rt_b]

        async def resume(n: int) -> None:
            try:
                await runtimes[n].resume("r")
                outcome[n] = "resumed"
            except SagaNotSuspendedError:
                outcome[n] = "refused"

        with anyio.fail_after(WAIT):
            async with anyio.create_task_group() as tg:
                for n in range(2):
                    tg.start_soon(resume, n)
            assert sorted(outcome.values()) == ["refused", "resumed"]
            await called.wait()
        # The refused one started no actor: one step run in flight, on the winner.
        assert rt_a.live_actors + rt_b.live_actors == 1
        winner = runtimes[next(n for n, what in outcome.items() if what == "resumed")]
        gate.set()
        assert await winner.handle("r").result(timeout=WAIT) == {"work": "done"}
    assert calls == ["r"]


# -- 5. a bad id or key fails its own call, not the batch it would have joined ---------------


async def test_a_bad_saga_id_or_key_is_refused_at_once_and_poisons_no_batch(
    pg_dsn: str,
) -> None:
    waits = Saga("waits", [WaitForSignal("go"), Step("after", _ok)])
    quick = Saga("quick", [Step("only", _ok)])
    too_long = "k" * 2048
    async with Runtime(pg_store(pg_dsn), sagas=[quick, waits]) as rt:
        refused: list[str] = []

        async def bad(saga_id: str) -> None:
            with pytest.raises(ValueError, match="saga_id"):
                await rt.spawn(quick, None, saga_id=saga_id)
            refused.append(saga_id)

        async def good(n: int) -> None:
            await rt.spawn(quick, None, saga_id=f"ok-{n:02d}")

        # All at once: on a store that took the bad ones, they would share the
        # good ones' batch (one transaction) and fail it.
        with anyio.fail_after(WAIT):
            async with anyio.create_task_group() as tg:
                for n in range(50):
                    tg.start_soon(good, n)
                    if n == 25:
                        tg.start_soon(bad, "a\x00b")
                        tg.start_soon(bad, too_long)
        assert sorted(refused) == sorted(["a\x00b", too_long])
        for n in range(50):
            assert await rt.handle(f"ok-{n:02d}").result(timeout=WAIT) == {"only": "ok"}
        assert len((await rt.list(limit=1000)).items) == 50

        await rt.spawn(waits, None, saga_id="w")
        with pytest.raises(ValueError, match="idempotency_key"):
            await rt.signal("w", "go", idempotency_key=too_long)
        assert await rt.signal("w", "go", idempotency_key="fine")
        assert await rt.handle("w").result(timeout=WAIT) == {"go": None, "after": "ok"}


# -- 6. a runtime claims only the sagas it knows ----------------------------------------------


async def test_a_runtime_never_claims_an_orphan_of_a_saga_it_does_not_know(pg_dsn: str) -> None:
    known = Saga("x", [Step("only", _ok)])
    unknown = Saga("y", [Step("only", _ok)])
    async with PostgresStore(pg_dsn, lease=LONG_LEASE) as c:
        for saga_id, saga in (("x1", known), ("y1", unknown), ("y2", unknown)):
            assert await c.create(*new_saga(saga_id, saga=saga)) is None
    # C left cleanly: all three are orphans with work, owner NULL, epoch 1.

    async with PostgresStore(pg_dsn, lease=LONG_LEASE) as a:  # the store's own filter
        a.saga_names = frozenset({"x"})
        assert [u.saga_id for u in await a.claim_orphans(T0, 10)] == ["x1"]
        assert await a.claim_orphans(T0, 10) == []
    assert await owners(pg_dsn) == {"x1": (None, 2), "y1": (None, 1), "y2": (None, 1)}

    async with Runtime(pg_store(pg_dsn), sagas=[known]) as rt:
        # x1 is run (the same sweep would have claimed y1, y2 had it looked at them).
        assert await rt.handle("x1").result(timeout=WAIT) == {"only": "ok"}
    table = await owners(pg_dsn)
    assert table["y1"] == (None, 1)  # never claimed (a claim bumps the epoch)
    assert table["y2"] == (None, 1)
