"""`PostgresStore`: one PostgreSQL database shared by several runtimes.

The database does all the coordination; runtimes never talk to each other.

- Ownership: each runtime has a row in `runtimes` with a lease on the
  database's clock, renewed in the background. A live saga belongs to the
  runtime that created or claimed it; claiming bumps the saga's epoch, and
  every transition is written only if the epoch still matches (fencing).
- Claiming: runtimes sweep for sagas with work and no live owner (their
  owner's lease lapsed, or it handed them back) with `FOR UPDATE SKIP
  LOCKED`, so two sweeps never take the same saga.
- Wake-ups: a signal or cancellation for a saga owned elsewhere sends its
  owner a `NOTIFY` in the transaction that makes it durable; sweeps every
  `poll_interval` are the fallback for a lost notice.
- Writes: group commit, as on SQLite (`_writer`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import Self, TypeVar

import asyncpg

from saga import SagaNotFound, StoreError
from saga.engine import Event
from saga.store import (
    DueSaga,
    HistoryEntry,
    InboxItem,
    LeaseLostError,
    Notice,
    SagaRow,
    SagaState,
    StoredSaga,
    UnfinishedSaga,
)

from .._codec import decode_event, unseal
from .._errors import SagaPrunedError, StoreClosedError
from .._info import not_a_time
from .._listing import listing_query
from .._migrations import migrations_to_apply
from .._retention import PAGE, Cursor, Prune
from .._writes import Create, Deliver, Save, stored_saga
from ..codecs import PayloadCodec
from ._connections import (
    CONNECTION_TROUBLE,
    Connection,
    borrowed,
    new_runtime_id,
    redacted,
    retryable,
)
from ._ownership import OWNER_IS_GONE, Ownership
from ._pruning import COUNT_PRUNABLE, prune_page
from ._schema import (
    LIVE,
    MIGRATION_LOCK_KEY,
    MIGRATIONS,
    check_schema_name,
)
from ._writer import PgBatch, commit_batch

logger = logging.getLogger("runtime.postgres")

_T = TypeVar("_T")

_WRITERS = 3
"""Batches committing at once (each on its own pooled connection)."""


class PostgresStore(Ownership):
    """A `SharedStore` on PostgreSQL (`pip install 'sagaloop[postgres]'`).

    `dsn` is a `postgresql://` URL. `schema` is the PostgreSQL schema that
    holds Sagaloop's tables (created if missing). `lease` is how long, in
    seconds of the database's clock, a runtime keeps its sagas without
    renewing its lease (renewed every `lease / 3`); a runtime that dies has
    its sagas taken over within about `lease + poll_interval`.
    `poll_interval` is the period of the sweep for orphaned and due sagas
    (notices make most wake-ups immediate). `pool_size` bounds the
    connections this runtime opens (plus one for notices).
    `reconnect_timeout` is how long reads and writes wait for a lost
    server (a restart, a failover) before they fail with `StoreError`:
    sagas pause meanwhile instead of crashing. `run_spawned_here=False`
    makes the sagas this runtime spawns nobody's at first: every runtime is
    told, and whichever claims one first runs it (a pool of workers behind
    the runtimes that spawn).
    """

    def __init__(
        self,
        dsn: str,
        *,
        schema: str = "sagaloop",
        lease: float = 5.0,
        poll_interval: float = 1.0,
        pool_size: int = 8,
        reconnect_timeout: float = 30.0,
        run_spawned_here: bool = True,
        name: str | None = None,
        codec: PayloadCodec | None = None,
    ) -> None:
        if lease <= 0 or poll_interval <= 0:
            raise ValueError("lease and poll_interval must be positive")
        if pool_size < 2:
            raise ValueError("pool_size must be at least 2")
        self.dsn = dsn
        self.schema = check_schema_name(schema)
        self.lease = lease
        self._poll_interval = poll_interval
        self._pool_size = pool_size
        self.reconnect_timeout = reconnect_timeout
        self._run_spawned_here = run_spawned_here
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self._runtime_id = new_runtime_id()
        self._pool: asyncpg.Pool | None = None
        self._epochs: dict[str, int] = {}
        # Sagas whose hand-back is queued or committing, and the batch that carries it.
        self._releasing: dict[str, PgBatch] = {}
        self.saga_names: frozenset[str] | None = None
        self.saga_versions: frozenset[tuple[str, int]] | None = None
        """The sagas the runtime has definitions for: it claims no others (None: any)."""
        self._notice_handler: Callable[[Notice], None] | None = None
        self._batch = PgBatch()
        self._has_work = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self.batches_committed = 0
        self.lease_lapses = 0
        self.codec = codec
        """Seals every user value at rest (`runtime.codecs`); set before entering."""

    # -- SharedStore properties -------------------------------------------

    @property
    def runtime_id(self) -> str:
        return self._runtime_id

    @property
    def poll_interval(self) -> float:
        return self._poll_interval

    @property
    def run_spawned_here(self) -> bool:
        return self._run_spawned_here

    # -- lifecycle ---------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._closing = False
        # A new id at each opening: a store reopened after an unclean close is a new runtime.
        self._runtime_id = new_runtime_id()
        self._epochs.clear()
        try:
            self._pool = await asyncpg.create_pool(
                self.dsn,
                min_size=2,
                max_size=self._pool_size,
                server_settings={
                    "search_path": f'"{self.schema}"',
                    "application_name": "sagaloop",
                    # A runtime paused inside a write (SIGSTOP, a VM freeze) would keep the
                    # rows it locked from being claimed for as long as it is paused: the
                    # server ends such a transaction once a lease has gone by.
                    "idle_in_transaction_session_timeout": str(max(1000, int(self.lease * 1000))),
                },
            )
            async with borrowed(self._pool) as conn:
                await self._migrate(conn)
                await self._join(conn)
        except CONNECTION_TROUBLE as exc:
            await self._close_pool()
            raise StoreError(f"cannot open PostgreSQL at {redacted(self.dsn)}: {exc}") from exc
        except BaseException:
            await self._close_pool()
            raise
        loop_tasks = (
            (self._write_loop, "writer"),
            (self._renew_loop, "lease"),
            (self._listen_loop, "notices"),
        )
        for target, label in loop_tasks:
            self._tasks.append(asyncio.create_task(target(), name=f"sagaloop-pg-{label}"))
        logger.info("runtime %s (%s) joined %s", self._runtime_id, self.name, self.schema)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._closing = True
        self._has_work.set()  # the writer flushes what is queued, then stops
        writer, *others = self._tasks
        self._tasks = []
        try:
            with contextlib.suppress(Exception):
                await asyncio.shield(writer)
            for task in others:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)
            await self._hand_back()
        finally:
            await self._close_pool()

    async def _close_pool(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), timeout=5)
            except (TimeoutError, OSError, asyncpg.PostgresError):
                pool.terminate()

    async def _migrate(self, conn: Connection) -> None:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_KEY)
            exists = await conn.fetchval(
                "SELECT 1 FROM pg_namespace WHERE nspname = $1", self.schema
            )
            if not exists:  # CREATE SCHEMA needs a privilege that using one does not
                await conn.execute(f'CREATE SCHEMA "{self.schema}"')
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL)"
            )
            current = await conn.fetchval("SELECT max(version) FROM schema_version") or 0
            for version, statements in migrations_to_apply(
                current, MIGRATIONS, f"schema {self.schema}"
            ):
                for statement in statements:
                    await conn.execute(statement)
                await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", version)

    def _open_pool(self, *, closing_ok: bool = False) -> asyncpg.Pool:
        """The pool, or `StoreClosedError`; `closing_ok`: the writer flushes while closing."""
        if self._pool is None or (self._closing and not closing_ok):
            raise StoreClosedError(f"PostgreSQL store ({self.schema}) is not open")
        return self._pool

    # -- writes: group commit ----------------------------------------------

    def _enqueue(self) -> PgBatch:
        self._open_pool()
        self._has_work.set()
        return self._batch

    async def _wait(self, batch: PgBatch) -> None:
        await batch.done.wait()
        if batch.failure is not None:
            raise StoreError(f"write to PostgreSQL failed: {batch.failure}") from batch.failure

    async def create(self, saga: StoredSaga, event: Event) -> StoredSaga | None:
        op = Create(saga, event)
        batch = self._enqueue()
        batch.creates.append(op)
        await self._wait(batch)
        if op.error is not None:
            raise op.error
        if op.existing is None and self._run_spawned_here:
            self._epochs[saga.saga_id] = 1
        return op.existing

    async def save(
        self,
        state: SagaState,
        event: Event,
        *,
        consumed: int | None = None,
        deliver: InboxItem | None = None,
    ) -> None:
        self._open_pool()
        epoch = self._epochs.get(state.saga_id)
        if epoch is None:
            if not await self._fetch("SELECT 1 FROM sagas WHERE saga_id = $1", state.saga_id):
                raise SagaNotFound(state.saga_id)
            raise LeaseLostError(f"saga {state.saga_id!r} is not held by this runtime")
        op = Save(state, event, consumed, epoch, deliver=deliver)
        batch = self._enqueue()
        batch.saves.append(op)
        await self._wait(batch)
        if op.error is not None:
            if isinstance(op.error, LeaseLostError) and self._epochs.get(state.saga_id) == epoch:
                del self._epochs[state.saga_id]
            raise op.error
        if not state.status.is_live and self._epochs.get(state.saga_id) == epoch:
            del self._epochs[state.saga_id]  # ended or suspended: the row has no owner now

    async def deliver(self, item: InboxItem) -> bool:
        op = Deliver(item)
        batch = self._enqueue()
        batch.deliveries.append(op)
        await self._wait(batch)
        if op.error is not None:
            raise op.error
        return op.accepted

    async def quarantine(self, saga_id: str, reason: str) -> None:
        self._open_pool()
        epoch = self._epochs.get(saga_id)
        if epoch is None:
            # Fenced like any write: a runtime that does not hold the saga leaves it alone.
            logger.warning("saga %r not quarantined: this runtime does not hold it", saga_id)
            return
        batch = self._enqueue()
        batch.quarantines.append((saga_id, reason, epoch))
        await self._wait(batch)
        self._epochs.pop(saga_id, None)

    async def _write_loop(self) -> None:
        # Batches of different sagas are independent (each saga awaits its own
        # write before the next), so a few commit at once: one commits while
        # the next fills up, hiding the round trips.
        slots = asyncio.Semaphore(_WRITERS)
        running: set[asyncio.Task[None]] = set()
        try:
            while True:
                await self._has_work.wait()
                await slots.acquire()
                self._has_work.clear()
                batch, self._batch = self._batch, PgBatch()
                if len(batch):
                    task = asyncio.create_task(self._commit_and_wake(batch, slots))
                    running.add(task)
                    task.add_done_callback(running.discard)
                else:
                    slots.release()
                if self._closing and not len(self._batch):
                    return
        finally:
            if running:
                await asyncio.shield(asyncio.gather(*running, return_exceptions=True))
            pending = self._batch
            if len(pending):
                pending.failure = StoreClosedError("PostgreSQL store closed before this write")
                self._releasing.clear()
                pending.done.set()

    async def _commit_and_wake(self, batch: PgBatch, slots: asyncio.Semaphore) -> None:
        try:
            await self._commit(batch)
        except Exception as exc:
            batch.failure = exc
        finally:
            slots.release()
            for saga_id, _ in batch.releases:
                if self._releasing.get(saga_id) is batch:
                    del self._releasing[saga_id]
            batch.done.set()

    async def _commit(self, batch: PgBatch) -> None:
        async def attempt() -> None:
            batch.reset()
            async with borrowed(self._open_pool(closing_ok=True)) as conn:
                await commit_batch(
                    conn,
                    batch,
                    self._runtime_id,
                    self.schema,
                    own_new_sagas=self._run_spawned_here,
                    codec=self.codec,
                )

        await self._with_reconnect("write", attempt)
        self.batches_committed += 1

    async def _with_reconnect(self, what: str, attempt: Callable[[], Awaitable[_T]]) -> _T:
        """Run `attempt`, again and again while the server is unreachable, for a while."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.reconnect_timeout
        delay = 0.05
        while True:
            try:
                return await attempt()
            except Exception as exc:
                if not retryable(exc) or self._pool is None:
                    raise
                if loop.time() + delay > deadline:
                    raise StoreError(
                        f"PostgreSQL {what} failed for {self.reconnect_timeout:.0f} s: {exc}"
                    ) from exc
                logger.warning(
                    "PostgreSQL %s failed (%s); trying again in %.2f s", what, exc, delay
                )
            await asyncio.sleep(delay)
            delay = min(2 * delay, 1.0)

    # -- reads -------------------------------------------------------------

    async def _fetch(self, sql: str, *args: object) -> list[asyncpg.Record]:
        async def attempt() -> list[asyncpg.Record]:
            async with borrowed(self._open_pool()) as conn:
                rows: list[asyncpg.Record] = await conn.fetch(sql, *args)
                return rows

        try:
            return await self._with_reconnect("read", attempt)
        except CONNECTION_TROUBLE as exc:
            raise StoreError(f"PostgreSQL read failed: {exc}") from exc

    async def load(self, saga_id: str) -> StoredSaga:
        rows = await self._fetch(
            "SELECT saga_name, input, snapshot, seq FROM sagas WHERE saga_id = $1", saga_id
        )
        if not rows:
            raise await self._not_found(saga_id)
        saga_name, input_text, snapshot, seq = rows[0]
        return stored_saga(saga_id, saga_name, input_text, snapshot, seq, codec=self.codec)

    async def history(self, saga_id: str) -> Sequence[HistoryEntry]:
        rows = await self._fetch(
            "SELECT seq, event FROM history WHERE saga_id = $1 ORDER BY seq", saga_id
        )
        if not rows and not await self._fetch("SELECT 1 FROM sagas WHERE saga_id = $1", saga_id):
            raise await self._not_found(saga_id)
        return [HistoryEntry(seq, decode_event(saga_id, event, self.codec)) for seq, event in rows]

    async def _not_found(self, saga_id: str) -> SagaNotFound:
        """`SagaPrunedError` for an id retention pruned, else `SagaNotFound`."""
        if await self._fetch("SELECT 1 FROM tombstones WHERE saga_id = $1", saga_id):
            return SagaPrunedError(saga_id)
        return SagaNotFound(saga_id)

    # -- retention ---------------------------------------------------------

    async def prune_page(
        self,
        status: str,
        *,
        ended_before: float,
        now: float,
        after: Cursor | None = None,
        limit: int = PAGE,
        tombstones_before: float | None = None,
    ) -> tuple[int, Cursor | None]:
        """One page of a pruning pass (`runtime._retention`) in its own transaction:
        (sagas deleted, where the pass goes on; None: it is over)."""
        op = Prune(status, ended_before, now, after, limit, tombstones_before)

        async def attempt() -> None:
            async with borrowed(self._open_pool()) as conn:
                await prune_page(conn, op, self.codec)

        try:
            await self._with_reconnect("prune", attempt)
        except CONNECTION_TROUBLE as exc:
            raise StoreError(f"PostgreSQL prune failed: {exc}") from exc
        return op.pruned, op.cursor

    async def count_prunable(self, statuses: Sequence[str], ended_before: float) -> int:
        """How many sagas pruning would delete now (a dry run: nothing is written)."""
        rows = await self._fetch(COUNT_PRUNABLE, list(statuses), ended_before)
        count: int = rows[0][0]
        return count

    async def inbox(self, saga_id: str) -> Sequence[InboxItem]:
        rows = await self._fetch(
            "SELECT id, kind, name, payload, key, at FROM inbox WHERE saga_id = $1 ORDER BY id",
            saga_id,
        )
        return [
            InboxItem(
                row_id, saga_id, kind, name, unseal(saga_id, payload, self.codec, "inbox"), key, at
            )
            for row_id, kind, name, payload, key, at in rows
        ]

    async def unfinished(self) -> Sequence[UnfinishedSaga]:
        rows = await self._fetch(
            f"SELECT saga_id, saga_name FROM sagas WHERE status IN {LIVE} "
            "ORDER BY created_at, saga_id"
        )
        return [UnfinishedSaga(saga_id, saga_name) for saga_id, saga_name in rows]

    async def row(self, saga_id: str) -> SagaRow | None:
        """The saga's columns that stay in clear (for a status without the codec's key)."""
        rows = await self._fetch(
            "SELECT saga_id, saga_name, status, waiting_for, wake_at, updated_at, version "
            "FROM sagas WHERE saga_id = $1",
            saga_id,
        )
        return SagaRow(*rows[0]) if rows else None

    async def quarantine_reason(self, saga_id: str) -> str | None:
        """Why a saga was quarantined (its snapshot could not be decoded), if it was."""
        rows = await self._fetch("SELECT error FROM sagas WHERE saga_id = $1", saga_id)
        if not rows:
            raise SagaNotFound(saga_id)
        reason: str | None = rows[0][0]
        return reason

    async def runnable(self) -> Sequence[UnfinishedSaga]:
        """Claims (and returns) the sagas with work that no live runtime owns, page by page."""
        claimed: list[UnfinishedSaga] = []
        while True:
            page = await self.claim_orphans(float("-inf"), 500)
            claimed.extend(page)
            if len(page) < 500:
                return claimed

    async def due(
        self, now: float, *, after: tuple[float, str] | None = None, limit: int = 500
    ) -> Sequence[DueSaga]:
        sql = (
            "SELECT s.saga_id, s.saga_name, s.wake_at FROM sagas s "
            f"WHERE s.wake_at IS NOT NULL AND s.wake_at <= $1 AND s.status IN {LIVE} "
            f"AND (s.owner = $2 OR {OWNER_IS_GONE})"
        )
        args: list[object] = [now, self._runtime_id]
        if after is not None:
            sql += " AND (s.wake_at, s.saga_id) > ($3, $4)"
            args += [after[0], after[1]]
        sql += f" ORDER BY s.wake_at, s.saga_id LIMIT ${len(args) + 1}"
        rows = await self._fetch(sql, *args, limit)
        return [DueSaga(saga_id, saga_name, wake_at) for saga_id, saga_name, wake_at in rows]

    async def next_wake_at(self, after: float | None = None) -> float | None:
        sql = (
            f"SELECT min(s.wake_at) FROM sagas s WHERE s.wake_at IS NOT NULL "
            f"AND s.status IN {LIVE} AND (s.owner = $1 OR {OWNER_IS_GONE})"
        )
        args: list[object] = [self._runtime_id]
        if after is not None:
            sql += " AND s.wake_at > $2"
            args.append(after)
        rows = await self._fetch(sql, *args)
        value: float | None = rows[0][0] if rows else None
        return value

    async def unreadable_wake_ups(self) -> Sequence[tuple[str, str]]:
        rows = await self._fetch(
            "SELECT s.saga_id, s.wake_at::text FROM sagas s WHERE s.wake_at IN "
            f"('NaN', 'Infinity', '-Infinity') AND s.status IN {LIVE} "
            f"AND (s.owner = $1 OR {OWNER_IS_GONE}) LIMIT 100",
            self._runtime_id,
        )
        return [(saga_id, not_a_time("wake_at", text)) for saga_id, text in rows]

    async def list_sagas(
        self,
        *,
        saga_name: str | None = None,
        status: str | None = None,
        waiting_for: str | None = None,
        after: str | None = None,
        limit: int = 100,
        version: int | None = None,
    ) -> Sequence[SagaRow]:
        sql, params = listing_query(
            saga_name=saga_name,
            status=status,
            waiting_for=waiting_for,
            after=after,
            limit=limit,
            version=version,
            placeholder=lambda n: f"${n}",
        )
        rows = await self._fetch(sql, *params)
        return [SagaRow(*row) for row in rows]
