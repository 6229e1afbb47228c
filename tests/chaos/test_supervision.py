"""Supervision: an actor whose every save fails is restarted with backoff, then parked.

The store refuses every save of one saga but its `Suspended` record, so the
parking can land (a store that refuses that too: `test_store_faults.py`,
sagas escalated while the database stays locked). Its actor crashes, is
restarted after growing, jittered delays, and past the limit the saga is
`suspended` with the reason; the other sagas, sharing the runtime and the
store, are not disturbed. Once the fault is gone, `rt.resume` carries the
parked saga to its end.
"""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path

import pytest

from actors import RestartWithBackoff
from runtime import Runtime, SagaStatus, SagaSuspendedError

from .checkout import HAPPY, expected_output, make_order
from .drive import results
from .faults import FaultKind
from .invariants import read_store
from .rig import Rig

WAIT = 20.0
SUPERVISION = RestartWithBackoff(
    min_backoff=0.02, max_backoff=0.2, random_factor=0.2, max_restarts=4, within=60.0
)
BAD = "order-bad"


async def test_a_crash_looping_actor_is_restarted_with_backoff_then_parked_and_resumed(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path)
    others = rig.orders(16, seed=6)
    rig.board.refuse.add(BAD)
    async with Runtime(rig.store(), sagas=[rig.saga], supervision=SUPERVISION) as rt:
        handle = await rt.spawn(rig.saga, make_order(BAD, HAPPY), saga_id=BAD)
        for order in others:
            await rt.spawn(rig.saga, order, saga_id=order.order_id)
        await rig.board.wait_for(lambda: read_store(rig.db)[BAD].status == "suspended", WAIT)
        outputs = await results(rt, [o.order_id for o in others], WAIT)

        parked = await rt.status(BAD)
        assert parked.status is SagaStatus.SUSPENDED
        assert parked.suspended_reason is not None
        assert "kept crashing" in parked.suspended_reason
        assert f"refuses the writes of saga {BAD!r}" in parked.suspended_reason
        with pytest.raises(SagaSuspendedError) as suspended:  # said at once, not waited on
            await handle.result(timeout=WAIT)
        assert suspended.value.reason == parked.suspended_reason

        rig.board.refuse.clear()  # the fault is gone; an operator resumes it
        await rt.resume(BAD)
        resumed = await handle.result(timeout=WAIT)

    # One crash, then max_restarts restarts, each after a backoff that doubles.
    refusals = rig.board.refusals[BAD]
    assert len(refusals) == SUPERVISION.max_restarts + 1, refusals
    gaps = [b - a for a, b in itertools.pairwise(refusals)]
    for restart, gap in enumerate(gaps):
        floor = min(SUPERVISION.max_backoff, SUPERVISION.min_backoff * 2**restart)
        assert gap >= floor, (restart, gaps)
    assert rig.board.injected[FaultKind.FAILED_WRITE] == len(refusals)

    assert resumed == expected_output(BAD)
    assert not rig.violations(final=True, outputs={**outputs, BAD: resumed})
    rows = read_store(rig.db)
    bad_events = [event for _, event in rows[BAD].history]
    assert sum('"event":"suspended"' in e for e in bad_events) == 1
    assert sum('"event":"resumed"' in e for e in bad_events) == 1
    # The others were not disturbed: no crash, no recovery, every effect once.
    for order in others:
        events = [event for _, event in rows[order.order_id].history]
        assert not any('"event":"recovered"' in e or '"event":"suspended"' in e for e in events)
    runs = Counter(
        (r.kind, r.idempotency_key, r.attempt) for r in rig.ledger.records() if r.saga_id != BAD
    )
    assert set(runs.values()) == {1}
