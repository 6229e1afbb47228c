"""`python -m runtime prune`: beside a running runtime, and SIGKILLed mid-pass."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import anyio
import anyio.lowlevel
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


SAGAS = 40_000


def _fill(db: Path) -> None:
    """SAGAS completed sagas with three history rows each, written straight to the file."""
    now = time.time() - 3600
    with sqlite3.connect(db) as conn:
        conn.executemany(
            "INSERT INTO sagas(saga_id, saga_name, status, seq, input, snapshot, created_at, "
            "updated_at) VALUES (?, 'quick', 'completed', 3, ?, '{}', ?, ?)",
            ((f"s{n:06}", str(n), now + n * 1e-3, now + n * 1e-3) for n in range(SAGAS)),
        )
        conn.executemany(
            "INSERT INTO history(saga_id, seq, at, event) VALUES (?, ?, ?, '{}')",
            ((f"s{n:06}", seq, now) for n in range(SAGAS) for seq in (1, 2, 3)),
        )


def _counts(db: Path) -> tuple[int, int, int, int]:
    """(sagas, tombstones, history rows of a pruned saga, sagas missing history rows)."""
    with sqlite3.connect(db) as conn:
        sagas = conn.execute("SELECT count(*) FROM sagas").fetchone()[0]
        tombs = conn.execute("SELECT count(*) FROM tombstones").fetchone()[0]
        orphans = conn.execute(
            "SELECT count(*) FROM history WHERE saga_id IN (SELECT saga_id FROM tombstones)"
        ).fetchone()[0]
        partial = conn.execute(
            "SELECT count(*) FROM sagas s WHERE (SELECT count(*) FROM history h "
            "WHERE h.saga_id = s.saga_id) <> 3"
        ).fetchone()[0]
    return sagas, tombs, orphans, partial


def test_a_prune_sigkilled_mid_pass_leaves_every_saga_whole_or_gone(tmp_path: Path) -> None:
    db = tmp_path / "big.db"
    anyio.run(_create_schema, db)
    _fill(db)
    child = subprocess.Popen(
        [sys.executable, "-m", "runtime", "prune", str(db), "--older-than", "1s"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + WAIT
        while _counts(db)[1] == 0:  # its first pages commit in another process
            assert time.monotonic() < deadline, "the prune never committed a page"
            time.sleep(0.002)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait()
    assert child.returncode == -signal.SIGKILL, "the prune ended before the kill"
    sagas, tombs, orphans, partial = _counts(db)
    assert 0 < tombs < SAGAS  # it was killed half-way
    assert sagas + tombs == SAGAS  # each saga is whole or gone with its tombstone
    assert orphans == 0
    assert partial == 0
    again = cli("prune", str(db), "--older-than", "1s")  # the next run finishes the job
    assert again.returncode == 0, again.stderr
    assert int(again.stdout.split()[1]) == sagas
    assert _counts(db) == (0, SAGAS, 0, 0)


async def _create_schema(db: Path) -> None:
    async with Runtime(db, sagas=[QUICK]):
        pass
