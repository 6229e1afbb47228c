"""`SqliteStore`: the embedded default store, on aiosqlite, with group commit.

Every write (a new saga, a transition, a quarantine) joins the current
batch; one writer task commits the whole batch in one `BEGIN IMMEDIATE`
transaction and then wakes every waiter at once, so a hundred sagas share
one fsync. Reads use a second connection and see committed data only (WAL).
An exclusive `flock` on the database file itself keeps a second runtime off
it: the lock belongs to the file (its inode), so no other path to it (a
symlink, a hard link, another mount) gets past. SQLite's own locks are
POSIX record locks, which `flock` does not touch.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Literal, Self

import aiosqlite
import anyio
from anyio.abc import TaskGroup

from saga import SagaNotFound, SagaStatus, StoreError
from saga.engine import Event
from saga.store import (
    DueSaga,
    HistoryEntry,
    InboxItem,
    SagaRow,
    SagaState,
    StoredSaga,
    UnfinishedSaga,
)

from .._codec import decode_event, unseal
from .._errors import SagaPrunedError, StoreClosedError, StoreLockedError
from .._info import not_a_time
from .._listing import listing_query
from .._retention import PAGE, Cursor, Prune
from .._writes import Create, Deliver, Save, stored_saga
from ..codecs import PayloadCodec
from ._thread import WriterThread
from ._writer import Batch, BatchWriter, FileIdentity, file_identity

Synchronous = Literal["OFF", "NORMAL", "FULL", "EXTRA"]

_LIVE_STATUSES = tuple(status.value for status in SagaStatus if status.is_live)
_LIVE_MARKS = ",".join("?" * len(_LIVE_STATUSES))
# The unary `+` keeps SQLite off the status index for these two: the wake_at index
# then finds the due sagas alone, not every live saga.
DUE = (
    "SELECT saga_id, saga_name, wake_at FROM sagas "
    f"WHERE wake_at IS NOT NULL AND wake_at <= ? AND +status IN ({_LIVE_MARKS})"
)
# SQLite sorts text and blobs after every number: `wake_at < ''` keeps the times, and
# `wake_at >= ''` finds a hand-edited value that is not one (both on the index).
NEXT_WAKE_AT = f"SELECT min(wake_at) FROM sagas WHERE wake_at < '' AND +status IN ({_LIVE_MARKS})"
NOT_A_TIME = (
    "SELECT saga_id, quote(wake_at) FROM sagas WHERE (wake_at >= '' OR wake_at IN "
    f"(9e999, -9e999)) AND +status IN ({_LIVE_MARKS}) LIMIT 100"
)
_SELECT_CHUNK = 500
# Suspended with its reason; a column that is not a time is cleared, so that the row
# lists, sorts and sweeps like any other.
_QUARANTINE = (
    "UPDATE sagas SET status='suspended', error=?, wake_at=NULL, updated_at=CASE "
    "WHEN typeof(updated_at) IN ('real', 'integer') THEN updated_at ELSE 0 END WHERE saga_id=?"
)


_SQLITE_HEADER = b"SQLite format 3\x00"
_HELD_FILES: set[FileIdentity] = set()
"""Every database file a store in this process holds."""


def open_database_file(path: Path) -> int:
    """A read-write descriptor of the database file (created if missing), or a clear
    `StoreError` for a path that cannot be one: a missing folder, a folder, a file that
    is not SQLite, no permission to write."""
    where = f"cannot open {path} as a Sagaloop database"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except FileNotFoundError:
        raise StoreError(f"{where}: its folder {path.parent} does not exist") from None
    except IsADirectoryError:
        raise StoreError(f"{where}: it is a folder") from None
    except PermissionError:
        raise StoreError(f"{where}: no permission to read and write it") from None
    except OSError as exc:
        raise StoreError(f"{where}: {exc.strerror or exc}") from exc
    header = os.pread(fd, len(_SQLITE_HEADER), 0)
    if header and header != _SQLITE_HEADER[: len(header)]:
        os.close(fd)
        raise StoreError(f"{where}: it is not an SQLite file (it starts {header[:16]!r})")
    return fd


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
        codec: PayloadCodec | None = None,
    ) -> None:
        if synchronous not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"synchronous must be OFF, NORMAL, FULL or EXTRA, not {synchronous!r}")
        self.path = Path(path)
        self.synchronous = synchronous
        self.busy_timeout = busy_timeout
        self.codec = codec
        """Seals every user value at rest (`runtime.codecs`); set before entering."""
        self._writer: BatchWriter | None = None
        self._thread: WriterThread | None = None
        self._reader: aiosqlite.Connection | None = None
        self._lock_fd: int | None = None
        self._task_group: TaskGroup | None = None
        self._batch = Batch()
        self._has_work = asyncio.Event()  # set on every write: asyncio's is the cheaper
        self._closing = False
        self.batches_committed = 0
        self.rows_committed = 0

    # -- lifecycle ---------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._lock()
        try:
            self._thread = WriterThread(f"sagaloop-sqlite-writer {self.path.name}")
            self._writer = await self._thread.run(
                BatchWriter, self.path, self.synchronous, self.busy_timeout, self.codec
            )
            self._reader = await aiosqlite.connect(self.path, isolation_level=None)
            await self._reader.execute(f"PRAGMA busy_timeout={int(self.busy_timeout * 1000)}")
        except BaseException:
            await self._close_connections()
            self._unlock()
            raise
        self._closing = False
        self._has_work = asyncio.Event()  # bound to this event loop
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

    async def _close_connections(self) -> None:
        with anyio.CancelScope(shield=True):
            if self._reader is not None:
                await self._reader.close()
            if self._thread is not None:
                if self._writer is not None:
                    await self._thread.run(self._writer.close)
                self._thread.stop()
        self._reader = self._writer = None
        self._thread = None

    def _lock(self) -> None:
        # Closing any descriptor of a file drops every POSIX lock this process holds on
        # it, SQLite's included, so a second store on a file this process already holds
        # is refused before it opens one.
        with contextlib.suppress(OSError):  # a missing file: open_database_file says why
            if file_identity(os.stat(self.path)) in _HELD_FILES:
                raise self._locked()
        fd = open_database_file(self.path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise self._locked() from None
        self._lock_fd = fd
        _HELD_FILES.add(file_identity(os.fstat(fd)))

    def _locked(self) -> StoreLockedError:
        return StoreLockedError(
            f"{self.path} is open in another runtime (perhaps through another path to "
            "the same file); one SQLite database serves one runtime"
        )

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            _HELD_FILES.discard(file_identity(os.fstat(self._lock_fd)))
            os.close(self._lock_fd)  # closing releases the flock
            self._lock_fd = None

    async def write_pragmas(self) -> dict[str, object]:
        """`journal_mode` and `synchronous` as the write connection has them (for checks)."""
        writer, thread = self._writer, self._thread
        if writer is None or thread is None:
            raise StoreClosedError(f"store {self.path} is not open")
        names = ("journal_mode", "synchronous")
        values = [await thread.run(writer.pragma, name) for name in names]
        return dict(zip(names, values, strict=True))

    # -- writes: group commit ----------------------------------------------

    async def create(self, saga: StoredSaga, event: Event) -> StoredSaga | None:
        op = Create(saga, event)
        batch = self._enqueue()
        batch.creates.append(op)
        await batch.done.wait()
        self._check(batch)
        if op.error is not None:
            raise op.error
        return op.existing

    async def save(
        self,
        state: SagaState,
        event: Event,
        *,
        consumed: int | None = None,
        deliver: InboxItem | None = None,
    ) -> None:
        op = Save(state, event, consumed, deliver=deliver)
        batch = self._enqueue()
        batch.saves.append(op)
        await batch.done.wait()
        self._check(batch)
        if op.error is not None:
            raise op.error

    async def deliver(self, item: InboxItem) -> bool:
        op = Deliver(item)
        batch = self._enqueue()
        batch.deliveries.append(op)
        await batch.done.wait()
        self._check(batch)
        if op.error is not None:
            raise op.error
        return op.accepted

    async def quarantine(self, saga_id: str, reason: str) -> None:
        batch = self._enqueue()
        batch.statements.append((_QUARANTINE, (reason, saga_id)))
        await batch.done.wait()
        self._check(batch)

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
        """One page of a pruning pass (`runtime._retention`), in the writer's next batch:
        (sagas deleted, where the pass goes on; None: it is over)."""
        op = Prune(status, ended_before, now, after, limit, tombstones_before)
        batch = self._enqueue()
        batch.prunes.append(op)
        await batch.done.wait()
        self._check(batch)
        if op.error is not None:
            raise op.error
        return op.pruned, op.cursor

    async def count_prunable(self, statuses: Sequence[str], ended_before: float) -> int:
        """How many sagas pruning would delete now (a dry run: nothing is written)."""
        rows = await _fetch(
            self._read_conn(),
            count_prunable_sql(len(statuses)),
            (*statuses, ended_before, *statuses, ended_before),
        )
        count: int = rows[0][0]
        return count

    def _enqueue(self) -> Batch:
        if self._task_group is None or self._closing:
            raise StoreClosedError(f"store {self.path} is not open")
        self._has_work.set()
        return self._batch

    def _check(self, batch: Batch) -> None:
        if batch.failure is not None:
            raise StoreError(f"write to {self.path} failed: {batch.failure}") from batch.failure

    async def _write_loop(self) -> None:
        try:
            await self._write_batches()
        finally:
            # Cancelled with its runtime: writes not taken yet fail rather than hang.
            pending = self._batch
            if len(pending):
                pending.failure = StoreClosedError(f"store {self.path} closed before this write")
                pending.done.set()

    async def _write_batches(self) -> None:
        while True:
            await self._has_work.wait()
            self._has_work.clear()
            batch, self._batch = self._batch, Batch()
            if len(batch):
                with anyio.CancelScope(shield=True):
                    try:
                        await self._commit(batch)
                    except Exception as exc:
                        batch.failure = exc
                batch.done.set()
            if self._closing and not len(self._batch):
                return

    async def _commit(self, batch: Batch) -> None:
        writer, thread = self._writer, self._thread
        assert writer is not None
        assert thread is not None
        await thread.run(writer.commit, batch)
        self.batches_committed += 1
        self.rows_committed += len(batch)

    # -- reads -------------------------------------------------------------

    def _read_conn(self) -> aiosqlite.Connection:
        if self._reader is None:
            raise StoreClosedError(f"store {self.path} is not open")
        return self._reader

    async def load(self, saga_id: str) -> StoredSaga:
        rows = await _fetch(
            self._read_conn(),
            "SELECT saga_name, input, snapshot, seq FROM sagas WHERE saga_id=?",
            (saga_id,),
        )
        if not rows:
            raise await self._not_found(saga_id)
        saga_name, input_text, snapshot, seq = rows[0]
        return stored_saga(saga_id, saga_name, input_text, snapshot, seq, codec=self.codec)

    async def history(self, saga_id: str) -> Sequence[HistoryEntry]:
        conn = self._read_conn()
        rows = await _fetch(
            conn, "SELECT seq, event FROM history WHERE saga_id=? ORDER BY seq", (saga_id,)
        )
        if not rows and not await _fetch(conn, "SELECT 1 FROM sagas WHERE saga_id=?", (saga_id,)):
            raise await self._not_found(saga_id)
        return [HistoryEntry(seq, decode_event(saga_id, event, self.codec)) for seq, event in rows]

    async def _not_found(self, saga_id: str) -> SagaNotFound:
        """`SagaPrunedError` for an id retention pruned (its tombstone is there), else
        `SagaNotFound`."""
        pruned = await _fetch(
            self._read_conn(), "SELECT 1 FROM tombstones WHERE saga_id=?", (saga_id,)
        )
        return SagaPrunedError(saga_id) if pruned else SagaNotFound(saga_id)

    async def unfinished(self) -> Sequence[UnfinishedSaga]:
        rows = await _fetch(
            self._read_conn(),
            f"SELECT saga_id, saga_name FROM sagas WHERE status IN ({_LIVE_MARKS}) "
            "ORDER BY created_at",
            _LIVE_STATUSES,
        )
        return [UnfinishedSaga(saga_id, saga_name) for saga_id, saga_name in rows]

    async def row(self, saga_id: str) -> SagaRow | None:
        """The saga's columns that stay in clear (for a status without the codec's key)."""
        rows = await _fetch(
            self._read_conn(),
            "SELECT saga_id, saga_name, status, waiting_for, wake_at, updated_at, version "
            "FROM sagas WHERE saga_id=?",
            (saga_id,),
        )
        return SagaRow(*rows[0]) if rows else None

    async def quarantine_reason(self, saga_id: str) -> str | None:
        """Why a saga was quarantined (its snapshot could not be decoded), if it was."""
        rows = await _fetch(
            self._read_conn(), "SELECT error FROM sagas WHERE saga_id=?", (saga_id,)
        )
        if not rows:
            raise SagaNotFound(saga_id)
        reason: str | None = rows[0][0]
        return reason

    async def inbox(self, saga_id: str) -> Sequence[InboxItem]:
        rows = await _fetch(
            self._read_conn(),
            "SELECT id, kind, name, payload, key, at FROM inbox WHERE saga_id=? ORDER BY id",
            (saga_id,),
        )
        return [
            InboxItem(
                row_id, saga_id, kind, name, unseal(saga_id, payload, self.codec, "inbox"), key, at
            )
            for row_id, kind, name, payload, key, at in rows
        ]

    async def runnable(self) -> Sequence[UnfinishedSaga]:
        rows = await _fetch(
            self._read_conn(),
            "SELECT saga_id, saga_name FROM sagas "
            f"WHERE (status IN ({_LIVE_MARKS}) "
            "AND (runnable = 1 OR saga_id IN (SELECT saga_id FROM inbox))) "
            # a completed child its parent asked to roll back, whose runtime then stopped
            "OR (status = 'completed' "
            "AND saga_id IN (SELECT saga_id FROM inbox WHERE kind = 'compensate'))",
            _LIVE_STATUSES,
        )
        return [UnfinishedSaga(saga_id, saga_name) for saga_id, saga_name in rows]

    async def due(
        self, now: float, *, after: tuple[float, str] | None = None, limit: int = 500
    ) -> Sequence[DueSaga]:
        sql = DUE
        params: list[object] = [now, *_LIVE_STATUSES]
        if after is not None:
            sql += " AND (wake_at > ? OR (wake_at = ? AND saga_id > ?))"
            params += [after[0], after[0], after[1]]
        sql += " ORDER BY wake_at, saga_id LIMIT ?"
        params.append(limit)
        rows = await _fetch(self._read_conn(), sql, params)
        return [DueSaga(saga_id, saga_name, wake_at) for saga_id, saga_name, wake_at in rows]

    async def next_wake_at(self, after: float | None = None) -> float | None:
        sql = NEXT_WAKE_AT
        params: list[object] = list(_LIVE_STATUSES)
        if after is not None:
            sql += " AND wake_at > ?"
            params.append(after)
        rows = await _fetch(self._read_conn(), sql, params)
        value: float | None = rows[0][0] if rows else None
        return value

    async def unreadable_wake_ups(self) -> Sequence[tuple[str, str]]:
        rows = await _fetch(self._read_conn(), NOT_A_TIME, _LIVE_STATUSES)
        return [(saga_id, not_a_time("wake_at", quoted)) for saga_id, quoted in rows]

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
            placeholder=lambda _: "?",
        )
        rows = await _fetch(self._read_conn(), sql, params)
        return [SagaRow(*row) for row in rows]


def count_prunable_sql(statuses: int) -> str:
    """SQL: the sagas a full prune would delete (parents first, then their children),
    counted without writing. Parameters: the statuses and the cutoff, twice."""
    marks = ",".join("?" * statuses)
    ended = (
        f"s.status IN ({marks}) AND s.updated_at < ? "
        "AND NOT EXISTS (SELECT 1 FROM inbox i WHERE i.saga_id = s.saga_id)"
    )
    return f"""
    WITH RECURSIVE gone(saga_id) AS (
        SELECT s.saga_id FROM sagas s WHERE {ended} AND (s.parent_id IS NULL
            OR NOT EXISTS (SELECT 1 FROM sagas p WHERE p.saga_id = s.parent_id))
        UNION
        SELECT s.saga_id FROM sagas s JOIN gone g ON s.parent_id = g.saga_id WHERE {ended}
    )
    SELECT count(*) FROM gone
    """


async def _fetch(
    conn: aiosqlite.Connection, sql: str, params: Sequence[object] = ()
) -> list[sqlite3.Row]:
    """Run a query and read all its rows in one thread hop.

    A cursor left open across awaits keeps its read transaction (and so an
    old snapshot of the database) alive for every other reader of the
    connection: always read to the end at once.
    """
    return list(await conn.execute_fetchall(sql, params))
