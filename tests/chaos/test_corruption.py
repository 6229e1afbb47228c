"""Corrupt snapshot rows: the saga is quarantined with a clear error; the others carry on.

Rows are overwritten the way a bad disk, a bad migration or a hand-edit
would: garbage bytes, valid JSON of the wrong shape, the snapshot of another
saga. Some are hit between two runtimes while their saga is mid-step (the
next runtime resumes it at once), others while a runtime runs and their
saga sleeps until a retry (it is loaded when the clock reaches it).

Last, snapshots that decode but do not fit their definition or their row:
regression tests for bugs this suite found (they were never quarantined).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest

from actors import RestartWithBackoff
from runtime import CorruptSagaError, Runtime, SagaStatus, VirtualClock
from saga import StepStatus
from saga.store import SagaState

from .checkout import HAPPY, Fault, StepPlan, expected_output, make_order
from .drive import results
from .invariants import Row, integrity, read_store
from .rig import Gate, Rig

WAIT = 10.0
ESCALATES_FAST = RestartWithBackoff(
    min_backoff=0.005, max_backoff=0.02, random_factor=0.2, max_restarts=2, within=60.0
)
RETRY_ONCE = (
    StepPlan(),
    StepPlan(fault=Fault.TRANSIENT, failures=1),
    StepPlan(),
    StepPlan(),
)
RETRY_THEN_DECLINE = (
    StepPlan(),
    StepPlan(fault=Fault.TRANSIENT, failures=1),
    StepPlan(fault=Fault.DEFINITIVE),
    StepPlan(),
)


def state_of(row: Row) -> SagaState:
    return msgspec.json.decode(row.snapshot, type=SagaState)


def retrying(rig: Rig, ids: list[str]) -> bool:
    rows = read_store(rig.db)
    return all(state_of(rows[s]).steps[1].status is StepStatus.RETRYING for s in ids)


def overwrite(rig: Rig, saga_id: str, snapshot: str) -> None:
    conn = sqlite3.connect(rig.db)
    try:
        with conn:
            conn.execute("UPDATE sagas SET snapshot=? WHERE saga_id=?", (snapshot, saga_id))
    finally:
        conn.close()


async def test_corrupt_snapshots_are_quarantined_and_every_other_saga_ends(tmp_path: Path) -> None:
    flight = [f"flight-{i}" for i in range(6)]
    waiting = [f"waiting-{i}" for i in range(6)]
    gate = Gate(flight)
    rig = Rig(tmp_path, hooks=gate)
    clock = VirtualClock()
    orders = [make_order(sid, HAPPY) for sid in flight] + [
        make_order(sid, RETRY_ONCE if i % 2 else RETRY_THEN_DECLINE)
        for i, sid in enumerate(waiting)
    ]

    # First runtime: the flight sagas are stopped mid-step (in flight when it
    # leaves); the waiting ones sleep until a retry.
    async with Runtime(rig.store(), sagas=[rig.saga], clock=clock, keep_warm=0) as rt:
        for order in orders:
            await rt.spawn(rig.saga, order, saga_id=order.order_id)
        await gate.wait_for(len(flight))
        await rig.board.wait_for(lambda: retrying(rig, waiting), WAIT)
    gate.open()

    corrupt: dict[str, str] = {
        "flight-0": "garbage",
        "flight-1": '{"v": 1, "saga_id": "flight-1"}',  # JSON, not a snapshot
    }
    for sid, snapshot in corrupt.items():
        overwrite(rig, sid, snapshot)
    before = read_store(rig.db)

    store = rig.store()
    async with Runtime(store, sagas=[rig.saga], clock=clock, keep_warm=0) as rt:
        # Corrupted while this runtime runs and they sleep.
        late: dict[str, str] = {
            "waiting-0": "\x00\xff not json",
            "waiting-1": "[1, 2, 3]",
            "waiting-2": read_store(rig.db)["waiting-3"].snapshot,  # another saga's
        }
        for sid, snapshot in late.items():
            overwrite(rig, sid, snapshot)
        corrupt.update(late)
        before.update({sid: read_store(rig.db)[sid] for sid in late})
        clock.advance(60.0)  # every retry falls due: the sleepers are loaded
        healthy = sorted({o.order_id for o in orders} - corrupt.keys())
        outputs = await results(rt, healthy, WAIT)
        await rig.board.wait_for(
            lambda: all(read_store(rig.db)[s].status == "suspended" for s in corrupt), WAIT
        )
        for sid in corrupt:
            with pytest.raises(CorruptSagaError) as caught:
                await rt.status(sid)
            assert caught.value.saga_id == sid
        listed = await rt.list(status=SagaStatus.SUSPENDED)
        reasons = {sid: await store.sqlite.quarantine_reason(sid) for sid in corrupt}

    assert {item.saga_id for item in listed.items} == corrupt.keys()
    rows = read_store(rig.db)
    for sid, snapshot in corrupt.items():
        row = rows[sid]
        assert row.error is not None
        assert row.error == reasons[sid]
        assert f"saga {sid!r} has a corrupt snapshot" in row.error, row.error
        assert row.snapshot == snapshot  # kept as it was, for an operator
        assert row.history == before[sid].history
    assert not rig.violations(final=True, outputs=outputs, only=healthy)
    assert {sid: outputs[sid] for sid in flight[2:]} == {s: expected_output(s) for s in flight[2:]}
    assert integrity(rig.db) == "ok"


def fewer_steps(snapshot: str) -> str:
    data = json.loads(snapshot)
    data["steps"] = data["steps"][:2]
    return json.dumps(data)


def seq_ahead(snapshot: str) -> str:
    data = json.loads(snapshot)
    data["seq"] += 5
    return json.dumps(data)


@pytest.mark.parametrize("damage", [fewer_steps, seq_ahead], ids=["fewer-steps", "seq-ahead"])
async def test_a_snapshot_that_decodes_but_does_not_fit_is_quarantined(
    tmp_path: Path, damage: Callable[[str], str]
) -> None:
    gate = Gate()
    rig = Rig(tmp_path, hooks=gate)
    async with Runtime(rig.store(), sagas=[rig.saga]) as rt:
        for sid in ("bad", "good"):
            await rt.spawn(rig.saga, make_order(sid, HAPPY), saga_id=sid)
        await gate.wait_for(2)  # both mid-step when the runtime leaves
    gate.open()
    overwrite(rig, "bad", damage(read_store(rig.db)["bad"].snapshot))

    quarantined = False
    async with Runtime(rig.store(), sagas=[rig.saga], supervision=ESCALATES_FAST) as rt:
        outputs = await results(rt, ["good"], WAIT)
        with contextlib.suppress(TimeoutError):
            await rig.board.wait_for(lambda: read_store(rig.db)["bad"].status == "suspended", 1.0)
            quarantined = True
    assert outputs == {"good": expected_output("good")}
    assert quarantined, f"'bad' is {read_store(rig.db)['bad'].status}, with no actor"


async def test_the_status_of_a_snapshot_unlike_its_definition_is_a_corrupt_saga_error(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path)
    async with Runtime(rig.store(), sagas=[rig.saga]) as rt:
        await (await rt.spawn(rig.saga, make_order("bad", HAPPY), saga_id="bad")).result()
    overwrite(rig, "bad", fewer_steps(read_store(rig.db)["bad"].snapshot))
    error: Exception | None = None
    async with Runtime(rig.store(), sagas=[rig.saga]) as rt:
        try:
            await rt.status("bad")
        except Exception as exc:
            error = exc
    assert isinstance(error, CorruptSagaError), repr(error)
    assert error.saga_id == "bad"
