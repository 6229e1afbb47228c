"""Time as the saga actor sees it. The state machine never reads it: events carry it."""

from __future__ import annotations

import heapq
import time
from typing import Protocol

import anyio
import anyio.lowlevel


class Clock(Protocol):
    """Where the saga actor reads the time and waits for due times."""

    def now(self) -> float:
        """Wall-clock seconds since the epoch: persisted due times use it."""
        ...

    async def sleep_until(self, deadline: float) -> None:
        """Return once `now() >= deadline`."""
        ...


class SystemClock:
    """The real wall clock."""

    def now(self) -> float:
        return time.time()

    async def sleep_until(self, deadline: float) -> None:
        # Loop: the wall clock may lag the monotonic one that anyio sleeps on.
        while (remaining := deadline - time.time()) > 0:  # noqa: ASYNC110
            await anyio.sleep(remaining)


class VirtualClock:
    """A clock that moves only when told to: days pass instantly in tests.

    `advance(seconds)` (or `set(time)`) moves time forward and wakes every
    sleeper whose deadline has come. It does not wait for the woken tasks:
    wait for what they do (a saga's result, its status) instead.
    """

    def __init__(self, start: float = 1_750_000_000.0) -> None:
        self._now = start
        self._sleepers: list[tuple[float, int, anyio.Event]] = []
        self._order = 0

    def now(self) -> float:
        return self._now

    async def sleep_until(self, deadline: float) -> None:
        if deadline <= self._now:
            await anyio.lowlevel.checkpoint()
            return
        event = anyio.Event()
        self._order += 1
        heapq.heappush(self._sleepers, (deadline, self._order, event))
        await event.wait()

    def advance(self, seconds: float) -> None:
        """Move time forward by `seconds` (>= 0)."""
        if seconds < 0:
            raise ValueError("a clock does not go back")
        self.set(self._now + seconds)

    def set(self, now: float) -> None:
        """Move time forward to `now`."""
        if now < self._now:
            raise ValueError("a clock does not go back")
        self._now = now
        while self._sleepers and self._sleepers[0][0] <= now:
            heapq.heappop(self._sleepers)[2].set()
