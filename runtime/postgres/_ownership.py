"""Which runtime drives which saga on PostgreSQL: leases, claims, hand-backs and notices.

`PostgresStore` mixes this in; it is the half of the store that is about
ownership, beside the half about saga rows (`_store`). Each runtime has a row
in `runtimes` with a lease on the database's clock, renewed by a task on its
own connection; a saga belongs to the runtime that created or claimed it, and
claiming bumps the saga's epoch so that a former owner's writes are fenced off.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Sequence

import asyncpg

from saga.store import Notice, OwnedSaga, UnfinishedSaga

from ._connections import CONNECTION_TROUBLE, Connection, borrowed
from ._schema import LIVE, TERMINAL
from ._writer import PgBatch

logger = logging.getLogger("runtime.postgres")

OWNER_IS_GONE = """(s.owner IS NULL OR NOT EXISTS (
    SELECT 1 FROM runtimes r WHERE r.runtime_id = s.owner AND r.lease_until > clock_timestamp()))"""
"""SQL: saga `s` has no owner with a live lease."""

_SELF_IS_LIVE = """EXISTS (
    SELECT 1 FROM runtimes me WHERE me.runtime_id = $1 AND me.lease_until > clock_timestamp())"""
"""SQL: the claiming runtime's own lease is live (one that lapsed must not take sagas)."""

_ASKED_TO_COMPENSATE = """(s.status = 'completed' AND EXISTS (
    SELECT 1 FROM inbox i WHERE i.saga_id = s.saga_id AND i.kind = 'compensate'))"""
"""SQL: saga `s` is a completed child whose parent asked it to roll back."""

_CLAIM = f"""
UPDATE sagas s SET owner = $1,
    -- a runtime that owns it already keeps its epoch: its own actor may be writing
    epoch = CASE WHEN s.owner = $1 THEN s.epoch ELSE s.epoch + 1 END
WHERE s.saga_id = $2 AND (s.status NOT IN {TERMINAL} OR {_ASKED_TO_COMPENSATE})
  AND (s.owner = $1 OR s.status = 'suspended' OR {OWNER_IS_GONE}) AND {_SELF_IS_LIVE}
RETURNING s.epoch
"""

_CLAIM_ORPHANS = f"""
WITH candidates AS (
    SELECT saga_id FROM sagas WHERE runnable AND status IN {LIVE}
    UNION
    SELECT saga_id FROM sagas WHERE wake_at <= $2 AND wake_at IS NOT NULL AND status IN {LIVE}
    UNION
    SELECT DISTINCT saga_id FROM inbox
), picked AS (
    SELECT s.saga_id FROM sagas s JOIN candidates c USING (saga_id)
    WHERE (s.status IN {LIVE} OR {_ASKED_TO_COMPENSATE}) AND {OWNER_IS_GONE} AND {_SELF_IS_LIVE}
      AND ($4::text[] IS NULL OR (s.saga_name = ANY($4) AND (
           -- a version this runtime has ($5 NULL: any), or one no live runtime has
           -- (claimed to be suspended with the reason)
           $5::text[] IS NULL OR (s.saga_name || ':' || s.version) = ANY($5)
           OR $6::bool AND NOT EXISTS (
               SELECT 1 FROM runtimes r WHERE r.lease_until > clock_timestamp()
                 AND (r.sagas IS NULL OR (s.saga_name || ':' || s.version) = ANY(r.sagas))))))
    LIMIT $3
    FOR UPDATE OF s SKIP LOCKED
)
UPDATE sagas s SET owner = $1, epoch = s.epoch + 1
FROM picked WHERE s.saga_id = picked.saga_id
RETURNING s.saga_id, s.saga_name, s.epoch
"""

_SERVED_ELSEWHERE = """
SELECT EXISTS (SELECT 1 FROM runtimes r WHERE r.runtime_id <> $1
               AND r.lease_until > clock_timestamp() AND (r.sagas IS NULL OR $2 = ANY(r.sagas)))
"""

_OWNED_WITH_WORK = f"""
SELECT s.saga_id, s.saga_name,
       EXISTS (SELECT 1 FROM inbox i WHERE i.saga_id = s.saga_id) AS inbox,
       EXISTS (SELECT 1 FROM inbox i WHERE i.saga_id = s.saga_id AND i.kind = 'cancel') AS cancel
-- an anti-join: `NOT s.saga_id = ANY($2)` would scan the whole array for each row
FROM sagas s LEFT JOIN unnest($2::text[]) AS held(saga_id) USING (saga_id)
WHERE s.owner = $1 AND s.status IN {LIVE}
  AND (EXISTS (SELECT 1 FROM inbox i WHERE i.saga_id = s.saga_id)
       OR (held.saga_id IS NULL AND (s.runnable OR s.wake_at <= $3)))
"""

_JOIN = """
INSERT INTO runtimes (runtime_id, name, lease_until, sagas)
VALUES ($1, $2, clock_timestamp() + $3 * interval '1 second', $4)
ON CONFLICT (runtime_id) DO UPDATE SET lease_until = excluded.lease_until, sagas = excluded.sagas
"""

_RENEW = """
WITH before AS (SELECT lease_until FROM runtimes WHERE runtime_id = $1)
UPDATE runtimes SET lease_until = clock_timestamp() + $2 * interval '1 second'
WHERE runtime_id = $1
RETURNING (SELECT extract(epoch FROM clock_timestamp() - lease_until) FROM before)
"""


class Ownership:
    """The ownership half of `PostgresStore` (a mixin: the attributes below are the store's)."""

    dsn: str
    schema: str
    lease: float
    name: str
    saga_names: frozenset[str] | None
    saga_versions: frozenset[tuple[str, int]] | None
    _joined_at: float = math.inf
    lease_lapses: int
    _runtime_id: str
    _pool: asyncpg.Pool | None
    _closing: bool
    _epochs: dict[str, int]
    _releasing: dict[str, PgBatch]
    _batch: PgBatch
    _has_work: asyncio.Event
    _notice_handler: Callable[[Notice], None] | None

    async def _fetch(self, sql: str, *args: object) -> list[asyncpg.Record]:
        raise NotImplementedError

    async def _join(self, conn: Connection) -> None:
        """Enter this runtime's row and lease; forget runtimes long dead (their sagas count
        as orphans either way)."""
        await conn.execute(_JOIN, self._runtime_id, self.name, self.lease, self._version_keys())
        self._joined_at = time.monotonic()
        await conn.execute(
            "DELETE FROM runtimes WHERE lease_until < clock_timestamp() - interval '1 hour'"
        )

    def _channel(self, runtime_id: str) -> str:
        return f"{self.schema}_{runtime_id}"

    @property
    def _broadcast(self) -> str:
        return f"{self.schema}_all"

    async def _hand_back(self) -> None:
        """A clean stop: give every saga back and let the others sweep at once."""
        pool = self._pool
        if pool is None:
            return
        try:
            async with borrowed(pool) as conn, conn.transaction():
                await conn.execute(
                    "UPDATE sagas SET owner = NULL WHERE owner = $1", self._runtime_id
                )
                await conn.execute("DELETE FROM runtimes WHERE runtime_id = $1", self._runtime_id)
                await conn.execute("SELECT pg_notify($1, 'sweep')", self._broadcast)
        except CONNECTION_TROUBLE as exc:
            logger.warning(
                "could not hand sagas back (%s); they are taken over at lease expiry", exc
            )
        self._epochs.clear()

    # -- background: lease, notices ----------------------------------------

    async def _renew_loop(self) -> None:
        # Its own connection: a pool busy with writes must not make the lease lapse.
        delay = self.lease / 3
        conn: Connection | None = None
        try:
            while True:
                await asyncio.sleep(delay)
                try:
                    if conn is None or conn.is_closed():
                        conn = await asyncpg.connect(
                            self.dsn,
                            timeout=self.lease,
                            server_settings={"search_path": f'"{self.schema}"'},
                        )
                    await asyncio.wait_for(self._renew(conn), timeout=self.lease / 3)
                    delay = self.lease / 3
                except CONNECTION_TROUBLE as exc:
                    delay = min(self.lease / 3, 0.5)
                    logger.warning("could not renew the lease of %s: %s", self._runtime_id, exc)
                    if conn is not None:
                        conn.terminate()
                        conn = None
        finally:
            if conn is not None:
                conn.terminate()

    async def _renew(self, conn: Connection) -> None:
        overdue = await conn.fetchval(_RENEW, self._runtime_id, self.lease)
        if overdue is None:
            # Our row is gone (an operator removed it): join again.
            await conn.execute(_JOIN, self._runtime_id, self.name, self.lease, self._version_keys())
        elif overdue > 0:
            self.lease_lapses += 1
            logger.warning(
                "runtime %s renewed its lease %.1f s after it lapsed: other runtimes may have "
                "taken some of its sagas over; this runtime drops each such saga at its next write",
                self._runtime_id,
                float(overdue),
            )

    def on_notice(self, handler: Callable[[Notice], None]) -> None:
        self._notice_handler = handler

    def _notify_handler(self, notice: Notice) -> None:
        if self._notice_handler is not None:
            self._notice_handler(notice)

    def _on_notification(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        if not isinstance(payload, str):
            return
        if payload == "sweep":
            self._notify_handler(Notice(None))
        elif payload[:2] in ("n:", "c:"):
            self._notify_handler(Notice(payload[2:], cancel=payload[0] == "c"))

    async def _listen_loop(self) -> None:
        """Keep one connection LISTENing; after any reconnection, sweep (notices were missed)."""
        delay = 0.1
        channels = (self._channel(self._runtime_id), self._broadcast)
        while True:
            conn: Connection | None = None
            try:
                conn = await asyncpg.connect(self.dsn)
                for channel in channels:
                    await conn.add_listener(channel, self._on_notification)
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _conn, lost=lost: lost.set())
                self._notify_handler(Notice(None))
                delay = 0.1
                while not lost.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(lost.wait(), timeout=self.lease)
                    if not lost.is_set():
                        # notices a silently dead socket
                        await asyncio.wait_for(conn.execute("SELECT 1"), timeout=self.lease)
            except CONNECTION_TROUBLE as exc:
                logger.warning("notice connection lost (%s); reconnecting in %.1f s", exc, delay)
            finally:
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(conn.close(), timeout=1)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    # -- ownership ---------------------------------------------------------

    async def claim(self, saga_id: str) -> bool:
        # A claim by the owner keeps the epoch its own pending hand-back is fenced on:
        # let that hand-back land first, or it would undo this claim.
        pending = self._releasing.get(saga_id)
        if pending is not None:
            await pending.done.wait()
        rows = await self._fetch(_CLAIM, self._runtime_id, saga_id)
        if not rows:
            return False
        epoch: int = rows[0][0]
        self._epochs[saga_id] = epoch
        return True

    def release(self, saga_id: str) -> None:
        epoch = self._epochs.pop(saga_id, None)
        if epoch is None or self._closing or self._pool is None:
            return
        self._batch.releases.append((saga_id, epoch))
        self._releasing[saga_id] = self._batch
        self._has_work.set()

    def _version_keys(self) -> list[str] | None:
        """`name:version` of each definition this runtime has (None: it runs any)."""
        if self.saga_versions is None:
            return None
        return sorted(f"{name}:{version}" for name, version in self.saga_versions)

    async def served_elsewhere(self, saga_name: str, version: int) -> bool:
        rows = await self._fetch(_SERVED_ELSEWHERE, self._runtime_id, f"{saga_name}:{version}")
        return bool(rows[0][0])

    async def claim_orphans(self, now: float, limit: int) -> Sequence[UnfinishedSaga]:
        names = None if self.saga_names is None else sorted(self.saga_names)
        keys = self._version_keys()
        # Runtimes opened together see each other's rows within a lease: only then is a
        # version nobody has told from one whose runtime is still starting.
        settled = time.monotonic() - self._joined_at >= self.lease
        rows = await self._fetch(_CLAIM_ORPHANS, self._runtime_id, now, limit, names, keys, settled)
        for row in rows:
            self._epochs[row["saga_id"]] = row["epoch"]
        return [UnfinishedSaga(row["saga_id"], row["saga_name"]) for row in rows]

    async def owned_with_work(self, now: float) -> Sequence[OwnedSaga]:
        rows = await self._fetch(_OWNED_WITH_WORK, self._runtime_id, list(self._epochs), now)
        return [OwnedSaga(*row) for row in rows]

    def holds(self, saga_id: str) -> bool:
        """Whether this runtime holds `saga_id` (as far as it knows)."""
        return saga_id in self._epochs
