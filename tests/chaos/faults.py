"""Store faults: injected at the `Store` boundary, or made real inside SQLite.

`FaultyStore` wraps a real `SqliteStore` (a `DelegatingStore`). Armed faults
hit the next writes (`create` and `save`), one each:

- a failed write: the write is refused before it reaches SQLite;
- a lost acknowledgement: the write commits, then `StoreError` is raised;
- "database is locked", for real: a second connection holds SQLite's write
  lock (`BEGIN IMMEDIATE`, `WriteLock`) while the write runs, longer than
  the store's busy timeout;
- disk full, for real: the store's own write connection may not grow the
  file (`DiskFull`), so a write that needs a new page gets SQLITE_FULL. The
  disk stays full until SQLite has refused one more write per armed fault
  (writes that still fit in the file's pages succeed meanwhile).

The board also records what the runtime was told (real SQLite errors seen by
its callers), which writes are under way (to tell an idle runtime), and the
sagas left stranded, with no actor and nothing due to wake them: a saga whose
`Suspended` record could not be written (the runtime tries it again after a
while), or whose start or resume committed while its caller was told it
failed (it runs when delivered again, or at the next start).
"""

from __future__ import annotations

import enum
import sqlite3
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeVar

import anyio

from runtime import DelegatingStore, SqliteStore, StoreError
from runtime.sqlite._thread import WriterThread
from saga.engine import Event, Resumed, SagaStarted, Suspended
from saga.store import (
    DueSaga,
    HistoryEntry,
    InboxItem,
    SagaRow,
    SagaState,
    StoredSaga,
    UnfinishedSaga,
)

T = TypeVar("T")


class FaultKind(enum.StrEnum):
    FAILED_WRITE = "failed write"
    LOST_ACK = "lost acknowledgement"
    LOCKED = "database is locked"
    DISK_FULL = "disk full"


class InjectedStoreError(StoreError):
    """Raised by `FaultyStore` for an injected fault (a failed write, a lost acknowledgement)."""


def sqlite_code(error: BaseException) -> int | None:
    """The primary SQLite result code of a `sqlite3.Error`, if it carries one."""
    code = getattr(error, "sqlite_errorcode", None)
    return None if code is None else int(code) & 0xFF


def sqlite_cause(error: BaseException) -> str | None:
    """ "database is locked" or "disk full" if SQLite itself refused the write."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, sqlite3.Error):
            code = sqlite_code(seen)
            if code == sqlite3.SQLITE_BUSY:
                return str(FaultKind.LOCKED)
            if code == sqlite3.SQLITE_FULL:
                return str(FaultKind.DISK_FULL)
        seen = seen.__cause__ or seen.__context__
    return None


Chooser = Callable[[str, Event], "FaultKind | None"]
"""Picks a fault (or none) for a write of saga `saga_id` recording `event`."""


class FaultBoard:
    """Faults to inject and what came of them; outlives the runtimes it serves.

    Armed faults go first, one per write; then `choose` (random faults) if set.
    `refuse` makes every save of those sagas fail but their `Suspended` record
    (a store that can no longer record a saga's progress, yet lets the parking
    land). `before_write` is awaited before every write. `on_fault` hears of
    every injected fault and every write SQLite refused.
    """

    def __init__(self) -> None:
        self.armed: deque[FaultKind] = deque()
        self.choose: Chooser | None = None
        self.before_write: Callable[[str, Event], Awaitable[None]] | None = None
        self.on_fault: Callable[[str, str], None] | None = None
        self.injected: Counter[FaultKind] = Counter()
        self.refused_by_sqlite: Counter[str] = Counter()
        """Writes SQLite itself refused (locked, full), as their callers saw them."""
        self.refuse: set[str] = set()
        self.refusals: dict[str, list[float]] = {}
        """When each refused save of the `refuse` sagas failed (anyio time)."""
        self.stranded: set[str] = set()
        self._changed = anyio.Event()

    def arm(self, kind: FaultKind, count: int = 1) -> None:
        self.armed.extend([kind] * count)

    def disarm(self) -> None:
        self.armed.clear()
        self.refuse.clear()
        self.choose = None
        self.before_write = None

    def next_fault(self, saga_id: str, event: Event) -> FaultKind | None:
        if self.armed:
            return self.armed.popleft()
        return None if self.choose is None else self.choose(saga_id, event)

    def injected_one(self, kind: FaultKind, saga_id: str) -> None:
        self.injected[kind] += 1
        if self.on_fault is not None:
            self.on_fault(str(kind), saga_id)

    def refused(self, cause: str, saga_id: str) -> None:
        self.refused_by_sqlite[cause] += 1
        if self.on_fault is not None:
            self.on_fault(f"refused by SQLite: {cause}", saga_id)

    def notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    def changed(self) -> anyio.Event:
        """Set at the end of the next store write: take it before looking, then wait."""
        return self._changed

    async def wait_for(self, predicate: Callable[[], bool], timeout: float) -> None:
        """Wait until `predicate()` holds, re-checking after every store write."""
        with anyio.fail_after(timeout):
            while not predicate():
                await self._changed.wait()


class WriteLock:
    """Another connection holding SQLite's write lock, as a second process would."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None

    def _take(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=30.0
        )
        conn.execute("BEGIN IMMEDIATE")
        return conn

    async def acquire(self) -> None:
        self._conn = await anyio.to_thread.run_sync(self._take)

    async def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(_rollback_and_close, conn)


def _rollback_and_close(conn: sqlite3.Connection) -> None:
    conn.execute("ROLLBACK")
    conn.close()


@asynccontextmanager
async def write_lock(path: Path) -> AsyncIterator[WriteLock]:
    lock = WriteLock(path)
    await lock.acquire()
    try:
        yield lock
    finally:
        await lock.release()


class DiskFull:
    """The store's own write connection may not grow the file: writes needing a page fail.

    `PRAGMA max_page_count` is per connection, so it must be set on the one
    that writes: this reaches into the store's private `_writer._conn`, and
    runs on the store's private writer thread so it never races a commit. No
    public hook exists for it, and filling the real file system is no option
    in a test. `fill` pins the limit at the current size and fills what free
    space the file has with ballast; `lift` undoes both.
    """

    def __init__(self, store: SqliteStore) -> None:
        self.store = store
        self._default: int | None = None

    def _conn(self) -> sqlite3.Connection:
        writer = self.store._writer
        if writer is None:
            raise RuntimeError("the store is not open")
        return writer._conn

    def _thread(self) -> WriterThread:
        thread = self.store._thread
        if thread is None:
            raise RuntimeError("the store is not open")
        return thread

    def _fill(self) -> None:
        conn = self._conn()
        conn.execute("CREATE TABLE IF NOT EXISTS chaos_ballast (b BLOB)")
        if self._default is None:
            self._default = int(conn.execute("PRAGMA max_page_count").fetchone()[0])
        conn.execute("PRAGMA max_page_count=1")  # never below the current size: pins it
        page = int(conn.execute("PRAGMA page_size").fetchone()[0])
        for size in (page - 200, page // 4, page // 16, 16):
            while True:
                try:
                    conn.execute("INSERT INTO chaos_ballast VALUES (zeroblob(?))", (size,))
                except sqlite3.OperationalError as exc:
                    if sqlite_code(exc) != sqlite3.SQLITE_FULL:
                        raise
                    break

    def _lift(self) -> None:
        conn = self._conn()
        conn.execute(f"PRAGMA max_page_count={self._default or 1073741823}")
        conn.execute("DELETE FROM chaos_ballast")

    async def fill(self) -> None:
        await self._thread().run(self._fill)

    async def lift(self) -> None:
        await self._thread().run(self._lift)  # shielded: the disk is always given back


class FaultyStore(DelegatingStore):
    """A real `SqliteStore` behind a delegate that injects the board's faults."""

    def __init__(self, inner: SqliteStore, board: FaultBoard) -> None:
        super().__init__(inner)
        self.sqlite = inner
        self.board = board
        self.pending = 0
        """Store calls under way (the runtime is not idle while one is)."""
        self._full: DiskFull | None = None
        self._full_refusals_wanted = 0

    async def create(self, saga: StoredSaga, event: Event) -> StoredSaga | None:
        return await self._write(
            saga.saga_id, event, lambda: self.inner.create(saga, event), save=False
        )

    async def save(
        self,
        state: SagaState,
        event: Event,
        *,
        consumed: int | None = None,
        deliver: InboxItem | None = None,
    ) -> None:
        await self._write(
            state.saga_id,
            event,
            lambda: self.inner.save(state, event, consumed=consumed, deliver=deliver),
            save=True,
        )

    async def _write(
        self, saga_id: str, event: Event, write: Callable[[], Awaitable[T]], *, save: bool
    ) -> T:
        board = self.board
        self.pending += 1
        committed = started = False
        try:
            if board.before_write is not None:
                await board.before_write(saga_id, event)
            if save and saga_id in board.refuse and not isinstance(event, Suspended):
                board.injected_one(FaultKind.FAILED_WRITE, saga_id)
                board.refusals.setdefault(saga_id, []).append(anyio.current_time())
                raise InjectedStoreError(f"this store refuses the writes of saga {saga_id!r}")
            fault = board.next_fault(saga_id, event)
            if fault is not None:
                board.injected_one(fault, saga_id)
            if fault is FaultKind.FAILED_WRITE:
                raise InjectedStoreError("injected: the write failed")
            if fault is FaultKind.DISK_FULL:
                await self._fill_disk()
            try:
                if fault is FaultKind.LOCKED:
                    async with write_lock(self.sqlite.path):
                        result = await write()
                else:
                    result = await write()
            except StoreError as exc:
                cause = sqlite_cause(exc)
                if cause is not None:
                    board.refused(cause, saga_id)
                if cause == FaultKind.DISK_FULL:
                    await self._disk_refused()
                raise
            committed = True
            started = isinstance(event, Resumed) or (
                isinstance(event, SagaStarted) and result is None  # a new saga, not a duplicate
            )
            if fault is FaultKind.LOST_ACK:
                raise InjectedStoreError("injected: committed, but the acknowledgement was lost")
            board.stranded.discard(saga_id)
            return result
        except StoreError:
            # No actor drives it for now: an escalation whose record did not land,
            # or a start or resume whose caller was told it failed.
            if (isinstance(event, Suspended) and not committed) or started:
                board.stranded.add(saga_id)
            raise
        finally:
            self.pending -= 1
            board.notify()

    async def _fill_disk(self) -> None:
        self._full_refusals_wanted += 1
        if self._full is None:
            self._full = DiskFull(self.sqlite)
            await self._full.fill()

    async def _disk_refused(self) -> None:
        self._full_refusals_wanted -= 1
        full = self._full
        if self._full_refusals_wanted <= 0 and full is not None:
            self._full, self._full_refusals_wanted = None, 0
            await full.lift()

    async def _read(self, read: Callable[[], Awaitable[T]]) -> T:
        self.pending += 1
        try:
            return await read()
        finally:
            self.pending -= 1

    async def load(self, saga_id: str) -> StoredSaga:
        return await self._read(lambda: self.inner.load(saga_id))

    async def history(self, saga_id: str) -> Sequence[HistoryEntry]:
        return await self._read(lambda: self.inner.history(saga_id))

    async def inbox(self, saga_id: str) -> Sequence[InboxItem]:
        return await self._read(lambda: self.inner.inbox(saga_id))

    async def unfinished(self) -> Sequence[UnfinishedSaga]:
        return await self._read(self.inner.unfinished)

    async def runnable(self) -> Sequence[UnfinishedSaga]:
        return await self._read(self.inner.runnable)

    async def due(
        self, now: float, *, after: tuple[float, str] | None = None, limit: int = 500
    ) -> Sequence[DueSaga]:
        return await self._read(lambda: self.inner.due(now, after=after, limit=limit))

    async def next_wake_at(self, after: float | None = None) -> float | None:
        return await self._read(lambda: self.inner.next_wake_at(after))

    async def unreadable_wake_ups(self) -> Sequence[tuple[str, str]]:
        return await self._read(self.inner.unreadable_wake_ups)

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
        return await self._read(
            lambda: self.inner.list_sagas(
                saga_name=saga_name,
                status=status,
                waiting_for=waiting_for,
                after=after,
                limit=limit,
                version=version,
            )
        )

    async def quarantine(self, saga_id: str, reason: str) -> None:
        try:
            await self._read(lambda: self.inner.quarantine(saga_id, reason))
        finally:
            self.board.notify()
