"""A side-effect ledger in its own SQLite file, for runtimes that get SIGKILLed.

The crash suite's ledger (`tests/runtime/ledger.py`) plus what the killed
processes knew and the parent cannot see: which spawns returned (`acks`:
written after `spawn` returned, so an acknowledged saga must exist) and
which faults were injected (`faults`).

Each write is its own transaction in WAL mode with `synchronous=NORMAL`:
once `record` returns, the commit is in the operating system's cache and
survives the death of the process (these tests kill processes, never the
machine).
"""

from __future__ import annotations

import os
from collections import Counter

from tests.runtime.ledger import Ledger

_EXTRA_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS acks (saga_id TEXT PRIMARY KEY, pid INTEGER NOT NULL)",
    """
    CREATE TABLE IF NOT EXISTS faults (
        seq     INTEGER PRIMARY KEY AUTOINCREMENT,
        kind    TEXT NOT NULL,
        saga_id TEXT,
        pid     INTEGER NOT NULL
    )
    """,
)


class SqliteLedger(Ledger):
    """The crash suite's ledger, plus what only a killed process knew: acks and faults."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__(path, synchronous="NORMAL")
        for statement in _EXTRA_SCHEMA:
            self._conn.execute(statement)
        self._pid = os.getpid()

    def ack(self, saga_id: str) -> None:
        """`spawn(saga_id)` returned: the saga must exist from now on."""
        self._conn.execute(
            "INSERT OR IGNORE INTO acks(saga_id, pid) VALUES (?, ?)", (saga_id, self._pid)
        )

    def acks(self) -> set[str]:
        return {row[0] for row in self._conn.execute("SELECT saga_id FROM acks")}

    def fault(self, kind: str, saga_id: str | None = None) -> None:
        """A fault was injected (or a real lock taken) by this process."""
        self._conn.execute(
            "INSERT INTO faults(kind, saga_id, pid) VALUES (?, ?, ?)", (kind, saga_id, self._pid)
        )

    def faults(self) -> Counter[str]:
        rows = self._conn.execute("SELECT kind, count(*) FROM faults GROUP BY kind")
        return Counter(dict(rows.fetchall()))
