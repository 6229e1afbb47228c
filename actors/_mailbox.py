"""A bounded mailbox over anyio memory object streams.

A full mailbox makes `put` wait (backpressure); nothing is ever dropped
silently. Closing it fails the replies of every envelope still inside.
"""

from __future__ import annotations

from typing import Generic, TypeVar

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ._envelope import Envelope
from ._errors import ActorStoppedError, MailboxFullError

M = TypeVar("M")


class Mailbox(Generic[M]):
    """An actor's bounded queue of envelopes: `put` waits while it is full, `close` fails
    every reply still inside with `ActorStoppedError`."""

    __slots__ = ("_capacity", "_closed", "_name", "_receive", "_send")

    def __init__(self, name: str, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"mailbox capacity must be at least 1, got {capacity}")
        self._name = name
        self._capacity = capacity
        self._closed = False
        # Streams are made on first use: most saga actors never get a message.
        self._send: MemoryObjectSendStream[Envelope[M]] | None = None
        self._receive: MemoryObjectReceiveStream[Envelope[M]] | None = None

    def _streams(
        self,
    ) -> tuple[MemoryObjectSendStream[Envelope[M]], MemoryObjectReceiveStream[Envelope[M]]]:
        if self._send is None or self._receive is None:
            if self._closed:
                raise ActorStoppedError(f"actor {self._name!r} has stopped")
            self._send, self._receive = anyio.create_memory_object_stream[Envelope[M]](
                self._capacity
            )
        return self._send, self._receive

    def __len__(self) -> int:
        if self._send is None:
            return 0
        return self._send.statistics().current_buffer_used

    async def put(self, envelope: Envelope[M]) -> None:
        send, _ = self._streams()
        try:
            await send.send(envelope)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
            raise ActorStoppedError(f"actor {self._name!r} has stopped") from exc

    def put_nowait(self, envelope: Envelope[M]) -> None:
        send, _ = self._streams()
        try:
            send.send_nowait(envelope)
        except anyio.WouldBlock as exc:
            raise MailboxFullError(f"mailbox of actor {self._name!r} is full") from exc
        except (anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
            raise ActorStoppedError(f"actor {self._name!r} has stopped") from exc

    async def get(self) -> Envelope[M]:
        _, receive = self._streams()
        return await receive.receive()

    def close(self) -> None:
        """Refuse new messages and fail the replies of those still queued."""
        self._closed = True
        if self._send is None or self._receive is None:
            return
        self._send.close()
        while True:
            try:
                envelope = self._receive.receive_nowait()
            except (anyio.WouldBlock, anyio.EndOfStream):
                break
            if envelope.reply is not None:
                envelope.reply.fail(ActorStoppedError(f"actor {self._name!r} has stopped"))
        self._receive.close()
