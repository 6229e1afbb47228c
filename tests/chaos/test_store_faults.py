"""Store faults end to end, on a real SQLite file, with real SQLite errors where they exist.

- Lost acknowledgements: writes commit, then the runtime is told they failed.
- "database is locked" for real: a second connection holds `BEGIN IMMEDIATE`
  longer than the store's busy timeout (50 ms). Sagas crash and restart, or
  get parked, and carry on after the lock is released.
- Disk full for real: the store's write connection may not grow the file
  (`faults.DiskFull`); the limit is then lifted.

Each time: nothing acknowledged is lost, every saga ends as its plan says,
no step runs more often than durable intents and recoveries commanded
(at-least-once, never more), and the file passes `PRAGMA integrity_check`.

The tests at the end are regression tests for bugs this suite found: starts,
resumes and parkings that committed (or not) while their caller was told
otherwise, leaving a saga that nothing drove until the next restart.
"""

from __future__ import annotations

import contextlib
import itertools
from collections import Counter
from pathlib import Path

import anyio
import pytest

from actors import RestartWithBackoff
from runtime import Runtime, SagaNotSuspendedError, SagaStatus, StoreError
from saga.engine import Event, Suspended

from .checkout import HAPPY, make_order
from .drive import drive_to_end, results
from .faults import DiskFull, FaultKind, WriteLock
from .invariants import integrity, read_store
from .rig import UNLIMITED_RESTARTS, Gate, Rig

SAGAS = 24
WAIT = 20.0
BUSY_TIMEOUT = 0.05
ESCALATES_FAST = RestartWithBackoff(
    min_backoff=0.005, max_backoff=0.02, random_factor=0.2, max_restarts=2, within=60.0
)


def suspended(rig: Rig) -> set[str]:
    return {sid for sid, row in read_store(rig.db).items() if row.status == SagaStatus.SUSPENDED}


async def ends(rt: Runtime, saga_id: str, timeout: float) -> bool:
    """Whether the saga ends within `timeout` seconds."""
    with anyio.move_on_after(timeout):
        await results(rt, [saga_id], timeout)
        return True
    return False


def recoveries(rig: Rig) -> int:
    count = 0
    for row in read_store(rig.db).values():
        count += sum('"event":"recovered"' in event for _, event in row.history)
    return count


async def test_lost_acknowledgements_lose_nothing_and_run_nothing_twice(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    orders = rig.orders(SAGAS, seed=1)
    writes = itertools.count(1)

    def every_third_write(saga_id: str, event: Event) -> FaultKind | None:
        return None if next(writes) % 3 else FaultKind.LOST_ACK

    async with Runtime(rig.store(), sagas=[rig.saga]) as rt:
        rig.board.choose = every_third_write
        for order in orders:
            while True:
                try:
                    await rt.spawn(rig.saga, order, saga_id=order.order_id)
                    break
                except StoreError:
                    continue  # told it failed: deliver the spawn again
        resumed = await drive_to_end(rt, rig.board, WAIT)
        rig.board.choose = None
        outputs = await results(rt, [o.order_id for o in orders], WAIT)

    lost = rig.board.injected[FaultKind.LOST_ACK]
    assert lost >= SAGAS, lost
    assert not rig.violations(final=True, outputs=outputs)
    # The state a lost acknowledgement hid was durable: the restarted actor
    # carried on from it, so no effect ran twice (not even with the same key).
    runs = Counter((r.kind, r.idempotency_key, r.attempt) for r in rig.ledger.records())
    assert max(runs.values()) == 1, [key for key, n in runs.items() if n > 1]
    assert recoveries(rig) >= 1
    print(f"lost acknowledgements: {lost}, parked and resumed: {resumed}")
    assert integrity(rig.db) == "ok"


async def test_a_database_locked_by_another_connection_pauses_sagas_until_released(
    tmp_path: Path,
) -> None:
    gate = Gate()
    rig = Rig(tmp_path, hooks=gate)
    orders = rig.orders(SAGAS, seed=2)
    lock = WriteLock(rig.db)
    async with Runtime(
        rig.store(busy_timeout=BUSY_TIMEOUT), sagas=[rig.saga], supervision=UNLIMITED_RESTARTS
    ) as rt:
        for order in orders:
            await rt.spawn(rig.saga, order, saga_id=order.order_id)
        await gate.wait_for(SAGAS)  # every saga is just before its first effect
        await lock.acquire()
        try:
            gate.open()
            await rig.board.wait_for(
                lambda: rig.board.refused_by_sqlite[FaultKind.LOCKED] >= 2 * SAGAS, WAIT
            )
        finally:
            await lock.release()
        resumed = await drive_to_end(rt, rig.board, WAIT)
        outputs = await results(rt, [o.order_id for o in orders], WAIT)

    assert resumed == 0  # restarts with backoff rode it out; nobody was parked
    assert not rig.violations(final=True, outputs=outputs)
    assert recoveries(rig) >= SAGAS  # each first step's outcome hit the lock, then ran again
    assert any(r.duplicate for r in rig.ledger.records())  # the same key, noticed
    assert integrity(rig.db) == "ok"


async def test_sagas_parked_while_the_database_is_locked_resume_after_it_is_released(
    tmp_path: Path,
) -> None:
    gate = Gate()
    rig = Rig(tmp_path, hooks=gate)
    orders = rig.orders(SAGAS, seed=3)
    lock = WriteLock(rig.db)
    held = False

    async def release_when_parking(saga_id: str, event: Event) -> None:
        # The lock's holder commits just as the first saga is parked, so that
        # parking lands (one that cannot land: the next test).
        nonlocal held
        if held and isinstance(event, Suspended):
            held = False
            await lock.release()

    rig.board.before_write = release_when_parking
    async with Runtime(
        rig.store(busy_timeout=BUSY_TIMEOUT), sagas=[rig.saga], supervision=ESCALATES_FAST
    ) as rt:
        for order in orders:
            await rt.spawn(rig.saga, order, saga_id=order.order_id)
        await gate.wait_for(SAGAS)
        await lock.acquire()
        held = True
        gate.open()
        await rig.board.wait_for(lambda: bool(suspended(rig)), WAIT)
        parked = suspended(rig)
        for sid in parked:
            info = await rt.status(sid)
            assert info.suspended_reason is not None
            assert "kept crashing" in info.suspended_reason
            assert "database is locked" in info.suspended_reason
        resumed = await drive_to_end(rt, rig.board, WAIT)  # the operator resumes them
        outputs = await results(rt, [o.order_id for o in orders], WAIT)

    assert resumed >= len(parked)
    assert rig.board.refused_by_sqlite[FaultKind.LOCKED] >= SAGAS
    assert not rig.violations(final=True, outputs=outputs)
    assert integrity(rig.db) == "ok"


async def test_a_full_disk_pauses_sagas_and_they_recover_once_it_has_room(tmp_path: Path) -> None:
    gate = Gate()
    rig = Rig(tmp_path, hooks=gate)
    orders = rig.orders(SAGAS, seed=4)
    store = rig.store()
    async with Runtime(store, sagas=[rig.saga], supervision=UNLIMITED_RESTARTS) as rt:
        for order in orders:
            await rt.spawn(rig.saga, order, saga_id=order.order_id)
        await gate.wait_for(SAGAS)
        full = DiskFull(store.sqlite)
        await full.fill()
        try:
            gate.open()
            await rig.board.wait_for(
                lambda: rig.board.refused_by_sqlite[FaultKind.DISK_FULL] >= SAGAS, WAIT
            )
        finally:
            await full.lift()
        await drive_to_end(rt, rig.board, WAIT)
        outputs = await results(rt, [o.order_id for o in orders], WAIT)

    assert not rig.violations(final=True, outputs=outputs)
    assert recoveries(rig) >= 1
    assert integrity(rig.db) == "ok"


async def test_sagas_escalated_while_the_database_stays_locked_carry_on_after_it_is_released(
    tmp_path: Path,
) -> None:
    # A regression test for a bug this suite found (fixed in 1f30e74).
    gate = Gate()
    rig = Rig(tmp_path, hooks=gate)
    orders = rig.orders(4, seed=5)
    ids = {o.order_id for o in orders}
    lock = WriteLock(rig.db)
    async with Runtime(
        rig.store(busy_timeout=BUSY_TIMEOUT), sagas=[rig.saga], supervision=ESCALATES_FAST
    ) as rt:
        for order in orders:
            await rt.spawn(rig.saga, order, saga_id=order.order_id)
        await gate.wait_for(len(orders))
        await lock.acquire()
        try:
            gate.open()
            # Every actor crashed past its limit and tried to park its saga: in vain.
            await rig.board.wait_for(lambda: rig.board.stranded >= ids, WAIT)
            assert rt.live_actors == 0
        finally:
            await lock.release()
        # Nothing could record their parking: the runtime tries again later (after
        # a second, then longer), and the operator resumes whatever got parked.
        await drive_to_end(rt, rig.board, WAIT)
        outputs = await results(rt, sorted(ids), WAIT)
    assert not rig.violations(final=True, outputs=outputs)


async def test_a_spawn_retried_after_a_lost_acknowledgement_runs_the_saga(tmp_path: Path) -> None:
    # A regression test for a bug this suite found (fixed in 1f30e74).
    rig = Rig(tmp_path)
    order = make_order("order-1", HAPPY)
    async with Runtime(rig.store(), sagas=[rig.saga]) as rt:
        rig.board.arm(FaultKind.LOST_ACK)
        with pytest.raises(StoreError):
            await rt.spawn(rig.saga, order, saga_id="order-1")  # committed; the caller is told not
        await rt.spawn(rig.saga, order, saga_id="order-1")  # so it delivers it again
        ended = await ends(rt, "order-1", 1.0)
    assert ended, "the saga never ran"


async def test_a_resume_whose_acknowledgement_was_lost_still_resumes_the_saga(
    tmp_path: Path,
) -> None:
    # A regression test for a bug this suite found (fixed in 831191c).
    rig = Rig(tmp_path)
    order = make_order("order-1", HAPPY)
    async with Runtime(rig.store(), sagas=[rig.saga], supervision=ESCALATES_FAST) as rt:
        rig.board.refuse.add("order-1")
        await rt.spawn(rig.saga, order, saga_id="order-1")
        await rig.board.wait_for(
            lambda: read_store(rig.db)["order-1"].status == SagaStatus.SUSPENDED, WAIT
        )
        rig.board.refuse.clear()
        rig.board.arm(FaultKind.LOST_ACK)
        with contextlib.suppress(StoreError):
            await rt.resume("order-1")  # the Resumed record commits; its acknowledgement is lost
        with contextlib.suppress(SagaNotSuspendedError):
            await rt.resume("order-1")  # should the operator try again: "it is running"
        ended = await ends(rt, "order-1", 1.0)
    assert rig.board.injected[FaultKind.LOST_ACK] == 1
    assert ended, "the resumed saga never ran"
