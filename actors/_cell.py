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
    __slots__ = (
        "_scope",
        "factory",
        "mailbox",
        "name",
        "ref",
        "restarts",
        "stop_requested",
        "stop_signal",
        "stopped",
    )

    def __init__(self, name: str, factory: Callable[[], Actor[M]], capacity: int) -> None:
        self.name = name
        self.factory = factory
        self.mailbox: Mailbox[M] = Mailbox(name, capacity)
        self.ref: ActorRef[M] = ActorRef(self)
        self.stopped = anyio.Event()
        self.stop_requested = False
        self.stop_signal = anyio.Event()
        self.restarts = 0
        self._scope: anyio.CancelScope | None = None

    def cancel(self) -> None:
        self.stop_requested = True
        self.stop_signal.set()
        if self._scope is not None:
            self._scope.cancel()

    async def run_incarnation(self) -> None:
        """Run one incarnation until it stops normally; a crash propagates."""
        actor = self.factory()
        actor._ref = self.ref
        crash: Exception | None = None
        try:
            with anyio.CancelScope() as scope:
                self._scope = scope
                if self.stop_requested:
                    scope.cancel()
                try:
                    async with anyio.create_task_group() as task_group:
                        actor._task_group = task_group
                        await actor.on_start()
                        while not actor._stop_requested:
                            await _deliver(actor, await self.mailbox.get())
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
        self.stop_requested = True
        await actor.on_stop()

    def finish(self) -> None:
        self.mailbox.close()
        self.stopped.set()


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
