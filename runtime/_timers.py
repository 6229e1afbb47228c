"""`TimerService`: one task per runtime that wakes sagas when their time comes.

Two sources: short wake-ups of sagas whose actor stayed in memory (a heap),
and the store's wake-up index for passivated sagas (never loaded until
due). It sleeps until the earliest of the two, on the runtime's clock.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
from collections.abc import Awaitable, Callable

import anyio

from saga import Clock
from saga.store import DueSaga, Store

logger = logging.getLogger("runtime")

WakeHandler = Callable[[str, str | None], Awaitable[None]]
"""`wake(saga_id, saga_name_or_none)`: the saga's time has come."""
QuarantineHandler = Callable[[str, str], Awaitable[None]]
"""`quarantine(saga_id, why)`: the saga's row holds no wake-up time."""

_SWEEP_PAGE = 500


class TimerService:
    """Wakes sagas whose wait is due: the in-memory heap of actors that stayed warm, and
    the store's `wake_at` index for passivated ones (swept in pages, never all loaded).

    It sleeps until the earlier of the two on the runtime's clock; `note_store_wake` moves
    that moment earlier when a saga starts a shorter wait.
    """

    def __init__(
        self, clock: Clock, store: Store, wake: WakeHandler, quarantine: QuarantineHandler
    ) -> None:
        self._clock = clock
        self._store = store
        self._wake = wake
        self._quarantine = quarantine
        self._heap: list[tuple[float, int, str]] = []
        self._order = itertools.count()
        self._store_next = -math.inf  # sweep the store at once on start
        self._noted = math.inf  # the earliest wake-up noted since the last sweep began
        self._target = math.inf
        self._sleep: anyio.CancelScope | None = None
        self.sweeps = 0

    def schedule(self, saga_id: str, at: float) -> None:
        """Wake the live actor of `saga_id` at `at`."""
        heapq.heappush(self._heap, (at, next(self._order), saga_id))
        self._reconsider(at)

    def note_store_wake(self, at: float) -> None:
        """A passivated saga needs waking at `at`: look in the store by then."""
        if at < self._store_next:
            self._store_next = at
        if at < self._noted:
            self._noted = at
        self._reconsider(at)

    def _reconsider(self, at: float) -> None:
        if at < self._target and self._sleep is not None:
            self._sleep.cancel()

    async def run(self) -> None:
        trouble = 0
        while True:
            try:
                await self._wake_due()
                trouble = 0
            except Exception:
                # The store is unreachable: nothing is lost (wake-ups are durable); try
                # again, waiting longer each time, in real time.
                trouble += 1
                delay = min(30.0, 0.5 * 2 ** (trouble - 1))
                logger.exception("waking due sagas failed; trying again in %.1f s", delay)
                await anyio.sleep(delay)
                continue
            self._target = min(self._heap[0][0] if self._heap else math.inf, self._store_next)
            with anyio.CancelScope() as scope:
                self._sleep = scope
                if self._target == math.inf:
                    await anyio.sleep_forever()
                else:
                    await self._clock.sleep_until(self._target)
            self._sleep = None

    async def _wake_due(self) -> None:
        now = self._clock.now()
        while self._heap and self._heap[0][0] <= now:
            entry = heapq.heappop(self._heap)
            try:
                await self._wake(entry[2], None)
            except BaseException:
                heapq.heappush(self._heap, entry)  # not woken: keep it for the next try
                raise
        if self._store_next <= now:
            noted, self._noted = self._noted, math.inf
            try:
                await self._sweep(now)
                after = await self._store.next_wake_at(now)
            except BaseException:
                self._noted = min(self._noted, noted)
                raise
            # A wake-up noted meanwhile may postdate what that read saw.
            self._store_next = min(math.inf if after is None else after, self._noted)

    async def _sweep(self, now: float) -> None:
        """Wake every passivated saga due by `now`, page by page."""
        self.sweeps += 1
        for saga_id, why in await self._store.unreadable_wake_ups():
            await self._quarantine(saga_id, why)
        after: tuple[float, str] | None = None
        while True:
            page: list[DueSaga] = list(await self._store.due(now, after=after, limit=_SWEEP_PAGE))
            for due in page:
                await self._wake(due.saga_id, due.saga_name)
            if len(page) < _SWEEP_PAGE:
                return
            after = (page[-1].wake_at, page[-1].saga_id)
