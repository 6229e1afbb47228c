"""The PostgreSQL schema, as numbered migrations applied in order at open.

Several runtimes may start at once: migrations run in one transaction under
a transaction-scoped advisory lock, so exactly one of them migrates and the
others wait, then find the schema current. Nothing else takes that lock.
"""

from __future__ import annotations

import re

from .._migrations import latest_version

# The lock key: any constant distinct from the application's own advisory locks.
MIGRATION_LOCK_KEY = 0x5A6A100B

_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]{0,39}")


def check_schema_name(schema: str) -> str:
    """`schema` if it is a plain lowercase identifier (it is spliced into SQL and channel names)."""
    if not _IDENTIFIER.fullmatch(schema):
        raise ValueError(
            f"schema must be a lowercase identifier of at most 40 characters, got {schema!r}"
        )
    return schema


LIVE = "('running', 'waiting', 'compensating')"
"""SQL list of the statuses of a saga some runtime must drive (`SagaStatus.is_live`)."""

TERMINAL = "('completed', 'compensated', 'failed')"

MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        """
        CREATE TABLE sagas (
            saga_id     text COLLATE "C" PRIMARY KEY,  -- bytewise order, as on SQLite
            saga_name   text NOT NULL,
            status      text NOT NULL,
            seq         bigint NOT NULL,
            input       text NOT NULL,
            snapshot    text NOT NULL,
            wake_at     double precision,
            runnable    boolean NOT NULL DEFAULT false,
            waiting_for text,
            owner       text,
            epoch       bigint NOT NULL DEFAULT 0,
            error       text,
            created_at  double precision NOT NULL,
            updated_at  double precision NOT NULL
        )
        """,
        f"CREATE INDEX sagas_runnable ON sagas (saga_id) WHERE runnable AND status IN {LIVE}",
        f"CREATE INDEX sagas_wake_at ON sagas (wake_at, saga_id) "
        f"WHERE wake_at IS NOT NULL AND status IN {LIVE}",
        "CREATE INDEX sagas_owner ON sagas (owner) WHERE owner IS NOT NULL",
        "CREATE INDEX sagas_listing ON sagas (status, saga_name, saga_id)",
        """
        CREATE TABLE history (
            saga_id text COLLATE "C" NOT NULL,
            seq     bigint NOT NULL,
            at      double precision NOT NULL,
            event   text NOT NULL,
            PRIMARY KEY (saga_id, seq)
        )
        """,
        """
        CREATE TABLE inbox (
            id      bigserial PRIMARY KEY,
            saga_id text COLLATE "C" NOT NULL,
            kind    text NOT NULL,
            name    text NOT NULL,
            payload text NOT NULL,
            key     text,
            at      double precision NOT NULL
        )
        """,
        "CREATE INDEX inbox_by_saga ON inbox (saga_id, id)",
        "CREATE UNIQUE INDEX inbox_by_key ON inbox (saga_id, kind, key) WHERE key IS NOT NULL",
        # One row per runtime process: its lease, on the database's clock. A saga
        # whose owner has no row with a live lease is an orphan, free to claim.
        """
        CREATE TABLE runtimes (
            runtime_id  text PRIMARY KEY,
            name        text NOT NULL,
            started_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
            lease_until timestamptz NOT NULL
        )
        """,
    ),
    2: (
        # The definition version an instance runs on, beside its name: listing and claims
        # by version (the snapshot holds it as `definition_version`, omitted when 1).
        "ALTER TABLE sagas ADD COLUMN version integer NOT NULL DEFAULT 1",
        # `name:version` of each definition a runtime has (NULL: any), so that a saga of a
        # version no live runtime has can be told from one another runtime will take.
        "ALTER TABLE runtimes ADD COLUMN sagas text[]",
        # Only the top-level field: snapshots of version 1 leave it out, and a step's
        # result may hold the same key (the fields before it are the tag, id and name).
        r"""
        UPDATE sagas
        SET version = substring(snapshot FROM
            '^\{"type":"saga","saga_id":"(?:[^"\\]|\\.)*","saga_name":"(?:[^"\\]|\\.)*",'
            '"definition_version":([0-9]{1,9})[,}]')::int
        WHERE snapshot ~
            '^\{"type":"saga","saga_id":"(?:[^"\\]|\\.)*","saga_name":"(?:[^"\\]|\\.)*",'
            '"definition_version":[0-9]{1,9}[,}]'
        """,
    ),
    3: (
        # Retention (see runtime/_retention.py): a child goes only once its parent is gone.
        'ALTER TABLE sagas ADD COLUMN parent_id text COLLATE "C"',
        # Only rows that can name a parent, each in its own subtransaction: a snapshot
        # edited into invalid JSON keeps no parent instead of failing the migration.
        """
        DO $$
        DECLARE r record;
        BEGIN
            FOR r IN SELECT saga_id, snapshot FROM sagas WHERE snapshot LIKE '%"parent":%' LOOP
                BEGIN
                    UPDATE sagas SET parent_id = r.snapshot::jsonb -> 'parent' ->> 'saga_id'
                    WHERE saga_id = r.saga_id;
                EXCEPTION WHEN others THEN NULL;
                END;
            END LOOP;
        END $$
        """,
        f"CREATE INDEX sagas_by_age ON sagas (status, created_at, saga_id) "
        f"WHERE status IN {TERMINAL}",
        """
        CREATE TABLE tombstones (
            saga_id      text COLLATE "C" PRIMARY KEY,
            saga_name    text NOT NULL,
            input_digest text NOT NULL,
            pruned_at    double precision NOT NULL
        )
        """,
        "CREATE INDEX tombstones_by_age ON tombstones (pruned_at)",
    ),
}

SCHEMA_VERSION = latest_version(MIGRATIONS)
