"""The PostgreSQL side of `replay_check`: the rows it needs, read in read-only transactions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Self

from ..postgres._schema import check_schema_name


def _numbered(sql: str) -> str:
    parts = sql.split("?")
    return parts[0] + "".join(f"${i}{part}" for i, part in enumerate(parts[1:], 1))


class PostgresSource:
    """One connection to a Sagaloop schema (`sagaloop`), never writing."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    @classmethod
    async def open(cls, dsn: str, schema: str = "sagaloop") -> Self:
        import asyncpg

        search_path = f'"{check_schema_name(schema)}"'
        conn = await asyncpg.connect(dsn, timeout=10, server_settings={"search_path": search_path})
        return cls(conn)

    async def fetch(self, sql: str, params: Sequence[object]) -> list[tuple[Any, ...]]:
        async with self._conn.transaction(readonly=True):
            return [tuple(row) for row in await self._conn.fetch(_numbered(sql), *params)]

    async def close(self) -> None:
        await self._conn.close()
