"""`Supervisor`: owns actors, one task each, and applies their strategy on a crash."""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections import deque
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Self, TypeVar

import anyio

from ._actor import Actor
from ._cell import Cell
from ._errors import ActorNameTakenError, SupervisionEscalatedError, SupervisorNotRunningError
from ._ref import ActorRef
from ._strategy import RestartWithBackoff, Stop, SupervisorStrategy

M = TypeVar("M")

EscalationHandler = Callable[[str, Exception], Awaitable[None]]
"""Called with the actor's name and its last error when a crash is escalated."""

logger = logging.getLogger("actors")


class Supervisor:
    """Runs actors as its children, like a task group does.

    Use it as an async context manager. When an actor crashes, its strategy
    decides: restart it (fresh instance, same mailbox and ref), stop it, or
    escalate: call `on_escalate` if given, else raise
    `SupervisionEscalatedError` out of the supervisor's `async with`
    (its body is cancelled, as a task group's is). Leaving the block stops
    every actor and waits for them: for ever, or `stop_timeout` seconds,
    after which an actor that ignores its cancellation is logged and left
    running, unawaited, in the event loop.

    The kernel runs on asyncio: each actor is a plain asyncio task, with anyio's
    cancel scopes and task groups inside it (anyio's asyncio backend; not trio).
    A task-group task costs several times more to start, and a saga runtime
    starts one actor per saga.
    """

    def __init__(
        self,
        strategy: SupervisorStrategy | None = None,
        *,
        on_escalate: EscalationHandler | None = None,
        rng: random.Random | None = None,
        stop_timeout: float | None = None,
    ) -> None:
        if stop_timeout is not None and not stop_timeout >= 0:
            raise ValueError("stop_timeout must be >= 0 or None")
        self._stop_timeout = stop_timeout
        self._strategy = strategy if strategy is not None else RestartWithBackoff()
        self._on_escalate = on_escalate
        self._rng = rng if rng is not None else random.Random()
        self._live: dict[str, ActorRef[object]] = {}  # each ref holds its actor's cell
        self._tasks: set[asyncio.Task[None]] = set()
        self._errors: list[BaseException] = []  # what escaped an actor's task
        self._body: anyio.CancelScope | None = None  # around the `async with` block
        self._idle: asyncio.Future[None] | None = None  # set when the last task ends

    @property
    def live_actors(self) -> int:
        """The number of actors that have not stopped for good."""
        return len(self._live)

    def get(self, name: str) -> ActorRef[object] | None:
        """The ref of the live actor called `name`, or None."""
        return self._live.get(name)

    def spawn(
        self,
        factory: Callable[[], Actor[M]],
        *,
        name: str,
        mailbox_size: int = 16,
        strategy: SupervisorStrategy | None = None,
        on_stop: Callable[[Exception | None], None] | None = None,
    ) -> ActorRef[M]:
        """Start an actor built by `factory` and return its ref at once.

        `on_stop` is called once the actor has stopped for good (its name is
        free again), with the error that made it stop, or None for a normal stop.

        Raises `ActorNameTakenError` if a live actor has `name`, and
        `RuntimeError` outside the supervisor's `async with`.
        """
        if self._body is None:
            raise SupervisorNotRunningError("spawn() needs the supervisor's `async with` block")
        if name in self._live:
            raise ActorNameTakenError(f"an actor named {name!r} is already running")
        ref = ActorRef(Cell(name, factory, mailbox_size))
        self._live[name] = ref  # type: ignore[assignment]
        task = asyncio.get_running_loop().create_task(
            self._supervise(ref, strategy or self._strategy, on_stop), name=name
        )
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return ref

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        error = None if task.cancelled() else task.exception()
        if error is not None:
            # What a task group does with a failed child: stop the rest, cancel the body.
            self._errors.append(error)
            for ref in list(self._live.values()):
                ref._cell.cancel()  # noqa: SLF001 (kernel: a ref's cell is the supervisor's)
            if self._body is not None:
                self._body.cancel()
        if not self._tasks and self._idle is not None and not self._idle.done():
            self._idle.set_result(None)

    async def stop_all(self) -> None:
        """Ask every actor to stop now; leaving the block waits for them."""
        for ref in list(self._live.values()):
            ref._cell.cancel()  # noqa: SLF001 (kernel: a ref's cell is the supervisor's)

    async def __aenter__(self) -> Self:
        if self._body is not None:
            raise RuntimeError("this Supervisor is already running")
        self._errors = []
        self._body = anyio.CancelScope()
        self._body.__enter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        body = self._body
        assert body is not None
        await self.stop_all()
        try:
            # Wait for every actor even if we are cancelled: none may outlive the block.
            with anyio.CancelScope(shield=True):
                with anyio.move_on_after(
                    math.inf if self._stop_timeout is None else self._stop_timeout
                ):
                    while self._tasks:
                        self._idle = asyncio.get_running_loop().create_future()
                        await self._idle
                self._abandon_the_rest()
        finally:
            self._idle = None
            self._body = None
        swallowed = body.__exit__(exc_type, exc, tb)
        errors, self._errors = self._errors, []
        if not errors:
            return swallowed
        own = (
            exc is not None
            and not swallowed
            and not isinstance(exc, anyio.get_cancelled_exc_class())
        )
        if not own and len(errors) == 1 and isinstance(errors[0], SupervisionEscalatedError):
            raise errors[0]  # documented: the escalation itself, not a group around it
        raise BaseExceptionGroup(
            "unhandled errors in a Supervisor", [*errors, *([exc] if own and exc else [])]
        )

    def _abandon_the_rest(self) -> None:
        for task in self._tasks:
            logger.error(
                "actor %r ignored its cancellation for %s s; left running, unawaited",
                task.get_name(),
                self._stop_timeout,
            )
            task.remove_done_callback(self._task_done)
            ref = self._live.pop(task.get_name(), None)  # its name is free for a new actor
            if ref is not None:
                ref._cell.cancel()  # noqa: SLF001 (kernel: a ref's cell is the supervisor's)
        self._tasks.clear()

    async def _supervise(
        self,
        ref: ActorRef[M],
        strategy: SupervisorStrategy,
        on_stop: Callable[[Exception | None], None] | None,
    ) -> None:
        cell = ref._cell  # noqa: SLF001 (kernel)
        crashes: deque[float] = deque()
        fatal: Exception | None = None
        try:
            while not cell.stop_requested:
                try:
                    if await cell.run_incarnation(ref):
                        continue  # interrupted on purpose: start again at once
                except Exception as error:
                    if cell.stop_requested:
                        logger.error("actor %r raised while stopping: %r", cell.name, error)
                        break
                    delay = self._restart_delay(strategy, crashes)
                    if delay is None:
                        fatal = error
                        break
                    logger.warning(
                        "actor %r crashed (%r); restarting in %.3f s", cell.name, error, delay
                    )
                    await cell.sleep_unless_stopped(delay)
                    if not cell.stop_requested:
                        cell.restarts += 1
        finally:
            # Free the name first: whoever handles the escalation may respawn it (unless it
            # was abandoned at a stop, and the name is another actor's by now).
            if self._live.get(cell.name) is ref:
                del self._live[cell.name]
            cell.finish()
            if on_stop is not None:
                on_stop(fatal)
        if fatal is not None:
            await self._escalate(cell, strategy, fatal)

    def _restart_delay(self, strategy: SupervisorStrategy, crashes: deque[float]) -> float | None:
        if not isinstance(strategy, RestartWithBackoff):
            return None
        now = anyio.current_time()
        crashes.append(now)
        while crashes and crashes[0] < now - strategy.within:
            crashes.popleft()
        if len(crashes) > strategy.max_restarts:
            return None
        return strategy.delay(len(crashes) - 1, self._rng)

    async def _escalate(
        self, cell: Cell[M], strategy: SupervisorStrategy, error: Exception
    ) -> None:
        if isinstance(strategy, Stop):
            logger.error("actor %r crashed (%r); stopped by its strategy", cell.name, error)
            return
        logger.error("actor %r crashed (%r); escalating", cell.name, error)
        if self._on_escalate is None:
            raise SupervisionEscalatedError(cell.name) from error
        await self._on_escalate(cell.name, error)
