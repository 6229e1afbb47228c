"""The write side of the PostgreSQL store: one transaction per batch of writes.

Every pending write (new sagas, transitions, deliveries, hand-backs) joins
the current batch; `commit_batch` writes a whole batch in one transaction
with one statement per kind of write (arrays through `unnest`), so a
hundred sagas share one commit and a handful of round trips.

Each transition is conditional on the saga's `seq` and on the epoch this
runtime holds (fencing): a runtime that lost a saga to another one writes
nothing for it, and learns why.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from saga import CorruptSagaError, SagaEndedError, SagaNotFound, SagaStatus
from saga.store import LeaseLostError, StaleStateError

from .._codec import encode_event, encode_state, seal
from .._errors import CommitOutcomeUnknownError
from .._latch import Latch
from .._writes import Create, Deliver, Save, new_saga_row, stored_saga
from ..codecs import PayloadCodec
from ._pruning import refuse_tombstoned
from ._schema import TERMINAL

Connection = asyncpg.Connection | PoolConnectionProxy


@dataclass(slots=True, eq=False)
class PgBatch:
    """The writes that commit together in one PostgreSQL transaction (group commit), with
    the hand-backs and quarantines that ride along; `done` is set once it is decided."""

    creates: list[Create] = field(default_factory=list)
    saves: list[Save] = field(default_factory=list)
    deliveries: list[Deliver] = field(default_factory=list)
    releases: list[tuple[str, int]] = field(default_factory=list)
    quarantines: list[tuple[str, str, int]] = field(default_factory=list)
    done: Latch = field(default_factory=Latch)
    failure: BaseException | None = None

    def reset(self) -> None:
        """Forget the outcome of a failed attempt before the batch is written again."""
        for create in self.creates:
            create.existing = create.error = None
        for save in self.saves:
            save.error = None
        for delivery in self.deliveries:
            delivery.accepted, delivery.error = False, None

    def __len__(self) -> int:
        return (
            len(self.creates)
            + len(self.saves)
            + len(self.deliveries)
            + len(self.releases)
            + len(self.quarantines)
        )


_CREATE = """
WITH v AS (
    SELECT * FROM unnest($2::text[], $3::text[], $4::text[], $5::bigint[], $6::text[],
                         $7::text[], $8::float8[], $9::bool[], $10::text[], $11::float8[],
                         $12::float8[], $13::int[], $14::text[], $15::float8[], $16::text[])
        AS v(saga_id, saga_name, status, seq, input, snapshot, wake_at, runnable,
             waiting_for, created_at, updated_at, version, parent_id, at, event)
), ins AS (
    INSERT INTO sagas (saga_id, saga_name, status, seq, input, snapshot, wake_at, runnable,
                       waiting_for, owner, epoch, created_at, updated_at, version, parent_id)
    SELECT saga_id, saga_name, status, seq, input, snapshot, wake_at, runnable,
           waiting_for, $1, 1, created_at, updated_at, version, parent_id FROM v
    ON CONFLICT (saga_id) DO NOTHING
    RETURNING saga_id
), hist AS (
    INSERT INTO history (saga_id, seq, at, event)
    SELECT v.saga_id, v.seq, v.at, v.event FROM v JOIN ins USING (saga_id)
)
SELECT saga_id FROM ins
"""

_SAVE = f"""
WITH v AS (
    SELECT * FROM unnest($2::text[], $3::bigint[], $4::bigint[], $5::text[], $6::text[],
                         $7::float8[], $8::bool[], $9::text[], $10::float8[], $11::float8[],
                         $12::text[], $13::bigint[])
        AS v(saga_id, seq, epoch, snapshot, status, wake_at, runnable, waiting_for,
             updated_at, at, event, consumed)
), upd AS (
    UPDATE sagas s
    SET snapshot = v.snapshot, status = v.status, seq = v.seq, wake_at = v.wake_at,
        runnable = v.runnable, waiting_for = v.waiting_for, updated_at = v.updated_at,
        -- a saga that ended or was suspended needs no owner: hand it back at once
        owner = CASE WHEN v.status IN {TERMINAL} OR v.status = 'suspended'
                     THEN NULL ELSE s.owner END
    FROM v
    WHERE s.saga_id = v.saga_id AND s.seq = v.seq - 1 AND s.epoch = v.epoch AND s.owner = $1
    RETURNING s.saga_id
), hist AS (
    INSERT INTO history (saga_id, seq, at, event)
    SELECT v.saga_id, v.seq, v.at, v.event FROM v JOIN upd USING (saga_id)
), applied AS (
    -- the item this transition applied; and every item of a saga that just ended
    -- (but a parent's request that a completed child roll back)
    DELETE FROM inbox i USING v JOIN upd USING (saga_id)
    WHERE i.saga_id = v.saga_id AND (i.id = v.consumed OR (v.status IN {TERMINAL}
          AND NOT (v.status = 'completed' AND i.kind = 'compensate')))
)
SELECT saga_id FROM upd
"""

_DELIVER = f"""
WITH s AS (
    SELECT saga_id, status, owner FROM sagas WHERE saga_id = $2
), ins AS (
    INSERT INTO inbox (saga_id, kind, name, payload, key, at)
    SELECT $2, $3, $4, $5, $6, $7 FROM s
    WHERE s.status NOT IN {TERMINAL} OR ($3 = 'compensate' AND s.status = 'completed')
    ON CONFLICT (saga_id, kind, key) WHERE key IS NOT NULL DO NOTHING
    RETURNING id
), told AS (
    -- the owner hears of it when this commits, so the item is durable by then
    SELECT pg_notify($8 || '_' || s.owner, $9 || s.saga_id) FROM s
    WHERE s.owner IS NOT NULL AND s.owner <> $1 AND EXISTS (SELECT 1 FROM ins)
)
SELECT s.status, (SELECT count(*) FROM ins) AS accepted, (SELECT count(*) FROM told)
FROM s
"""

_RELEASE = """
UPDATE sagas s SET owner = NULL
FROM unnest($2::text[], $3::bigint[]) AS v(saga_id, epoch)
WHERE s.saga_id = v.saga_id AND s.epoch = v.epoch AND s.owner = $1
"""

_QUARANTINE = (
    "UPDATE sagas SET status = 'suspended', error = $2, owner = NULL "
    "WHERE saga_id = $1 AND owner = $3 AND epoch = $4"
)


async def commit_batch(
    conn: Connection,
    batch: PgBatch,
    runtime_id: str,
    channel_prefix: str,
    *,
    own_new_sagas: bool = True,
    codec: PayloadCodec | None = None,
) -> None:
    """Write `batch` in one transaction; per-write refusals land in each op's `error`.

    New sagas belong to this runtime, or (`own_new_sagas=False`) to nobody:
    every runtime is told to claim them.

    A failure before COMMIT leaves nothing behind (the caller may write the
    batch again); a failure during it raises `CommitOutcomeUnknownError`.
    """
    transaction = conn.transaction()
    await transaction.start()
    try:
        if batch.creates:
            creator = runtime_id if own_new_sagas else None
            if await _create(conn, batch.creates, creator, codec) and creator is None:
                await conn.execute("SELECT pg_notify($1, 'sweep')", f"{channel_prefix}_all")
        if batch.saves:
            await _save(conn, batch.saves, runtime_id, codec)
            await _report(conn, batch.saves, runtime_id, channel_prefix, codec)
        for op in batch.deliveries:
            await _deliver(conn, op, runtime_id, channel_prefix, codec)
        if batch.releases:
            ids, epochs = zip(*batch.releases, strict=True)
            await conn.execute(_RELEASE, runtime_id, list(ids), list(epochs))
        for saga_id, reason, epoch in batch.quarantines:
            await conn.execute(_QUARANTINE, saga_id, reason, runtime_id, epoch)
    except BaseException:
        with contextlib.suppress(Exception):
            await transaction.rollback()
        raise
    try:
        await transaction.commit()
    except Exception as exc:
        raise CommitOutcomeUnknownError(f"PostgreSQL failed during COMMIT: {exc}") from exc


async def _create(
    conn: Connection, creates: list[Create], owner: str | None, codec: PayloadCodec | None
) -> bool:
    """Insert the new sagas, owned by `owner`; True if any was new."""
    # One row per id per statement; a duplicate within the batch is answered below.
    first: dict[str, Create] = {}
    for op in creates:
        first.setdefault(op.saga.saga_id, op)
    columns: list[list[object]] = [[] for _ in range(15)]
    for op in first.values():
        values = (*new_saga_row(op, codec), op.event.at, encode_event(op.event, codec))
        for column, value in zip(columns, values, strict=True):
            column.append(value)
    inserted = {row[0] for row in await conn.fetch(_CREATE, owner, *columns)}
    await refuse_tombstoned(conn, creates, inserted)
    others = [
        op
        for op in creates
        if op.error is None
        and (op.saga.saga_id not in inserted or first[op.saga.saga_id] is not op)
    ]
    if not others:
        return bool(inserted)
    rows = await conn.fetch(
        "SELECT saga_id, saga_name, input, snapshot, seq FROM sagas WHERE saga_id = ANY($1)",
        list({op.saga.saga_id for op in others}),
    )
    found = {row[0]: row for row in rows}
    for op in others:
        row = found.get(op.saga.saga_id)
        if row is None:  # cannot happen: the row conflicted or was just inserted
            op.error = StaleStateError(f"saga {op.saga.saga_id!r} vanished while being created")
            continue
        try:
            op.existing = stored_saga(row[0], row[1], row[2], row[3], row[4], codec=codec)
        except CorruptSagaError as exc:
            op.error = exc
    return bool(inserted)


async def _save(
    conn: Connection, saves: list[Save], runtime_id: str, codec: PayloadCodec | None
) -> None:
    # One statement per round; a saga saved twice in one batch (rare) takes two rounds.
    pending = saves
    while pending:
        seen: set[str] = set()
        this_round: list[Save] = []
        later: list[Save] = []
        for op in pending:
            saga_id = op.state.saga_id
            (later if saga_id in seen else this_round).append(op)
            seen.add(saga_id)
        this_round.sort(key=lambda op: op.state.saga_id)  # one lock order for every writer
        await _save_round(conn, this_round, runtime_id, codec)
        pending = later


async def _save_round(
    conn: Connection, saves: list[Save], runtime_id: str, codec: PayloadCodec | None
) -> None:
    columns: list[list[object]] = [[] for _ in range(12)]
    for op in saves:
        state = op.state
        values = (
            state.saga_id,
            state.seq,
            op.epoch,
            encode_state(state, codec),
            state.status.value,
            state.wake_at,
            state.in_flight,
            state.waiting_for,
            state.updated_at,
            op.event.at,
            encode_event(op.event, codec),
            op.consumed,
        )
        for column, value in zip(columns, values, strict=True):
            column.append(value)
    written = {row[0] for row in await conn.fetch(_SAVE, runtime_id, *columns)}
    refused = [op for op in saves if op.state.saga_id not in written]
    if not refused:
        return
    rows = await conn.fetch(
        "SELECT saga_id, seq, epoch, owner FROM sagas WHERE saga_id = ANY($1)",
        [op.state.saga_id for op in refused],
    )
    stored = {row[0]: row for row in rows}
    for op in refused:
        saga_id = op.state.saga_id
        row = stored.get(saga_id)
        if row is None:
            op.error = SagaNotFound(saga_id)
        elif row["epoch"] != op.epoch or row["owner"] != runtime_id:
            op.error = LeaseLostError(
                f"saga {saga_id!r} is now held by {row['owner'] or 'no runtime'} at epoch "
                f"{row['epoch']}; this runtime held epoch {op.epoch}"
            )
        else:
            op.error = StaleStateError(
                f"saga {saga_id!r}: stored snapshot is #{row['seq']}, "
                f"this write expected #{op.state.seq - 1}"
            )


async def _deliver(
    conn: Connection, op: Deliver, runtime_id: str, channel_prefix: str, codec: PayloadCodec | None
) -> None:
    item = op.item
    tag = "c:" if item.kind == "cancel" else "n:"
    row = await conn.fetchrow(
        _DELIVER,
        runtime_id,
        item.saga_id,
        item.kind,
        item.name,
        seal(item.payload, codec),
        item.key,
        item.at,
        channel_prefix,
        tag,
    )
    if row is None:
        op.error = SagaNotFound(item.saga_id)
    elif SagaStatus(row["status"]).is_terminal and not (
        item.kind == "compensate" and row["status"] == SagaStatus.COMPLETED
    ):
        op.error = SagaEndedError(item.saga_id, row["status"])
    else:
        op.accepted = row["accepted"] == 1


_REPORT = f"""
WITH s AS (
    SELECT saga_id, owner FROM sagas WHERE saga_id = $2 AND status NOT IN {TERMINAL}
), ins AS (
    INSERT INTO inbox (saga_id, kind, name, payload, key, at)
    SELECT $2, $3, $4, $5, $6, $7 FROM s
    ON CONFLICT (saga_id, kind, key) WHERE key IS NOT NULL DO NOTHING
    RETURNING id
)
SELECT pg_notify($8 || '_' || s.owner, 'n:' || s.saga_id) FROM s
WHERE s.owner IS NOT NULL AND s.owner <> $1 AND EXISTS (SELECT 1 FROM ins)
"""


async def _report(
    conn: Connection,
    saves: list[Save],
    runtime_id: str,
    channel: str,
    codec: PayloadCodec | None,
) -> None:
    """The inbox items the written saves carry for other sagas (a child's report to its
    parent), unless that saga has ended; its owner is told when this commits."""
    for op in saves:
        item = op.deliver
        if item is None or op.error is not None:
            continue
        await conn.execute(
            _REPORT,
            runtime_id,
            item.saga_id,
            item.kind,
            item.name,
            seal(item.payload, codec),
            item.key,
            item.at,
            channel,
        )
