"""A `Cell` is the durable identity of one supervised actor: its name, mailbox
and lifecycle. Each incarnation (the first start and every restart) is a
fresh `Actor` instance built by the factory and driven by `run_incarnation`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

import anyio

from ._actor import Actor
from ._envelope import Envelope
from ._errors import ActorStoppedError
from ._mailbox import Mailbox
from ._ref import ActorRef

M = TypeVar("M")


class Cell(Generic[M]):
    """One supervised actor across its incarnations: its name, its mailbox (which outlives
    restarts, so no message is lost to a crash) and whether it was asked to stop."""

    __slots__ = (
        "_scope",
        "_stop_signal",
        "_stopped",
        "factory",
        "interrupt_requested",
        "is_stopped",
        "mailbox",
        "name",
        "restarts",
        "stop_requested",
    )

    def __init__(self, name: str, factory: Callable[[], Actor[M]], capacity: int) -> None:
        self.name = name
        self.factory = factory
        self.mailbox: Mailbox[M] = Mailbox(name, capacity)
        # No reference back to the cell's `ActorRef` (which holds the cell): without
        # the cycle a stopped actor is freed at once, not by the cycle collector.
        self.stop_requested = False
        self.interrupt_requested = False
        self.is_stopped = False
        self.restarts = 0
        self._scope: anyio.CancelScope | None = None
        # Events are made only when someone waits: most actors never need them.
        self._stopped: anyio.Event | None = None
        self._stop_signal: anyio.Event | None = None

    def cancel(self) -> None:
        self.stop_requested = True
        if self._stop_signal is not None:
            self._stop_signal.set()
        if self._scope is not None:
            self._scope.cancel()

    async def join(self) -> None:
        """Wait until the actor has stopped for good."""
        if self.is_stopped:
            return
        if self._stopped is None:
            self._stopped = anyio.Event()
        await self._stopped.wait()

    async def sleep_unless_stopped(self, delay: float) -> None:
        """Sleep `delay` seconds, or less if the actor is asked to stop."""
        if self.stop_requested:
            return
        if self._stop_signal is None:
            self._stop_signal = anyio.Event()
        with anyio.move_on_after(delay):
            await self._stop_signal.wait()

    def interrupt(self) -> None:
        self.interrupt_requested = True
        if self._scope is not None:
            self._scope.cancel()

    async def run_incarnation(self, ref: ActorRef[M]) -> bool:
        """Run one incarnation (`ref` is this cell's) until it stops; True if it was
        interrupted (run it again). A crash propagates.
        """
        actor = self.factory()
        actor._ref = ref  # noqa: SLF001 (the kernel wires the actor it runs)
        self.interrupt_requested = False
        if actor.spawns_children:
            await self._run_with_children(actor)
        else:
            try:
                with anyio.CancelScope() as scope:
                    self._scope = scope
                    if self.stop_requested:
                        scope.cancel()
                    await _serve(actor, self.mailbox)
            finally:
                self._scope = None
        if self.interrupt_requested and not self.stop_requested:
            return True
        self.stop_requested = True
        await actor.on_stop()
        return False

    async def _run_with_children(self, actor: Actor[M]) -> None:
        crash: Exception | None = None
        try:
            async with anyio.create_task_group() as task_group:
                self._scope = task_group.cancel_scope
                if self.stop_requested:
                    task_group.cancel_scope.cancel()
                actor._task_group = task_group  # noqa: SLF001 (kernel)
                await _serve(actor, self.mailbox)
                if actor._children:  # noqa: SLF001 (kernel)
                    task_group.cancel_scope.cancel()
        except ExceptionGroup as group:
            if len(group.exceptions) != 1:
                raise
            crash = group.exceptions[0]
        finally:
            self._scope = None
        if crash is not None:
            # One failure is the usual case: report it, not its wrapper. Raised
            # outside the handler so it keeps its own __cause__ and __context__.
            raise crash

    def finish(self) -> None:
        self.mailbox.close()
        self.is_stopped = True
        if self._stopped is not None:
            self._stopped.set()


async def _serve(actor: Actor[M], mailbox: Mailbox[M]) -> None:
    await actor.on_start()
    while not actor._stop_requested:  # noqa: SLF001 (kernel)
        await _deliver(actor, await mailbox.get())


async def _deliver(actor: Actor[M], envelope: Envelope[M]) -> None:
    try:
        result = await actor.receive(envelope.message)
    except Exception as exc:
        if envelope.reply is not None:
            envelope.reply.fail(exc)
        raise
    except BaseException:
        if envelope.reply is not None:
            envelope.reply.fail(ActorStoppedError(f"actor {actor.ref.name!r} stopped"))
        raise
    if envelope.reply is not None:
        envelope.reply.set(result)
