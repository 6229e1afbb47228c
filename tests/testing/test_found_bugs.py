"""Runtime bugs the fault-injection kit found, each pinned by a deterministic test.

All four are fixed; the tests stay as regression tests. A new one found by
the kit goes here as a strict xfail until its fix lands.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import strategies as st

from actors import RestartWithBackoff
from demo.checkout import FakeServices, build_checkout, order
from runtime import (
    DelegatingStore,
    Runtime,
    SagaCompensated,
    SagaStatus,
    SqliteStore,
    StoreError,
    VirtualClock,
)
from runtime._timers import TimerService
from runtime.testing import FaultPlan, StoreFault, fault_injection
from saga import NonRetryableError, Saga, Step, StepContext
from saga.engine import CompensationSucceeded, Event, Recovered
from saga.store import DueSaga, InboxItem, SagaState

BOOK = order("o1", ("book", 1))


def checkout_kit() -> Any:
    return fault_injection(build_checkout, inputs=st.just(BOOK), services=FakeServices)


def test_spawn_retried_after_a_lost_acknowledgement_runs_the_saga() -> None:
    report = checkout_kit().run([BOOK], FaultPlan(StoreFault(saga=0, write=1, kind="ack_lost")))
    assert report.status("checkout-0") is SagaStatus.COMPLETED


def test_a_saga_whose_suspension_cannot_be_written_still_ends() -> None:
    plan = FaultPlan(
        StoreFault(saga=0, write=2, kind="write_failed"),
        StoreFault(saga=0, write=3, kind="write_failed"),
        StoreFault(saga=0, write=4, kind="db_locked"),
        StoreFault(saga=0, write=5, kind="disk_full"),  # the write of Suspended
    )
    report = checkout_kit().run([BOOK], plan)
    assert report.status("checkout-0") is SagaStatus.COMPLETED


class _SlowIndexStore:
    """The two reads a timer sweep makes; `next_wake_at` can be held mid-read."""

    def __init__(self) -> None:
        self.wakes: dict[str, float] = {}
        self.reading = anyio.Event()
        self.gate: anyio.Event | None = None

    async def due(
        self, now: float, *, after: tuple[float, str] | None = None, limit: int = 500
    ) -> Sequence[DueSaga]:
        return [DueSaga(sid, "s", at) for sid, at in self.wakes.items() if at <= now][:limit]

    async def next_wake_at(self, after: float | None = None) -> float | None:
        later = [at for at in self.wakes.values() if after is None or at > after]
        snapshot = min(later, default=None)  # the read's snapshot is taken now
        if self.gate is not None:
            self.reading.set()
            gate, self.gate = self.gate, None
            await gate.wait()
        return snapshot

    async def unreadable_wake_ups(self) -> list[tuple[str, str]]:
        return []


async def test_a_wake_up_noted_during_a_sweep_is_not_lost() -> None:
    clock = VirtualClock()
    store = _SlowIndexStore()
    store.gate = held = anyio.Event()
    woken = anyio.Event()

    async def wake(saga_id: str, saga_name: str | None) -> None:
        assert saga_id == "retrying"
        woken.set()

    async def quarantine(saga_id: str, why: str) -> None:
        raise AssertionError(f"nothing here is unreadable: {saga_id} {why}")

    timers = TimerService(clock, store, wake, quarantine)  # type: ignore[arg-type]
    async with anyio.create_task_group() as tg:
        tg.start_soon(timers.run)
        with anyio.fail_after(5):
            await store.reading.wait()  # the sweep on start is reading the wake-up index
        # Meanwhile a saga fails a step and passivates with a retry due in 10 s:
        # its write commits after the read's snapshot, then it tells the timers.
        store.wakes["retrying"] = clock.now() + 10
        timers.note_store_wake(clock.now() + 10)
        held.set()  # the read returns its older snapshot: no wake-up
        clock.advance(10)
        try:
            with anyio.fail_after(0.5):
                await woken.wait()
        finally:
            tg.cancel_scope.cancel()


class _RecordsOfCompensationsFail(DelegatingStore):
    """While `broken`, refuses to record a compensation's success or a recovery."""

    broken = True

    async def save(
        self,
        state: SagaState,
        event: Event,
        *,
        consumed: int | None = None,
        deliver: InboxItem | None = None,
    ) -> None:
        if self.broken and isinstance(event, CompensationSucceeded | Recovered):
            raise StoreError("injected: database or disk is full")
        await self.inner.save(state, event, consumed=consumed, deliver=deliver)


class _Declined(NonRetryableError):
    """The second step's definitive failure."""


async def _one(ctx: StepContext, saga_input: int) -> int:
    return 1


async def _declined(ctx: StepContext, saga_input: int) -> int:
    raise _Declined("no")


async def _undo(ctx: StepContext, saga_input: int, result: int | None) -> None:
    return None


async def test_a_saga_suspended_while_compensating_can_be_cancelled_then_resumed(
    tmp_path: Path,
) -> None:
    saga = Saga("undo", [Step("one", _one, compensate=_undo), Step("two", _declined)])
    store = _RecordsOfCompensationsFail(SqliteStore(tmp_path / "sagas.db"))
    escalate = RestartWithBackoff(min_backoff=0.001, max_backoff=0.002, max_restarts=1)
    resumed = False
    async with Runtime(store, sagas=[saga], supervision=escalate, clock=VirtualClock()) as rt:
        await rt.spawn(saga, 1, saga_id="s")
        with anyio.fail_after(5):
            while (await rt.status("s")).status is not SagaStatus.SUSPENDED:  # noqa: ASYNC110
                await anyio.sleep(0.005)  # no event tells when a saga is parked
        store.broken = False
        await rt.cancel("s", "the customer gave up")  # kept for the resume
        with anyio.move_on_after(1):
            await rt.resume("s")
            with pytest.raises(SagaCompensated):
                await rt.handle("s").result()
            resumed = True
    assert resumed, "rt.resume never returned: the suspended saga's actor never stopped"
