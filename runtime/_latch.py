"""`Latch`: set once, awaited by many; what a batch's writers and a result's waiters wait on."""

from __future__ import annotations

import asyncio


class Latch:
    """Set once; every `wait` is a plain future of its own.

    Cheaper than an Event on the hot path (asyncio's binds itself to the loop under
    a global lock at the first wait; anyio's costs several times more), and awaited
    directly, with no coroutine in between. One future per wait, so a cancelled wait
    cancels no other.
    """

    __slots__ = ("_futures", "is_set")

    def __init__(self) -> None:
        self._futures: list[asyncio.Future[None]] = []
        self.is_set = False

    def set(self) -> None:
        self.is_set = True
        for future in self._futures:
            if not future.done():
                future.set_result(None)
        self._futures.clear()

    def wait(self) -> asyncio.Future[None]:
        future = asyncio.get_running_loop().create_future()
        if self.is_set:
            future.set_result(None)
            return future
        futures = self._futures
        if futures and futures[-1].done():  # an abandoned wait (a timeout): drop them
            futures[:] = [waiting for waiting in futures if not waiting.done()]
        futures.append(future)
        return future
