"""`python -m runtime prune`: retention from the shell, safe beside a running runtime.

It writes through its own connection, a page per short transaction (see
`runtime._retention`): a runtime that has the database open waits at most for one
page (SQLite's busy timeout; PostgreSQL's row locks are skipped, not waited on).
It never joins PostgreSQL as a runtime, so no other runtime counts on it.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from pathlib import Path

from saga import SystemClock

from ._pruner import DEFAULT_TOMBSTONE_WINDOW, Pruner
from ._retention import PAGE, Cursor, Prune
from .codecs import PayloadCodec

_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNIT = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """`30d`, `12h`, `90m`, `45s` (or plain seconds) as seconds; `ValueError` otherwise."""
    match = _DURATION.fullmatch(text.strip())
    if match is not None:
        return float(match.group(1)) * _UNIT[match.group(2)]
    try:
        seconds = float(text)
    except ValueError:
        raise ValueError(f"not a duration: {text!r} (say 30d, 12h, 90m or 45s)") from None
    if not 0 <= seconds < 1e12:
        raise ValueError(f"not a duration: {text!r}")
    return seconds


class _SqlitePages:
    """Pruning pages straight on a SQLite file, through the store's own writer code."""

    def __init__(self, path: Path, busy_timeout: float, codec: PayloadCodec | None) -> None:
        from .sqlite._writer import Batch, BatchWriter

        self._batch = Batch
        self._writer = BatchWriter(path, "FULL", busy_timeout, codec)

    def close(self) -> None:
        self._writer.close()

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
        op = Prune(status, ended_before, now, after, limit, tombstones_before)
        batch = self._batch()
        batch.prunes.append(op)
        self._writer.commit(batch)
        if op.error is not None:
            raise op.error
        return op.pruned, op.cursor

    async def count_prunable(self, statuses: Sequence[str], ended_before: float) -> int:
        from .sqlite._store import count_prunable_sql

        sql = count_prunable_sql(len(statuses))
        params = (*statuses, ended_before, *statuses, ended_before)
        return int(str(self._writer.query(sql, params)[0][0]))


class _PostgresPages:
    def __init__(self, conn: object, codec: PayloadCodec | None) -> None:
        self._conn = conn
        self._codec = codec

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
        from .postgres._pruning import prune_page

        op = Prune(status, ended_before, now, after, limit, tombstones_before)
        await prune_page(self._conn, op, self._codec)  # type: ignore[arg-type]
        return op.pruned, op.cursor

    async def count_prunable(self, statuses: Sequence[str], ended_before: float) -> int:
        from .postgres._pruning import COUNT_PRUNABLE

        count: int = await self._conn.fetchval(  # type: ignore[attr-defined]
            COUNT_PRUNABLE, list(statuses), ended_before
        )
        return count


async def prune_sqlite(
    path: Path,
    older_than: float,
    statuses: Sequence[str],
    *,
    dry_run: bool,
    codec: PayloadCodec | None = None,
) -> int:
    pages = _SqlitePages(path, busy_timeout=30.0, codec=codec)
    try:
        pruner = Pruner(pages, SystemClock(), tombstone_window=DEFAULT_TOMBSTONE_WINDOW)
        return await pruner.prune(older_than, statuses, dry_run=dry_run, paced=True)
    finally:
        pages.close()


async def prune_postgres(
    dsn: str,
    schema: str,
    older_than: float,
    statuses: Sequence[str],
    *,
    dry_run: bool,
    codec: PayloadCodec | None = None,
) -> int:
    import asyncpg

    conn = await asyncpg.connect(dsn, timeout=10, server_settings={"search_path": f'"{schema}"'})
    try:
        pruner = Pruner(
            _PostgresPages(conn, codec), SystemClock(), tombstone_window=DEFAULT_TOMBSTONE_WINDOW
        )
        return await pruner.prune(older_than, statuses, dry_run=dry_run, paced=True)
    finally:
        await conn.close()


def prune_database(
    database: str,
    older_than: float,
    statuses: Sequence[str],
    *,
    dry_run: bool,
    schema: str,
    codec: PayloadCodec | None = None,
) -> int:
    """Prune `database` (a SQLite path or a postgresql:// DSN); the number of sagas.
    `codec` reads inputs a payload codec wrote, for their tombstones' digests (without
    it, a pruned id refuses any later start, whatever its input)."""
    if database.startswith(("postgresql://", "postgres://")):
        return asyncio.run(
            prune_postgres(database, schema, older_than, statuses, dry_run=dry_run, codec=codec)
        )
    return asyncio.run(
        prune_sqlite(Path(database), older_than, statuses, dry_run=dry_run, codec=codec)
    )
