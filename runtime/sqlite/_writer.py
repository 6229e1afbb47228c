"""The write side of the SQLite store: one connection, one transaction per batch.

`BatchWriter.commit` runs on a worker thread and writes a whole batch (new
sagas, transitions, quarantines) in one `BEGIN IMMEDIATE` transaction: one
thread hop and one fsync for every saga in the batch. It is synchronous
stdlib `sqlite3` on purpose: a statement-per-await design pays a thread hop
and an event-loop turn per statement, which a busy loop turns into
milliseconds per batch.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from saga import CorruptSagaError, SagaEndedError, SagaNotFound, SagaStatus, StoreError
from saga.store import SagaState, StaleStateError, StoredSaga

from .._codec import encode_event, encode_state, seal
from .._latch import Latch
from .._migrations import migrations_to_apply
from .._retention import Candidate, Prune, plan_page, refuse_pruned
from .._writes import Create, Deliver, Save, new_saga_row, stored_saga
from ..codecs import PayloadCodec
from ._schema import MIGRATIONS

_SELECT_CHUNK = 500
_INDEXED = "status, runnable, wake_at"
"""The columns of `sagas` a transition can change that its indexes cover."""
_ENDED = frozenset(status.value for status in SagaStatus if status.is_terminal)
_HINTS = 10_000
"""At most this many sagas are remembered (`BatchWriter._hints`; forgotten all at once
when full). The sagas in flight are the ones that gain; a hundred thousand waiting
sagas would hold megabytes for nothing."""

Hint = tuple[str, int, float | None, str | None]
"""A row's columns besides the snapshot: its indexed ones (`_INDEXED`), then waiting_for."""

_DELETE_CONSUMED = "DELETE FROM inbox WHERE id=? AND saga_id=?"
_INSERT_NEW = (
    "INSERT INTO sagas(saga_id, saga_name, status, seq, input, snapshot, wake_at, "
    "runnable, waiting_for, created_at, updated_at, version, parent_id) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_UPDATE_SNAPSHOT = (
    "UPDATE sagas SET snapshot=?, seq=?, updated_at=? WHERE saga_id=? AND seq=? AND status=? "
    "AND runnable=? AND wake_at IS ? AND waiting_for IS ?"
)
_UPDATE_FULL = (
    "UPDATE sagas SET snapshot=?, seq=?, waiting_for=?, updated_at=?, "
    "status=?, wake_at=?, runnable=? WHERE saga_id=? AND seq=?"
)


_REPORT = (
    "INSERT OR IGNORE INTO inbox(saga_id, kind, name, payload, key, at) "
    "SELECT ?, ?, ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM sagas WHERE saga_id = ? "
    "AND status IN ('running', 'waiting', 'compensating', 'suspended'))"
)


# A page of a pruning pass, on the sagas_by_age index; the last column says whether the
# row goes (see `runtime._retention`).
_PRUNE_PAGE = """
SELECT saga_id, saga_name, created_at, input,
       updated_at < :cutoff AND NOT EXISTS (SELECT 1 FROM inbox i WHERE i.saga_id = s.saga_id)
       AND (parent_id IS NULL OR NOT EXISTS (SELECT 1 FROM sagas p WHERE p.saga_id = s.parent_id))
FROM sagas s
WHERE status = :status AND created_at < :cutoff AND (created_at, saga_id) > (:at, :id)
ORDER BY created_at, saga_id LIMIT :limit
"""
_EXPIRE_TOMBSTONES = (
    "DELETE FROM tombstones WHERE rowid IN "
    "(SELECT rowid FROM tombstones WHERE pruned_at < ? ORDER BY pruned_at LIMIT ?)"
)


def _hint(state: SagaState) -> Hint:
    return (state.status.value, int(state.in_flight), state.wake_at, state.waiting_for)


@dataclass(slots=True, eq=False)
class Batch:
    """The writes that commit together in one SQLite transaction (group commit)."""

    creates: list[Create] = field(default_factory=list)
    saves: list[Save] = field(default_factory=list)
    deliveries: list[Deliver] = field(default_factory=list)
    statements: list[tuple[str, tuple[object, ...]]] = field(default_factory=list)
    prunes: list[Prune] = field(default_factory=list)
    failure: BaseException | None = None
    done: Latch = field(default_factory=Latch)
    """Set when the batch is committed or has failed (see `failure`)."""

    def __len__(self) -> int:
        return (
            len(self.creates)
            + len(self.saves)
            + len(self.deliveries)
            + len(self.statements)
            + len(self.prunes)
        )


FileIdentity = tuple[int, int]
"""(device, inode): the file itself, whatever path reaches it."""


def file_identity(stat: os.stat_result) -> FileIdentity:
    return stat.st_dev, stat.st_ino


def connect(path: Path, synchronous: str, busy_timeout: float) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    return conn


class BatchWriter:
    """Owns the write connection. Only one thread uses it at a time."""

    def __init__(
        self,
        path: Path,
        synchronous: str,
        busy_timeout: float,
        codec: PayloadCodec | None = None,
    ) -> None:
        self.path = path
        self.codec = codec
        """Seals every user value it writes (`runtime.codecs`)."""
        self._hints: dict[str, Hint] = {}
        """The columns besides the snapshot of each live saga as last written here
        (`_update_guarded`): a hint, checked by the UPDATE itself."""
        self._conn = connect(path, synchronous, busy_timeout)
        try:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._migrate()
            self._files = self._identities()
        except BaseException:
            self._conn.close()
            raise
        self._lost_files: str | None = None
        """Why this writer refuses every batch (its files were deleted or replaced)."""

    def _identities(self) -> tuple[FileIdentity, FileIdentity] | None:
        """The identity of the database file and of its write-ahead log."""
        try:
            return file_identity(os.stat(self.path)), file_identity(os.stat(f"{self.path}-wal"))
        except FileNotFoundError:
            return None

    def _check_files(self) -> None:
        """Refuse to acknowledge anything once the files under the connection changed.

        SQLite keeps writing to a deleted `-wal` through its open descriptor, and
        a crash then loses everything in it: acknowledged sagas among it. So on
        the first sight of it, checkpoint the log into the database file (what
        is in it is saved) and refuse every batch from then on.
        """
        if self._lost_files is None:
            now = self._identities()
            if now == self._files:
                return
            if self._files is None:  # no log yet when it opened: the first one is its own
                self._files = now
                return
            self._lost_files = (
                f"the SQLite files of {self.path} were deleted or replaced while this "
                "runtime had them open (its -wal file is gone or another file); writes "
                "can no longer be made durable, so this runtime acknowledges nothing "
                "more: stop it and start it again on the database"
            )
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("PRAGMA wal_checkpoint(FULL)")
        raise StoreError(self._lost_files)

    def close(self) -> None:
        self._conn.close()

    def query(self, sql: str, params: Sequence[object] = ()) -> list[tuple[object, ...]]:
        """Rows of a read on the write connection (the CLI's dry run)."""
        return self._conn.execute(sql, params).fetchall()

    def pragma(self, name: str) -> object:
        return self._conn.execute(f"PRAGMA {name}").fetchone()[0]

    def _migrate(self) -> None:
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            current = conn.execute("SELECT max(version) FROM schema_version").fetchone()[0] or 0
            for version, statements in migrations_to_apply(current, MIGRATIONS, str(self.path)):
                for statement in statements:
                    conn.execute(statement)
                conn.execute("INSERT INTO schema_version(version) VALUES (?)", (version,))
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise

    def commit(self, batch: Batch) -> None:
        """Write `batch` in one transaction; per-op refusals land in each op's `error`."""
        conn = self._conn
        self._check_files()
        conn.execute("BEGIN IMMEDIATE")
        try:
            history: list[tuple[object, ...]] = []
            creates = self._refuse_tombstoned(batch.creates) if batch.creates else []
            if creates and not self._insert_unchecked(creates, history):
                self._insert_new(creates, history)
            if batch.saves:
                if not self._update_guarded(batch.saves, history):
                    self._update(batch.saves, history)
                self._report(batch.saves)
            if batch.deliveries:
                self._deliver(batch.deliveries)
            for statement, params in batch.statements:
                conn.execute(statement, params)
            if history:
                conn.executemany(
                    "INSERT INTO history(saga_id, seq, at, event) VALUES (?, ?, ?, ?)", history
                )
            for prune in batch.prunes:
                self._prune(prune)
            conn.execute("COMMIT")
            self._check_files()  # deleted during this batch: it is saved, not acknowledged
        except BaseException:
            self._hints.clear()  # they may describe writes that were rolled back
            # The failed statement may already have rolled the transaction back.
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise

    def _refuse_tombstoned(self, creates: list[Create]) -> list[Create]:
        """The creates whose id no pruned saga had; the others are refused (one cheap
        look at an empty table when retention never ran, whoever prunes)."""
        conn = self._conn
        if not conn.execute("SELECT EXISTS (SELECT 1 FROM tombstones)").fetchone()[0]:
            return creates
        ids = list({op.saga.saga_id for op in creates})
        tombs: dict[str, tuple[str, str]] = {
            str(saga_id): (str(name), str(digest))
            for saga_id, name, digest in self._select_in(
                "saga_id, saga_name, input_digest", ids, table="tombstones"
            )
        }
        if not tombs:
            return creates
        kept = []
        for op in creates:
            tomb = tombs.get(op.saga.saga_id)
            if tomb is None:
                kept.append(op)
            else:
                op.error = refuse_pruned(op.saga.saga_id, op.saga.saga_name, op.saga.input, tomb)
        return kept

    def _prune(self, op: Prune) -> None:
        """One page of a pruning pass (see `runtime._retention`)."""
        conn = self._conn
        at, after_id = op.after if op.after is not None else (float("-inf"), "")
        rows = [
            Candidate(saga_id, name, created_at, input_column, bool(prunable))
            for saga_id, name, created_at, input_column, prunable in conn.execute(
                _PRUNE_PAGE,
                {
                    "cutoff": op.ended_before,
                    "status": op.status,
                    "at": at,
                    "id": after_id,
                    "limit": op.limit,
                },
            )
        ]
        page = plan_page(op, rows, self.codec)
        gone = [(saga_id,) for saga_id in page.gone]
        # Its own savepoint: a page that fails fails alone, not the batch's other writes.
        conn.execute("SAVEPOINT prune")
        try:
            conn.executemany("DELETE FROM history WHERE saga_id = ?", gone)
            conn.executemany("DELETE FROM inbox WHERE saga_id = ?", gone)
            conn.executemany("DELETE FROM sagas WHERE saga_id = ?", gone)
            conn.executemany(
                "INSERT OR REPLACE INTO tombstones VALUES (?, ?, ?, ?)", page.tombstones
            )
            if op.tombstones_before is not None:
                conn.execute(_EXPIRE_TOMBSTONES, (op.tombstones_before, op.limit))
        except sqlite3.Error as exc:
            conn.execute("ROLLBACK TO prune")
            op.pruned, op.cursor = 0, None
            op.error = StoreError(f"pruning {self.path} failed: {exc}")
        conn.execute("RELEASE prune")

    def _all_or_nothing(self, statements: list[tuple[str, list[tuple[object, ...]]]]) -> bool:
        """Run `statements` (executemany each); keep them only if every row changed one
        row. Then nothing needs checking first: no SELECT, no temporary IN-list table."""
        conn = self._conn
        conn.execute("SAVEPOINT unchecked")
        changed = expected = 0
        for sql, rows in statements:
            if rows:
                changed += conn.executemany(sql, rows).rowcount
                expected += len(rows)
        if changed != expected:
            conn.execute("ROLLBACK TO unchecked")
        conn.execute("RELEASE unchecked")
        return changed == expected

    def _insert_unchecked(self, creates: list[Create], history: list[tuple[object, ...]]) -> bool:
        """Insert new sagas none of which exists (the usual case); False, having written
        nothing, if one does or one id comes twice (then `_insert_new` sorts them out)."""
        if len({op.saga.saga_id for op in creates}) != len(creates):
            return False
        rows = [new_saga_row(op, self.codec) for op in creates]
        if not self._all_or_nothing([(_INSERT_NEW + " ON CONFLICT(saga_id) DO NOTHING", rows)]):
            return False
        for op in creates:
            state = op.saga.state
            self._remember(state.saga_id, _hint(state))
            history.append(
                (state.saga_id, state.seq, op.event.at, encode_event(op.event, self.codec))
            )
        return True

    def _update_guarded(self, saves: list[Save], history: list[tuple[object, ...]]) -> bool:
        """Write saves that each follow the stored snapshot (the usual case), in UPDATEs
        guarded by the expected seq; False, having written nothing, if one does not or a
        saga comes twice (then `_update` checks each)."""
        if len({op.state.saga_id for op in saves}) != len(saves):
            return False
        narrow: list[tuple[object, ...]] = []
        full: list[tuple[object, ...]] = []
        consumed: list[tuple[object, ...]] = []
        hints = self._hints
        written: list[Hint] = []
        for op in saves:
            state = op.state
            snapshot = encode_state(state, self.codec)
            hint = _hint(state)
            written.append(hint)
            if hints.get(state.saga_id) == hint:
                # Only the snapshot changes (see `_update`). The guard makes sure the
                # other columns hold what the hint says (a quarantine changes the status).
                narrow.append(
                    (snapshot, state.seq, state.updated_at, state.saga_id, state.seq - 1, *hint)
                )
            else:
                status, runnable, wake_at, _ = hint
                full.append(
                    (
                        snapshot,
                        state.seq,
                        state.waiting_for,
                        state.updated_at,
                        status,
                        wake_at,
                        runnable,
                        state.saga_id,
                        state.seq - 1,
                    )
                )
            if op.consumed is not None:
                consumed.append((op.consumed, state.saga_id))
        if not self._all_or_nothing(
            [(_UPDATE_SNAPSHOT, narrow), (_UPDATE_FULL, full), (_DELETE_CONSUMED, consumed)]
        ):
            self._hints.clear()  # some hint may be wrong: start again from none
            return False
        for op, hint in zip(saves, written, strict=True):
            state = op.state
            self._remember(state.saga_id, hint)
            history.append(
                (state.saga_id, state.seq, op.event.at, encode_event(op.event, self.codec))
            )
        return True

    def _remember(self, saga_id: str, hint: Hint) -> None:
        if hint[0] in _ENDED:
            self._hints.pop(saga_id, None)
            return
        if len(self._hints) >= _HINTS:
            self._hints.clear()
        self._hints[saga_id] = hint

    def _select_in(
        self, columns: str, ids: list[str], table: str = "sagas"
    ) -> list[tuple[object, ...]]:
        rows: list[tuple[object, ...]] = []
        for start in range(0, len(ids), _SELECT_CHUNK):
            chunk = ids[start : start + _SELECT_CHUNK]
            marks = ",".join("?" * len(chunk))
            sql = f"SELECT {columns} FROM {table} WHERE saga_id IN ({marks})"
            rows.extend(self._conn.execute(sql, chunk).fetchall())
        return rows

    def _insert_new(self, creates: list[Create], history: list[tuple[object, ...]]) -> None:
        ids = list({op.saga.saga_id for op in creates})
        existing: dict[str, tuple[object, ...] | StoredSaga] = {
            row[0]: row  # type: ignore[misc]
            for row in self._select_in("saga_id, saga_name, input, snapshot", ids)
        }
        rows: list[tuple[object, ...]] = []
        for op in creates:
            saga = op.saga
            found = existing.get(saga.saga_id)
            if found is not None:
                try:
                    op.existing = (
                        found
                        if isinstance(found, StoredSaga)
                        else stored_saga(found[0], found[1], found[2], found[3], codec=self.codec)
                    )
                except CorruptSagaError as exc:
                    op.error = exc
                continue
            existing[saga.saga_id] = saga  # a duplicate later in this batch sees this one
            rows.append(new_saga_row(op, self.codec))
            self._remember(saga.saga_id, _hint(saga.state))
            history.append(
                (saga.saga_id, saga.state.seq, op.event.at, encode_event(op.event, self.codec))
            )
        if rows:
            self._conn.executemany(_INSERT_NEW, rows)

    def _update(self, saves: list[Save], history: list[tuple[object, ...]]) -> None:
        # Check each save against the stored seq first (the write lock is held):
        # a stale or replayed save is refused alone; the rest of the batch commits.
        ids = [op.state.saga_id for op in saves]
        stored: dict[str, tuple[object, ...]] = {
            row[0]: row[1:]  # type: ignore[misc]
            for row in self._select_in(f"saga_id, seq, {_INDEXED}", ids)
        }
        saves_of = Counter(ids)
        full: list[tuple[object, ...]] = []
        narrow: list[tuple[object, ...]] = []
        consumed: list[tuple[int, str]] = []
        for op in saves:
            state = op.state
            row = stored.get(state.saga_id)
            if row is None:
                op.error = SagaNotFound(state.saga_id)
                continue
            if row[0] != state.seq - 1:
                op.error = StaleStateError(
                    f"saga {state.saga_id!r}: stored snapshot is #{row[0]}, "
                    f"this write expected #{state.seq - 1}"
                )
                continue
            hint = _hint(state)
            indexed = hint[:3]
            stored[state.saga_id] = (state.seq, *indexed)  # a later save in this batch builds on it
            self._remember(state.saga_id, hint)
            snapshot = encode_state(state, self.codec)
            # SQLite rewrites every index over a column an UPDATE sets, even to the same
            # value: most transitions leave those columns alone, so leave them out. A saga
            # saved twice in one batch takes the full UPDATE both times, to keep its order.
            if row[1:] == indexed and saves_of[state.saga_id] == 1:
                narrow.append(
                    (snapshot, state.seq, state.waiting_for, state.updated_at, state.saga_id)
                )
            else:
                full.append(
                    (
                        snapshot,
                        state.seq,
                        state.waiting_for,
                        state.updated_at,
                        *indexed,
                        state.saga_id,
                    )
                )
            history.append(
                (state.saga_id, state.seq, op.event.at, encode_event(op.event, self.codec))
            )
            if op.consumed is not None:
                consumed.append((op.consumed, state.saga_id))
        if narrow:
            self._conn.executemany(
                "UPDATE sagas SET snapshot=?, seq=?, waiting_for=?, updated_at=? WHERE saga_id=?",
                narrow,
            )
        if full:
            self._conn.executemany(
                "UPDATE sagas SET snapshot=?, seq=?, waiting_for=?, updated_at=?, "
                "status=?, runnable=?, wake_at=? WHERE saga_id=?",
                full,
            )
        if consumed:
            self._conn.executemany(_DELETE_CONSUMED, consumed)

    def _report(self, saves: list[Save]) -> None:
        """The inbox items the saves written carry for other sagas (a child's report to its
        parent), unless that saga has ended."""
        items = [
            (
                item.saga_id,
                item.kind,
                item.name,
                seal(item.payload, self.codec),
                item.key,
                item.at,
                item.saga_id,
            )
            for op in saves
            if op.error is None and (item := op.deliver) is not None
        ]
        if items:
            self._conn.executemany(_REPORT, items)

    def _deliver(self, deliveries: list[Deliver]) -> None:
        statuses = {
            row[0]: row[1]
            for row in self._select_in(
                "saga_id, status", list({op.item.saga_id for op in deliveries})
            )
        }
        for op in deliveries:
            item = op.item
            status = statuses.get(item.saga_id)
            if status is None:
                op.error = SagaNotFound(item.saga_id)
            elif status in _ENDED and not (item.kind == "compensate" and status == "completed"):
                op.error = SagaEndedError(item.saga_id, str(status))
            else:
                cursor = self._conn.execute(
                    "INSERT OR IGNORE INTO inbox(saga_id, kind, name, payload, key, at) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        item.saga_id,
                        item.kind,
                        item.name,
                        seal(item.payload, self.codec),
                        item.key,
                        item.at,
                    ),
                )
                op.accepted = cursor.rowcount == 1
