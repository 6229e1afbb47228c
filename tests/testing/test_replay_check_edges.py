"""Edge cases of replay_check and `python -m runtime check-replay`."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from runtime import Runtime
from runtime.testing import replay_check
from saga import Saga, SagaContext, SagaStatus, StepContext
from tests.child_process import REPO
from tests.runtime.long_running_helpers import until, until_status


async def act(ctx: StepContext, n: Any) -> Any:
    return n


async def undo(ctx: StepContext, n: Any, result: Any) -> None:
    return None


async def rich_v1(ctx: SagaContext, n: int) -> Any:
    """Every kind of recorded call, before the wait."""
    stamp = ctx.now()
    ident = ctx.uuid()
    roll = ctx.random()
    a, _b = await ctx.parallel(
        ctx.step("pa", act, n, compensate=undo), ctx.step("pb", act, str(ident))
    )
    for i in range(3):
        await ctx.step("loop", act, i)
    if roll < 2:  # always
        await ctx.step("rolled", act, roll)
    await ctx.sleep(0.01)
    kid = await ctx.child(KID, n, saga_id=f"{ctx.saga_id}-kid")
    await ctx.step("stamped", act, stamp.isoformat())
    await ctx.wait_for_signal("approved")
    return a + kid


async def kid_body(ctx: SagaContext, n: int) -> Any:
    return await ctx.step("k", act, n, compensate=undo)


KID = Saga("kid", kid_body)
RICH = Saga("rich", rich_v1)


async def rich_swapped_parallel(ctx: SagaContext, n: int) -> Any:
    stamp = ctx.now()
    ident = ctx.uuid()
    roll = ctx.random()
    _b, a = await ctx.parallel(
        ctx.step("pb", act, str(ident)), ctx.step("pa", act, n, compensate=undo)
    )
    for i in range(3):
        await ctx.step("loop", act, i)
    if roll < 2:
        await ctx.step("rolled", act, roll)
    await ctx.sleep(0.01)
    kid = await ctx.child(KID, n, saga_id=f"{ctx.saga_id}-kid")
    await ctx.step("stamped", act, stamp.isoformat())
    await ctx.wait_for_signal("approved")
    return a + kid


async def rich_two_loops(ctx: SagaContext, n: int) -> Any:
    stamp = ctx.now()
    ident = ctx.uuid()
    roll = ctx.random()
    a, _b = await ctx.parallel(
        ctx.step("pa", act, n, compensate=undo), ctx.step("pb", act, str(ident))
    )
    for i in range(2):  # one iteration fewer
        await ctx.step("loop", act, i)
    if roll < 2:
        await ctx.step("rolled", act, roll)
    await ctx.sleep(0.01)
    kid = await ctx.child(KID, n, saga_id=f"{ctx.saga_id}-kid")
    await ctx.step("stamped", act, stamp.isoformat())
    await ctx.wait_for_signal("approved")
    return a + kid


async def rich_sequential(ctx: SagaContext, n: int) -> Any:
    """The parallel group made sequential: different recorded groups."""
    stamp = ctx.now()
    ident = ctx.uuid()
    roll = ctx.random()
    a = await ctx.step("pa", act, n, compensate=undo)
    await ctx.step("pb", act, str(ident))
    for i in range(3):
        await ctx.step("loop", act, i)
    if roll < 2:
        await ctx.step("rolled", act, roll)
    await ctx.sleep(0.01)
    kid = await ctx.child(KID, n, saga_id=f"{ctx.saga_id}-kid")
    await ctx.step("stamped", act, stamp.isoformat())
    await ctx.wait_for_signal("approved")
    return a + kid


async def rich_no_sleep(ctx: SagaContext, n: int) -> Any:
    stamp = ctx.now()
    ident = ctx.uuid()
    roll = ctx.random()
    a, _b = await ctx.parallel(
        ctx.step("pa", act, n, compensate=undo), ctx.step("pb", act, str(ident))
    )
    for i in range(3):
        await ctx.step("loop", act, i)
    if roll < 2:
        await ctx.step("rolled", act, roll)
    kid = await ctx.child(KID, n, saga_id=f"{ctx.saga_id}-kid")
    await ctx.step("stamped", act, stamp.isoformat())
    await ctx.wait_for_signal("approved")
    return a + kid


async def rich_no_now(ctx: SagaContext, n: int) -> Any:
    ident = ctx.uuid()
    roll = ctx.random()
    a, _b = await ctx.parallel(
        ctx.step("pa", act, n, compensate=undo), ctx.step("pb", act, str(ident))
    )
    for i in range(3):
        await ctx.step("loop", act, i)
    if roll < 2:
        await ctx.step("rolled", act, roll)
    await ctx.sleep(0.01)
    kid = await ctx.child(KID, n, saga_id=f"{ctx.saga_id}-kid")
    await ctx.step("stamped", act, "x")
    await ctx.wait_for_signal("approved")
    return a + kid


async def record_rich(db: str) -> None:
    async with Runtime(db, sagas=[RICH, KID]) as rt:
        for n in range(2):
            await rt.spawn(RICH, n, saga_id=f"r{n}")
        for n in range(2):
            await until_status(rt, f"r{n}", SagaStatus.WAITING, waiting_for="approved")


async def runtime_verdict(db: str, body: Any) -> dict[str, bool]:
    """What the runtime itself does with each saga on the new body: suspended (diverged)?"""
    saga = Saga("rich", body)
    verdict: dict[str, bool] = {}
    async with Runtime(db, sagas=[saga, KID]) as rt:
        for n in range(2):
            await rt.signal(f"r{n}", "approved", None)
        for n in range(2):

            async def ended(n: int = n) -> bool:
                info = await rt.status(f"r{n}")
                return info.status in (SagaStatus.SUSPENDED, SagaStatus.COMPLETED)

            await until(ended, what=f"r{n} ends or suspends")
            info = await rt.status(f"r{n}")
            verdict[f"r{n}"] = info.status is SagaStatus.SUSPENDED
    return verdict


@pytest.mark.parametrize(
    ("body", "diverges"),
    [
        (rich_v1, False),
        (rich_swapped_parallel, True),
        (rich_two_loops, True),
        (rich_sequential, True),
        (rich_no_sleep, True),
        (rich_no_now, True),
    ],
    ids=lambda v: getattr(v, "__name__", str(v)),
)
async def test_replay_check_agrees_with_the_runtime(
    tmp_path: Path, body: Any, diverges: bool
) -> None:
    db = str(tmp_path / "s.db")
    await record_rich(db)
    problems = await replay_check(db, sagas=[Saga("rich", body), KID])
    flagged = {p.saga_id for p in problems}
    assert flagged == ({"r0", "r1"} if diverges else set()), [str(p) for p in problems]
    verdict = await runtime_verdict(db, body)
    assert verdict == {"r0": diverges, "r1": diverges}


async def waiting_checkout(db: str, saga: Saga, count: int = 2) -> None:
    async with Runtime(db, sagas=[saga]) as rt:
        for n in range(count):
            await rt.spawn(saga, n, saga_id=f"o{n}")
        for n in range(count):
            await until_status(rt, f"o{n}", SagaStatus.WAITING)


async def simple(ctx: SagaContext, n: int) -> Any:
    await ctx.step("a", act, n)
    await ctx.wait_for_signal("approved")
    return n


SIMPLE = Saga("simple", simple)


async def test_a_corrupt_snapshot_is_reported_not_crashed_on(tmp_path: Path) -> None:
    db = str(tmp_path / "s.db")
    await waiting_checkout(db, SIMPLE)
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE sagas SET snapshot = 'not json' WHERE saga_id = 'o0'")
    problems = await replay_check(db, sagas=[SIMPLE])
    assert [p.saga_id for p in problems] == ["o0"]


async def test_a_corrupt_history_event_is_reported_not_crashed_on(tmp_path: Path) -> None:
    db = str(tmp_path / "s.db")
    await waiting_checkout(db, SIMPLE)
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE history SET event = '{\"nonsense\": 1}' WHERE saga_id = 'o0'")
    problems = await replay_check(db, sagas=[SIMPLE])
    assert [p.saga_id for p in problems] == ["o0"]


async def test_a_snapshot_of_another_saga_name_is_reported(tmp_path: Path) -> None:
    db = str(tmp_path / "s.db")
    await waiting_checkout(db, SIMPLE)
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE sagas SET saga_name = 'other' WHERE saga_id = 'o0'")
    problems = await replay_check(db, sagas=[SIMPLE, Saga("other", simple)])
    assert [p.saga_id for p in problems] == ["o0"]


def test_the_cli_on_a_corrupt_row_reports_and_exits_1(tmp_path: Path) -> None:
    import anyio

    db = str(tmp_path / "s.db")
    anyio.run(waiting_checkout, db, SIMPLE)
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE sagas SET snapshot = 'not json' WHERE saga_id = 'o0'")
    ended = subprocess.run(
        [
            sys.executable,
            "-m",
            "runtime",
            "check-replay",
            db,
            "--sagas",
            "tests.testing.test_replay_check_edges:SIMPLE",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ended.returncode == 1, ended.stderr
    assert "Traceback" not in ended.stderr, ended.stderr
    assert ended.stdout.startswith("o0 (simple): unreadable: ")


async def test_an_empty_database_has_no_problems(tmp_path: Path) -> None:
    db = str(tmp_path / "s.db")
    async with Runtime(db, sagas=[SIMPLE]):
        pass
    report = await replay_check(db, sagas=[SIMPLE])
    assert report == []
    assert report.checked == 0


async def test_a_zero_byte_file_is_not_crashed_on(tmp_path: Path) -> None:
    db = tmp_path / "empty.db"
    db.write_bytes(b"")
    try:
        report = await replay_check(str(db), sagas=[SIMPLE])
    except FileNotFoundError:
        report = None
    assert report is None or report == []
    assert db.read_bytes() == b""


async def test_a_missing_database_is_not_created(tmp_path: Path) -> None:
    for path in (tmp_path / "none.db", tmp_path / "no" / "dir" / "none.db"):
        with pytest.raises(FileNotFoundError):
            await replay_check(path, sagas=[SIMPLE])
        assert not path.exists()
    assert list(tmp_path.iterdir()) == []  # noqa: ASYNC240 (the test's own look)


async def test_a_corrupt_row_through_an_open_store_is_reported(tmp_path: Path) -> None:
    db = str(tmp_path / "s.db")
    await waiting_checkout(db, SIMPLE)
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE sagas SET snapshot = 'not json' WHERE saga_id = 'o0'")
    async with Runtime(db, sagas=[SIMPLE]) as rt:
        problems = await replay_check(rt.store, sagas=[SIMPLE])
    assert [p.saga_id for p in problems] == ["o0"]


async def test_two_definitions_of_one_name_and_version_are_refused_as_by_runtime(
    tmp_path: Path,
) -> None:
    from saga import DefinitionError

    async def other(ctx: SagaContext, n: int) -> int:
        await ctx.step("zzz", act, n)
        return n

    db = str(tmp_path / "s.db")
    await waiting_checkout(db, SIMPLE)
    with pytest.raises(DefinitionError):
        Runtime(db, sagas=[SIMPLE, Saga("simple", other)])
    with pytest.raises(DefinitionError):
        await replay_check(db, sagas=[SIMPLE, Saga("simple", other)])
