"""`python -m runtime prune`: beside a running runtime, and SIGKILLed mid-pass (SQLite and
PostgreSQL)."""

from __future__ import annotations

import contextlib
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import anyio
import anyio.lowlevel
import anyio.to_thread
import asyncpg
import pytest

from runtime import Runtime, SagaNotFound
from saga import Saga, SagaContext, StepContext
from tests.runtime.long_running_helpers import WAIT


async def noop(ctx: StepContext, n: int) -> int:
    return n


async def body(ctx: SagaContext, n: int) -> int:
    return await ctx.step("only", noop, n)


QUICK = Saga("quick", body)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runtime", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def test_prune_from_the_shell_beside_a_running_runtime(tmp_path: Path) -> None:
    db = tmp_path / "shop.db"
    async with Runtime(db, sagas=[QUICK]) as rt:
        for n in range(200):
            await (await rt.spawn(QUICK, n, saga_id=f"old-{n}")).result(timeout=WAIT)
        await rt.spawn(QUICK, 0, saga_id="late")  # no older than the cutoff below: kept
        spawned: list[str] = []

        async def keep_spawning() -> None:  # the runtime keeps writing while the CLI prunes
            for n in range(300):
                await rt.spawn(QUICK, n, saga_id=f"new-{n}")
                spawned.append(f"new-{n}")
                await anyio.lowlevel.checkpoint()

        async with anyio.create_task_group() as tg:
            tg.start_soon(keep_spawning)
            args = ("prune", str(db), "--older-than", "0s")
            dry = await anyio.to_thread.run_sync(cli, *args, "--dry-run")
            assert dry.returncode == 0, dry.stderr
            assert dry.stdout.startswith("would prune ")
            done = await anyio.to_thread.run_sync(cli, *args)
            assert done.returncode == 0, done.stderr
        pruned = int(done.stdout.split()[1])
        assert pruned >= 200
        for n in range(200):
            with pytest.raises(SagaNotFound):
                await rt.status(f"old-{n}")
        # Every spawn made while it pruned is acknowledged and either still there or pruned
        # after it ended: none is lost half-way.
        assert len(spawned) == 300
        for saga_id in spawned:
            with contextlib.suppress(SagaNotFound):
                assert await rt.handle(saga_id).result(timeout=WAIT) >= 0
    with sqlite3.connect(db) as conn:
        tombstones = conn.execute("SELECT count(*) FROM tombstones").fetchone()[0]
        orphans = conn.execute(
            "SELECT count(*) FROM history WHERE saga_id NOT IN (SELECT saga_id FROM sagas)"
        ).fetchone()[0]
    assert tombstones == pruned
    assert orphans == 0


def test_prune_refuses_what_is_not_a_sagaloop_database(tmp_path: Path) -> None:
    missing = cli("prune", str(tmp_path / "none.db"), "--older-than", "1d")
    assert missing.returncode != 0
    assert not (tmp_path / "none.db").exists()  # never created
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE notes (x)")
    refused = cli("prune", str(other), "--older-than", "1d")
    assert refused.returncode != 0
    assert "not a Sagaloop database" in refused.stderr
    with sqlite3.connect(other) as conn:  # nothing of ours was written into it
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    assert tables == {"notes"}
    bad = cli("prune", str(other), "--older-than", "soon")
    assert bad.returncode != 0
    assert "not a duration" in bad.stderr
    keyless = cli("prune", str(other), "--older-than", "1d", "--key-file", str(other))
    assert keyless.returncode != 0
    assert "not a key file" in keyless.stderr
    wrong = cli("prune", str(other), "--older-than", "1d", "--status", "suspended")
    assert wrong.returncode != 0  # argparse refuses a status that has not ended


SAGAS = {"sqlite": 40_000, "postgres": 10_000}
"""Enough that a kill lands mid-pass (PostgreSQL commits a page more slowly)."""


async def _fill(database: str, count: int) -> None:
    """`count` completed sagas with three history rows each, written straight in."""
    now = time.time() - 3600
    sagas = [
        (f"s{n:06}", "quick", "completed", 3, str(n), "{}", now + n * 1e-3, now + n * 1e-3)
        for n in range(count)
    ]
    history = [(f"s{n:06}", seq, now, "{}") for n in range(count) for seq in (1, 2, 3)]
    saga_columns = (
        "saga_id",
        "saga_name",
        "status",
        "seq",
        "input",
        "snapshot",
        "created_at",
        "updated_at",
    )
    if database.startswith("postgresql://"):
        conn = await asyncpg.connect(database, server_settings={"search_path": "sagaloop"})
        try:
            await conn.copy_records_to_table("sagas", records=sagas, columns=saga_columns)
            await conn.copy_records_to_table(
                "history", records=history, columns=("saga_id", "seq", "at", "event")
            )
        finally:
            await conn.close()
        return
    with sqlite3.connect(database) as lite:
        lite.executemany(
            f"INSERT INTO sagas({', '.join(saga_columns)}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", sagas
        )
        lite.executemany(
            "INSERT INTO history(saga_id, seq, at, event) VALUES (?, ?, ?, ?)", history
        )


_COUNTS = (
    "SELECT (SELECT count(*) FROM sagas), (SELECT count(*) FROM tombstones), "
    "(SELECT count(*) FROM history WHERE saga_id IN (SELECT saga_id FROM tombstones)), "
    "(SELECT count(*) FROM sagas s WHERE (SELECT count(*) FROM history h "
    "WHERE h.saga_id = s.saga_id) <> 3)"
)


async def _counts(database: str) -> tuple[int, int, int, int]:
    """(sagas, tombstones, history rows of a pruned saga, sagas missing history rows)."""
    if database.startswith("postgresql://"):
        conn = await asyncpg.connect(database, server_settings={"search_path": "sagaloop"})
        try:
            row = await conn.fetchrow(_COUNTS)
        finally:
            await conn.close()
        assert row is not None
        return row[0], row[1], row[2], row[3]
    with sqlite3.connect(database) as lite:
        sagas, tombs, orphans, partial = lite.execute(_COUNTS).fetchone()
    return sagas, tombs, orphans, partial


async def test_a_prune_sigkilled_mid_pass_leaves_every_saga_whole_or_gone(database: str) -> None:
    count = SAGAS["postgres" if database.startswith("postgresql://") else "sqlite"]
    async with Runtime(database, sagas=[QUICK]):  # the schema
        pass
    await _fill(database, count)
    command = [sys.executable, "-m", "runtime", "prune", database, "--older-than", "1s"]
    async with await anyio.open_process(command) as child:
        with anyio.fail_after(WAIT):
            while (await _counts(database))[1] == 0:  # noqa: ASYNC110 - another process's commit
                await anyio.sleep(0.002)
        child.send_signal(signal.SIGKILL)
        await child.wait()
    assert child.returncode == -signal.SIGKILL, "the prune ended before the kill"
    sagas, tombs, orphans, partial = await _counts(database)
    assert 0 < tombs < count  # it was killed half-way
    assert sagas + tombs == count  # each saga is whole or gone with its tombstone
    assert orphans == 0
    assert partial == 0
    again = await anyio.to_thread.run_sync(cli, "prune", database, "--older-than", "1s")
    assert again.returncode == 0, again.stderr  # the next run finishes the job
    assert int(again.stdout.split()[1]) == sagas
    assert await _counts(database) == (0, count, 0, 0)
