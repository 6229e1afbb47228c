"""A completed child of an old version, compensated by its parent after a
deploy that dropped the child's version."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from runtime import Runtime
from runtime.testing import replay_check
from saga import Saga, SagaContext, SagaStatus, StepContext
from tests.runtime.long_running_helpers import until, until_status

RAN: Counter[str] = Counter()


@pytest.fixture(autouse=True)
def _fresh() -> None:
    RAN.clear()


async def act(ctx: StepContext, n: Any) -> Any:
    RAN[f"{ctx.step}:{ctx.saga_id}"] += 1
    return n


async def undo(ctx: StepContext, n: Any, result: Any) -> None:
    RAN[f"undo-{ctx.step}:{ctx.saga_id}"] += 1


async def kid_v1(ctx: SagaContext, n: int) -> int:
    return await ctx.step("k1", act, n, compensate=undo)


async def kid_v2(ctx: SagaContext, n: int) -> int:
    return await ctx.step("k2", act, n, compensate=undo)


KID_V1 = Saga("kid", kid_v1, version=1)
KID_V2 = Saga("kid", kid_v2, version=2)


async def parent(ctx: SagaContext, n: int) -> int:
    await ctx.step("p", act, n, compensate=undo)
    out = await ctx.child(KID_V1, n, saga_id="kid-1")
    await ctx.wait_for_signal("approved")
    return out


PARENT = Saga("parent", parent)


async def record(db: Path) -> None:
    async with Runtime(db, sagas=[PARENT, KID_V1]) as rt:
        await rt.spawn(PARENT, 1, saga_id="p")
        await until_status(rt, "p", SagaStatus.WAITING, waiting_for="approved")
        assert (await rt.status("kid-1")).status is SagaStatus.COMPLETED


async def test_compensating_a_completed_child_of_a_dropped_version_does_not_hang(
    tmp_path: Path,
) -> None:
    """README: a forgotten instance is suspended with the reason, never run on the wrong
    code. Here the completed v1 child is asked to compensate in a runtime without v1:
    `_unregistered` returns early for a saga that is not live, so nothing is suspended, the
    parent waits for the child's report for ever, and neither shows a reason."""
    db = tmp_path / "s.db"
    await record(db)
    async with Runtime(db, sagas=[PARENT, KID_V2]) as rt:
        await rt.cancel("p", "customer")

        async def someone_suspended_or_done() -> bool:
            p = await rt.status("p")
            kid = await rt.status("kid-1")
            return (
                p.status in (SagaStatus.SUSPENDED, SagaStatus.COMPENSATED, SagaStatus.FAILED)
                or kid.status is SagaStatus.SUSPENDED
            )

        try:
            await until(someone_suspended_or_done, timeout=5, what="a suspension")
        finally:
            p, kid = await rt.status("p"), await rt.status("kid-1")
            print("parent", p.status, p.suspended_reason, "kid", kid.status, kid.suspended_reason)
    assert not [k for k in RAN if "k2" in k]


async def test_replay_check_warns_of_a_completed_child_its_parent_may_compensate(
    tmp_path: Path,
) -> None:
    """The replay check says nothing of the completed v1 child, though the deploy it
    approves leaves the parent unable to compensate it."""
    db = tmp_path / "s.db"
    await record(db)
    problems = await replay_check(db, sagas=[PARENT, KID_V2])
    assert problems != [], "replay_check approves a deploy that strands the parent"


async def test_probe_recovery_once_v1_is_back(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    await record(db)
    async with Runtime(db, sagas=[PARENT, KID_V2]) as rt:
        await rt.cancel("p", "customer")

        info = await until_status(rt, "p", SagaStatus.SUSPENDED)
        assert info.suspended_reason == (
            "its child saga 'kid-1' cannot roll back: kid v1 is not registered"
        )
    async with Runtime(db, sagas=[PARENT, KID_V1, KID_V2]) as rt:
        from runtime import SagaCompensated

        await rt.resume("p")
        with pytest.raises(SagaCompensated):
            await rt.result("p", timeout=5)
    assert RAN["undo-k1:kid-1"] == 1
    assert RAN["undo-p:p"] == 1
