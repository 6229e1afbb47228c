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
- Writes: group commit, as on SQLite (`_pg_writer`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import Self, TypeVar

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from saga import SagaNotFound, StoreError
from saga.engine import Event
from saga.store import (
    DueSaga,
    HistoryEntry,
    InboxItem,
    LeaseLostError,
    Notice,
    OwnedSaga,
    SagaRow,
    SagaState,
    StoredSaga,
    UnfinishedSaga,
)

from ._codec import decode_event
from ._errors import SchemaVersionError
from ._listing import listing_query
from ._pg_schema import (
    LIVE,
    MIGRATION_LOCK_KEY,
    MIGRATIONS,
    SCHEMA_VERSION,
    TERMINAL,
    check_schema_name,
)
from ._pg_writer import PgBatch, commit_batch
from ._sqlite_store import StoreClosedError
from ._writes import Create, Deliver, Save, stored_saga

Connection = asyncpg.Connection | PoolConnectionProxy


logger = logging.getLogger("runtime.postgres")

_T = TypeVar("_T")

_WRITERS = 3
"""Batches committing at once (each on its own pooled connection)."""

_CONNECTION_TROUBLE = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)

_RETRYABLE = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,  # admin shutdown, server starting up
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.SerializationError,
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.IdleInTransactionSessionTimeoutError,  # rolled back by the server
)
"""Errors after which the same statement or transaction can safely run again: nothing
of it committed (a failure at COMMIT itself is `CommitOutcomeUnknown`, never retried)."""


def _new_runtime_id() -> str:
    return f"rt{uuid.uuid4().hex[:20]}"


def _redacted(dsn: str) -> str:
    """`dsn` without its password, for messages."""
    parts = urllib.parse.urlsplit(dsn)
    if parts.password is None:
        return dsn
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, _RETRYABLE):
        return True
    # asyncpg reports a connection that died under it as an InterfaceError.
    return isinstance(exc, asyncpg.InterfaceError) and "connection" in str(exc)


_OWNER_IS_GONE = """(s.owner IS NULL OR NOT EXISTS (
    SELECT 1 FROM runtimes r WHERE r.runtime_id = s.owner AND r.lease_until > clock_timestamp()))"""
"""SQL: saga `s` has no owner with a live lease."""

_SELF_IS_LIVE = """EXISTS (
    SELECT 1 FROM runtimes me WHERE me.runtime_id = $1 AND me.lease_until > clock_timestamp())"""
"""SQL: the claiming runtime's own lease is live (one that lapsed must not take sagas)."""

_ASKED_TO_COMPENSATE = """(s.status = 'completed' AND EXISTS (
    SELECT 1 FROM inbox i WHERE i.saga_id = s.saga_id AND i.kind = 'compensate'))"""
"""SQL: saga `s` is a completed child whose parent asked it to roll back."""

_CLAIM = f"""
UPDATE sagas s SET owner = $1,
    -- a runtime that owns it already keeps its epoch: its own actor may be writing
    epoch = CASE WHEN s.owner = $1 THEN s.epoch ELSE s.epoch + 1 END
WHERE s.saga_id = $2 AND (s.status NOT IN {TERMINAL} OR {_ASKED_TO_COMPENSATE})
  AND (s.owner = $1 OR s.status = 'suspended' OR {_OWNER_IS_GONE}) AND {_SELF_IS_LIVE}
RETURNING s.epoch
"""

_CLAIM_ORPHANS = f"""
WITH candidates AS (
    SELECT saga_id FROM sagas WHERE runnable AND status IN {LIVE}
    UNION
    SELECT saga_id FROM sagas WHERE wake_at <= $2 AND wake_at IS NOT NULL AND status IN {LIVE}
    UNION
    SELECT DISTINCT saga_id FROM inbox
), picked AS (
    SELECT s.saga_id FROM sagas s JOIN candidates c USING (saga_id)
    WHERE (s.status IN {LIVE} OR {_ASKED_TO_COMPENSATE}) AND {_OWNER_IS_GONE} AND {_SELF_IS_LIVE}
      AND ($4::text[] IS NULL OR s.saga_name = ANY($4))
    LIMIT $3
    FOR UPDATE OF s SKIP LOCKED
)
UPDATE sagas s SET owner = $1, epoch = s.epoch + 1
FROM picked WHERE s.saga_id = picked.saga_id
RETURNING s.saga_id, s.saga_name, s.epoch
"""

_OWNED_WITH_WORK = f"""
SELECT s.saga_id, s.saga_name,
       EXISTS (SELECT 1 FROM inbox i WHERE i.saga_id = s.saga_id) AS inbox,
       EXISTS (SELECT 1 FROM inbox i WHERE i.saga_id = s.saga_id AND i.kind = 'cancel') AS cancel
-- an anti-join: `NOT s.saga_id = ANY($2)` would scan the whole array for each row
FROM sagas s LEFT JOIN unnest($2::text[]) AS held(saga_id) USING (saga_id)
WHERE s.owner = $1 AND s.status IN {LIVE}
  AND (EXISTS (SELECT 1 FROM inbox i WHERE i.saga_id = s.saga_id)
       OR (held.saga_id IS NULL AND (s.runnable OR s.wake_at <= $3)))
"""

_JOIN = """
INSERT INTO runtimes (runtime_id, name, lease_until)
VALUES ($1, $2, clock_timestamp() + $3 * interval '1 second')
ON CONFLICT (runtime_id) DO UPDATE SET lease_until = excluded.lease_until
"""

_RENEW = """
WITH before AS (SELECT lease_until FROM runtimes WHERE runtime_id = $1)
UPDATE runtimes SET lease_until = clock_timestamp() + $2 * interval '1 second'
WHERE runtime_id = $1
RETURNING (SELECT extract(epoch FROM clock_timestamp() - lease_until) FROM before)
"""


class PostgresStore:
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
        self._runtime_id = _new_runtime_id()
        self._pool: asyncpg.Pool | None = None
        self._epochs: dict[str, int] = {}
        # Sagas whose hand-back is queued or committing, and the batch that carries it.
        self._releasing: dict[str, PgBatch] = {}
        self.saga_names: frozenset[str] | None = None
        """The sagas the runtime has definitions for: it claims no others (None: any)."""
        self._notice_handler: Callable[[Notice], None] | None = None
        self._batch = PgBatch()
        self._has_work = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self.batches_committed = 0
        self.lease_lapses = 0

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

    def _channel(self, runtime_id: str) -> str:
        return f"{self.schema}_{runtime_id}"

    @property
    def _broadcast(self) -> str:
        return f"{self.schema}_all"

    # -- lifecycle ---------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._closing = False
        # A new id at each opening: a store reopened after an unclean close is a new runtime.
        self._runtime_id = _new_runtime_id()
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
            async with self._pool.acquire() as conn:
                await self._migrate(conn)
                await conn.execute(_JOIN, self._runtime_id, self.name, self.lease)
                # Forget runtimes long dead (their sagas count as orphans either way).
                await conn.execute(
                    "DELETE FROM runtimes WHERE lease_until < clock_timestamp() - interval '1 hour'"
                )
        except _CONNECTION_TROUBLE as exc:
            await self._close_pool()
            raise StoreError(f"cannot open PostgreSQL at {_redacted(self.dsn)}: {exc}") from exc
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

    async def _hand_back(self) -> None:
        """A clean stop: give every saga back and let the others sweep at once."""
        pool = self._pool
        if pool is None:
            return
        try:
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute(
                    "UPDATE sagas SET owner = NULL WHERE owner = $1", self._runtime_id
                )
                await conn.execute("DELETE FROM runtimes WHERE runtime_id = $1", self._runtime_id)
                await conn.execute("SELECT pg_notify($1, 'sweep')", self._broadcast)
        except _CONNECTION_TROUBLE as exc:
            logger.warning(
                "could not hand sagas back (%s); they are taken over at lease expiry", exc
            )
        self._epochs.clear()

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
            if current > SCHEMA_VERSION:
                raise SchemaVersionError(
                    f"schema {self.schema} has version {current}; this Sagaloop knows up to "
                    f"{SCHEMA_VERSION}"
                )
            for version in range(current + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[version]:
                    await conn.execute(statement)
                await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", version)

    def _open_pool(self, *, closing_ok: bool = False) -> asyncpg.Pool:
        """The pool, or `StoreClosedError`; `closing_ok`: the writer flushes while closing."""
        if self._pool is None or (self._closing and not closing_ok):
            raise StoreClosedError(f"PostgreSQL store ({self.schema}) is not open")
        return self._pool

    # -- background: lease, notices ----------------------------------------

    async def _renew_loop(self) -> None:
        # Its own connection: a pool busy with writes must not make the lease lapse.
        delay = self.lease / 3
        conn: Connection | None = None
        try:
            while True:
                await asyncio.sleep(delay)
                try:
                    if conn is None or conn.is_closed():
                        conn = await asyncpg.connect(
                            self.dsn,
                            timeout=self.lease,
                            server_settings={"search_path": f'"{self.schema}"'},
                        )
                    await asyncio.wait_for(self._renew(conn), timeout=self.lease / 3)
                    delay = self.lease / 3
                except _CONNECTION_TROUBLE as exc:
                    delay = min(self.lease / 3, 0.5)
                    logger.warning("could not renew the lease of %s: %s", self._runtime_id, exc)
                    if conn is not None:
                        conn.terminate()
                        conn = None
        finally:
            if conn is not None:
                conn.terminate()

    async def _renew(self, conn: Connection) -> None:
        overdue = await conn.fetchval(_RENEW, self._runtime_id, self.lease)
        if overdue is None:
            # Our row is gone (an operator removed it): join again.
            await conn.execute(_JOIN, self._runtime_id, self.name, self.lease)
        elif overdue > 0:
            self.lease_lapses += 1
            logger.warning(
                "runtime %s renewed its lease %.1f s after it lapsed: other runtimes may have "
                "taken some of its sagas over; this runtime drops each such saga at its next write",
                self._runtime_id,
                float(overdue),
            )

    def on_notice(self, handler: Callable[[Notice], None]) -> None:
        self._notice_handler = handler

    def _notify_handler(self, notice: Notice) -> None:
        if self._notice_handler is not None:
            self._notice_handler(notice)

    def _on_notification(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        if not isinstance(payload, str):
            return
        if payload == "sweep":
            self._notify_handler(Notice(None))
        elif payload[:2] in ("n:", "c:"):
            self._notify_handler(Notice(payload[2:], cancel=payload[0] == "c"))

    async def _listen_loop(self) -> None:
        """Keep one connection LISTENing; after any reconnection, sweep (notices were missed)."""
        delay = 0.1
        channels = (self._channel(self._runtime_id), self._broadcast)
        while True:
            conn: Connection | None = None
            try:
                conn = await asyncpg.connect(self.dsn)
                for channel in channels:
                    await conn.add_listener(channel, self._on_notification)
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _conn, lost=lost: lost.set())
                self._notify_handler(Notice(None))
                delay = 0.1
                while not lost.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(lost.wait(), timeout=self.lease)
                    if not lost.is_set():
                        # notices a silently dead socket
                        await asyncio.wait_for(conn.execute("SELECT 1"), timeout=self.lease)
            except _CONNECTION_TROUBLE as exc:
                logger.warning("notice connection lost (%s); reconnecting in %.1f s", exc, delay)
            finally:
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(conn.close(), timeout=1)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    # -- ownership ---------------------------------------------------------

    async def claim(self, saga_id: str) -> bool:
        # A claim by the owner keeps the epoch its own pending hand-back is fenced on:
        # let that hand-back land first, or it would undo this claim.
        pending = self._releasing.get(saga_id)
        if pending is not None:
            await pending.done.wait()
        rows = await self._fetch(_CLAIM, self._runtime_id, saga_id)
        if not rows:
            return False
        epoch: int = rows[0][0]
        self._epochs[saga_id] = epoch
        return True

    def release(self, saga_id: str) -> None:
        epoch = self._epochs.pop(saga_id, None)
        if epoch is None or self._closing or self._pool is None:
            return
        self._batch.releases.append((saga_id, epoch))
        self._releasing[saga_id] = self._batch
        self._has_work.set()

    async def claim_orphans(self, now: float, limit: int) -> Sequence[UnfinishedSaga]:
        names = None if self.saga_names is None else sorted(self.saga_names)
        rows = await self._fetch(_CLAIM_ORPHANS, self._runtime_id, now, limit, names)
        for row in rows:
            self._epochs[row["saga_id"]] = row["epoch"]
        return [UnfinishedSaga(row["saga_id"], row["saga_name"]) for row in rows]

    async def owned_with_work(self, now: float) -> Sequence[OwnedSaga]:
        rows = await self._fetch(_OWNED_WITH_WORK, self._runtime_id, list(self._epochs), now)
        return [OwnedSaga(*row) for row in rows]

    def holds(self, saga_id: str) -> bool:
        """Whether this runtime holds `saga_id` (as far as it knows)."""
        return saga_id in self._epochs

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
            async with self._open_pool(closing_ok=True).acquire() as conn:
                await commit_batch(
                    conn,
                    batch,
                    self._runtime_id,
                    self.schema,
                    own_new_sagas=self._run_spawned_here,
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
                if not _retryable(exc) or self._pool is None:
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
            async with self._open_pool().acquire() as conn:
                rows: list[asyncpg.Record] = await conn.fetch(sql, *args)
                return rows

        try:
            return await self._with_reconnect("read", attempt)
        except _CONNECTION_TROUBLE as exc:
            raise StoreError(f"PostgreSQL read failed: {exc}") from exc

    async def load(self, saga_id: str) -> StoredSaga:
        rows = await self._fetch(
            "SELECT saga_name, input, snapshot, seq FROM sagas WHERE saga_id = $1", saga_id
        )
        if not rows:
            raise SagaNotFound(saga_id)
        saga_name, input_text, snapshot, seq = rows[0]
        return stored_saga(saga_id, saga_name, input_text, snapshot, seq)

    async def history(self, saga_id: str) -> Sequence[HistoryEntry]:
        rows = await self._fetch(
            "SELECT seq, event FROM history WHERE saga_id = $1 ORDER BY seq", saga_id
        )
        if not rows and not await self._fetch("SELECT 1 FROM sagas WHERE saga_id = $1", saga_id):
            raise SagaNotFound(saga_id)
        return [HistoryEntry(seq, decode_event(saga_id, event)) for seq, event in rows]

    async def inbox(self, saga_id: str) -> Sequence[InboxItem]:
        rows = await self._fetch(
            "SELECT id, kind, name, payload, key, at FROM inbox WHERE saga_id = $1 ORDER BY id",
            saga_id,
        )
        return [
            InboxItem(row_id, saga_id, kind, name, payload.encode(), key, at)
            for row_id, kind, name, payload, key, at in rows
        ]

    async def unfinished(self) -> Sequence[UnfinishedSaga]:
        rows = await self._fetch(
            f"SELECT saga_id, saga_name FROM sagas WHERE status IN {LIVE} "
            "ORDER BY created_at, saga_id"
        )
        return [UnfinishedSaga(saga_id, saga_name) for saga_id, saga_name in rows]

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
            f"AND (s.owner = $2 OR {_OWNER_IS_GONE})"
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
            f"AND s.status IN {LIVE} AND (s.owner = $1 OR {_OWNER_IS_GONE})"
        )
        args: list[object] = [self._runtime_id]
        if after is not None:
            sql += " AND s.wake_at > $2"
            args.append(after)
        rows = await self._fetch(sql, *args)
        value: float | None = rows[0][0] if rows else None
        return value

    async def list_sagas(
        self,
        *,
        saga_name: str | None = None,
        status: str | None = None,
        waiting_for: str | None = None,
        after: str | None = None,
        limit: int = 100,
    ) -> Sequence[SagaRow]:
        sql, params = listing_query(
            saga_name=saga_name,
            status=status,
            waiting_for=waiting_for,
            after=after,
            limit=limit,
            placeholder=lambda n: f"${n}",
        )
        rows = await self._fetch(sql, *params)
        return [SagaRow(*row) for row in rows]
