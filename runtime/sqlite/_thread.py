"""`WriterThread`: the one thread the SQLite write connection lives on.

anyio's worker threads are not daemons and stop only when the task that
started them finishes normally; a Ctrl-C or `sys.exit` raised through the
event loop leaves them waiting forever, and the interpreter then hangs at
exit joining them. This thread belongs to the store, stops when the store
closes, and is a daemon, so a store that is never closed (an abandoned
runtime) cannot keep the process alive: its last commit is either in the
database or not, as after any crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import anyio

T = TypeVar("T")

_Call = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", Callable[..., Any], tuple[Any, ...]]


class WriterThread:
    """Runs blocking calls one at a time, in order, on a single daemon thread."""

    def __init__(self, name: str) -> None:
        self._calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    async def run(self, func: Callable[..., T], *args: Any) -> T:
        """`func(*args)` on the thread. Cancellation waits for it: a commit is never cut."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[T] = loop.create_future()
        self._calls.put((loop, done, func, args))
        with anyio.CancelScope(shield=True):
            await asyncio.wait((done,))
        return done.result()

    def stop(self) -> None:
        """Ends the thread once the calls already queued have run."""
        self._calls.put(None)

    def _serve(self) -> None:
        while (call := self._calls.get()) is not None:
            loop, done, func, args = call
            try:
                outcome: tuple[bool, Any] = (True, func(*args))
            except BaseException as exc:  # handed back to the awaiting task
                outcome = (False, exc)
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
                loop.call_soon_threadsafe(_settle, done, outcome)
            del call, done, func, args, outcome


def _settle(done: asyncio.Future[Any], outcome: tuple[bool, Any]) -> None:
    if done.cancelled():
        return
    ok, value = outcome
    if ok:
        done.set_result(value)
    else:
        done.set_exception(value)
