"""The `Store` protocol: what the saga layer needs from durable storage.

The consumer owns the interface; `runtime` implements it (SQLite now,
PostgreSQL later). It is small on purpose: create, save, load, history,
list unfinished, park a corrupt row. Every saga row also carries an owner
and an epoch (fencing token) so a shared store can refuse the writes of a
runtime that lost its lease: `save` raises `StaleStateError` then.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import msgspec

from ._events import Event
from ._model import SagaState


class StoredSaga(msgspec.Struct, frozen=True, gc=False):
    """A saga as stored: its immutable input (JSON bytes) and its latest snapshot.

    A frozen msgspec Struct: every spawn makes one, and a frozen dataclass takes
    several times longer to build."""

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
class InboxItem:
    """A signal or a cancellation, durable in a saga's inbox until its actor applies it."""

    id: int
    saga_id: str
    kind: str
    """"signal", "cancel", "compensate" (from a parent) or "child" (a child's report)."""
    name: str
    """The signal's name, the cancellation's reason, or the reporting child's id."""
    payload: bytes = b"null"
    key: str | None = None
    at: float = 0.0


@dataclass(frozen=True, slots=True)
class SagaRow:
    """One saga as `Store.list_sagas` lists it."""

    saga_id: str
    saga_name: str
    status: str
    waiting_for: str | None
    wake_at: float | None
    updated_at: float
    version: int = 1
    """The definition version it runs on."""


@dataclass(frozen=True, slots=True)
class DueSaga:
    """A saga whose wake-up time has come, from `Store.due`."""

    saga_id: str
    saga_name: str
    wake_at: float


@dataclass(frozen=True, slots=True)
class Notice:
    """A wake-up from another runtime, through a shared store.

    `saga_id` has new inbox items (`cancel`: one is a cancellation); None
    means "look for sagas to claim now" (a runtime handed its sagas back).
    """

    saga_id: str | None
    cancel: bool = False


@dataclass(frozen=True, slots=True)
class OwnedSaga:
    """A saga a runtime owns that has work, from `SharedStore.owned_with_work`."""

    saga_id: str
    saga_name: str
    inbox: bool
    """It has inbox items (a notice for them may have been lost)."""
    cancel: bool
    """One of them is a cancellation."""


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

    async def save(
        self,
        state: SagaState,
        event: Event,
        *,
        consumed: int | None = None,
        deliver: InboxItem | None = None,
    ) -> None:
        """Persist snapshot `state.stored()` and append `event`, atomically; return once durable.

        `consumed` is the id of the inbox item `event` came from: it is
        removed in the same transaction, so it is applied exactly once.
        `deliver` is an inbox item for another saga (a child's report to its
        parent), added in the same transaction unless that saga has ended or
        holds an item of the same kind and key.
        Raises `StaleStateError` unless the stored snapshot is `state.seq - 1`
        (and, for shared stores, the caller still holds the saga's epoch).
        """
        ...

    async def deliver(self, item: InboxItem) -> bool:
        """Append `item` (its `id` is ignored) to the saga's inbox; return once durable.

        Returns False when an item of the same kind and `key` is already
        there (a duplicate). Raises `SagaNotFound`, or `SagaEndedError` if
        the saga has ended (a "compensate" item for a completed saga is taken:
        a parent rolls its completed child back).
        """
        ...

    async def inbox(self, saga_id: str) -> Sequence[InboxItem]:
        """The saga's undelivered inbox items, oldest first."""
        ...

    async def runnable(self) -> Sequence[UnfinishedSaga]:
        """Live sagas with a step or compensation in flight, or with undelivered inbox items,
        and completed sagas asked to compensate: to resume at once on start."""
        ...

    async def due(
        self, now: float, *, after: tuple[float, str] | None = None, limit: int = 500
    ) -> Sequence[DueSaga]:
        """Live sagas whose wake-up time is at or before `now`, by wake-up time, paged."""
        ...

    async def next_wake_at(self, after: float | None = None) -> float | None:
        """The earliest wake-up time of a live saga (strictly after `after`, if given)."""
        ...

    async def unreadable_wake_ups(self) -> Sequence[tuple[str, str]]:
        """Live sagas whose `wake_at` column holds no time (edited by hand: text, NaN,
        an infinity), as (saga_id, why), a page at most. Such a saga would never wake;
        the runtime suspends it with that reason."""
        ...

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
        """Sagas matching the filters, by id, starting after the id `after`."""
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


@runtime_checkable
class Prunable(Protocol):
    """What retention needs of a store: pages of a pruning pass, and a dry run.

    Pruning goes in passes over the ended sagas of one status by age, a page per call,
    each page in its own short write; each pruned saga leaves a tombstone that keeps
    its start exactly-once (`create` refuses its id; reads raise `SagaPrunedError`).
    """

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
        """Look at up to `limit` sagas of `status` created before `ended_before`, after
        the position `after`; delete those that ended before it (and tombstones pruned
        before `tombstones_before`). Returns (deleted, the next position; None: done)."""
        ...

    async def count_prunable(self, statuses: Sequence[str], ended_before: float) -> int:
        """How many sagas pruning would delete now (a dry run)."""
        ...


@runtime_checkable
class RetainingStore(Store, Prunable, Protocol):
    """A store that can delete ended sagas (both of Sagaloop's can): retention."""


@runtime_checkable
class SharedStore(Store, Protocol):
    """A store several runtimes share (PostgreSQL): each saga has at most one owner.

    A runtime drives a saga only while it owns it: it created it, or
    claimed it. Claiming bumps the saga's epoch, and every `save` is
    conditional on the epoch its runtime holds, so a runtime that lost its
    lease (paused past it) can write nothing more: `save` raises
    `LeaseLostError`. Ownership lives in the database, leases run on the
    database's clock.
    """

    @property
    def runtime_id(self) -> str:
        """This runtime's owner id in the store."""
        ...

    @property
    def poll_interval(self) -> float:
        """Seconds between sweeps for orphaned sagas (the fallback when a notice is lost)."""
        ...

    saga_names: frozenset[str] | None
    """The sagas this runtime has definitions for: it claims no orphan of another (None: any)."""

    saga_versions: frozenset[tuple[str, int]] | None
    """The (name, version) pairs it has: it claims an orphan of another version only when no
    live runtime has that version (to suspend it). None: any."""

    @property
    def run_spawned_here(self) -> bool:
        """Whether a saga this runtime creates is its own (else: the first claimer's)."""
        ...

    async def claim(self, saga_id: str) -> bool:
        """Take `saga_id` over unless a live runtime owns it (or it ended): True if now ours.

        A suspended saga can be claimed from any owner (an operator resumes it).
        """
        ...

    def release(self, saga_id: str) -> None:
        """Hand a saga back (its actor passivated or stopped). Best effort, not awaited."""
        ...

    async def claim_orphans(self, now: float, limit: int) -> Sequence[UnfinishedSaga]:
        """Claim live sagas with work to do that no live runtime owns: runnable ones,
        ones due by `now`, ones with inbox items."""
        ...

    async def served_elsewhere(self, saga_name: str, version: int) -> bool:
        """Whether another live runtime has that version of the saga (it may take it)."""
        ...

    async def owned_with_work(self, now: float) -> Sequence[OwnedSaga]:
        """This runtime's sagas with inbox items, and those with work (runnable, or due by
        `now`) that it does not hold in memory: the sweep's check on its own sagas, for a
        notice that was lost or an activation whose outcome was unknown."""
        ...

    def on_notice(self, handler: Callable[[Notice], None]) -> None:
        """Call `handler` for each notice from another runtime (set once, before use)."""
        ...
