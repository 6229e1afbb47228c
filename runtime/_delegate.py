"""`DelegatingStore`: a `Store` that forwards every call to another one.

Subclass it to observe or disturb a real store (fault injection, probes)
by overriding only the methods that matter.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Self

from saga.engine import Event
from saga.store import (
    DueSaga,
    HistoryEntry,
    InboxItem,
    RetainingStore,
    SagaRow,
    SagaState,
    SharedStore,
    Store,
    StoredSaga,
    UnfinishedSaga,
)


class DelegatingStore:
    """Forwards the `Store` protocol (and `async with`) to `inner`."""

    def __init__(self, inner: Store) -> None:
        if isinstance(inner, SharedStore):
            # Wrapped, it would no longer look shared: the runtime would neither claim
            # nor hand back sagas, nor hear other runtimes. Refuse rather than degrade.
            raise TypeError(
                f"DelegatingStore cannot wrap a shared store ({type(inner).__name__}); "
                "subclass the store itself to observe it"
            )
        self.inner = inner

    async def __aenter__(self) -> Self:
        if isinstance(self.inner, AbstractAsyncContextManager):
            await self.inner.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if isinstance(self.inner, AbstractAsyncContextManager):
            await self.inner.__aexit__(exc_type, exc, tb)

    async def create(self, saga: StoredSaga, event: Event) -> StoredSaga | None:
        return await self.inner.create(saga, event)

    async def save(
        self,
        state: SagaState,
        event: Event,
        *,
        consumed: int | None = None,
        deliver: InboxItem | None = None,
    ) -> None:
        await self.inner.save(state, event, consumed=consumed, deliver=deliver)

    async def deliver(self, item: InboxItem) -> bool:
        return await self.inner.deliver(item)

    async def load(self, saga_id: str) -> StoredSaga:
        return await self.inner.load(saga_id)

    async def history(self, saga_id: str) -> Sequence[HistoryEntry]:
        return await self.inner.history(saga_id)

    async def inbox(self, saga_id: str) -> Sequence[InboxItem]:
        return await self.inner.inbox(saga_id)

    async def unfinished(self) -> Sequence[UnfinishedSaga]:
        return await self.inner.unfinished()

    async def runnable(self) -> Sequence[UnfinishedSaga]:
        return await self.inner.runnable()

    async def due(
        self, now: float, *, after: tuple[float, str] | None = None, limit: int = 500
    ) -> Sequence[DueSaga]:
        return await self.inner.due(now, after=after, limit=limit)

    async def next_wake_at(self, after: float | None = None) -> float | None:
        return await self.inner.next_wake_at(after)

    async def unreadable_wake_ups(self) -> Sequence[tuple[str, str]]:
        return await self.inner.unreadable_wake_ups()

    async def list_sagas(
        self,
        *,
        saga_name: str | None = None,
        status: str | None = None,
        waiting_for: str | None = None,
        after: str | None = None,
        limit: int = 100,
        version: int | None = None,
    ) -> Sequence[SagaRow]:
        return await self.inner.list_sagas(
            saga_name=saga_name,
            status=status,
            waiting_for=waiting_for,
            after=after,
            limit=limit,
            version=version,
        )

    async def quarantine(self, saga_id: str, reason: str) -> None:
        await self.inner.quarantine(saga_id, reason)

    async def prune_page(
        self,
        status: str,
        *,
        ended_before: float,
        now: float,
        after: tuple[float, str] | None = None,
        limit: int = 200,
        tombstones_before: float | None = None,
    ) -> tuple[int, tuple[float, str] | None]:
        if not isinstance(self.inner, RetainingStore):
            raise TypeError(f"{type(self.inner).__name__} cannot prune")
        return await self.inner.prune_page(
            status,
            ended_before=ended_before,
            now=now,
            after=after,
            limit=limit,
            tombstones_before=tombstones_before,
        )

    async def count_prunable(self, statuses: Sequence[str], ended_before: float) -> int:
        if not isinstance(self.inner, RetainingStore):
            raise TypeError(f"{type(self.inner).__name__} cannot prune")
        return await self.inner.count_prunable(statuses, ended_before)
