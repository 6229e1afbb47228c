"""`ActorRef`: the only handle users hold on an actor."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Generic, TypeVar

import anyio

from ._envelope import Envelope, Reply
from ._errors import AskTimeoutError

if TYPE_CHECKING:
    from ._cell import Cell

M = TypeVar("M")


class ActorRef(Generic[M]):
    """Send messages to an actor. Built by `Supervisor.spawn`, never by users."""

    __slots__ = ("_cell",)

    def __init__(self, cell: Cell[M]) -> None:
        self._cell = cell

    @property
    def name(self) -> str:
        """The name the actor was spawned with."""
        return self._cell.name

    @property
    def is_alive(self) -> bool:
        """False once the actor has stopped for good (restarts keep it alive)."""
        return not self._cell.is_stopped

    @property
    def restarts(self) -> int:
        """How many times the supervisor restarted this actor."""
        return self._cell.restarts

    async def tell(self, message: M) -> None:
        """Queue `message`; wait while the mailbox is full.

        Raises `ActorStoppedError` if the actor has stopped.
        """
        await self._cell.mailbox.put(Envelope(message))

    def tell_nowait(self, message: M) -> None:
        """Queue `message` without waiting.

        Raises `MailboxFullError` if the mailbox is full and
        `ActorStoppedError` if the actor has stopped.
        """
        self._cell.mailbox.put_nowait(Envelope(message))

    async def ask(self, message: M, *, timeout: float | None = 5.0) -> object:
        """Send `message` and wait for the value `receive` returns for it.

        Raises `AskTimeoutError` when no reply comes within `timeout` seconds
        (None waits forever), `ActorStoppedError` if the actor stopped, and
        re-raises the error `receive` raised for this message.
        """
        reply = Reply()
        with anyio.move_on_after(math.inf if timeout is None else timeout):
            await self._cell.mailbox.put(Envelope(message, reply))
            return await reply.wait()
        raise AskTimeoutError(f"actor {self.name!r} did not answer within {timeout} s")

    def interrupt(self) -> None:
        """Cancel what the actor is doing now and start it again from `on_start`.

        Not a crash: no backoff, nothing counted. Its mailbox is kept.
        """
        self._cell.interrupt()

    async def stop(self) -> None:
        """Stop the actor now (its current message is cancelled) and wait until it has."""
        self._cell.cancel()
        await self._cell.join()

    async def join(self) -> None:
        """Wait until the actor has stopped for good."""
        await self._cell.join()

    def __repr__(self) -> str:
        state = "alive" if self.is_alive else "stopped"
        return f"<ActorRef {self.name!r} {state}>"
