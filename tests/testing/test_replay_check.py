"""`replay_check` and `python -m runtime check-replay`: every planted incompatible change of a
code saga is found, compatible changes raise no alarm, and it reads while a runtime runs."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from runtime import Runtime
from runtime.testing import ReplayProblem, replay_check
from saga import Saga, SagaContext, SagaStatus, Step, StepContext
from tests.child_process import REPO
from tests.runtime.long_running_helpers import until_status

Body = Callable[[SagaContext, int], Awaitable[int]]


async def reserve(ctx: StepContext, n: int) -> int:
    return n


async def charge(ctx: StepContext, n: int) -> int:
    return n * 10


async def charge_differently(ctx: StepContext, n: int) -> int:
    return n * 10 + 1  # a changed action body: nothing recorded changes


async def ship(ctx: StepContext, n: int) -> int:
    return n


async def original(ctx: SagaContext, n: int) -> int:
    await ctx.step("reserve", reserve, n)
    charged = await ctx.step("charge", charge, n)
    await ctx.wait_for_signal("approved")
    return charged + await ctx.step("ship", ship, n)


async def inserted(ctx: SagaContext, n: int) -> int:
    await ctx.step("reserve", reserve, n)
    await ctx.step("fraud-check", reserve, n)
    charged = await ctx.step("charge", charge, n)
    await ctx.wait_for_signal("approved")
    return charged


async def removed(ctx: SagaContext, n: int) -> int:
    charged = await ctx.step("charge", charge, n)
    await ctx.wait_for_signal("approved")
    return charged


async def renamed(ctx: SagaContext, n: int) -> int:
    await ctx.step("reserve", reserve, n)
    charged = await ctx.step("capture", charge, n)
    await ctx.wait_for_signal("approved")
    return charged


async def reordered(ctx: SagaContext, n: int) -> int:
    charged = await ctx.step("charge", charge, n)
    await ctx.step("reserve", reserve, n)
    await ctx.wait_for_signal("approved")
    return charged


EXPRESS_ORDERS = False
"""A module global the body branches on: not recorded, so a change of it diverges."""


async def branches_on_a_global(ctx: SagaContext, n: int) -> int:
    if not EXPRESS_ORDERS:
        await ctx.step("reserve", reserve, n)
    charged = await ctx.step("charge", charge, n)
    await ctx.wait_for_signal("approved")
    return charged


async def action_changed(ctx: SagaContext, n: int) -> int:
    await ctx.step("reserve", reserve, n)
    charged = await ctx.step("charge", charge_differently, n)
    await ctx.wait_for_signal("approved")
    return charged + await ctx.step("ship", ship, n)


async def patched_in(ctx: SagaContext, n: int) -> int:
    await ctx.step("reserve", reserve, n)
    charged = await ctx.step("charge", charge, n)
    if ctx.patched("fraud-check"):
        await ctx.step("fraud-check", reserve, n)
    await ctx.wait_for_signal("approved")
    return charged + await ctx.step("ship", ship, n)


async def new_step_after_the_wait(ctx: SagaContext, n: int) -> int:
    await ctx.step("reserve", reserve, n)
    charged = await ctx.step("charge", charge, n)
    await ctx.wait_for_signal("approved")
    await ctx.step("invoice", ship, n)  # not reached by any recorded history yet
    return charged + await ctx.step("ship", ship, n)


def checkout(body: Body, version: int = 1) -> Saga[int, int]:
    return Saga("checkout", body, version=version)


STEPS = [Step("reserve", reserve), Step("charge", charge)]


async def record(database: str, count: int = 3) -> None:
    """`count` checkouts waiting for approval, one suspended, one finished, one list saga."""
    saga = checkout(original)
    listed = Saga("refund", [*STEPS, Step("wait", ship)])
    async with Runtime(database, sagas=[saga, listed]) as rt:
        for n in range(count):
            await rt.spawn(saga, n, saga_id=f"order-{n}")
        done = await rt.spawn(saga, 99, saga_id="order-done")
        for n in range(count):
            await until_status(rt, f"order-{n}", SagaStatus.WAITING)
        await rt.signal("order-done", "approved", None)
        await done.result(timeout=10)
        await rt.spawn(listed, 5, saga_id="refund-1")
        await rt.handle("refund-1").result(timeout=10)


@pytest.fixture
def database(tmp_path: Path) -> str:
    return str(tmp_path / "orders.db")


@pytest.mark.parametrize(
    ("body", "position", "recorded", "new"),
    [
        (inserted, 2, "step 'charge'", "step 'fraud-check'"),
        (removed, 1, "step 'reserve'", "step 'charge'"),
        (renamed, 2, "step 'charge'", "step 'capture'"),
        (reordered, 1, "step 'reserve'", "step 'charge'"),
    ],
    ids=["inserted", "removed", "renamed", "reordered"],
)
async def test_every_incompatible_change_is_found_with_its_position(
    database: str, body: Body, position: int, recorded: str, new: str
) -> None:
    await record(database)
    problems = await replay_check(database, sagas=[checkout(body)])
    assert sorted(p.saga_id for p in problems) == ["order-0", "order-1", "order-2"]
    assert {(p.position, p.recorded, p.new) for p in problems} == {(position, recorded, new)}
    assert problems.checked == 3  # the finished one is not checked: it will not run again


async def test_a_branch_on_an_unrecorded_value_is_found(
    database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    await record(database)
    assert await replay_check(database, sagas=[checkout(branches_on_a_global)]) == []
    monkeypatch.setattr(sys.modules[__name__], "EXPRESS_ORDERS", True)
    problems = await replay_check(database, sagas=[checkout(branches_on_a_global)])
    assert len(problems) == 3
    assert problems[0].recorded == "step 'reserve'"


@pytest.mark.parametrize(
    "body",
    [original, action_changed, patched_in, new_step_after_the_wait],
    ids=lambda b: b.__name__,
)
async def test_compatible_changes_raise_no_alarm(database: str, body: Body) -> None:
    await record(database)
    problems = await replay_check(database, sagas=[checkout(body)])
    assert problems == []
    assert problems.checked == 3
    assert problems.skipped == {}  # the list saga has ended: nothing of it to check


async def test_a_version_that_is_not_given_and_an_unknown_name_are_reported(
    database: str,
) -> None:
    await record(database)
    problems = await replay_check(database, sagas=[checkout(original, version=2)])
    assert {p.saga_id for p in problems} == {"order-0", "order-1", "order-2"}
    assert all("checkout v1 is not registered (given: v2)" in p.message for p in problems)
    assert all(p.position is None for p in problems)
    elsewhere = await replay_check(database, sagas=[Saga("refund", STEPS)])
    assert elsewhere == []
    assert elsewhere.checked == 0
    assert elsewhere.skipped == {"checkout": 3}  # no definition of that name: not checked


async def test_a_step_list_whose_steps_changed_in_number_is_found(database: str) -> None:
    async def wait_forever(ctx: StepContext, n: int) -> int:
        raise RuntimeError("not yet")  # retried: the saga stays unfinished

    listed = Saga("refund", [*STEPS, Step("wait", wait_forever)])
    async with Runtime(database, sagas=[listed]) as rt:
        await rt.spawn(listed, 1, saga_id="refund-1")
        await until_status(rt, "refund-1", SagaStatus.RUNNING)
    assert await replay_check(database, sagas=[listed]) == []
    shorter = Saga("refund", STEPS)
    (problem,) = await replay_check(database, sagas=[shorter])
    assert "3 steps" in problem.message
    assert "has 2" in problem.message


async def test_it_reads_while_a_runtime_holds_the_database(database: str) -> None:
    saga = checkout(original)
    async with Runtime(database, sagas=[saga]) as rt:
        await rt.spawn(saga, 1, saga_id="live")
        await until_status(rt, "live", SagaStatus.WAITING)
        problems = await replay_check(database, sagas=[checkout(renamed)])
        assert [p.saga_id for p in problems] == ["live"]
        assert await replay_check(rt.store, sagas=[checkout(renamed)]) == problems
        await rt.signal("live", "approved", None)
        assert await rt.handle("live").result(timeout=10) == 11  # undisturbed


async def test_suspended_sagas_are_checked_too(database: str) -> None:
    await record(database, count=1)
    async with Runtime(database, sagas=[checkout(renamed)]) as rt:
        # Woken, the runtime itself meets the change: the saga is suspended, nothing runs.
        await rt.signal("order-0", "approved", None)
        info = await until_status(rt, "order-0", SagaStatus.SUSPENDED)
        assert "not deterministic" in (info.suspended_reason or "")
    (problem,) = await replay_check(database, sagas=[checkout(renamed)])
    assert problem.saga_id == "order-0"
    assert await replay_check(database, sagas=[checkout(original)]) == []


async def test_postgresql_is_checked_through_its_dsn(pg_dsn: str) -> None:
    await record(pg_dsn, count=2)
    problems = await replay_check(pg_dsn, sagas=[checkout(removed)])
    assert sorted(p.saga_id for p in problems) == ["order-0", "order-1"]
    assert await replay_check(pg_dsn, sagas=[checkout(patched_in)]) == []


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "runtime", "check-replay", *args]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60)


async def test_the_cli_prints_each_problem_and_exits_1(database: str) -> None:
    await record(database)
    module = "tests.testing.test_replay_check"
    broken = run_cli(database, "--sagas", f"{module}:RENAMED")
    assert broken.returncode == 1, broken.stderr
    lines = broken.stdout.splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("order-0 (checkout v1): ")
    assert "the history has step 'charge', the body now makes step 'capture'" in lines[0]
    assert "3 unfinished sagas checked, 3 would not replay" in broken.stderr
    fine = run_cli(database, "--sagas", f"{module}:COMPATIBLE")
    assert (fine.returncode, fine.stdout) == (0, ""), fine.stderr
    assert "3 unfinished sagas checked, 0 would not replay" in fine.stderr


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_colon", "module:attribute"),
        ("tests.testing.test_replay_check:MISSING", "cannot load"),
        ("tests.testing.test_replay_check:EXPRESS_ORDERS", "neither a Saga nor a list"),
    ],
)
def test_the_cli_says_what_is_wrong_with_its_arguments(
    tmp_path: Path, spec: str, message: str
) -> None:
    ended = run_cli(str(tmp_path / "none.db"), "--sagas", spec)
    assert ended.returncode != 0
    assert message in ended.stderr


def test_the_cli_refuses_a_missing_database(tmp_path: Path) -> None:
    ended = run_cli(str(tmp_path / "none.db"), "--sagas", "tests.testing.test_replay_check:RENAMED")
    assert ended.returncode != 0
    assert "no Sagaloop database" in ended.stderr
    assert not (tmp_path / "none.db").exists()


RENAMED = checkout(renamed)
COMPATIBLE = [checkout(patched_in), Saga("refund", STEPS)]


def test_a_problem_reads_as_one_line() -> None:
    problem = ReplayProblem("o-1", "checkout", 2, "it changed", 3, "step 'a'", "step 'b'")
    assert str(problem) == "o-1 (checkout v2): it changed"
