"""Long-running sagas on a real SQLite store, with days passing on a `VirtualClock`.

Covered: the manager-approval refund (granted, rejected, timed out, each
`on_timeout`); the durable inbox (early signals, order, idempotency keys);
the errors `signal` and `cancel` raise; durable `Sleep` across restarts;
signal timeouts across restarts; cancellation in every phase and across a
restart; saga deadlines; passivation and `Runtime.list` paging; and a scale
run of thousands of waiting sagas. Nothing sleeps to let time pass: the
clock is moved, and tests wait for outcomes (results, stored status).

Before moving the clock a test waits until the saga is durably waiting:
`VirtualClock.advance` does not wait for the sagas it wakes.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from runtime import (
    PayloadError,
    Runtime,
    SagaCompensated,
    SagaEndedError,
    SagaFailed,
    SagaNotFound,
    SagaStatus,
    SagaSummary,
    SqliteStore,
    UnknownSignalError,
    VirtualClock,
)
from saga import (
    CompensationStatus,
    Continue,
    OnTimeout,
    Saga,
    Sleep,
    Step,
    StepContext,
    StepStatus,
    WaitForSignal,
)
from saga.engine import (
    CancelRequested,
    CompensationSucceeded,
    SagaStarted,
    SignalReceived,
    StepFailed,
    StepSucceeded,
    StepWaiting,
    TimerFired,
)

from .long_running_helpers import (
    DAY,
    WAIT,
    Approval,
    Gate,
    Journal,
    Rejected,
    act,
    assert_contiguous,
    events,
    offsets,
    texts,
    undo,
    until,
    until_status,
)

SOAK = os.environ.get("SAGALOOP_SOAK") == "1"

WAITING = SagaStatus.WAITING
REJECTED = f"{Rejected.__module__}.{Rejected.__qualname__}"

# Sleeps until the epoch time it is given; a barrier for "nothing happened before t".
TICK = Saga("tick", [Sleep("tick", until=lambda ctx, at: at)])


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "sagas.db"


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock()


async def reach(rt: Runtime, clock: VirtualClock, at: float) -> None:
    """Move the clock to `at` and wait until the runtime has handled what fell due by then.

    A sentinel saga sleeping until exactly `at` completes once the timer
    service has swept `at`: anything not due by then was looked at and left.
    """
    handle = await rt.spawn(TICK, at, saga_id=f"tick@{at}")
    await until_status(rt, handle.saga_id, WAITING)
    clock.set(at)
    assert await handle.result(timeout=WAIT) == {"tick": at}


async def _no_actors(rt: Runtime) -> bool:
    return rt.live_actors == 0


# -- the manager-approval refund -----------------------------------------------------------


def refund_saga(journal: Journal, on_timeout: OnTimeout | Continue = OnTimeout.COMPENSATE) -> Saga:
    def create(ctx: StepContext, order: Any) -> dict[str, str]:
        return {"refund_id": f"rf-{ctx.saga_id}"}

    async def apply(ctx: StepContext, order: Any) -> dict[str, Any]:
        journal.record("action", ctx, None)
        approval = ctx.results["approval"]
        if not approval.approved:
            raise Rejected(f"refused by {approval.by}")
        return {"refunded": order["amount"], "by": approval.by}

    return Saga(
        "refund",
        [
            Step("create", act(journal, create), compensate=undo(journal)),
            WaitForSignal(
                "approval", payload_type=Approval, timeout=3 * DAY, on_timeout=on_timeout
            ),
            Step("apply", apply),
        ],
    )


async def test_an_approved_refund_completes_with_the_typed_payload(
    db: Path, clock: VirtualClock
) -> None:
    journal = Journal()
    refund = refund_saga(journal)
    t0 = clock.now()
    outputs: list[dict[str, Any]] = []
    async with Runtime(db, sagas=[refund], clock=clock) as rt:
        handle = await rt.spawn(refund, {"amount": 50}, saga_id="r-1")

        async def wait_for_outcome() -> None:
            outputs.append(await handle.result(timeout=WAIT))

        async with anyio.create_task_group() as tg:
            tg.start_soon(wait_for_outcome)  # waits across the passivation below
            info = await until_status(rt, "r-1", WAITING, waiting_for="approval")
            assert info.wake_at == t0 + 3 * DAY  # the timeout, durable
            assert [s.status for s in info.steps] == [
                StepStatus.SUCCEEDED,
                StepStatus.WAITING,
                StepStatus.PENDING,
            ]
            await until(lambda: _no_actors(rt), what="the waiting saga to passivate")

            clock.advance(2 * DAY)  # the manager takes two days
            granted = Approval(approved=True, by="maria")
            assert await rt.signal("r-1", "approval", granted) is True
        output = await handle.result(timeout=WAIT)
        assert outputs == [output]
        info = await rt.status("r-1")
        assert await rt.store.inbox("r-1") == []

    assert output == {
        "create": {"refund_id": "rf-r-1"},
        "approval": granted,
        "apply": {"refunded": 50, "by": "maria"},
    }
    assert isinstance(output["approval"], Approval)
    assert journal.of("r-1") == [("action", "create"), ("action", "apply")]
    seen = journal.actions("apply")[0].results["approval"]
    assert isinstance(seen, Approval)
    assert seen == granted
    assert info.status is SagaStatus.COMPLETED
    assert info.waiting_for is None
    assert info.wake_at is None
    assert_contiguous(info.history)
    kinds = [type(entry.event) for entry in info.history]
    assert kinds == [SagaStarted, StepSucceeded, StepWaiting, SignalReceived, StepSucceeded]
    assert offsets(info) == [
        (0.0, "saga started"),
        (0.0, "step create attempt 1 started"),
        (0.0, "step create succeeded"),
        (0.0, "step approval attempt 1 started"),
        (0.0, "step approval waiting for signal 'approval' (at most 259200.000s)"),
        (2 * DAY, "signal 'approval' received"),
        (2 * DAY, "step approval got its signal"),
        (2 * DAY, "step apply attempt 1 started"),
        (2 * DAY, "step apply succeeded"),
        (2 * DAY, "saga completed"),
    ]


async def test_a_rejected_refund_is_compensated(db: Path, clock: VirtualClock) -> None:
    journal = Journal()
    refund = refund_saga(journal)
    async with Runtime(db, sagas=[refund], clock=clock) as rt:
        handle = await rt.spawn(refund, {"amount": 50}, saga_id="r-2")
        await until_status(rt, "r-2", WAITING, waiting_for="approval")
        await rt.signal("r-2", "approval", Approval(approved=False, by="maria"))
        with pytest.raises(SagaCompensated) as caught:
            await handle.result(timeout=WAIT)
        info = await rt.status("r-2")

    assert caught.value.step == "apply"
    assert caught.value.error is not None
    assert caught.value.error.type == REJECTED
    assert caught.value.error.message == "refused by maria"
    assert journal.of("r-2") == [
        ("action", "create"),
        ("action", "apply"),
        ("compensate", "create"),
    ]
    assert journal.compensations()[0].given == {"refund_id": "rf-r-2"}
    assert journal.compensations()[0].key == "r-2:create:compensate"
    assert info.status is SagaStatus.COMPENSATED
    assert [(s.status, s.compensation) for s in info.steps] == [
        (StepStatus.SUCCEEDED, CompensationStatus.COMPENSATED),
        (StepStatus.SUCCEEDED, CompensationStatus.NONE),  # a wait has nothing to undo
        (StepStatus.FAILED, CompensationStatus.NONE),  # definitive: took no effect
    ]
    assert texts(info)[-4:] == [
        "step apply failed definitively (took no effect)",
        "compensation of create attempt 1 started",
        "step create compensated",
        "saga compensated",
    ]


async def test_a_refund_nobody_approves_times_out_after_three_days_and_compensates(
    db: Path, clock: VirtualClock
) -> None:
    journal = Journal()
    refund = refund_saga(journal)
    async with Runtime(db, sagas=[refund, TICK], clock=clock) as rt:
        t0 = clock.now()
        handle = await rt.spawn(refund, {"amount": 50}, saga_id="r-3")
        await until_status(rt, "r-3", WAITING, waiting_for="approval")
        await reach(rt, clock, t0 + 3 * DAY - 1)
        still = await rt.status("r-3")
        assert still.status is WAITING  # one second before the timeout: waits on
        assert journal.of("r-3") == [("action", "create")]

        clock.advance(1)
        with pytest.raises(SagaCompensated) as caught:
            await handle.result(timeout=WAIT)
        info = await rt.status("r-3")

    assert caught.value.step == "approval"
    assert caught.value.error is not None
    assert caught.value.error.type == "saga.SignalTimeout"
    assert journal.of("r-3") == [("action", "create"), ("compensate", "create")]
    assert journal.compensations()[0].given == {"refund_id": "rf-r-3"}
    assert info.status is SagaStatus.COMPENSATED
    assert info.steps[1].status is StepStatus.FAILED
    assert info.steps[2].status is StepStatus.PENDING  # apply never ran
    assert [e.at for e in events(info, TimerFired)] == [t0 + 3 * DAY]
    assert (3 * DAY, "step approval timed out") in offsets(info)
    assert (3 * DAY, "step create compensated") in offsets(info)


async def test_on_timeout_fail_ends_the_saga_failed_with_nothing_compensated(
    db: Path, clock: VirtualClock
) -> None:
    journal = Journal()
    refund = refund_saga(journal, on_timeout=OnTimeout.FAIL)
    async with Runtime(db, sagas=[refund], clock=clock) as rt:
        handle = await rt.spawn(refund, {"amount": 50}, saga_id="r-4")
        await until_status(rt, "r-4", WAITING, waiting_for="approval")
        clock.advance(3 * DAY)
        with pytest.raises(SagaFailed) as caught:
            await handle.result(timeout=WAIT)
        info = await rt.status("r-4")
        with pytest.raises(SagaEndedError):
            await rt.signal("r-4", "approval", Approval(approved=True, by="late"))

    assert caught.value.cause_step == "approval"
    assert caught.value.cause is not None
    assert caught.value.cause.type == "saga.SignalTimeout"
    assert caught.value.step is None  # no compensation failed: none ran
    assert journal.of("r-4") == [("action", "create")]
    assert info.status is SagaStatus.FAILED
    assert [s.compensation for s in info.steps] == [CompensationStatus.NONE] * 3
    assert info.failed_step == "approval"
    assert texts(info)[-1] == "saga failed"


async def test_on_timeout_continue_carries_on_with_the_default_payload(
    db: Path, clock: VirtualClock
) -> None:
    journal = Journal()
    default = Approval(approved=True, by="auto-approval")
    refund = refund_saga(journal, on_timeout=Continue(default))
    async with Runtime(db, sagas=[refund], clock=clock) as rt:
        handle = await rt.spawn(refund, {"amount": 7}, saga_id="r-5")
        await until_status(rt, "r-5", WAITING, waiting_for="approval")
        clock.advance(3 * DAY)
        output = await handle.result(timeout=WAIT)
        info = await rt.status("r-5")

    assert output["approval"] == default
    assert output["apply"] == {"refunded": 7, "by": "auto-approval"}
    seen = journal.actions("apply")[0].results["approval"]
    assert isinstance(seen, Approval)
    assert seen == default
    assert journal.compensations() == []
    assert info.status is SagaStatus.COMPLETED
    assert events(info, SignalReceived) == []  # no signal came: the default stood in
    assert (3 * DAY, "step approval stopped waiting") in offsets(info)


# -- the durable inbox ---------------------------------------------------------------------


async def test_a_signal_sent_before_the_wait_is_kept_and_consumed_there(db: Path) -> None:
    journal = Journal()
    gate = Gate()
    saga = Saga(
        "early",
        [
            Step("prepare", gate.action(journal, "ready")),
            WaitForSignal("approval", payload_type=Approval),
            Step("apply", act(journal, lambda ctx, _: ctx.results["approval"].by)),
        ],
    )
    async with Runtime(db, sagas=[saga], clock=VirtualClock()) as rt:
        handle = await rt.spawn(saga, None, saga_id="e")
        await gate.reached("e")
        early = Approval(approved=True, by="early-bird")
        assert await rt.signal("e", "approval", early) is True
        kept = await rt.store.inbox("e")  # durable before the saga gets there
        assert [(item.kind, item.name) for item in kept] == [("signal", "approval")]
        info = await rt.status("e")
        assert info.status is SagaStatus.RUNNING
        assert info.steps[1].status is StepStatus.PENDING

        gate.open("e")
        output = await handle.result(timeout=WAIT)
        info = await rt.status("e")
        assert await rt.store.inbox("e") == []

    assert output == {"prepare": "ready", "approval": early, "apply": "early-bird"}
    assert [e.name for e in events(info, SignalReceived)] == ["approval"]
    assert journal.of("e") == [("action", "prepare"), ("action", "apply")]


async def test_an_early_signal_is_kept_in_the_snapshot_across_a_restart(
    db: Path, clock: VirtualClock
) -> None:
    journal = Journal()
    saga = Saga(
        "cool-off",
        [
            Sleep("cool_off", seconds=3600),
            WaitForSignal("approval", payload_type=Approval),
            Step("apply", act(journal, lambda ctx, _: ctx.results["approval"].by)),
        ],
    )
    t0 = clock.now()
    async with Runtime(db, sagas=[saga], clock=clock) as rt:
        handle = await rt.spawn(saga, None, saga_id="c")
        await until_status(rt, "c", WAITING)
        assert await rt.signal("c", "approval", Approval(approved=True, by="ana")) is True

        async def taken_in() -> bool:
            info = await rt.status("c")
            return bool(events(info, SignalReceived)) and not await rt.store.inbox("c")

        await until(taken_in, what="the signal to move into the snapshot")
        info = await rt.status("c")
        assert info.status is WAITING
        assert info.waiting_for is None
        assert info.wake_at == t0 + 3600
    assert journal.calls == []

    async with Runtime(db, sagas=[saga], clock=clock) as rt:
        await until_status(rt, "c", WAITING)
        clock.advance(3600)
        output = await rt.handle("c").result(timeout=WAIT)
        info = await rt.status("c")

    assert output["approval"] == Approval(approved=True, by="ana")
    assert output["apply"] == "ana"
    assert handle.saga_id == "c"
    assert "step approval: its signal had already arrived" in texts(info)
    assert len(events(info, SignalReceived)) == 1


@pytest.mark.parametrize("order", [("first", "second"), ("second", "first")])
async def test_two_different_signals_are_each_delivered_to_their_step_in_order(
    db: Path, order: tuple[str, str]
) -> None:
    journal = Journal()
    gate = Gate()
    saga = Saga(
        "two",
        [
            Step("prepare", gate.action(journal)),
            WaitForSignal("first", payload_type=int),
            WaitForSignal("second", payload_type=int),
            Step("finish", act(journal, lambda ctx, _: dict(ctx.results))),
        ],
    )
    payloads = {"first": 1, "second": 2}
    async with Runtime(db, sagas=[saga], clock=VirtualClock()) as rt:
        handle = await rt.spawn(saga, None, saga_id="t")
        await gate.reached("t")
        for name in order:
            assert await rt.signal("t", name, payloads[name]) is True
        gate.open("t")
        output = await handle.result(timeout=WAIT)
        info = await rt.status("t")

    assert output["first"] == 1
    assert output["second"] == 2
    assert output["finish"] == {"prepare": None, "first": 1, "second": 2}
    received = events(info, SignalReceived)
    assert [(e.name, bytes(e.payload)) for e in received] == [
        (name, str(payloads[name]).encode()) for name in order
    ]
    assert journal.of("t") == [("action", "prepare"), ("action", "finish")]


def paid_twice(journal: Journal, gate: Gate) -> Saga:
    """Two steps wait for the same signal: a second delivery would be seen by the second."""
    return Saga(
        "paid",
        [
            Step("prepare", gate.action(journal)),
            WaitForSignal("first_payment", signal="pay", payload_type=int),
            WaitForSignal("second_payment", signal="pay", payload_type=int),
            Step("finish", act(journal, lambda ctx, _: dict(ctx.results))),
        ],
    )


async def test_same_named_signals_reach_successive_waits_in_the_order_sent(db: Path) -> None:
    journal = Journal()
    gate = Gate()
    saga = paid_twice(journal, gate)
    async with Runtime(db, sagas=[saga], clock=VirtualClock()) as rt:
        handle = await rt.spawn(saga, None, saga_id="p")
        await gate.reached("p")
        for amount in (10, 20):
            assert await rt.signal("p", "pay", amount) is True
        gate.open("p")
        output = await handle.result(timeout=WAIT)
    assert (output["first_payment"], output["second_payment"]) == (10, 20)


async def test_a_signal_with_the_same_idempotency_key_is_delivered_once(db: Path) -> None:
    journal = Journal()
    gate = Gate()
    saga = paid_twice(journal, gate)
    async with Runtime(db, sagas=[saga], clock=VirtualClock()) as rt:
        handle = await rt.spawn(saga, None, saga_id="k")
        await gate.reached("k")
        # Both still in the inbox: the duplicate is refused at once.
        assert await rt.signal("k", "pay", 10, idempotency_key="pay-1") is True
        assert await rt.signal("k", "pay", 99, idempotency_key="pay-1") is False
        assert len(await rt.store.inbox("k")) == 1

        gate.open("k")

        async def at_second_wait() -> bool:
            return (await rt.status("k")).steps[2].status is StepStatus.WAITING

        await until(at_second_wait, what="the second wait")
        info = await rt.status("k")
        assert (info.status, info.waiting_for) == (WAITING, "pay")
        assert info.steps[1].status is StepStatus.SUCCEEDED

        # Long after the first was applied, the same key again: ignored.
        accepted = await rt.signal("k", "pay", 98, idempotency_key="pay-1")
        assert isinstance(accepted, bool)  # False when noticed at once, else dropped later

        async def handled() -> bool:
            return not await rt.store.inbox("k")

        await until(handled, what="the duplicate to be taken from the inbox")
        info = await rt.status("k")
        assert info.status is WAITING
        assert info.steps[2].status is StepStatus.WAITING

        assert await rt.signal("k", "pay", 20, idempotency_key="pay-2") is True
        output = await handle.result(timeout=WAIT)
        info = await rt.status("k")

    assert (output["first_payment"], output["second_payment"]) == (10, 20)
    assert output["finish"] == {"prepare": None, "first_payment": 10, "second_payment": 20}
    # 99 was refused at the door; 98, if it got in, was recorded and ignored.
    payloads = [bytes(e.payload) for e in events(info, SignalReceived) if e.key == "pay-1"]
    assert payloads == ([b"10", b"98"] if accepted else [b"10"])
    assert len(journal.actions("finish", "k")) == 1


# -- errors from signal and cancel ---------------------------------------------------------


async def test_signal_and_cancel_errors(db: Path, clock: VirtualClock) -> None:
    journal = Journal()
    refund = refund_saga(journal)
    async with Runtime(db, sagas=[refund], clock=clock) as rt:
        with pytest.raises(SagaNotFound):
            await rt.signal("nobody", "approval", Approval(approved=True, by="x"))
        with pytest.raises(SagaNotFound):
            await rt.cancel("nobody")

        await rt.spawn(refund, {"amount": 1}, saga_id="w")
        before = await until_status(rt, "w", WAITING, waiting_for="approval")

        with pytest.raises(UnknownSignalError):
            await rt.signal("w", "aproval", Approval(approved=True, by="typo"))
        for bad in (
            {"approved": "yes", "by": "x"},  # wrong field type
            {"by": "x"},  # missing field
            "approved",
            object(),  # not serializable at all
        ):
            with pytest.raises(PayloadError):
                await rt.signal("w", "approval", bad)
        assert await rt.store.inbox("w") == []  # nothing stored
        after = await rt.status("w")
        assert after.status is WAITING
        assert after.waiting_for == "approval"
        assert after.history == before.history

        # A finished saga takes no signal and no cancellation: completed...
        granted = Approval(approved=True, by="maria")
        await rt.spawn(refund, {"amount": 2}, saga_id="ok")
        await until_status(rt, "ok", WAITING, waiting_for="approval")
        await rt.signal("ok", "approval", granted)
        await rt.handle("ok").result(timeout=WAIT)
        with pytest.raises(SagaEndedError) as ended:
            await rt.signal("ok", "approval", granted)
        assert ended.value.status == SagaStatus.COMPLETED
        with pytest.raises(SagaEndedError):
            await rt.cancel("ok")
        # ...or compensated.
        await rt.cancel("w")
        with pytest.raises(SagaCompensated):
            await rt.handle("w").result(timeout=WAIT)
        with pytest.raises(SagaEndedError) as ended:
            await rt.signal("w", "approval", Approval(approved=True, by="late"))
        assert ended.value.status == SagaStatus.COMPENSATED
        with pytest.raises(SagaEndedError):
            await rt.cancel("w")
        final = await rt.status("w")
        assert await rt.store.inbox("w") == []
    assert final.status is SagaStatus.COMPENSATED
    assert len(events(final, CancelRequested)) == 1


# -- durable sleep -------------------------------------------------------------------------


def napping(journal: Journal, clock: VirtualClock, sleep: Sleep) -> Saga:
    def now(ctx: StepContext, _: Any) -> float:
        return clock.now()

    return Saga("nap", [Step("before", act(journal, now)), sleep, Step("after", act(journal, now))])


async def test_a_sleep_wakes_at_its_original_time_across_a_restart(
    db: Path, clock: VirtualClock
) -> None:
    journal = Journal()
    nap = napping(journal, clock, Sleep("sleep", seconds=3600))
    t0 = clock.now()
    async with Runtime(db, sagas=[nap, TICK], clock=clock) as rt:
        await rt.spawn(nap, None, saga_id="n")
        info = await until_status(rt, "n", WAITING)
        assert (info.wake_at, info.waiting_for) == (t0 + 3600, None)
        assert info.steps[1].status is StepStatus.WAITING
    # Abandoned mid-sleep; half an hour passes with no runtime at all.
    clock.advance(1800)

    async with Runtime(db, sagas=[nap, TICK], clock=clock) as rt:
        assert rt.live_actors == 0  # a sleeping saga needs no actor to be remembered
        info = await rt.status("n")
        assert (info.status, info.wake_at) == (WAITING, t0 + 3600)
        await reach(rt, clock, t0 + 3599)
        info = await rt.status("n")
        assert (info.status, info.wake_at) == (WAITING, t0 + 3600)  # not a second early
        assert journal.of("n") == [("action", "before")]

        clock.advance(1)
        output = await rt.handle("n").result(timeout=WAIT)
        info = await rt.status("n")

    assert output == {"before": t0, "sleep": t0 + 3600, "after": t0 + 3600}
    assert journal.of("n") == [("action", "before"), ("action", "after")]
    assert "step sleep sleeping 3600.000s" in texts(info)
    assert (3600.0, "step sleep stopped waiting") in offsets(info)
    assert_contiguous(info.history)


async def test_a_sleep_that_fell_due_while_the_runtime_was_down_fires_at_once(
    db: Path, clock: VirtualClock
) -> None:
    journal = Journal()
    nap = napping(journal, clock, Sleep("sleep", seconds=3600))
    t0 = clock.now()
    async with Runtime(db, sagas=[nap], clock=clock) as rt:
        await rt.spawn(nap, None, saga_id="n")
        await until_status(rt, "n", WAITING)
    clock.advance(2 * 3600)  # down through the wake-up time

    async with Runtime(db, sagas=[nap], clock=clock) as rt:
        output = await rt.handle("n").result(timeout=WAIT)  # the clock does not move here
        info = await rt.status("n")

    assert output == {"before": t0, "sleep": t0 + 3600, "after": t0 + 7200}
    assert [e.at for e in events(info, TimerFired)] == [t0 + 7200]
    assert journal.of("n") == [("action", "before"), ("action", "after")]


async def test_a_short_sleep_keeps_its_actor_in_memory(db: Path, clock: VirtualClock) -> None:
    journal = Journal()
    short = napping(journal, clock, Sleep("sleep", seconds=0.5))  # under keep_warm
    async with Runtime(db, sagas=[short], clock=clock, keep_warm=1.0) as rt:
        handle = await rt.spawn(short, None, saga_id="s")
        info = await until_status(rt, "s", WAITING)
        assert info.wake_at == clock.now() + 0.5
        assert rt.live_actors == 1  # stays in memory, its wake-up in the timer heap
        clock.advance(0.5)
        output = await handle.result(timeout=WAIT)
    assert output["sleep"] == output["after"] == output["before"] + 0.5


async def test_sleep_until_an_aware_datetime(db: Path, clock: VirtualClock) -> None:
    journal = Journal()
    target = "2025-06-20T09:30:00+02:00"
    wake = dt.datetime.fromisoformat(target).timestamp()
    assert wake > clock.now() + DAY

    def when(ctx: StepContext, order: Any) -> dt.datetime:
        return dt.datetime.fromisoformat(order["ship_at"])

    nap = napping(journal, clock, Sleep("sleep", until=when))
    async with Runtime(db, sagas=[nap, TICK], clock=clock) as rt:
        handle = await rt.spawn(nap, {"ship_at": target}, saga_id="u")
        info = await until_status(rt, "u", WAITING)
        assert info.wake_at == wake
        await reach(rt, clock, wake - 1)
        assert (await rt.status("u")).status is WAITING
        clock.set(wake)
        output = await handle.result(timeout=WAIT)
    assert output["sleep"] == wake
    assert output["after"] == wake


async def test_sleep_until_a_naive_datetime_fails_the_step_and_is_retried_then_compensated(
    db: Path, clock: VirtualClock
) -> None:
    """A wrong `until` is the step's error: retried, then (ambiguous) compensation."""
    journal = Journal()
    calls: list[float] = []

    def naive(ctx: StepContext, _: Any) -> dt.datetime:
        calls.append(clock.now())
        return dt.datetime(2030, 1, 1)

    saga = Saga(
        "naive",
        [
            Step("before", act(journal, lambda ctx, _: "b"), compensate=undo(journal)),
            Sleep("sleep", until=naive),
        ],
    )
    async with Runtime(db, sagas=[saga], clock=clock) as rt:
        handle = await rt.spawn(saga, None, saga_id="nv")
        for _ in range(2):  # two retries, each due after a backoff on the virtual clock

            async def backing_off() -> bool:
                info = await rt.status("nv")
                return info.steps[1].status is StepStatus.RETRYING

            await until(backing_off, what="a retry to be scheduled")
            info = await rt.status("nv")
            retry_at = info.steps[1].retry_at
            assert retry_at is not None
            ran = len(calls)
            clock.set(retry_at)
            await until(_more(calls, ran), what="the retry to run")
        with pytest.raises(SagaCompensated) as caught:
            await handle.result(timeout=WAIT)
    assert caught.value.step == "sleep"
    assert caught.value.error is not None
    assert caught.value.error.type == "builtins.TypeError"
    assert len(calls) == 3
    assert journal.of("nv") == [("action", "before"), ("compensate", "before")]


def _more(calls: list[float], n: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return len(calls) > n

    return check


# -- signal timeouts across restarts -------------------------------------------------------


async def test_a_signal_wait_whose_deadline_passed_while_down_times_out_at_once(
    db: Path, clock: VirtualClock
) -> None:
    journal = Journal()
    refund = refund_saga(journal)
    t0 = clock.now()
    async with Runtime(db, sagas=[refund], clock=clock) as rt:
        await rt.spawn(refund, {"amount": 5}, saga_id="d")
        await until_status(rt, "d", WAITING, waiting_for="approval")
    clock.advance(3 * DAY + 3600)

    async with Runtime(db, sagas=[refund], clock=clock) as rt:
        with pytest.raises(SagaCompensated) as caught:
            await rt.handle("d").result(timeout=WAIT)
        info = await rt.status("d")
    assert caught.value.error is not None
    assert caught.value.error.type == "saga.SignalTimeout"
    assert [e.at for e in events(info, TimerFired)] == [t0 + 3 * DAY + 3600]
    assert journal.of("d") == [("action", "create"), ("compensate", "create")]


async def test_a_signal_wait_reopened_before_its_deadline_times_out_on_time(
    db: Path, clock: VirtualClock
) -> None:
    journal = Journal()
    refund = refund_saga(journal)
    t0 = clock.now()
    deadline = t0 + 3 * DAY
    async with Runtime(db, sagas=[refund, TICK], clock=clock) as rt:
        await rt.spawn(refund, {"amount": 5}, saga_id="d")
        await until_status(rt, "d", WAITING, waiting_for="approval")
    clock.advance(DAY)

    async with Runtime(db, sagas=[refund, TICK], clock=clock) as rt:
        info = await rt.status("d")
        assert (info.status, info.wake_at) == (WAITING, deadline)
        await reach(rt, clock, deadline - 1)
        info = await rt.status("d")
        assert (info.status, info.waiting_for) == (WAITING, "approval")  # right before
        assert events(info, StepFailed) == []
        assert events(info, TimerFired) == []
        clock.set(deadline)
        with pytest.raises(SagaCompensated) as caught:
            await rt.handle("d").result(timeout=WAIT)
        info = await rt.status("d")
    assert caught.value.error is not None
    assert caught.value.error.type == "saga.SignalTimeout"
    assert [e.at for e in events(info, TimerFired)] == [deadline]


# -- cancellation --------------------------------------------------------------------------


def four_steps(journal: Journal, gate: Gate) -> Saga:
    """a, b succeed; c blocks until its gate opens; d after it. All compensable."""
    return Saga(
        "four",
        [
            Step("a", act(journal, lambda ctx, _: "A"), compensate=undo(journal)),
            Step("b", act(journal, lambda ctx, _: "B"), compensate=undo(journal)),
            Step("c", gate.action(journal, "C"), compensate=undo(journal)),
            Step("d", act(journal, lambda ctx, _: "D"), compensate=undo(journal)),
        ],
    )


async def test_cancel_interrupts_a_running_step_and_compensates_newest_first(db: Path) -> None:
    journal = Journal()
    gate = Gate()
    saga = four_steps(journal, gate)
    async with Runtime(db, sagas=[saga], clock=VirtualClock()) as rt:
        handle = await rt.spawn(saga, None, saga_id="x")
        await gate.reached("x")
        await rt.cancel("x", reason="customer changed their mind")
        with pytest.raises(SagaCompensated) as caught:
            await handle.result(timeout=WAIT)
        info = await rt.status("x")

    assert caught.value.step == "c"
    assert caught.value.error is not None
    assert caught.value.error.type == "saga.Cancelled"
    assert caught.value.error.message == "customer changed their mind"
    assert journal.notes == [("x", "c interrupted")]
    assert journal.of("x") == [
        ("action", "a"),
        ("action", "b"),
        ("action", "c"),
        ("compensate", "c"),
        ("compensate", "b"),
        ("compensate", "a"),
    ]
    assert [c.given for c in journal.compensations()] == [None, "B", "A"]  # c is ambiguous
    assert [s.status for s in info.steps] == [
        StepStatus.SUCCEEDED,
        StepStatus.SUCCEEDED,
        StepStatus.AMBIGUOUS,
        StepStatus.PENDING,
    ]
    assert "cancellation requested: customer changed their mind" in texts(info)
    assert events(info, StepFailed) == []  # a cancelled step is not recorded as a failure


async def test_cancelling_a_running_step_is_not_a_recovery(db: Path) -> None:
    journal = Journal()
    gate = Gate()
    saga = four_steps(journal, gate)
    async with Runtime(db, sagas=[saga], clock=VirtualClock(), max_recoveries=0) as rt:
        handle = await rt.spawn(saga, None, saga_id="m")
        await gate.reached("m")
        await rt.cancel("m")
        with pytest.raises(SagaCompensated) as caught:
            await handle.result(timeout=WAIT)
    assert caught.value.error is not None
    assert caught.value.error.type == "saga.Cancelled"
    assert [(c.step, c.given) for c in journal.compensations()] == [
        ("c", None),
        ("b", "B"),
        ("a", "A"),
    ]


async def test_cancel_while_waiting_for_a_signal(db: Path, clock: VirtualClock) -> None:
    journal = Journal()
    refund = refund_saga(journal)
    async with Runtime(db, sagas=[refund], clock=clock) as rt:
        handle = await rt.spawn(refund, {"amount": 5}, saga_id="cw")
        await until_status(rt, "cw", WAITING, waiting_for="approval")
        await until(lambda: _no_actors(rt), what="the saga to passivate")
        clock.advance(DAY)
        await rt.cancel("cw")
        with pytest.raises(SagaCompensated) as caught:
            await handle.result(timeout=WAIT)
        info = await rt.status("cw")
    assert caught.value.step == "approval"
    assert caught.value.error is not None
    assert caught.value.error.type == "saga.Cancelled"
    assert journal.of("cw") == [("action", "create"), ("compensate", "create")]
    assert journal.compensations()[0].given == {"refund_id": "rf-cw"}
    assert [s.status for s in info.steps] == [
        StepStatus.SUCCEEDED,
        StepStatus.FAILED,
        StepStatus.PENDING,
    ]
    assert (DAY, "step create compensated") in offsets(info)


async def test_cancel_while_compensating_is_recorded_and_the_compensation_runs_on(
    db: Path,
) -> None:
    journal = Journal()
    gate = Gate()

    async def boom(ctx: StepContext, _: Any) -> None:
        journal.record("action", ctx, None)
        raise Rejected("no stock")

    saga = Saga(
        "undoing",
        [
            Step("a", act(journal, lambda ctx, _: "A"), compensate=undo(journal)),
            Step("b", act(journal, lambda ctx, _: "B"), compensate=gate.compensation(journal)),
            Step("c", boom),
        ],
    )
    async with Runtime(db, sagas=[saga], clock=VirtualClock()) as rt:
        handle = await rt.spawn(saga, None, saga_id="u")
        await gate.reached("u")  # b's compensation is running
        await rt.cancel("u")
        gate.open("u")
        with pytest.raises(SagaCompensated) as caught:
            await handle.result(timeout=WAIT)
        info = await rt.status("u")

    # The outcome is the original failure's; the cancellation changed nothing.
    assert caught.value.step == "c"
    assert caught.value.error is not None
    assert caught.value.error.type == REJECTED
    assert journal.notes == [("u", "b compensation finished")]
    assert journal.of("u") == [
        ("action", "a"),
        ("action", "b"),
        ("action", "c"),
        ("compensate", "b"),
        ("compensate", "a"),
    ]
    assert [c.attempt for c in journal.compensations()] == [1, 1]
    assert len(events(info, CancelRequested)) == 1
    assert info.status is SagaStatus.COMPENSATED
    assert [e.step for e in events(info, CompensationSucceeded)] == [1, 0]


async def test_a_cancel_of_a_passivated_saga_survives_an_immediate_exit(
    db: Path, clock: VirtualClock
) -> None:
    """Cancel is durable on return: a runtime that exits before applying it loses nothing."""
    journal = Journal()
    forever = Saga(
        "forever",
        [
            Step("create", act(journal, lambda ctx, _: "made"), compensate=undo(journal)),
            WaitForSignal("approval", payload_type=Approval),  # no timeout: only a signal ends it
        ],
    )
    async with Runtime(db, sagas=[forever], clock=clock) as rt:
        await rt.spawn(forever, None, saga_id="f")
        await until_status(rt, "f", WAITING, waiting_for="approval")
        await until(lambda: _no_actors(rt), what="the saga to passivate")
        await rt.cancel("f")
    # Left at once: the cancellation is durable, not yet applied.

    async with Runtime(db, sagas=[forever], clock=clock) as rt:
        with pytest.raises(SagaCompensated) as caught:
            await rt.handle("f").result(timeout=WAIT)
        info = await rt.status("f")
    assert caught.value.error is not None
    assert caught.value.error.type == "saga.Cancelled"
    assert journal.of("f") == [("action", "create"), ("compensate", "create")]
    assert info.status is SagaStatus.COMPENSATED


async def test_a_signal_to_a_passivated_saga_survives_an_immediate_exit(
    db: Path, clock: VirtualClock
) -> None:
    """Like a cancellation, a signal is durable on return: it is applied after a reopen."""
    journal = Journal()
    forever = Saga(
        "forever",
        [
            Step("create", act(journal, lambda ctx, _: "made"), compensate=undo(journal)),
            WaitForSignal("approval", payload_type=Approval),
        ],
    )
    async with Runtime(db, sagas=[forever], clock=clock) as rt:
        await rt.spawn(forever, None, saga_id="g")
        await until_status(rt, "g", WAITING, waiting_for="approval")
        await until(lambda: _no_actors(rt), what="the saga to passivate")
        assert await rt.signal("g", "approval", Approval(approved=True, by="bo")) is True

    async with Runtime(db, sagas=[forever], clock=clock) as rt:
        output = await rt.handle("g").result(timeout=WAIT)
    assert output["approval"] == Approval(approved=True, by="bo")


async def test_a_durable_cancel_beats_the_timeout_of_the_wait_it_interrupted(
    db: Path, clock: VirtualClock
) -> None:
    """Whenever the saga next wakes (here: for its timeout), the cancellation left in its
    inbox by a runtime that exited at once is applied first: it ends cancelled, not timed out."""
    journal = Journal()
    refund = refund_saga(journal)
    async with Runtime(db, sagas=[refund], clock=clock) as rt:
        await rt.spawn(refund, {"amount": 5}, saga_id="dc")
        await until_status(rt, "dc", WAITING, waiting_for="approval")
        await until(lambda: _no_actors(rt), what="the saga to passivate")
        await rt.cancel("dc", reason="fraud")
    assert await _pending_cancel(db, "dc")

    async with Runtime(db, sagas=[refund], clock=clock) as rt:
        clock.advance(3 * DAY)
        with pytest.raises(SagaCompensated) as caught:
            await rt.handle("dc").result(timeout=WAIT)
    assert caught.value.error is not None
    assert caught.value.error.type == "saga.Cancelled"
    assert caught.value.error.message == "fraud"
    assert journal.of("dc") == [("action", "create"), ("compensate", "create")]


async def test_a_cancel_of_a_running_step_survives_an_immediate_exit(db: Path) -> None:
    """The step was interrupted by the exit; on reopen the durable cancellation wins over
    running the interrupted step again: it is compensated as ambiguous."""
    journal = Journal()
    gate = Gate()
    saga = four_steps(journal, gate)
    clock = VirtualClock()
    async with Runtime(db, sagas=[saga], clock=clock) as rt:
        await rt.spawn(saga, None, saga_id="y")
        await gate.reached("y")
        await rt.cancel("y")
    assert await _pending_cancel(db, "y")

    gate.reset("y")  # c would block again if it ran again
    async with Runtime(db, sagas=[saga], clock=clock) as rt:
        with pytest.raises(SagaCompensated) as caught:
            await rt.handle("y").result(timeout=WAIT)
    assert caught.value.error is not None
    assert caught.value.error.type == "saga.Cancelled"
    assert journal.of("y")[-3:] == [("compensate", "c"), ("compensate", "b"), ("compensate", "a")]
    assert [c.given for c in journal.compensations()] == [None, "B", "A"]
    assert journal.actions("d") == []


async def test_a_suspended_saga_cancelled_then_resumed_is_compensated(db: Path) -> None:
    """`cancel` documents that a suspended saga is cancelled when resumed."""
    journal = Journal()
    gate = Gate()
    saga = four_steps(journal, gate)
    clock = VirtualClock()
    async with Runtime(db, sagas=[saga], clock=clock) as rt:
        await rt.spawn(saga, None, saga_id="v")
        await gate.reached("v")
    gate.reset("v")  # c would block again if it ran again

    async with Runtime(db, sagas=[saga], clock=clock, max_recoveries=0) as rt:
        await until_status(rt, "v", SagaStatus.SUSPENDED)  # interrupted once: over the limit
        await rt.cancel("v")
        assert (await rt.status("v")).status is SagaStatus.SUSPENDED  # waits for the operator
        await rt.resume("v")
        with pytest.raises(SagaCompensated) as caught:
            await rt.handle("v").result(timeout=WAIT)
    assert caught.value.error is not None
    assert caught.value.error.type == "saga.Cancelled"
    assert [(c.step, c.given) for c in journal.compensations()] == [
        ("c", None),
        ("b", "B"),
        ("a", "A"),
    ]
    assert journal.actions("d") == []


async def _pending_cancel(db: Path, saga_id: str) -> bool:
    """True when the store holds the cancellation unapplied (so the reopen is what is tested)."""
    async with SqliteStore(db) as store:
        return [item.kind for item in await store.inbox(saga_id)] == ["cancel"]


# -- deadlines -----------------------------------------------------------------------------


async def test_a_saga_past_its_deadline_while_waiting_for_a_signal_compensates(
    db: Path, clock: VirtualClock
) -> None:
    journal = Journal()
    saga = Saga(
        "hurry",
        [
            Step("create", act(journal, lambda ctx, _: "made"), compensate=undo(journal)),
            WaitForSignal("approval", payload_type=Approval, timeout=DAY),
            Step("apply", act(journal)),
        ],
        deadline=60,
    )
    t0 = clock.now()
    async with Runtime(db, sagas=[saga], clock=clock) as rt:
        handle = await rt.spawn(saga, None, saga_id="h")
        info = await until_status(rt, "h", WAITING, waiting_for="approval")
        assert info.wake_at == t0 + 60  # the deadline comes before the signal timeout
        clock.advance(60)
        with pytest.raises(SagaCompensated) as caught:
            await handle.result(timeout=WAIT)
        info = await rt.status("h")
    assert caught.value.step == "approval"
    assert caught.value.error is not None
    assert caught.value.error.type == "saga.DeadlineExceeded"
    assert journal.of("h") == [("action", "create"), ("compensate", "create")]
    assert info.steps[1].status is StepStatus.FAILED
    assert (60.0, "the saga's deadline passed") in offsets(info)
    assert (60.0, "saga compensated") in offsets(info)


# -- passivation and listing ---------------------------------------------------------------


def signalled(journal: Journal) -> Saga:
    return Saga(
        "signalled",
        [
            WaitForSignal("approval", payload_type=int),
            Step("after-signal", act(journal, lambda ctx, _: ctx.results["approval"])),
        ],
    )


async def spawn_all(rt: Runtime, saga: Saga, ids: list[str], *, concurrency: int = 200) -> None:
    limiter = anyio.Semaphore(concurrency)

    async def one(saga_id: str) -> None:
        async with limiter:
            await rt.spawn(saga, None, saga_id=saga_id)

    async with anyio.create_task_group() as tg:
        for saga_id in ids:
            tg.start_soon(one, saga_id)


async def signal_all(
    rt: Runtime, ids: list[str], payload: Callable[[str], int], *, concurrency: int = 200
) -> None:
    limiter = anyio.Semaphore(concurrency)

    async def one(saga_id: str) -> None:
        async with limiter:
            assert await rt.signal(saga_id, "approval", payload(saga_id)) is True

    async with anyio.create_task_group() as tg:
        for saga_id in ids:
            tg.start_soon(one, saga_id)


async def listed(rt: Runtime, **filters: Any) -> list[SagaSummary]:
    """Every saga `rt.list` returns for `filters`, following the pages."""
    rows: list[SagaSummary] = []
    after: str | None = None
    while True:
        page = await rt.list(after=after, limit=1000, **filters)
        rows.extend(page.items)
        if page.next_after is None:
            return rows
        after = page.next_after


async def ids_of(rt: Runtime, **filters: Any) -> list[str]:
    """The ids of every saga `rt.list` returns for `filters`."""
    return [row.saga_id for row in await listed(rt, **filters)]


async def test_waiting_sagas_passivate_and_list_pages_through_them(
    db: Path, clock: VirtualClock
) -> None:
    journal = Journal()
    saga = signalled(journal)
    ids = [f"s-{n:04d}" for n in range(200)]
    async with Runtime(db, sagas=[saga], clock=clock) as rt:
        await spawn_all(rt, saga, ids)

        async def all_waiting() -> bool:
            return len(await ids_of(rt, status="waiting", waiting_for="approval")) == len(ids)

        await until(all_waiting, what="every saga to wait")
        await until(lambda: _no_actors(rt), what="every waiting saga to passivate")

        pages: list[list[str]] = []
        after: str | None = None
        while True:
            page = await rt.list(status="waiting", waiting_for="approval", after=after, limit=50)
            assert all(
                (s.status, s.waiting_for, s.saga_name, s.wake_at)
                == (WAITING, "approval", "signalled", None)
                for s in page.items
            )
            if page.items:
                pages.append([s.saga_id for s in page.items])
            if page.next_after is None:
                break
            assert page.next_after == page.items[-1].saga_id
            after = page.next_after
        assert [len(p) for p in pages] == [50, 50, 50, 50]
        seen = [saga_id for p in pages for saga_id in p]
        assert seen == sorted(ids)  # by id, no duplicate, none missing
        assert (await rt.list(status="running")).items == ()
        assert (await rt.list(waiting_for="other")).items == ()

        await signal_all(rt, ids, lambda saga_id: int(saga_id[2:]))

        async def all_done() -> bool:
            return len(await ids_of(rt, status="completed")) == len(ids)

        await until(all_done, what="every saga to complete")
        await until(lambda: _no_actors(rt), what="every actor to stop")
        outputs = [await rt.handle(saga_id).result(timeout=WAIT) for saga_id in ids[:5]]

    calls = Counter(c.saga_id for c in journal.actions("after-signal"))
    assert calls == Counter(ids)  # each saga ran its step after the signal exactly once
    assert all(c.results == {"approval": int(c.saga_id[2:])} for c in journal.calls)
    assert outputs[3] == {"approval": 3, "after-signal": 3}


async def test_more_timeouts_than_a_sweep_page_fall_due_at_once_and_each_fires_once(
    db: Path, clock: VirtualClock
) -> None:
    """1,200 sagas (over two of the timer's 500-row pages) time out at the same instant,
    while others with the same timeout got their signal: each outcome exactly once."""
    journal = Journal()
    refund = refund_saga(journal)
    ids = [f"t-{n:04d}" for n in range(1_500)]
    signalled_ids, silent = ids[:300], ids[300:]
    t0 = clock.now()
    async with Runtime(db, sagas=[refund], clock=clock) as rt:
        limiter = anyio.Semaphore(200)

        async def spawn(saga_id: str) -> None:
            async with limiter:
                await rt.spawn(refund, {"amount": 1}, saga_id=saga_id)

        async with anyio.create_task_group() as tg:
            for saga_id in ids:
                tg.start_soon(spawn, saga_id)

        async def all_waiting() -> bool:
            return len(await ids_of(rt, status="waiting", waiting_for="approval")) == len(ids)

        await until(all_waiting, what="every saga to wait")
        await until(lambda: _no_actors(rt), what="every saga to passivate")
        rows = await listed(rt, status="waiting")
        assert {row.wake_at for row in rows} == {t0 + 3 * DAY}  # one instant for all

        approve = Approval(approved=True, by="bulk")
        async with anyio.create_task_group() as tg:
            for saga_id in signalled_ids:
                tg.start_soon(rt.signal, saga_id, "approval", approve)

        async def signalled_done() -> bool:
            return len(await ids_of(rt, status="completed")) == len(signalled_ids)

        await until(signalled_done, what="the signalled sagas to complete")
        clock.advance(3 * DAY)

        async def all_ended() -> bool:
            return len(await ids_of(rt, status="compensated")) == len(silent)

        await until(all_ended, timeout=30, what="every silent saga to time out")
        assert await ids_of(rt, status="waiting") == []
        sample = await rt.status(silent[-1])

    assert sorted(c.saga_id for c in journal.actions("apply")) == signalled_ids
    undone = Counter(c.saga_id for c in journal.compensations())
    assert undone == Counter(silent)  # each timed-out saga compensated exactly once
    assert Counter(c.saga_id for c in journal.actions("create")) == Counter(ids)
    assert [e.at for e in events(sample, TimerFired)] == [t0 + 3 * DAY]


SCALE = 50_000 if SOAK else 10_000
SCALE_WAIT = max(60.0, SCALE / 200)
"""Bound on each phase of the scale run: about ten times what this machine needs."""


@pytest.mark.timeout(900 if SOAK else 120)
async def test_thousands_of_waiting_sagas_each_get_their_signal_exactly_once(
    db: Path, clock: VirtualClock
) -> None:
    journal = Journal()
    saga = signalled(journal)
    ids = [f"z-{n:05d}" for n in range(SCALE)]
    started = time.perf_counter()
    async with Runtime(db, sagas=[saga], clock=clock) as rt:
        await spawn_all(rt, saga, ids)

        async def all_waiting() -> bool:
            return len(await ids_of(rt, status="waiting")) == SCALE

        await until(all_waiting, timeout=SCALE_WAIT, what="every saga to wait")
        await until(lambda: _no_actors(rt), timeout=SCALE_WAIT, what="every saga to passivate")
        spawned = time.perf_counter()

        await signal_all(rt, ids, lambda saga_id: int(saga_id[2:]))

        async def all_done() -> bool:
            return len(await ids_of(rt, status="completed")) == SCALE

        await until(all_done, timeout=SCALE_WAIT, what="every saga to complete")
        finished = time.perf_counter()
        assert await ids_of(rt, status="waiting") == []
    print(
        f"\n{SCALE} sagas: spawned and waiting in {spawned - started:.2f}s, "
        f"signalled and completed in {finished - spawned:.2f}s"
    )
    calls = Counter(c.saga_id for c in journal.actions("after-signal"))
    assert calls == Counter(ids)  # every saga, exactly once
    assert all(c.results == {"approval": int(c.saga_id[2:])} for c in journal.calls)
