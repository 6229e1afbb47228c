"""The `Store` protocol: what the saga layer needs from durable storage.

The consumer owns the interface; `runtime` implements it (SQLite now,
PostgreSQL later). It is small on purpose: create, save, load, history,
list unfinished, park a corrupt row. Every saga row also carries an owner
and an epoch (fencing token) so a shared store can refuse the writes of a
runtime that lost its lease: `save` raises `StaleStateError` then.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from ._events import Event
from ._model import SagaState


@dataclass(frozen=True, slots=True)
class StoredSaga:
    """A saga as stored: its immutable input (JSON bytes) and its latest snapshot."""

    saga_id: str
    saga_name: str
    input: bytes
    state: SagaState


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One persisted transition: the event that produced snapshot number `seq`."""

    seq: int
    event: Event


@dataclass(frozen=True, slots=True)
class UnfinishedSaga:
    """A saga a runtime should drive, as listed by `Store.unfinished`."""

    saga_id: str
    saga_name: str


class Store(Protocol):
    """Durable storage of sagas: snapshots plus history, written atomically."""

    async def create(self, saga: StoredSaga, event: Event) -> StoredSaga | None:
        """Persist a new saga (snapshot `saga.state`, history `event`) atomically.

        Exactly-once: if `saga.saga_id` already exists nothing is written and
        the existing saga is returned; otherwise returns None once durable.
        """
        ...

    async def save(self, state: SagaState, event: Event) -> None:
        """Persist snapshot `state` and append `event`, atomically; return once durable.

        Raises `StaleStateError` unless the stored snapshot is `state.seq - 1`
        (and, for shared stores, the caller still holds the saga's epoch).
        """
        ...

    async def load(self, saga_id: str) -> StoredSaga:
        """Raises `SagaNotFound`, or `CorruptSagaError` if the snapshot cannot be decoded."""
        ...

    async def history(self, saga_id: str) -> Sequence[HistoryEntry]:
        """The saga's events in `seq` order. Raises `SagaNotFound`."""
        ...

    async def unfinished(self) -> Sequence[UnfinishedSaga]:
        """Every saga a runtime should drive: not terminal, not suspended."""
        ...

    async def quarantine(self, saga_id: str, reason: str) -> None:
        """Mark a saga whose snapshot cannot be decoded as suspended, keeping the row as is."""
        ...
