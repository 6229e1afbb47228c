from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    # aiosqlite runs on asyncio only.
    return "asyncio"
