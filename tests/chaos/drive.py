"""Running sagas to their end on the wall clock, as an operator would."""

from __future__ import annotations

from collections.abc import Iterable

import anyio

from runtime import Runtime, SagaCompensated, SagaFailed, SagaStatus

from .faults import FaultBoard


async def all_statuses(rt: Runtime) -> dict[str, SagaStatus]:
    statuses: dict[str, SagaStatus] = {}
    after: str | None = None
    while True:
        page = await rt.list(after=after, limit=1000)
        statuses.update((item.saga_id, item.status) for item in page.items)
        if page.next_after is None:
            return statuses
        after = page.next_after


async def drive_to_end(rt: Runtime, board: FaultBoard, timeout: float) -> int:
    """Resume suspended sagas until every saga has ended; return how many were resumed.

    Waits on the board's change events (every store write through the
    `FaultyStore` that `board` serves sets one), so nothing is missed.
    """
    resumed = 0
    with anyio.fail_after(timeout):
        while True:
            changed = board.changed()
            statuses = await all_statuses(rt)
            if all(status.is_terminal for status in statuses.values()):
                return resumed
            suspended = [s for s, status in statuses.items() if status is SagaStatus.SUSPENDED]
            for saga_id in suspended:
                await rt.resume(saga_id)
                resumed += 1
            if not suspended:
                await changed.wait()


async def results(rt: Runtime, saga_ids: Iterable[str], timeout: float) -> dict[str, object]:
    """Each saga's output, or the `SagaCompensated`/`SagaFailed` it ended with."""
    outcomes: dict[str, object] = {}
    for saga_id in saga_ids:
        try:
            outcomes[saga_id] = await rt.handle(saga_id).result(timeout=timeout)
        except (SagaCompensated, SagaFailed) as exc:
            outcomes[saga_id] = exc
    return outcomes
