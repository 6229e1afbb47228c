"""What the PostgreSQL store's parts share about connections: which errors mean trouble
with the server, which of them are safe to retry, and how a DSN is shown in messages."""

from __future__ import annotations

import urllib.parse
import uuid

import asyncpg
from asyncpg.pool import PoolConnectionProxy

Connection = asyncpg.Connection | PoolConnectionProxy

CONNECTION_TROUBLE = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)

RETRYABLE = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,  # admin shutdown, server starting up
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.SerializationError,
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.IdleInTransactionSessionTimeoutError,  # rolled back by the server
)
"""Errors after which the same statement or transaction can safely run again: nothing
of it committed (a failure at COMMIT itself is `CommitOutcomeUnknownError`, never retried)."""


def new_runtime_id() -> str:
    return f"rt{uuid.uuid4().hex[:20]}"


def redacted(dsn: str) -> str:
    """`dsn` without its password, for messages."""
    parts = urllib.parse.urlsplit(dsn)
    if parts.password is None:
        return dsn
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def retryable(exc: BaseException) -> bool:
    if isinstance(exc, RETRYABLE):
        return True
    # asyncpg reports a connection that died under it as an InterfaceError.
    return isinstance(exc, asyncpg.InterfaceError) and "connection" in str(exc)
