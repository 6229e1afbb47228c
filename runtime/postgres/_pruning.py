"""Retention on PostgreSQL: a page of a pruning pass in its own short transaction, and
the tombstone check of new sagas (see `runtime._retention` for the rules).

Several runtimes may prune at once: a page locks its rows (`SKIP LOCKED`), so two never
delete the same saga, and neither waits for the other.
"""

from __future__ import annotations

from collections.abc import Sequence

from .._retention import Candidate, Prune, plan_page, refuse_pruned
from .._writes import Create
from ..codecs import PayloadCodec
from ._connections import Connection

_PAGE = """
SELECT saga_id, saga_name, created_at, input,
       updated_at < $2 AND NOT EXISTS (SELECT 1 FROM inbox i WHERE i.saga_id = s.saga_id)
       AND (parent_id IS NULL OR NOT EXISTS (SELECT 1 FROM sagas p WHERE p.saga_id = s.parent_id))
FROM sagas s
WHERE status = $1 AND created_at < $2 AND (created_at, saga_id) > ($3, $4)
ORDER BY created_at, saga_id LIMIT $5
FOR UPDATE OF s SKIP LOCKED
"""

_DELETE = """
WITH gone AS (SELECT unnest($1::text[]) AS saga_id),
h AS (DELETE FROM history USING gone WHERE history.saga_id = gone.saga_id),
i AS (DELETE FROM inbox USING gone WHERE inbox.saga_id = gone.saga_id)
DELETE FROM sagas USING gone WHERE sagas.saga_id = gone.saga_id
"""

_TOMBSTONES = """
INSERT INTO tombstones (saga_id, saga_name, input_digest, pruned_at)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::float8[])
ON CONFLICT (saga_id) DO UPDATE SET pruned_at = excluded.pruned_at
"""

_EXPIRE = """
DELETE FROM tombstones WHERE saga_id IN (
    SELECT saga_id FROM tombstones WHERE pruned_at < $1 ORDER BY pruned_at LIMIT $2
    FOR UPDATE SKIP LOCKED)
"""

COUNT_PRUNABLE = """
WITH RECURSIVE gone(saga_id) AS (
    SELECT s.saga_id FROM sagas s
    WHERE s.status = ANY($1) AND s.updated_at < $2
      AND NOT EXISTS (SELECT 1 FROM inbox i WHERE i.saga_id = s.saga_id)
      AND (s.parent_id IS NULL OR NOT EXISTS (SELECT 1 FROM sagas p WHERE p.saga_id = s.parent_id))
    UNION
    SELECT s.saga_id FROM sagas s JOIN gone g ON s.parent_id = g.saga_id
    WHERE s.status = ANY($1) AND s.updated_at < $2
      AND NOT EXISTS (SELECT 1 FROM inbox i WHERE i.saga_id = s.saga_id)
)
SELECT count(*) FROM gone
"""


async def prune_page(conn: Connection, op: Prune, codec: PayloadCodec | None) -> None:
    at, after_id = op.after if op.after is not None else (float("-inf"), "")
    async with conn.transaction():
        rows = [
            Candidate(row[0], row[1], row[2], row[3], bool(row[4]))
            for row in await conn.fetch(_PAGE, op.status, op.ended_before, at, after_id, op.limit)
        ]
        page = plan_page(op, rows, codec)
        if page.gone:
            await conn.execute(_DELETE, page.gone)
            ids, names, digests, times = zip(*page.tombstones, strict=True)
            await conn.execute(_TOMBSTONES, list(ids), list(names), list(digests), list(times))
        if op.tombstones_before is not None:
            await conn.execute(_EXPIRE, op.tombstones_before, op.limit)


async def refuse_tombstoned(
    conn: Connection, creates: Sequence[Create], inserted: set[str]
) -> None:
    """Undo, inside the creating transaction, each new saga whose id a pruned saga had.

    Run after the INSERT, as its own statement: a prune that committed while the INSERT
    waited on the row it deleted is then seen, so no pruned id ever runs again.
    """
    if not inserted:
        return
    rows = await conn.fetch(
        "SELECT saga_id, saga_name, input_digest FROM tombstones WHERE saga_id = ANY($1)",
        list(inserted),
    )
    if not rows:
        return
    tombs = {row[0]: (row[1], row[2]) for row in rows}
    await conn.execute(_DELETE, list(tombs))
    for op in creates:
        tomb = tombs.get(op.saga.saga_id)
        if tomb is not None:
            op.error = refuse_pruned(op.saga.saga_id, op.saga.saga_name, op.saga.input, tomb)
    inserted.difference_update(tombs)
