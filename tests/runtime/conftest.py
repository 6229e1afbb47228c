"""Fixtures shared by the runtime tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """What to pass as `Runtime`'s first argument: a SQLite path, or a PostgreSQL DSN."""
    if request.param == "postgres":
        dsn: str = request.getfixturevalue("pg_dsn")  # a fresh database on the test server
        return dsn
    return str(tmp_path / "sagas.db")
