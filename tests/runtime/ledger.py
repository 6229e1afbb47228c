"""A side-effect ledger that survives SIGKILL: what the "services" of a saga saw.

The crash tests' step actions and compensations write here as their side
effect, the way a real step would charge a card. The ledger is its own
SQLite file (stdlib `sqlite3`, autocommit, `synchronous=FULL`), so a record
is durable the moment `record` returns, whatever happens to the process
next. The autoincrement `seq` is the ledger order across processes.

A record also says whether its (key, kind) was already present, the way an
idempotent service would notice a replayed request.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Kind = Literal["effect", "compensation"]

_SCHEMA = """
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
"""


@dataclass(frozen=True, slots=True)
class Record:
    """One side effect as the service saw it.

    `has_result` is only set for compensations: whether the compensation was
    given the step's recorded result (True) or None (an ambiguous step).
    """

    seq: int
    idempotency_key: str
    kind: Kind
    saga_id: str
    step: str
    attempt: int
    pid: int
    duplicate: bool
    has_result: bool | None


class Ledger:
    """An open ledger file; `record` is synchronous on purpose (no await, no interleaving)."""

    def __init__(self, path: str | os.PathLike[str], *, synchronous: str = "FULL") -> None:
        self.path = Path(path)
        self._conn = sqlite3.connect(self.path, isolation_level=None, timeout=10.0)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute(f"PRAGMA synchronous={synchronous}")
        self._conn.execute(_SCHEMA)

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
        """Append one record durably; return whether (key, kind) was already recorded."""
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
                (key, kind, saga_id, step, attempt, os.getpid(), duplicate, has_result),
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return duplicate

    def records(self) -> list[Record]:
        """Every record, in ledger order."""
        return list(self._iter())

    def _iter(self) -> Iterator[Record]:
        rows = self._conn.execute(
            "SELECT seq, idempotency_key, kind, saga_id, step, attempt, pid, duplicate, "
            "has_result FROM ledger ORDER BY seq"
        )
        for seq, key, kind, saga_id, step, attempt, pid, duplicate, has_result in rows:
            yield Record(
                seq=seq,
                idempotency_key=key,
                kind=kind,
                saga_id=saga_id,
                step=step,
                attempt=attempt,
                pid=pid,
                duplicate=bool(duplicate),
                has_result=None if has_result is None else bool(has_result),
            )

    def close(self) -> None:
        self._conn.close()
