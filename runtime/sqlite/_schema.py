"""The SQLite schema, as numbered migrations applied in order at open.

`owner` and `epoch` are there from day one for shared stores (leases and
fencing); the embedded store leaves them at their defaults.
"""

from __future__ import annotations

from .._migrations import latest_version

MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        """
        CREATE TABLE sagas (
            saga_id    TEXT PRIMARY KEY,
            saga_name  TEXT NOT NULL,
            status     TEXT NOT NULL,
            seq        INTEGER NOT NULL,
            input      TEXT NOT NULL,
            snapshot   TEXT NOT NULL,
            wake_at    REAL,
            owner      TEXT,
            epoch      INTEGER NOT NULL DEFAULT 0,
            error      TEXT,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        )
        """,
        """
        CREATE INDEX sagas_live ON sagas(status, created_at)
            WHERE status IN ('running', 'waiting', 'compensating')
        """,
        "CREATE INDEX sagas_wake_at ON sagas(wake_at) WHERE wake_at IS NOT NULL",
        """
        CREATE TABLE history (
            saga_id TEXT NOT NULL,
            seq     INTEGER NOT NULL,
            at      REAL NOT NULL,
            event   TEXT NOT NULL,
            PRIMARY KEY (saga_id, seq)
        )
        """,
    ),
    2: (
        "ALTER TABLE sagas ADD COLUMN runnable INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE sagas ADD COLUMN waiting_for TEXT",
        # Before passivation every live saga had an actor: resume them all once.
        "UPDATE sagas SET runnable = 1 WHERE status IN ('running', 'compensating')",
        "CREATE INDEX sagas_runnable ON sagas(saga_id) WHERE runnable = 1",
        "CREATE INDEX sagas_listing ON sagas(status, saga_name, saga_id)",
        """
        CREATE TABLE inbox (
            id      INTEGER PRIMARY KEY AUTOINCREMENT,
            saga_id TEXT NOT NULL,
            kind    TEXT NOT NULL,
            name    TEXT NOT NULL,
            payload TEXT NOT NULL,
            key     TEXT,
            at      REAL NOT NULL
        )
        """,
        "CREATE INDEX inbox_by_saga ON inbox(saga_id, id)",
        "CREATE UNIQUE INDEX inbox_by_key ON inbox(saga_id, kind, key) WHERE key IS NOT NULL",
    ),
    3: (
        # No query used these two (sagas_listing serves every lookup by status), yet
        # every write kept them up; the `status IN (...)` condition of sagas_live also
        # built a temporary table at every insert and status change.
        "DROP INDEX IF EXISTS sagas_live",
        "DROP INDEX IF EXISTS sagas_runnable",
    ),
    4: (
        # The definition version an instance runs on, beside its name: for listing by
        # version (the snapshot holds it too, as `definition_version`, omitted when 1).
        "ALTER TABLE sagas ADD COLUMN version INTEGER NOT NULL DEFAULT 1",
        """
        UPDATE sagas SET version = json_extract(snapshot, '$.definition_version')
        WHERE json_valid(snapshot)
          AND typeof(json_extract(snapshot, '$.definition_version')) = 'integer'
        """,
    ),
    5: (
        # Retention. A child is pruned only once its parent is gone (a parent that rolls
        # back asks its completed children to compensate), so each row names its parent.
        "ALTER TABLE sagas ADD COLUMN parent_id TEXT",
        """
        UPDATE sagas SET parent_id = json_extract(snapshot, '$.parent.saga_id')
        WHERE json_valid(snapshot) AND json_type(snapshot, '$.parent.saga_id') = 'text'
        """,
        # Ended sagas by age: `created_at` never changes, so no transition rewrites this
        # index (one over `updated_at` would be rewritten at every one); a saga ends after
        # it was created, so `created_at < cutoff` bounds the candidates.
        "CREATE INDEX sagas_by_age ON sagas(status, created_at, saga_id)",
        # What is left of a pruned saga: enough to keep its start exactly-once.
        """
        CREATE TABLE tombstones (
            saga_id      TEXT PRIMARY KEY,
            saga_name    TEXT NOT NULL,
            input_digest TEXT NOT NULL,
            pruned_at    REAL NOT NULL
        )
        """,
        "CREATE INDEX tombstones_by_age ON tombstones(pruned_at)",
    ),
}

SCHEMA_VERSION = latest_version(MIGRATIONS)
