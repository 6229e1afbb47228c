"""The retention task: prunes ended sagas in the background, a page at a time.

Each page is one short write that joins the store's ordinary batches, so spawns and
transitions never wait behind a long delete (see `runtime._retention`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import anyio
import anyio.lowlevel

from saga import Clock, StoreError
from saga.store import Prunable

from ._retention import DEFAULT_STATUSES, PAGE

PACED_PAGE = 100
"""Sagas per page in the background: each page a few milliseconds of the writer's time."""

logger = logging.getLogger("runtime.retention")

DEFAULT_TOMBSTONE_WINDOW = 30 * 86400.0
"""How long a pruned saga's tombstone keeps its id from starting again: 30 days."""


def retaining(store: object) -> Prunable:
    if not isinstance(store, Prunable):
        raise TypeError(f"{type(store).__name__} cannot prune ended sagas (no prune_page)")
    return store


class Pruner:
    """Prunes `store` by the clock; `run` is the background loop of `Runtime(retention=)`."""

    def __init__(self, store: object, clock: Clock, *, tombstone_window: float) -> None:
        self.store = store
        self.clock = clock
        self.tombstone_window = tombstone_window
        self.pruned = 0
        """Sagas this runtime pruned so far."""

    async def prune(
        self, older_than: float, statuses: Sequence[str], *, dry_run: bool, paced: bool = False
    ) -> int:
        """Delete the `statuses` sagas that ended `older_than` seconds ago or earlier;
        children follow their parent in the next pass, so passes run until one deletes
        nothing (the cutoff is fixed: newer sagas are never candidates).

        `paced`: after each page, rest as long as it took (its wait for the writer
        included), so that pruning rides at most every other batch, whatever the
        backlog (background work)."""
        store = retaining(self.store)
        now = self.clock.now()
        cutoff = now - older_than
        if dry_run:
            return await store.count_prunable(statuses, cutoff)
        total = 0
        while True:
            pruned = 0
            for status in statuses:
                after: tuple[float, str] | None = None
                while True:
                    began = time.perf_counter()
                    count, after = await store.prune_page(
                        status,
                        ended_before=cutoff,
                        now=now,
                        after=after,
                        limit=PACED_PAGE if paced else PAGE,
                        tombstones_before=now - self.tombstone_window,
                    )
                    pruned += count
                    self.pruned += count
                    if after is None:
                        break
                    if paced:
                        await anyio.sleep(time.perf_counter() - began)
                    else:
                        await anyio.lowlevel.checkpoint()
            total += pruned
            if not pruned:
                return total

    async def run(self, retention: float, interval: float) -> None:
        while True:
            try:
                await self.prune(retention, DEFAULT_STATUSES, dry_run=False, paced=True)
            except StoreError as exc:
                logger.warning("retention: pruning failed (%s); trying again later", exc)
            await anyio.sleep(interval)
