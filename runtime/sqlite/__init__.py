"""The embedded store: one SQLite file, one runtime at a time (`SqliteStore`)."""

from ._store import SqliteStore, Synchronous

__all__ = ("SqliteStore", "Synchronous")
