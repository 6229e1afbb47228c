"""What travels through a mailbox: a message and, for `ask`, the slot its reply goes to."""

from __future__ import annotations

from typing import Generic, TypeVar

import anyio

M = TypeVar("M")


class Reply:
    """A one-shot slot the actor fills with its answer (or an error) to an `ask`."""

    __slots__ = ("_done", "_error", "_value")

    def __init__(self) -> None:
        self._done = anyio.Event()
        self._value: object = None
        self._error: BaseException | None = None

    @property
    def is_set(self) -> bool:
        return self._done.is_set()

    def set(self, value: object) -> None:
        if not self._done.is_set():
            self._value = value
            self._done.set()

    def fail(self, error: BaseException) -> None:
        if not self._done.is_set():
            self._error = error
            self._done.set()

    async def wait(self) -> object:
        await self._done.wait()
        if self._error is not None:
            raise self._error
        return self._value


class Envelope(Generic[M]):
    """A message in a mailbox, with the `Reply` an `ask` waits on (None for a `tell`)."""

    __slots__ = ("message", "reply")

    def __init__(self, message: M, reply: Reply | None = None) -> None:
        self.message = message
        self.reply = reply
