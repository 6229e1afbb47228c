"""The shared store: one PostgreSQL database, several runtimes (`PostgresStore`).

Importing this package needs asyncpg (`pip install 'sagaloop[postgres]'`).
"""

from ._store import PostgresStore

__all__ = ("PostgresStore",)
