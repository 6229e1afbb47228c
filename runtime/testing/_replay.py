"""`replay_check`: would the unfinished sagas of a database replay on new definitions?

Run before a deploy, against the database the running version uses (it only
reads: a SQLite file is opened read-only, PostgreSQL in read-only
transactions, both while runtimes use them). Each unfinished or suspended
saga is matched with the given definition of its name and version; its
history is folded through the machine and, for a code saga, its body runs
against the recorded calls without running any action (`saga.engine.replay`).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from saga import CorruptSagaError, NonDeterminismError, PayloadError, Saga, SagaStatus, engine
from saga.store import HistoryEntry, Store, StoredSaga

from .._codec import decode_event
from .._writes import stored_saga

_UNFINISHED = tuple(s.value for s in SagaStatus if s.is_live or s is SagaStatus.SUSPENDED)
_MARKS = ",".join("?" * len(_UNFINISHED))
_SELECT_UNFINISHED = (
    f"SELECT saga_id, saga_name, input, snapshot, seq FROM sagas WHERE status IN ({_MARKS}) "
    "ORDER BY saga_id"
)
_SELECT_HISTORY = "SELECT seq, event FROM history WHERE saga_id=? ORDER BY seq"


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
        return f"{self.saga_id} ({self.saga_name} v{self.version}): {self.message}"


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
) -> ReplayReport:
    """Check every unfinished (or suspended) saga in `database` against `sagas`.

    `database` is a SQLite path, a `postgresql://` DSN (in `schema`) or an
    open `Store`. A saga is checked against the definition of its name
    and version; when `sagas` has its name but not its version, that is a
    problem (the saga would be suspended). Runs no action and writes nothing.
    """
    definitions: dict[tuple[str, int], Saga[Any, Any]] = {}
    for saga in sagas:
        if not isinstance(saga, Saga):
            raise TypeError(f"sagas must be Saga definitions, got {saga!r}")
        definitions[(saga.name, saga.version)] = saga
    names = {name: sorted(v for n, v in definitions if n == name) for name, _ in definitions}
    report = ReplayReport()
    async for stored, history in _unfinished(database, schema):
        version = stored.state.definition_version
        if stored.saga_name not in names:
            report.skipped[stored.saga_name] = report.skipped.get(stored.saga_name, 0) + 1
            continue
        report.checked += 1
        definition = definitions.get((stored.saga_name, version))
        if definition is None:
            given = ", ".join(f"v{v}" for v in names[stored.saga_name])
            report.append(
                ReplayProblem(
                    stored.saga_id,
                    stored.saga_name,
                    version,
                    f"{stored.saga_name} v{version} is not registered (given: {given}); "
                    "the saga would be suspended",
                )
            )
            continue
        problem = _check_one(definition, stored, history)
        if problem is not None:
            report.append(problem)
    return report


def _check_one(
    saga: Saga[Any, Any], stored: StoredSaga, history: Sequence[HistoryEntry]
) -> ReplayProblem | None:
    saga_id, version = stored.saga_id, stored.state.definition_version

    def problem(message: str, **where: Any) -> ReplayProblem:
        return ReplayProblem(saga_id, stored.saga_name, version, message, **where)

    try:
        if stored.state.partial:
            upto = [entry for entry in history if entry.seq <= stored.state.seq]
            state = engine.fold(saga, saga_id, upto)
        else:
            engine.check_fits(saga, stored.state)
            state = stored.state
        diverged = engine.replay(saga, saga_id, stored.input, state)
    except NonDeterminismError as exc:  # raised before the body ran (a bad recorded call)
        diverged = exc
    except CorruptSagaError as exc:
        return problem(f"its history does not fit the definition: {exc.detail}")
    except PayloadError as exc:
        return problem(f"its input does not fit the definition: {exc}")
    if diverged is None:
        return None
    return problem(
        str(diverged), position=diverged.position, recorded=diverged.recorded, new=diverged.new
    )


async def _unfinished(
    database: str | os.PathLike[str] | Store, schema: str
) -> AsyncIterator[tuple[StoredSaga, Sequence[HistoryEntry]]]:
    """(stored saga, history) of each unfinished or suspended saga, in id order."""
    if not isinstance(database, str | os.PathLike):
        async for pair in _from_store(database):
            yield pair
        return
    text = os.fspath(database)
    source: _Source
    if text.startswith(("postgresql://", "postgres://")):
        from ._replay_postgres import PostgresSource

        source = await PostgresSource.open(text, schema)
    else:
        source = _SqliteSource(Path(text))
    try:
        rows = await source.fetch(_SELECT_UNFINISHED, _UNFINISHED)
        for saga_id, saga_name, input_text, snapshot, seq in rows:
            history = [
                HistoryEntry(int(number), decode_event(saga_id, event))
                for number, event in await source.fetch(_SELECT_HISTORY, (saga_id,))
            ]
            yield stored_saga(saga_id, saga_name, input_text, snapshot, seq), history
    finally:
        await source.close()


async def _from_store(store: Store) -> AsyncIterator[tuple[StoredSaga, Sequence[HistoryEntry]]]:
    rows = [(s.saga_id, s.saga_name) for s in await store.unfinished()]
    after: str | None = None
    while True:
        page = await store.list_sagas(status=SagaStatus.SUSPENDED.value, after=after, limit=500)
        rows.extend((row.saga_id, row.saga_name) for row in page)
        if len(page) < 500:
            break
        after = page[-1].saga_id
    for saga_id, _ in sorted(rows):
        yield await store.load(saga_id), await store.history(saga_id)


class _SqliteSource:
    """The database file opened read-only on exactly its path (never created, never locked)."""

    def __init__(self, path: Path) -> None:
        import sqlite3

        if not path.is_file():
            raise FileNotFoundError(f"no Sagaloop database at {path}")
        self._conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)

    async def fetch(self, sql: str, params: Sequence[object]) -> list[tuple[Any, ...]]:
        return self._conn.execute(sql, params).fetchall()

    async def close(self) -> None:
        self._conn.close()
