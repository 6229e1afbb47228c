"""`SqliteStore`: the embedded default store, on aiosqlite, with group commit.

Every write (a new saga, a transition, a quarantine) joins the current
batch; one writer task commits the whole batch in one `BEGIN IMMEDIATE`
transaction and then wakes every waiter at once, so a hundred sagas share
one fsync. Reads use a second connection and see committed data only (WAL).
A lock file keeps a second runtime off the same database.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Literal, Self

import aiosqlite
import anyio
from anyio.abc import TaskGroup

from saga import (
    CorruptSagaError,
    Event,
    HistoryEntry,
    SagaNotFound,
    SagaState,
    StaleStateError,
    StoredSaga,
    StoreError,
    UnfinishedSaga,
)

from ._codec import decode_event, decode_state, encode_event, encode_state
from ._errors import SchemaVersionError, StoreLockedError
from ._schema import MIGRATIONS, SCHEMA_VERSION

Synchronous = Literal["OFF", "NORMAL", "FULL", "EXTRA"]

_LIVE_STATUSES = ("running", "waiting", "compensating")
_SELECT_CHUNK = 500


class StoreClosedError(StoreError):
    """Raised by a store's methods once it is closed (or before it is opened)."""


@dataclass(slots=True, eq=False)
class _Create:
    saga: StoredSaga
    event: Event
    existing: StoredSaga | None = None
    error: Exception | None = None


@dataclass(slots=True, eq=False)
class _Save:
    state: SagaState
    event: Event
    error: Exception | None = None


@dataclass(slots=True, eq=False)
class _Batch:
    creates: list[_Create] = field(default_factory=list)
    saves: list[_Save] = field(default_factory=list)
    statements: list[tuple[str, tuple[object, ...]]] = field(default_factory=list)
    done: anyio.Event = field(default_factory=anyio.Event)
    failure: BaseException | None = None

    def __len__(self) -> int:
        return len(self.creates) + len(self.saves) + len(self.statements)


class SqliteStore:
    """A `Store` on one SQLite file. Use as an async context manager (the `Runtime` does).

    `synchronous` is SQLite's `PRAGMA synchronous` (FULL by default: a
    transition is on disk before anything acts on it). `busy_timeout` is how
    long a write waits for another process's lock before failing.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: Synchronous = "FULL",
        busy_timeout: float = 5.0,
    ) -> None:
        if synchronous not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"synchronous must be OFF, NORMAL, FULL or EXTRA, not {synchronous!r}")
        self.path = Path(path)
        self.synchronous = synchronous
        self.busy_timeout = busy_timeout
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._lock_fd: int | None = None
        self._task_group: TaskGroup | None = None
        self._batch = _Batch()
        self._has_work = anyio.Event()
        self._closing = False
        self.batches_committed = 0
        self.rows_committed = 0

    # -- lifecycle ---------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._lock()
        try:
            self._writer = await self._connect()
            await self._writer.execute("PRAGMA journal_mode=WAL")
            await self._migrate(self._writer)
            self._reader = await self._connect()
        except BaseException:
            await self._close_connections()
            self._unlock()
            raise
        self._closing = False
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        self._task_group.start_soon(self._write_loop, name="sagaloop-sqlite-writer")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._closing = True
        self._has_work.set()  # the writer flushes what is queued, then stops
        try:
            if self._task_group is not None:
                await self._task_group.__aexit__(None, None, None)
        finally:
            self._task_group = None
            await self._close_connections()
            self._unlock()

    async def _connect(self) -> aiosqlite.Connection:
        conn = await aiosqlite.connect(self.path, isolation_level=None)
        await conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout * 1000)}")
        await conn.execute(f"PRAGMA synchronous={self.synchronous}")
        return conn

    async def _close_connections(self) -> None:
        for conn in (self._reader, self._writer):
            if conn is not None:
                with anyio.CancelScope(shield=True):
                    await conn.close()
        self._reader = self._writer = None

    def _lock(self) -> None:
        lock_path = f"{self.path}.lock"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreLockedError(
                f"{self.path} is open in another runtime (lock file {lock_path}); "
                "one SQLite database serves one runtime"
            ) from None
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing releases the flock
            self._lock_fd = None

    async def _migrate(self, conn: aiosqlite.Connection) -> None:
        await conn.execute("BEGIN IMMEDIATE")
        try:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)"
            )
            rows = await _fetch(conn, "SELECT max(version) FROM schema_version")
            current = (rows[0][0] if rows else None) or 0
            if current > SCHEMA_VERSION:
                raise SchemaVersionError(
                    f"{self.path} has schema version {current}; this Sagaloop knows up to "
                    f"{SCHEMA_VERSION}"
                )
            for version in range(current + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[version]:
                    await conn.execute(statement)
                await conn.execute("INSERT INTO schema_version(version) VALUES (?)", (version,))
            await conn.execute("COMMIT")
        except BaseException:
            with anyio.CancelScope(shield=True):
                await conn.execute("ROLLBACK")
            raise

    # -- writes: group commit ----------------------------------------------

    async def create(self, saga: StoredSaga, event: Event) -> StoredSaga | None:
        op = _Create(saga, event)
        batch = self._enqueue()
        batch.creates.append(op)
        await self._wait(batch)
        if op.error is not None:
            raise op.error
        return op.existing

    async def save(self, state: SagaState, event: Event) -> None:
        op = _Save(state, event)
        batch = self._enqueue()
        batch.saves.append(op)
        await self._wait(batch)
        if op.error is not None:
            raise op.error

    async def quarantine(self, saga_id: str, reason: str) -> None:
        batch = self._enqueue()
        batch.statements.append(
            ("UPDATE sagas SET status='suspended', error=? WHERE saga_id=?", (reason, saga_id))
        )
        await self._wait(batch)

    def _enqueue(self) -> _Batch:
        if self._task_group is None or self._closing:
            raise StoreClosedError(f"store {self.path} is not open")
        self._has_work.set()
        return self._batch

    async def _wait(self, batch: _Batch) -> None:
        await batch.done.wait()
        if batch.failure is not None:
            raise StoreError(f"write to {self.path} failed: {batch.failure}") from batch.failure

    async def _write_loop(self) -> None:
        while True:
            await self._has_work.wait()
            self._has_work = anyio.Event()
            batch, self._batch = self._batch, _Batch()
            if len(batch):
                with anyio.CancelScope(shield=True):
                    try:
                        await self._commit(batch)
                    except Exception as exc:
                        batch.failure = exc
                batch.done.set()
            if self._closing and not len(self._batch):
                return

    async def _commit(self, batch: _Batch) -> None:
        conn = self._writer
        assert conn is not None
        await conn.execute("BEGIN IMMEDIATE")
        try:
            history: list[tuple[object, ...]] = []
            if batch.creates:
                await self._insert_new(conn, batch.creates, history)
            if batch.saves:
                await self._update(conn, batch.saves, history)
            for statement, params in batch.statements:
                await conn.execute(statement, params)
            if history:
                await conn.executemany(
                    "INSERT INTO history(saga_id, seq, at, event) VALUES (?, ?, ?, ?)", history
                )
            await conn.execute("COMMIT")
        except BaseException:
            # The failed statement may already have rolled the transaction back.
            with contextlib.suppress(sqlite3.Error):
                await conn.execute("ROLLBACK")
            raise
        self.batches_committed += 1
        self.rows_committed += len(batch)

    async def _insert_new(
        self, conn: aiosqlite.Connection, creates: list[_Create], history: list[tuple[object, ...]]
    ) -> None:
        existing = await self._fetch_existing(conn, {op.saga.saga_id for op in creates})
        rows: list[tuple[object, ...]] = []
        now = time.time()
        for op in creates:
            saga = op.saga
            if saga.saga_id in existing:
                op.existing = existing[saga.saga_id]
                continue
            existing[saga.saga_id] = saga  # a duplicate later in this batch sees this one
            state = saga.state
            rows.append(
                (
                    saga.saga_id,
                    saga.saga_name,
                    state.status.value,
                    state.seq,
                    saga.input.decode(),
                    encode_state(state),
                    state.wake_at,
                    state.started_at or now,
                    state.updated_at or now,
                )
            )
            history.append((saga.saga_id, state.seq, op.event.at, encode_event(op.event)))
        if rows:
            await conn.executemany(
                "INSERT INTO sagas(saga_id, saga_name, status, seq, input, snapshot, wake_at, "
                "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )

    async def _fetch_existing(
        self, conn: aiosqlite.Connection, saga_ids: Iterable[str]
    ) -> dict[str, StoredSaga]:
        found: dict[str, StoredSaga] = {}
        ids = list(saga_ids)
        for start in range(0, len(ids), _SELECT_CHUNK):
            chunk = ids[start : start + _SELECT_CHUNK]
            marks = ",".join("?" * len(chunk))
            sql = (
                f"SELECT saga_id, saga_name, input, snapshot FROM sagas WHERE saga_id IN ({marks})"
            )
            for saga_id, saga_name, input_text, snapshot in await _fetch(conn, sql, chunk):
                found[saga_id] = _stored(saga_id, saga_name, input_text, snapshot)
        return found

    async def _update(
        self, conn: aiosqlite.Connection, saves: list[_Save], history: list[tuple[object, ...]]
    ) -> None:
        # Check each save against the stored seq first (the write lock is held):
        # a stale or replayed save is refused alone; the rest of the batch commits.
        stored = await self._stored_seqs(conn, [op.state.saga_id for op in saves])
        rows: list[tuple[object, ...]] = []
        for op in saves:
            state = op.state
            seq = stored.get(state.saga_id)
            if seq is None:
                op.error = SagaNotFound(state.saga_id)
                continue
            if seq != state.seq - 1:
                op.error = StaleStateError(
                    f"saga {state.saga_id!r}: stored snapshot is #{seq}, "
                    f"this write expected #{state.seq - 1}"
                )
                continue
            stored[state.saga_id] = state.seq  # a later save in this batch builds on it
            rows.append(
                (
                    encode_state(state),
                    state.status.value,
                    state.seq,
                    state.wake_at,
                    state.updated_at,
                    state.saga_id,
                )
            )
            history.append((state.saga_id, state.seq, op.event.at, encode_event(op.event)))
        if rows:
            await conn.executemany(
                "UPDATE sagas SET snapshot=?, status=?, seq=?, wake_at=?, updated_at=? "
                "WHERE saga_id=?",
                rows,
            )

    async def _stored_seqs(self, conn: aiosqlite.Connection, ids: list[str]) -> dict[str, int]:
        stored: dict[str, int] = {}
        for start in range(0, len(ids), _SELECT_CHUNK):
            chunk = ids[start : start + _SELECT_CHUNK]
            marks = ",".join("?" * len(chunk))
            sql = f"SELECT saga_id, seq FROM sagas WHERE saga_id IN ({marks})"
            stored.update({row[0]: row[1] for row in await _fetch(conn, sql, chunk)})
        return stored

    # -- reads -------------------------------------------------------------

    def _read_conn(self) -> aiosqlite.Connection:
        if self._reader is None:
            raise StoreClosedError(f"store {self.path} is not open")
        return self._reader

    async def load(self, saga_id: str) -> StoredSaga:
        rows = await _fetch(
            self._read_conn(),
            "SELECT saga_name, input, snapshot FROM sagas WHERE saga_id=?",
            (saga_id,),
        )
        if not rows:
            raise SagaNotFound(saga_id)
        saga_name, input_text, snapshot = rows[0]
        return _stored(saga_id, saga_name, input_text, snapshot)

    async def history(self, saga_id: str) -> Sequence[HistoryEntry]:
        conn = self._read_conn()
        rows = await _fetch(
            conn, "SELECT seq, event FROM history WHERE saga_id=? ORDER BY seq", (saga_id,)
        )
        if not rows and not await _fetch(conn, "SELECT 1 FROM sagas WHERE saga_id=?", (saga_id,)):
            raise SagaNotFound(saga_id)
        return [HistoryEntry(seq, decode_event(saga_id, event)) for seq, event in rows]

    async def unfinished(self) -> Sequence[UnfinishedSaga]:
        marks = ",".join("?" * len(_LIVE_STATUSES))
        rows = await _fetch(
            self._read_conn(),
            f"SELECT saga_id, saga_name FROM sagas WHERE status IN ({marks}) ORDER BY created_at",
            _LIVE_STATUSES,
        )
        return [UnfinishedSaga(saga_id, saga_name) for saga_id, saga_name in rows]

    async def quarantine_reason(self, saga_id: str) -> str | None:
        """Why a saga was quarantined (its snapshot could not be decoded), if it was."""
        rows = await _fetch(
            self._read_conn(), "SELECT error FROM sagas WHERE saga_id=?", (saga_id,)
        )
        if not rows:
            raise SagaNotFound(saga_id)
        reason: str | None = rows[0][0]
        return reason


async def _fetch(
    conn: aiosqlite.Connection, sql: str, params: Sequence[object] = ()
) -> list[sqlite3.Row]:
    """Run a query and read all its rows in one thread hop.

    A cursor left open across awaits keeps its read transaction (and so an
    old snapshot of the database) alive for every other reader of the
    connection: always read to the end at once.
    """
    return list(await conn.execute_fetchall(sql, params))


def _stored(saga_id: str, saga_name: str, input_text: str | bytes, snapshot: str) -> StoredSaga:
    if not isinstance(input_text, str | bytes):
        raise CorruptSagaError(saga_id, "input column is not JSON text")
    data = input_text.encode() if isinstance(input_text, str) else input_text
    return StoredSaga(saga_id, saga_name, data, decode_state(saga_id, snapshot))
