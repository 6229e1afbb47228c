"""`replay_check`: would the unfinished sagas of a database replay on new definitions?

Run before a deploy, against the database the running version uses (it only
reads: a SQLite file is opened read-only, PostgreSQL in read-only
transactions, both while runtimes use them). Each unfinished or suspended
saga is matched with the given definition of its name and version; its
history is folded through the machine and, for a code saga, its body runs
against the recorded calls without running any action (`saga.engine.replay`).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from saga import (
    CallKind,
    CorruptSagaError,
    NonDeterminismError,
    PayloadError,
    Saga,
    SagaNotFound,
    SagaStatus,
    engine,
)
from saga.store import HistoryEntry, SagaState, Store, StoredSaga

from .._codec import decode_event
from .._registry import Registry, not_registered
from .._writes import stored_saga
from ..codecs import PayloadCodec

_UNFINISHED = tuple(s.value for s in SagaStatus if s.is_live or s is SagaStatus.SUSPENDED)
_MARKS = ",".join("?" * len(_UNFINISHED))
_SELECT_UNFINISHED = (
    f"SELECT saga_id, saga_name, input, snapshot, seq FROM sagas WHERE status IN ({_MARKS}) "
    "ORDER BY saga_id"
)
_SELECT_HISTORY = "SELECT seq, event FROM history WHERE saga_id=? ORDER BY seq"
_SELECT_ONE = "SELECT saga_id, saga_name, input, snapshot, seq FROM sagas WHERE saga_id=?"


@dataclass(frozen=True, slots=True)
class ReplayProblem:
    """A saga that would not go on on the given definitions, and why.

    `position` (calls counted from 1), `recorded` and `new` are set when the
    body would raise `NonDeterminismError`; `message` always says what happened.
    """

    saga_id: str
    saga_name: str
    version: int
    message: str
    position: int | None = None
    recorded: str | None = None
    new: str | None = None

    def __str__(self) -> str:
        version = f" v{self.version}" if self.version else ""  # 0: its row could not be read
        return f"{self.saga_id} ({self.saga_name}{version}): {self.message}"


class ReplayReport(list[ReplayProblem]):
    """The problems found (a list: `[]` when every saga replays), with what was looked at:
    `checked` sagas, and `skipped` ones by saga name (no definition of that name given)."""

    def __init__(self) -> None:
        super().__init__()
        self.checked = 0
        self.skipped: dict[str, int] = {}


class _Source(Protocol):
    """Rows of a query with `?` placeholders, read-only; `close` lets the database go."""

    async def fetch(self, sql: str, params: Sequence[object]) -> list[tuple[Any, ...]]: ...
    async def close(self) -> None: ...


async def replay_check(
    database: str | os.PathLike[str] | Store,
    *,
    sagas: Iterable[Saga[Any, Any]],
    schema: str = "sagaloop",
    codec: PayloadCodec | None = None,
) -> ReplayReport:
    """Check every unfinished (or suspended) saga in `database` against `sagas`.

    `database` is a SQLite path, a `postgresql://` DSN (in `schema`) or an
    open `Store`. A saga is checked against the definition of its name
    and version; when `sagas` has its name but not its version, that is a
    problem (the saga would be suspended). So is a completed child saga of
    an unfinished one whose version is not given (its parent may yet ask it
    to roll back), and a row that cannot be read. Runs no action and writes
    nothing. Raises `DefinitionError` for two definitions of one name and
    version, `FileNotFoundError` for a path that holds no Sagaloop database.
    `codec` opens values a payload codec wrote (a store brings its own).
    """
    registry = Registry(sagas)
    report = ReplayReport()
    async with _open(database, schema, codec) as source:
        async for saga_id, saga_name, read in source.unfinished():
            if saga_name not in registry:
                report.skipped[saga_name] = report.skipped.get(saga_name, 0) + 1
                continue
            report.checked += 1
            if isinstance(read, CorruptSagaError):
                report.append(ReplayProblem(saga_id, saga_name, 0, f"unreadable: {read}"))
                continue
            stored, history = read
            problem, state = _check_one(registry, stored, history)
            if problem is not None:
                report.append(problem)
            if state is not None:
                report.extend(await _check_children(registry, source, stored, state))
    return report


def _not_registered(registry: Registry, name: str, version: int) -> str:
    given = ", ".join(f"v{v}" for v in registry.versions(name))
    return f"{not_registered(name, version)} (given: {given})"


def _check_one(
    registry: Registry, stored: StoredSaga, history: Sequence[HistoryEntry]
) -> tuple[ReplayProblem | None, SagaState | None]:
    """The problem of one saga (if any), and its complete state when it could be folded."""
    saga_id, version = stored.saga_id, stored.state.definition_version

    def problem(message: str, **where: Any) -> ReplayProblem:
        return ReplayProblem(saga_id, stored.saga_name, version, message, **where)

    saga = registry.get(stored.saga_name, version)
    if saga is None:
        reason = _not_registered(registry, stored.saga_name, version)
        return problem(f"{reason}; the saga would be suspended"), None
    try:
        state = engine.complete(saga, stored, history)
        diverged = engine.replay(saga, saga_id, stored.input, state)
    except NonDeterminismError as exc:  # raised before the body ran (a bad recorded call)
        return problem(str(exc), position=exc.position, recorded=exc.recorded, new=exc.new), None
    except CorruptSagaError as exc:
        return problem(f"its history does not fit the definition: {exc.detail}"), None
    except PayloadError as exc:
        return problem(f"its input does not fit the definition: {exc}"), None
    if diverged is None:
        return None, state
    where = {"position": diverged.position, "recorded": diverged.recorded, "new": diverged.new}
    return problem(str(diverged), **where), state


async def _check_children(
    registry: Registry, source: _Reader, parent: StoredSaga, state: SagaState
) -> list[ReplayProblem]:
    """Completed children of `parent` that could not roll back if it asked them to."""
    problems = []
    for step in state.steps:
        call = step.call
        if call is None or call.kind is not CallKind.CHILD or call.target is None:
            continue
        child = await source.load(call.target)
        if child is None or child.state.status is not SagaStatus.COMPLETED:
            continue  # missing, unreadable, still running (checked itself) or undone already
        name, version = child.saga_name, child.state.definition_version
        if registry.get(name, version) is None:
            reason = _not_registered(registry, name, version)
            problems.append(
                ReplayProblem(
                    parent.saga_id,
                    parent.saga_name,
                    parent.state.definition_version,
                    f"its completed child {child.saga_id!r} could not roll back: {reason}",
                )
            )
    return problems


_Read = tuple[StoredSaga, Sequence[HistoryEntry]] | CorruptSagaError


class _Reader(Protocol):
    def unfinished(self) -> AsyncIterator[tuple[str, str, _Read]]: ...
    async def load(self, saga_id: str) -> StoredSaga | None: ...


@contextlib.asynccontextmanager
async def _open(
    database: str | os.PathLike[str] | Store, schema: str, codec: PayloadCodec | None
) -> AsyncIterator[_Reader]:
    if not isinstance(database, str | os.PathLike):
        yield _StoreReader(database)
        return
    text = os.fspath(database)
    source: _Source
    if text.startswith(("postgresql://", "postgres://")):
        from ._replay_postgres import PostgresSource

        source = await PostgresSource.open(text, schema)
    else:
        source = _SqliteSource(Path(text))
    try:
        yield _RowReader(source, codec)
    finally:
        await source.close()


class _RowReader:
    """Unfinished sagas straight from the rows (read-only SQL)."""

    def __init__(self, source: _Source, codec: PayloadCodec | None) -> None:
        self._source = source
        self._codec = codec

    async def unfinished(self) -> AsyncIterator[tuple[str, str, _Read]]:
        for saga_id, saga_name, input_text, snapshot, seq in await self._source.fetch(
            _SELECT_UNFINISHED, _UNFINISHED
        ):
            try:
                stored = stored_saga(
                    saga_id, saga_name, input_text, snapshot, seq, codec=self._codec
                )
                history = [
                    HistoryEntry(int(number), decode_event(saga_id, event, self._codec))
                    for number, event in await self._source.fetch(_SELECT_HISTORY, (saga_id,))
                ]
            except CorruptSagaError as exc:
                yield str(saga_id), str(saga_name), exc
                continue
            yield stored.saga_id, stored.saga_name, (stored, history)

    async def load(self, saga_id: str) -> StoredSaga | None:
        rows = await self._source.fetch(_SELECT_ONE, (saga_id,))
        if not rows:
            return None
        try:
            sid, name, input_text, snapshot, seq = rows[0]
            return stored_saga(sid, name, input_text, snapshot, seq, codec=self._codec)
        except CorruptSagaError:
            return None


class _StoreReader:
    """Unfinished sagas through an open `Store`'s own reads."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def unfinished(self) -> AsyncIterator[tuple[str, str, _Read]]:
        store = self._store
        rows = [(s.saga_id, s.saga_name) for s in await store.unfinished()]
        after: str | None = None
        while True:
            page = await store.list_sagas(status=SagaStatus.SUSPENDED.value, after=after, limit=500)
            rows.extend((row.saga_id, row.saga_name) for row in page)
            if len(page) < 500:
                break
            after = page[-1].saga_id
        for saga_id, saga_name in sorted(rows):
            try:
                read: _Read = (await store.load(saga_id), await store.history(saga_id))
            except CorruptSagaError as exc:
                read = exc
            yield saga_id, saga_name, read

    async def load(self, saga_id: str) -> StoredSaga | None:
        try:
            return await self._store.load(saga_id)
        except (SagaNotFound, CorruptSagaError):
            return None


class _SqliteSource:
    """The database file opened read-only on exactly its path (never created, never locked)."""

    def __init__(self, path: Path) -> None:
        if not path.is_file():
            raise FileNotFoundError(f"no Sagaloop database at {path}")
        self._path = path
        self._conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)

    async def fetch(self, sql: str, params: Sequence[object]) -> list[tuple[Any, ...]]:
        try:
            return self._conn.execute(sql, params).fetchall()
        except sqlite3.DatabaseError as exc:  # empty, not SQLite, another application's
            raise FileNotFoundError(f"no Sagaloop database at {self._path}: {exc}") from None

    async def close(self) -> None:
        self._conn.close()
