"""A side-effect ledger in its own SQLite file, for runtimes that get SIGKILLed.

Besides the services' records (`checkout.Record`) it keeps what the killed
processes knew and the parent cannot see: which spawns returned (`acks`:
written after `spawn` returned, so an acknowledged saga must exist) and
which faults were injected (`faults`).

Each write is its own transaction in WAL mode with `synchronous=NORMAL`:
once `record` returns, the commit is in the operating system's cache and
survives the death of the process (these tests kill processes, never the
machine). `record` is synchronous on purpose: no await, no interleaving.
"""

from __future__ import annotations

import os
import sqlite3
from collections import Counter
from pathlib import Path

from .checkout import Kind, Record

_SCHEMA = (
    """
    CREATE TABLE IF NOT EXISTS ledger (
        seq             INTEGER PRIMARY KEY AUTOINCREMENT,
        idempotency_key TEXT NOT NULL,
        kind            TEXT NOT NULL CHECK (kind IN ('effect', 'compensation')),
        saga_id         TEXT NOT NULL,
        step            TEXT NOT NULL,
        attempt         INTEGER NOT NULL,
        pid             INTEGER NOT NULL,
        duplicate       INTEGER NOT NULL,
        has_result      INTEGER
    )
    """,
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


class SqliteLedger:
    """An open ledger file (one connection; use it from one thread)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._conn = sqlite3.connect(self.path, isolation_level=None, timeout=10.0)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        for statement in _SCHEMA:
            self._conn.execute(statement)
        self._pid = os.getpid()

    def record(
        self,
        *,
        key: str,
        kind: Kind,
        saga_id: str,
        step: str,
        attempt: int,
        has_result: bool | None = None,
    ) -> bool:
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute(
                "SELECT EXISTS(SELECT 1 FROM ledger WHERE idempotency_key=? AND kind=?)",
                (key, kind),
            ).fetchone()
            duplicate = bool(row[0])
            conn.execute(
                "INSERT INTO ledger(idempotency_key, kind, saga_id, step, attempt, pid, "
                "duplicate, has_result) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (key, kind, saga_id, step, attempt, self._pid, duplicate, has_result),
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return duplicate

    def records(self) -> list[Record]:
        rows = self._conn.execute(
            "SELECT seq, idempotency_key, kind, saga_id, step, attempt, pid, duplicate, "
            "has_result FROM ledger ORDER BY seq"
        ).fetchall()
        return [
            Record(
                seq=seq,
                key=key,
                kind=kind,
                saga_id=saga_id,
                step=step,
                attempt=attempt,
                pid=pid,
                duplicate=bool(duplicate),
                has_result=None if has_result is None else bool(has_result),
            )
            for seq, key, kind, saga_id, step, attempt, pid, duplicate, has_result in rows
        ]

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

    def close(self) -> None:
        self._conn.close()
