from __future__ import annotations

from collections.abc import AsyncIterator

import pytest


@pytest.fixture
def anyio_backend() -> str:
    # aiosqlite runs on asyncio only.
    return "asyncio"


@pytest.fixture
async def pg_dsn() -> AsyncIterator[str]:
    """The DSN of a new, empty PostgreSQL database, dropped after the test."""
    from tests.pg import fresh_database, server_dsn

    async with fresh_database(server_dsn()) as dsn:
        yield dsn
