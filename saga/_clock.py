"""Time as the saga actor sees it. The state machine never reads it: events carry it."""

from __future__ import annotations

import time
from typing import Protocol

import anyio


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
