"""Retention's rules over drawn databases: the pruner deletes exactly the ended sagas of
the asked statuses older than the cutoff that nothing can still reach (no inbox item,
no parent left), with all their rows, and never a live, failed-unasked or suspended one.

Rows are written by hand (statuses, ages, parents, inbox items drawn by Hypothesis),
then pruned through the store's own pages, in pages far smaller than the database so
that the cursor is exercised too.
"""

from __future__ import annotations

import asyncio
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import anyio.to_thread
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime import SqliteStore
from runtime._pruner import Pruner
from saga import VirtualClock

STATUSES = ("running", "waiting", "compensating", "suspended", "completed", "compensated", "failed")
NOW = 1_750_000_000.0
CUTOFF_AGE = 50.0


@dataclass(frozen=True)
class Row:
    status: str
    age: float
    """Seconds since it last changed."""
    parent: int | None
    inbox: bool


@st.composite
def databases(draw: st.DrawFn) -> list[Row]:
    count = draw(st.integers(1, 14))
    rows = []
    for index in range(count):
        rows.append(
            Row(
                status=draw(st.sampled_from(STATUSES)),
                age=draw(st.sampled_from([0.0, 10.0, 49.0, 51.0, 90.0])),
                parent=draw(st.none() | st.integers(0, index - 1)) if index else None,
                inbox=draw(st.booleans()),
            )
        )
    return rows


def expected_gone(rows: list[Row], statuses: frozenset[str]) -> set[int]:
    """The rules, as a fixpoint: a child can go once its parent went."""
    gone: set[int] = set()
    changed = True
    while changed:
        changed = False
        for index, row in enumerate(rows):
            if index in gone:
                continue
            if (
                row.status in statuses
                and row.age > CUTOFF_AGE
                and not row.inbox
                and (row.parent is None or row.parent in gone)
            ):
                gone.add(index)
                changed = True
    return gone


def write_rows(conn: sqlite3.Connection, rows: list[Row]) -> None:
    for index, row in enumerate(rows):
        updated = NOW - row.age
        conn.execute(
            "INSERT INTO sagas(saga_id, saga_name, status, seq, input, snapshot, created_at, "
            "updated_at, parent_id) VALUES (?, 'order', ?, 1, ?, '{}', ?, ?, ?)",
            (
                f"s{index}",
                row.status,
                f'{{"n": {index}}}',
                updated - 5.0 * (index % 3),  # created before it last changed
                updated,
                None if row.parent is None else f"s{row.parent}",
            ),
        )
        conn.execute(
            "INSERT INTO history(saga_id, seq, at, event) VALUES (?, 1, ?, '{}')",
            (f"s{index}", updated),
        )
        if row.inbox:
            conn.execute(
                "INSERT INTO inbox(saga_id, kind, name, payload, at) "
                "VALUES (?, 'compensate', 'parent', 'null', ?)",
                (f"s{index}", updated),
            )


async def dry_then_real(store: Any, statuses: tuple[str, ...], page: int) -> tuple[int, int]:
    """(how many a dry run counts, how many a prune deletes) in pages of `page` sagas."""
    original = store.prune_page

    async def small_pages(status: str, **kwargs: object) -> tuple[int, object]:
        kwargs["limit"] = page
        return await original(status, **kwargs)  # type: ignore[no-any-return]

    store.prune_page = small_pages
    pruner = Pruner(store, VirtualClock(NOW), tombstone_window=1e9)
    would = await pruner.prune(CUTOFF_AGE, statuses, dry_run=True)
    return would, await pruner.prune(CUTOFF_AGE, statuses, dry_run=False)


async def prune(path: Path, statuses: tuple[str, ...], page: int) -> tuple[int, int]:
    async with SqliteStore(path) as store:
        return await dry_then_real(store, statuses, page)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=databases(),
    statuses=st.sets(st.sampled_from(["completed", "compensated", "failed"]), min_size=1),
    page=st.integers(1, 4),
)
def test_the_pruner_deletes_exactly_what_the_rules_allow(
    rows: list[Row], statuses: set[str], page: int
) -> None:
    with TemporaryDirectory() as folder:
        path = Path(folder) / "drawn.db"
        asyncio.run(_open_and_close(path))
        with sqlite3.connect(path) as conn:
            write_rows(conn, rows)
        would, pruned = asyncio.run(prune(path, tuple(sorted(statuses)), page))
        gone = expected_gone(rows, frozenset(statuses))
        with sqlite3.connect(path) as conn:
            left = {sid for (sid,) in conn.execute("SELECT saga_id FROM sagas")}
            history = {sid for (sid,) in conn.execute("SELECT saga_id FROM history")}
            inbox = {sid for (sid,) in conn.execute("SELECT saga_id FROM inbox")}
            tombs = {sid for (sid,) in conn.execute("SELECT saga_id FROM tombstones")}
    expected_left = {f"s{i}" for i in range(len(rows)) if i not in gone}
    assert left == expected_left
    assert history == expected_left  # nothing of a pruned saga is left behind...
    assert inbox <= expected_left
    assert tombs == {f"s{i}" for i in gone}  # ...but its tombstone
    assert would == pruned == len(gone)
    for index, row in enumerate(rows):
        if row.status not in statuses:  # live, suspended, or an ended status not asked for
            assert f"s{index}" in left


async def _open_and_close(path: Path) -> None:
    async with SqliteStore(path):
        pass


async def _pg_example(dsn: str, rows: list[Row], statuses: tuple[str, ...], page: int) -> None:
    import asyncpg

    from runtime.postgres import PostgresStore

    async with PostgresStore(dsn):  # migrated
        pass
    conn = await asyncpg.connect(dsn, server_settings={"search_path": "sagaloop"})
    try:
        await conn.execute("TRUNCATE sagas, history, inbox, tombstones")
        for index, row in enumerate(rows):
            updated = NOW - row.age
            sid = f"s{index}"
            await conn.execute(
                "INSERT INTO sagas(saga_id, saga_name, status, seq, input, snapshot, "
                "created_at, updated_at, parent_id) VALUES ($1, 'order', $2, 1, $3, '{}', $4, "
                "$5, $6)",
                sid,
                row.status,
                f'{{"n": {index}}}',
                updated - 5.0 * (index % 3),
                updated,
                None if row.parent is None else f"s{row.parent}",
            )
            await conn.execute(
                "INSERT INTO history(saga_id, seq, at, event) VALUES ($1, 1, $2, '{}')",
                sid,
                updated,
            )
            if row.inbox:
                await conn.execute(
                    "INSERT INTO inbox(saga_id, kind, name, payload, at) "
                    "VALUES ($1, 'compensate', 'parent', 'null', $2)",
                    sid,
                    updated,
                )
        async with PostgresStore(dsn) as store:
            would, pruned = await dry_then_real(store, statuses, page)
        left = {r[0] for r in await conn.fetch("SELECT saga_id FROM sagas")}
        history = {r[0] for r in await conn.fetch("SELECT saga_id FROM history")}
        tombs = {r[0] for r in await conn.fetch("SELECT saga_id FROM tombstones")}
    finally:
        await conn.close()
    gone = expected_gone(rows, frozenset(statuses))
    expected_left = {f"s{i}" for i in range(len(rows)) if i not in gone}
    assert left == history == expected_left
    assert tombs == {f"s{i}" for i in gone}
    assert would == pruned == len(gone)


async def test_the_pruner_follows_the_same_rules_on_postgresql(pg_dsn: str) -> None:
    @settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        rows=databases(),
        statuses=st.sets(st.sampled_from(["completed", "compensated", "failed"]), min_size=1),
        page=st.integers(1, 4),
    )
    def check(rows: list[Row], statuses: set[str], page: int) -> None:
        asyncio.run(_pg_example(pg_dsn, rows, tuple(sorted(statuses)), page))

    await anyio.to_thread.run_sync(check)  # each example runs its own event loop
