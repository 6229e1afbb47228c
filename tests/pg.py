"""Throwaway PostgreSQL databases for the tests.

The server comes from `tests/with_postgres.sh` (which `make test` and CI use)
or from `SAGALOOP_PG_DSN`. Without one, PostgreSQL tests fail loudly; set
`SAGALOOP_SKIP_POSTGRES=1` on a developer machine to skip them instead.
"""

from __future__ import annotations

import os

import pytest

SKIP_ASKED = os.environ.get("SAGALOOP_SKIP_POSTGRES") == "1"


def server_dsn() -> str:
    """The DSN of the test server's maintenance database; fails (or skips, if asked) without one."""
    dsn = os.environ.get("SAGALOOP_PG_DSN")
    if dsn:
        return dsn
    if SKIP_ASKED:
        pytest.skip("PostgreSQL tests skipped: SAGALOOP_SKIP_POSTGRES=1")
    pytest.fail(
        "no PostgreSQL server: run the tests through tests/with_postgres.sh (as `make test` "
        "does), or set SAGALOOP_PG_DSN; SAGALOOP_SKIP_POSTGRES=1 skips these tests instead",
        pytrace=False,
    )


def database_dsn(server: str, database: str) -> str:
    base, _, _ = server.rpartition("/")
    return f"{base}/{database}"
