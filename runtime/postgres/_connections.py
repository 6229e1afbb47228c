"""What the PostgreSQL store's parts share about connections: which errors mean trouble
with the server, which of them are safe to retry, how a pooled connection is borrowed,
and how a DSN is shown in messages."""

from __future__ import annotations

import urllib.parse
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from asyncpg.pool import Pool, PoolConnectionProxy

Connection = asyncpg.Connection | PoolConnectionProxy

CONNECTION_TROUBLE = (
    OSError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,  # a connection asyncpg left mid-protocol (see borrowed)
)

RETRYABLE = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,  # admin shutdown, server starting up
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.SerializationError,
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.IdleInTransactionSessionTimeoutError,  # rolled back by the server
    asyncpg.InternalClientError,  # raised before a statement is sent (see borrowed)
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


@asynccontextmanager
async def borrowed(pool: Pool) -> AsyncIterator[PoolConnectionProxy]:
    """`pool.acquire()`, except that a connection asyncpg reports stuck mid-protocol is
    closed rather than pooled again.

    A server that ends a session in the middle of an operation (a restart, an
    administrator's terminate) can leave asyncpg's protocol waiting for a reply that
    never comes; the pool hands that connection out again and every statement on it
    fails with "cannot switch to state ...; another operation is in progress"
    (MagicStack/asyncpg#1069). Nothing reaches the server then, so the caller may retry.
    """
    async with pool.acquire() as conn:
        try:
            yield conn
        except asyncpg.InternalClientError:
            conn.terminate()
            raise
