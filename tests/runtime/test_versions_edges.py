"""Edge cases of versions side by side."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from runtime import Runtime, SagaCompensated, SagaSuspendedError, UnregisteredSagaError
from saga import (
    PayloadError,
    RetryPolicy,
    Saga,
    SagaStatus,
    Step,
    StepContext,
    VirtualClock,
    WaitForSignal,
)
from tests.runtime.long_running_helpers import until_status

RAN: Counter[str] = Counter()


@pytest.fixture(autouse=True)
def _fresh() -> None:
    RAN.clear()


def step(label: str) -> Any:
    async def run(ctx: StepContext, n: Any) -> str:
        RAN[f"{label}:{ctx.saga_id}"] += 1
        return label

    return run


def undo(label: str) -> Any:
    async def run(ctx: StepContext, n: Any, result: Any) -> None:
        RAN[f"undo-{label}:{ctx.saga_id}"] += 1

    return run


FAIL_FIRST: dict[str, int] = {}


def flaky(label: str, failures: int) -> Any:
    async def run(ctx: StepContext, n: Any) -> str:
        RAN[f"{label}:{ctx.saga_id}"] += 1
        if RAN[f"{label}:{ctx.saga_id}"] <= failures:
            raise ConnectionError("transient")
        return label

    return run


async def to_approval(rt: Runtime, clock: VirtualClock, saga_id: str) -> None:
    from tests.runtime.long_running_helpers import until

    async def retrying() -> bool:
        info = await rt.status(saga_id)
        return info.steps[1].attempts == 1 and info.wake_at is not None

    await until(retrying, what="a retry pending")
    clock.advance(2000)
    await until_status(rt, saga_id, SagaStatus.WAITING, waiting_for="approved")


SLOW = RetryPolicy(initial_interval=1000.0, maximum_interval=1000.0, maximum_attempts=5, jitter=0)

LIST_V1 = Saga(
    "refund",
    [
        Step("find", step("v1-find"), compensate=undo("v1-find")),
        Step("pay", flaky("v1-pay", 1), retry=SLOW),
        WaitForSignal("approved"),
        Step("close", step("v1-close")),
    ],
    version=1,
)
LIST_V2 = Saga(
    "refund",
    [
        Step("find", step("v2-find"), compensate=undo("v2-find")),
        Step("check", step("v2-check")),
        Step("pay", step("v2-pay")),
        WaitForSignal("approved"),
        Step("close", step("v2-close")),
    ],
    version=2,
)


async def test_list_saga_mid_retry_restarted_on_v2_only_is_suspended_then_resumes(
    tmp_path: Path,
) -> None:
    db = tmp_path / "s.db"
    clock = VirtualClock()
    async with Runtime(db, sagas=[LIST_V1], clock=clock) as rt:
        await rt.spawn(LIST_V1, 1, saga_id="r")

        async def retrying() -> bool:
            info = await rt.status("r")
            return info.steps[1].attempts == 1 and info.wake_at is not None

        from tests.runtime.long_running_helpers import until

        await until(retrying, what="a retry pending")
    assert RAN["v1-pay:r"] == 1
    clock.advance(2000)
    async with Runtime(db, sagas=[LIST_V2], clock=clock) as rt:
        info = await until_status(rt, "r", SagaStatus.SUSPENDED)
        assert info.suspended_reason == "refund v1 is not registered"
        with pytest.raises(SagaSuspendedError):
            await rt.result("r", timeout=10)
    assert not [k for k in RAN if k.startswith("v2")]
    async with Runtime(db, sagas=[LIST_V1, LIST_V2], clock=clock) as rt:
        await rt.resume("r")
        await until_status(rt, "r", SagaStatus.WAITING, waiting_for="approved")
        await rt.signal("r", "approved")
        out = await rt.result("r", timeout=10)
        assert out["close"] == "v1-close"
    assert RAN["v1-pay:r"] == 2
    assert RAN["v1-find:r"] == 1
    assert not [k for k in RAN if k.startswith("v2")]


async def test_cancel_of_a_v1_saga_in_a_v2_only_runtime_compensates_on_v1_later(
    tmp_path: Path,
) -> None:
    db = tmp_path / "s.db"
    clock = VirtualClock()
    async with Runtime(db, sagas=[LIST_V1], clock=clock) as rt:
        await rt.spawn(LIST_V1, 1, saga_id="r")
        await to_approval(rt, clock, "r")
    async with Runtime(db, sagas=[LIST_V2], clock=clock) as rt:
        await rt.cancel("r", "customer")
        info = await until_status(rt, "r", SagaStatus.SUSPENDED)
        assert info.suspended_reason == "refund v1 is not registered"
    assert not [k for k in RAN if "v2" in k]
    async with Runtime(db, sagas=[LIST_V1, LIST_V2], clock=clock) as rt:
        await rt.resume("r")
        with pytest.raises(SagaCompensated):
            await rt.result("r", timeout=10)
    assert RAN["undo-v1-find:r"] == 1
    assert not [k for k in RAN if "v2" in k]


async def test_status_and_result_of_an_ended_v1_list_saga_in_a_v2_only_runtime(
    tmp_path: Path,
) -> None:
    """The output of a step list maps each step's name to its result: only its version
    knows the names, so a runtime without it refuses to make one up."""
    db = tmp_path / "s.db"
    clock = VirtualClock()
    async with Runtime(db, sagas=[LIST_V1], clock=clock) as rt:
        await rt.spawn(LIST_V1, 1, saga_id="r")
        await to_approval(rt, clock, "r")
        await rt.signal("r", "approved")
        expected = await rt.result("r", timeout=10)
        expected_steps = [s.name for s in (await rt.status("r")).steps]
    async with Runtime(db, sagas=[LIST_V2], clock=clock) as rt:
        with pytest.raises(UnregisteredSagaError, match="refund v1 is not registered"):
            await rt.result("r", timeout=10)
        info = await rt.status("r")  # read through a stand-in: named by position
        assert [s.name for s in info.steps] == [f"step-{n + 1}" for n in range(len(expected_steps))]
        assert info.status is SagaStatus.COMPLETED
    async with Runtime(db, sagas=[LIST_V1, LIST_V2], clock=clock) as rt:
        assert await rt.result("r", timeout=10) == expected


SIGNALLED_V1 = Saga(
    "signalled",
    [Step("a", step("v1-a")), WaitForSignal("go", payload_type=int), Step("b", step("v1-b"))],
    version=1,
)
SIGNALLED_V2 = Saga("signalled", [Step("a", step("v2-a")), Step("b", step("v2-b"))], version=2)


async def test_a_signal_to_a_version_not_given_here_is_refused_not_left_unchecked(
    tmp_path: Path,
) -> None:
    """WaitForSignal validates its payload as `payload_type`, which only the saga's version
    knows: a runtime without it refuses the signal (nothing stored), one with it checks."""
    db = tmp_path / "s.db"
    async with Runtime(db, sagas=[SIGNALLED_V1]) as rt:
        await rt.spawn(SIGNALLED_V1, 1, saga_id="s")
        await until_status(rt, "s", SagaStatus.WAITING, waiting_for="go")
    async with Runtime(db, sagas=[SIGNALLED_V2]) as rt:
        with pytest.raises(UnregisteredSagaError, match="signalled v1 is not registered"):
            await rt.signal("s", "go", "not an int")
        assert (await rt.status("s")).status is SagaStatus.WAITING  # nothing stored
    async with Runtime(db, sagas=[SIGNALLED_V1, SIGNALLED_V2]) as rt:
        with pytest.raises(PayloadError):
            await rt.signal("s", "go", "not an int")
        await rt.signal("s", "go", 5)
        out = await rt.result("s", timeout=10)
        assert out["go"] == 5


async def test_spawn_an_existing_id_under_a_newer_version_returns_it(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    clock = VirtualClock()
    async with Runtime(db, sagas=[LIST_V1], clock=clock) as rt:
        await rt.spawn(LIST_V1, 1, saga_id="r")
        await to_approval(rt, clock, "r")
    async with Runtime(db, sagas=[LIST_V1, LIST_V2], clock=clock) as rt:
        h = await rt.spawn("refund", 1, saga_id="r")
        assert h.saga_id == "r"
        info = await rt.status("r")
        assert info.version == 1
        await rt.signal("r", "approved")
        assert (await rt.result("r", timeout=10))["close"] == "v1-close"
        h2 = await rt.spawn(LIST_V2, 1, saga_id="r")  # ended: still the same handle
        assert h2.saga_id == "r"
        assert (await rt.status("r")).version == 1
    assert not [k for k in RAN if "v2" in k]
    assert RAN["v1-close:r"] == 1


async def test_spawn_an_existing_id_under_a_newer_version_in_v2_only(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    clock = VirtualClock()
    async with Runtime(db, sagas=[LIST_V1], clock=clock) as rt:
        await rt.spawn(LIST_V1, 1, saga_id="r")
        await to_approval(rt, clock, "r")
    async with Runtime(db, sagas=[LIST_V2], clock=clock) as rt:
        h = await rt.spawn("refund", 1, saga_id="r")
        assert h.saga_id == "r"
        info = await until_status(rt, "r", SagaStatus.SUSPENDED)
        assert info.version == 1
    assert not [k for k in RAN if "v2" in k]
