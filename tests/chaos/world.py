"""A runtime a test can abandon mid-flight and reopen, on one SQLite file and one virtual clock.

Each `Incarnation` is one `async with Runtime(...)` inside a cancel scope.
Abandoning it cancels that scope wherever the runtime stands (a step half
done, a write queued), as when the application around it is torn down; the
next incarnation reopens the same file. Calls into the runtime run inside
the incarnation too (`World.call`), like request handlers of that
application: an abandon cuts them short.

Time only moves when `advance` says so (a `VirtualClock`, `keep_warm=0`), so
between two moves the runtime runs until it is idle (`settle`): no actor in
memory, no store call under way, nothing due.
"""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

import anyio
from anyio.abc import TaskGroup, TaskStatus

from actors import RestartWithBackoff
from runtime import Runtime, SqliteStore, VirtualClock
from saga import Saga, SagaStatus, StepContext

from .checkout import Where
from .faults import FaultBoard, FaultyStore

T = TypeVar("T")

BUSY_TIMEOUT = 0.05
PAGE_SIZE = 1024
SETTLE_TIMEOUT = 15.0
POLL = 0.002
"""Seconds between looks at an idle-looking runtime (no event tells when the last actor left)."""
SUPERVISION = RestartWithBackoff(
    min_backoff=0.001, max_backoff=0.01, random_factor=0.2, max_restarts=3, within=60.0
)


class CrashHooks:
    """Abandon the runtime at the n-th next service call, just before or just after its effect."""

    def __init__(self) -> None:
        self.countdown: int | None = None
        self.where: Where = "before"
        self.crash: Callable[[], None] = lambda: None
        self.fired = 0

    def arm(self, nth: int, where: Where) -> None:
        self.countdown, self.where = nth, where

    def disarm(self) -> None:
        self.countdown = None

    async def checkpoint(self, ctx: StepContext, where: Where) -> None:
        if self.countdown is None or where != self.where:
            return
        self.countdown -= 1
        if self.countdown:
            return
        self.countdown = None
        self.fired += 1
        self.crash()
        await anyio.sleep_forever()  # cancelled with the rest of the runtime


@dataclass
class Outcome(Generic[T]):
    """How a call into the runtime ended: a value, an error, or cut short by an abandon."""

    value: T | None = None
    error: Exception | None = None
    returned: bool = False


class Incarnation:
    def __init__(self, world: World) -> None:
        self.world = world
        self.scope = anyio.CancelScope()
        self.ended = anyio.Event()
        self._rt: Runtime | None = None
        self._store: FaultyStore | None = None
        self._tg: TaskGroup | None = None

    @property
    def abandoned(self) -> bool:
        return self.scope.cancel_called or self.ended.is_set()

    @property
    def rt(self) -> Runtime:
        assert self._rt is not None
        return self._rt

    @property
    def store(self) -> FaultyStore:
        assert self._store is not None
        return self._store

    @property
    def tg(self) -> TaskGroup:
        assert self._tg is not None
        return self._tg

    async def run(self, *, task_status: TaskStatus[None]) -> None:
        world = self.world
        try:
            with self.scope:
                sqlite = SqliteStore(world.path, busy_timeout=BUSY_TIMEOUT)
                store = FaultyStore(sqlite, world.board)
                async with (
                    Runtime(
                        store,
                        sagas=[world.saga],
                        clock=world.clock,
                        keep_warm=0,
                        supervision=SUPERVISION,
                        rng=world.rng,
                    ) as rt,
                    anyio.create_task_group() as tg,
                ):
                    self._rt, self._store, self._tg = rt, store, tg
                    task_status.started()
                    await anyio.sleep_forever()
        finally:
            self.ended.set()


class World:
    """Runs incarnations of a runtime on `path`; lives in one event loop (`serve`)."""

    def __init__(
        self, path: Path, saga: Saga, board: FaultBoard, hooks: CrashHooks, seed: int = 0
    ) -> None:
        self.path = path
        self.saga = saga
        self.board = board
        self.hooks = hooks
        self.clock = VirtualClock()
        self.rng = random.Random(seed)
        self.opens = 0
        # The application creates the file with small pages: snapshots spill onto
        # overflow pages, and a full disk refuses a write within a few transitions.
        create = sqlite3.connect(path)
        try:
            create.execute(f"PRAGMA page_size={PAGE_SIZE}")
            create.execute("PRAGMA journal_mode=WAL")
        finally:
            create.close()
        self._current: Incarnation | None = None
        self._tg: TaskGroup | None = None

    @property
    def restarts(self) -> int:
        """Runtimes abandoned and reopened (by a rule, a crash hook, or the teardown)."""
        return max(self.opens - 1, 0)

    @property
    def current(self) -> Incarnation:
        assert self._current is not None, "open() first"
        return self._current

    async def serve(self, *, task_status: TaskStatus[None]) -> None:
        async with anyio.create_task_group() as tg:
            self._tg = tg
            task_status.started()
            await anyio.sleep_forever()

    async def open(self) -> None:
        assert self._tg is not None, "serve() first"
        self.board.stranded.clear()  # a start resumes every unfinished saga
        incarnation = Incarnation(self)
        self._current = incarnation
        self.hooks.crash = incarnation.scope.cancel
        await self._tg.start(incarnation.run)
        self.opens += 1

    async def abandon(self) -> None:
        incarnation = self.current
        incarnation.scope.cancel()
        await incarnation.ended.wait()

    async def restart(self) -> None:
        await self.abandon()
        await self.open()

    async def ensure_open(self) -> None:
        """Reopen after a crash hook abandoned the runtime."""
        if self.current.abandoned:
            await self.current.ended.wait()
            await self.open()

    async def close(self) -> None:
        if self._current is not None:
            await self.abandon()
        if self._tg is not None:
            self._tg.cancel_scope.cancel()

    async def call(self, func: Callable[[Runtime], Awaitable[T]]) -> Outcome[T]:
        """Run `func(rt)` inside the current incarnation (an abandon cuts it short)."""
        await self.ensure_open()
        incarnation = self.current
        outcome: Outcome[T] = Outcome()
        done = anyio.Event()

        async def handler() -> None:
            try:
                outcome.value = await func(incarnation.rt)
                outcome.returned = True
            except Exception as exc:
                outcome.error = exc
            finally:
                done.set()

        incarnation.tg.start_soon(handler)
        await done.wait()
        return outcome

    async def resume(self, saga_id: str) -> Outcome[None]:
        """An operator resumes a suspended saga."""
        return await self.call(lambda rt: rt.resume(saga_id))

    async def _idle(self) -> bool:
        incarnation = self.current
        if incarnation.abandoned or incarnation.rt.live_actors or incarnation.store.pending:
            return False
        try:
            due = await incarnation.store.sqlite.due(self.clock.now(), limit=1000)
        except Exception:
            if incarnation.abandoned:
                return False  # by a crash hook, meanwhile: its reader closed
            raise
        if incarnation.rt.live_actors or incarnation.store.pending:
            return False
        # Due, yet nothing will wake them: only sagas whose parking failed (they
        # come back by themselves after a while, or at the next start).
        return {d.saga_id for d in due} <= self.board.stranded

    async def settle(self) -> None:
        """Wait until the runtime is idle; reopen it if a crash hook abandoned it."""
        try:
            with anyio.fail_after(SETTLE_TIMEOUT):
                calm = 0
                while calm < 2:  # idle twice in a row: nothing was between two hops
                    await self.ensure_open()
                    calm = calm + 1 if await self._idle() else 0
                    await anyio.sleep(POLL)
        except TimeoutError:
            raise AssertionError(f"the runtime never went idle: {await self._describe()}") from None

    async def _describe(self) -> str:
        incarnation = self.current
        if incarnation.abandoned:
            return "abandoned"
        due = await incarnation.store.sqlite.due(self.clock.now(), limit=1000)
        return (
            f"{incarnation.rt.live_actors} live actors, "
            f"{incarnation.store.pending} store calls under way, due {due}, stranded "
            f"{sorted(self.board.stranded)}, statuses {await self.statuses()}"
        )

    async def advance(self) -> bool:
        """Move the clock to the next wake-up ahead and let it play out; False if none."""
        await self.settle()
        after = await self.current.store.sqlite.next_wake_at(after=self.clock.now())
        if after is None:
            return False
        self.clock.set(after)
        await self.settle()
        return True

    async def statuses(self) -> dict[str, SagaStatus]:
        await self.ensure_open()
        page = await self.current.rt.list(limit=1000)
        assert page.next_after is None, "more sagas than one page"
        return {item.saga_id: item.status for item in page.items}

    async def run_to_the_end(self, timeout: float) -> dict[str, SagaStatus]:
        """No more faults: restart, resume the suspended, move time, until every saga ended."""
        self.board.disarm()
        self.hooks.disarm()
        await self.restart()  # brings back the stranded ones too
        with anyio.fail_after(timeout):
            while True:
                await self.settle()
                statuses = await self.statuses()
                if all(status.is_terminal for status in statuses.values()):
                    return statuses
                suspended = [s for s, status in statuses.items() if status is SagaStatus.SUSPENDED]
                for saga_id in suspended:
                    outcome = await self.resume(saga_id)
                    if outcome.error is not None:
                        raise outcome.error
                if not suspended and not await self.advance():
                    await self.restart()  # nothing due, nothing live: a stranded saga
