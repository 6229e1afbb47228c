"""The one migration loop both stores run at open: which numbered migrations a database
at schema version `current` still needs, or `SchemaVersionError` if a newer Sagaloop
wrote it. Each store applies them in its own transaction (SQLite's `BEGIN IMMEDIATE`,
PostgreSQL's advisory-locked transaction) and records each version it applied."""

from __future__ import annotations

from collections.abc import Mapping

from ._errors import SchemaVersionError

Migrations = Mapping[int, tuple[str, ...]]
"""Schema version -> the statements that bring the version before it to it."""


def latest_version(migrations: Migrations) -> int:
    """The schema version `migrations` lead to (they are numbered 1, 2, ... without gaps)."""
    latest = max(migrations)
    if sorted(migrations) != list(range(1, latest + 1)):
        raise AssertionError(f"migrations must be numbered 1..{latest} without gaps")
    return latest


def migrations_to_apply(
    current: int, migrations: Migrations, where: str
) -> list[tuple[int, tuple[str, ...]]]:
    """The migrations after `current`, in order; `where` names the database in errors."""
    latest = latest_version(migrations)
    if current > latest:
        raise SchemaVersionError(
            f"{where} has schema version {current}; this Sagaloop knows up to {latest}"
        )
    return [(version, migrations[version]) for version in range(current + 1, latest + 1)]
