"""Edge cases of versions side by side, code sagas with children and parallel groups."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from runtime import Runtime, SagaCompensated, UnregisteredSagaError
from saga import Saga, SagaContext, SagaStatus, StepContext
from tests.runtime.long_running_helpers import until, until_status

RAN: Counter[str] = Counter()


@pytest.fixture(autouse=True)
def _fresh() -> None:
    RAN.clear()


def act(label: str) -> Any:
    async def run(ctx: StepContext, n: Any) -> str:
        RAN[f"{label}:{ctx.saga_id}"] += 1
        return label

    return run


def undo(label: str) -> Any:
    async def run(ctx: StepContext, n: Any, result: Any) -> None:
        RAN[f"undo-{label}:{ctx.saga_id}"] += 1

    return run


async def child_v1(ctx: SagaContext, n: int) -> str:
    await ctx.step("c-one", act("cv1-one"), n, compensate=undo("cv1-one"))
    await ctx.wait_for_signal("child-go")
    return await ctx.step("c-two", act("cv1-two"), n)


async def child_v2(ctx: SagaContext, n: int) -> str:
    await ctx.step("c-zero", act("cv2-zero"), n)
    await ctx.wait_for_signal("child-go")
    return await ctx.step("c-two", act("cv2-two"), n)


CHILD_V1 = Saga("child", child_v1, version=1)
CHILD_V2 = Saga("child", child_v2, version=2)


async def parent_v1(ctx: SagaContext, n: int) -> str:
    _a, _b = await ctx.parallel(
        ctx.step("p-a", act("pv1-a"), n, compensate=undo("pv1-a")),
        ctx.step("p-b", act("pv1-b"), n, compensate=undo("pv1-b")),
    )
    out = await ctx.child(CHILD_V1, n, saga_id=f"{ctx.saga_id}-kid")
    await ctx.wait_for_signal("parent-go")
    return out


async def parent_v2(ctx: SagaContext, n: int) -> str:
    await ctx.step("p-x", act("pv2-x"), n)
    out = await ctx.child(CHILD_V2, n, saga_id=f"{ctx.saga_id}-kid")
    await ctx.wait_for_signal("parent-go")
    return out


PARENT_V1 = Saga("parent", parent_v1, version=1)
PARENT_V2 = Saga("parent", parent_v2, version=2)


async def kid_waiting(rt: Runtime, kid: str) -> None:
    from saga import SagaNotFound

    async def check() -> bool:
        try:
            info = await rt.status(kid)
        except SagaNotFound:
            return False
        return info.status is SagaStatus.WAITING and info.waiting_for == "child-go"

    await until(check, what=f"{kid} waiting")


async def start_v1(db: Path) -> None:
    async with Runtime(db, sagas=[PARENT_V1, CHILD_V1]) as rt:
        await rt.spawn(PARENT_V1, 1, saga_id="p")
        await kid_waiting(rt, "p-kid")


async def test_parent_and_child_of_v1_finish_on_v1_beside_v2(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    await start_v1(db)
    async with Runtime(db, sagas=[PARENT_V2, CHILD_V2, PARENT_V1, CHILD_V1]) as rt:
        await rt.signal("p-kid", "child-go")
        await until_status(rt, "p", SagaStatus.WAITING, waiting_for="parent-go")
        await rt.signal("p", "parent-go")
        assert await rt.result("p", timeout=10) == "cv1-two"
        await rt.spawn("parent", 2, saga_id="q")
        await kid_waiting(rt, "q-kid")
        assert (await rt.status("q-kid")).version == 2
        await rt.signal("q-kid", "child-go")
        await until_status(rt, "q", SagaStatus.WAITING, waiting_for="parent-go")
        await rt.signal("q", "parent-go")
        assert await rt.result("q", timeout=10) == "cv2-two"
    assert set(RAN.values()) == {1}
    assert not [k for k in RAN if k.startswith(("pv2", "cv2")) and ":q" not in k]


async def test_child_of_an_unregistered_version_suspends_and_parent_waits(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    await start_v1(db)
    async with Runtime(db, sagas=[PARENT_V1, CHILD_V2]) as rt:
        with pytest.raises(UnregisteredSagaError, match="child v1 is not registered"):
            await rt.signal("p-kid", "child-go")  # this runtime could not check it
        await rt.cancel("p-kid", "stop")  # wakes it: its actor finds its version missing
        info = await until_status(rt, "p-kid", SagaStatus.SUSPENDED)
        assert info.suspended_reason == "child v1 is not registered"
        assert (await rt.status("p")).status is SagaStatus.WAITING
    async with Runtime(db, sagas=[PARENT_V1, CHILD_V1, CHILD_V2]) as rt:
        await rt.resume("p-kid")  # its cancellation was kept: it rolls back on v1
        with pytest.raises(SagaCompensated):
            await rt.result("p", timeout=10)  # the parent's child call failed for good
    assert RAN["undo-cv1-one:p-kid"] == 1
    assert RAN["undo-pv1-a:p"] == RAN["undo-pv1-b:p"] == 1
    assert not [k for k in RAN if "v2" in k]
    assert set(RAN.values()) == {1}


async def test_cancel_v1_parent_in_a_runtime_with_only_v2_then_compensate(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    await start_v1(db)
    async with Runtime(db, sagas=[PARENT_V2, CHILD_V2]) as rt:
        await rt.cancel("p", "stop")
        info = await until_status(rt, "p", SagaStatus.SUSPENDED)
        assert info.suspended_reason == "parent v1 is not registered"
        info = await rt.status("p")  # status through the stand-in
        assert info.version == 1
    assert not [k for k in RAN if "v2" in k]
    async with Runtime(db, sagas=[PARENT_V1, CHILD_V1, PARENT_V2, CHILD_V2]) as rt:
        await rt.resume("p")
        with pytest.raises(SagaCompensated):
            await rt.result("p", timeout=10)

        async def child_done() -> bool:
            return (await rt.status("p-kid")).status.is_terminal

        await until(child_done, what="child compensated")
    assert RAN["undo-pv1-a:p"] == 1
    assert RAN["undo-pv1-b:p"] == 1
    assert RAN["undo-cv1-one:p-kid"] == 1
    assert not [k for k in RAN if "v2" in k]
    assert set(RAN.values()) == {1}


async def test_status_of_a_v1_code_saga_in_v2_only_runtime(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    await start_v1(db)
    async with Runtime(db, sagas=[PARENT_V1, CHILD_V1]) as rt:
        before = await rt.status("p")
        kid_before = await rt.status("p-kid")
    async with Runtime(db, sagas=[PARENT_V2, CHILD_V2]) as rt:
        after = await rt.status("p")
        kid_after = await rt.status("p-kid")
        assert [s.name for s in after.steps] == [s.name for s in before.steps]
        assert [s.name for s in kid_after.steps] == [s.name for s in kid_before.steps]
        assert after.version == 1
        page = await rt.list(version=1)
        assert sorted(i.saga_id for i in page.items) == ["p", "p-kid"]
        assert (await rt.list(version=2)).items == ()


FLAKY: Counter[str] = Counter()


async def flaky_once(ctx: StepContext, n: int) -> str:
    FLAKY[ctx.saga_id] += 1
    RAN[f"flaky:{ctx.saga_id}"] += 1
    if FLAKY[ctx.saga_id] == 1:
        raise ConnectionError("transient")
    return "ok"


async def retrying_v1(ctx: SagaContext, n: int) -> str:
    from saga import RetryPolicy

    slow = RetryPolicy(initial_interval=1000, maximum_interval=1000, jitter=0)
    await ctx.step("once", act("rv1-once"), n)
    return await ctx.step("flaky", flaky_once, n, retry=slow)


async def retrying_v2(ctx: SagaContext, n: int) -> str:
    return await ctx.step("other", act("rv2-other"), n)


RETRY_V1 = Saga("retrying", retrying_v1, version=1)
RETRY_V2 = Saga("retrying", retrying_v2, version=2)


async def test_code_saga_mid_retry_restarted_on_v2_only(tmp_path: Path) -> None:
    from saga import VirtualClock

    FLAKY.clear()
    clock = VirtualClock()
    db = tmp_path / "s.db"
    async with Runtime(db, sagas=[RETRY_V1], clock=clock) as rt:
        await rt.spawn(RETRY_V1, 1, saga_id="c")

        async def backing_off() -> bool:
            info = await rt.status("c")
            return len(info.steps) == 2 and info.steps[1].attempts == 1 and info.wake_at is not None

        await until(backing_off, what="backoff")
        before = await rt.status("c")
    clock.advance(5000)
    async with Runtime(db, sagas=[RETRY_V2], clock=clock) as rt:
        info = await until_status(rt, "c", SagaStatus.SUSPENDED)
        assert info.suspended_reason == "retrying v1 is not registered"
        assert [s.name for s in info.steps] == [s.name for s in before.steps]
        assert info.steps[1].attempts == 1
    async with Runtime(db, sagas=[RETRY_V1, RETRY_V2], clock=clock) as rt:
        await rt.resume("c")
        assert await rt.result("c", timeout=10) == "ok"
    assert FLAKY["c"] == 2
    assert RAN["rv1-once:c"] == 1
    assert not [k for k in RAN if "rv2" in k]
