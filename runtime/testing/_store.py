"""`FaultyStore`: the real store, with the plan's store faults and record-time crashes.

It also tells the harness when the store is busy (a call in progress), so
"no actor in memory and no store call in progress" means the runtime is idle,
and it journals every write the inner store acknowledged as durable.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import NoReturn, Protocol

from saga import StoreError
from saga.engine import (
    CompensationFailed,
    CompensationSucceeded,
    Event,
    Recovered,
    StepFailed,
    StepSucceeded,
)
from saga.store import (
    DueSaga,
    HistoryEntry,
    InboxItem,
    SagaRow,
    SagaState,
    Store,
    StoredSaga,
    UnfinishedSaga,
)

from .._delegate import DelegatingStore
from ._journal import Journal
from ._plan import Crash, CrashPoint, StoreFault

_OPERATIONAL = {
    "db_locked": "database is locked",
    "disk_full": "database or disk is full",
}


class StoreInjector(Protocol):
    """What the store wrapper needs from the harness running the example."""

    journal: Journal
    store_calls: int

    async def alive(self) -> None: ...

    def take_store_fault(self, saga_id: str) -> StoreFault | None:
        """Count one write of `saga_id`; the unfired store fault targeted at it, now fired."""
        ...

    def take_crash(
        self, saga_id: str, at: CrashPoint, step: str, attempt: int, compensating: bool
    ) -> Crash | None: ...

    def step_name(self, state: SagaState, index: int) -> str: ...

    async def crash(self, saga_id: str, why: str) -> NoReturn: ...


class FaultyStore(DelegatingStore):
    """A `DelegatingStore` that fails the writes the plan targets."""

    def __init__(self, inner: Store, injector: StoreInjector) -> None:
        super().__init__(inner)
        self._injector = injector

    async def create(self, saga: StoredSaga, event: Event) -> StoredSaga | None:
        injector = self._injector
        await injector.alive()
        injector.store_calls += 1
        try:
            fault = injector.take_store_fault(saga.saga_id)
            self._fail_before(saga.saga_id, fault, "the creation")
            existing = await self.inner.create(saga, event)
            if existing is None:
                injector.journal.wrote(saga.saga_id, saga.state.seq, event)
            self._fail_after(saga.saga_id, fault, "the creation")
            return existing
        finally:
            injector.store_calls -= 1

    async def save(
        self,
        state: SagaState,
        event: Event,
        *,
        consumed: int | None = None,
        deliver: InboxItem | None = None,
    ) -> None:
        injector = self._injector
        saga_id = state.saga_id
        await injector.alive()
        injector.store_calls += 1
        try:
            fault = injector.take_store_fault(saga_id)
            what = f"the write of {type(event).__name__} (seq {state.seq})"
            self._fail_before(saga_id, fault, what)
            await self.inner.save(state, event, consumed=consumed, deliver=deliver)
            injector.journal.wrote(saga_id, state.seq, event)
            self._fail_after(saga_id, fault, what)
            crash = self._crash_after(state, event)
        finally:
            injector.store_calls -= 1
        if crash is not None:
            await injector.crash(saga_id, crash)

    def _fail_before(self, saga_id: str, fault: StoreFault | None, what: str) -> None:
        if fault is None or fault.kind == "ack_lost":
            return
        self._injector.journal.note(saga_id, f"store fault {fault.kind!r}: {what} failed")
        if fault.kind == "write_failed":
            raise StoreError(f"injected store fault: {what} failed")
        cause = sqlite3.OperationalError(_OPERATIONAL[fault.kind])
        raise StoreError(f"injected store fault: {what} failed: {cause}") from cause

    def _fail_after(self, saga_id: str, fault: StoreFault | None, what: str) -> None:
        if fault is None or fault.kind != "ack_lost":
            return
        self._injector.journal.note(
            saga_id, f"store fault 'ack_lost': {what} committed, then StoreError"
        )
        raise StoreError(f"injected store fault: {what} committed but its acknowledgement was lost")

    def _crash_after(self, state: SagaState, event: Event) -> str | None:
        saga_id = state.saga_id
        injector = self._injector
        if isinstance(event, Recovered):
            if injector.take_crash(saga_id, "recovery", "", 0, False) is not None:
                return "crash right after a recovery was recorded"
            return None
        match event:
            case StepSucceeded() | StepFailed():
                compensating, verb = False, "the outcome of action"
            case CompensationSucceeded() | CompensationFailed():
                compensating, verb = True, "the outcome of compensation"
            case _:
                return None
        step = injector.step_name(state, event.step)
        if injector.take_crash(saga_id, "after_record", step, event.attempt, compensating) is None:
            return None
        return f"crash after {verb} {step} attempt {event.attempt} was recorded"

    # Reads: only counted, so the harness can tell when the runtime is idle.

    async def deliver(self, item: InboxItem) -> bool:
        async with self._call():
            return await self.inner.deliver(item)

    async def load(self, saga_id: str) -> StoredSaga:
        async with self._call():
            return await self.inner.load(saga_id)

    async def history(self, saga_id: str) -> Sequence[HistoryEntry]:
        async with self._call():
            return await self.inner.history(saga_id)

    async def inbox(self, saga_id: str) -> Sequence[InboxItem]:
        async with self._call():
            return await self.inner.inbox(saga_id)

    async def unfinished(self) -> Sequence[UnfinishedSaga]:
        async with self._call():
            return await self.inner.unfinished()

    async def runnable(self) -> Sequence[UnfinishedSaga]:
        async with self._call():
            return await self.inner.runnable()

    async def due(
        self, now: float, *, after: tuple[float, str] | None = None, limit: int = 500
    ) -> Sequence[DueSaga]:
        async with self._call():
            return await self.inner.due(now, after=after, limit=limit)

    async def next_wake_at(self, after: float | None = None) -> float | None:
        async with self._call():
            return await self.inner.next_wake_at(after)

    async def unreadable_wake_ups(self) -> Sequence[tuple[str, str]]:
        async with self._call():
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
        async with self._call():
            return await self.inner.list_sagas(
                saga_name=saga_name,
                status=status,
                waiting_for=waiting_for,
                after=after,
                limit=limit,
                version=version,
            )

    async def quarantine(self, saga_id: str, reason: str) -> None:
        async with self._call():
            await self.inner.quarantine(saga_id, reason)

    def _call(self) -> _Busy:
        return _Busy(self._injector)


class _Busy:
    """`async with`: wait if the runtime is crashing, and count the call in progress."""

    __slots__ = ("_injector",)

    def __init__(self, injector: StoreInjector) -> None:
        self._injector = injector

    async def __aenter__(self) -> None:
        await self._injector.alive()
        self._injector.store_calls += 1

    async def __aexit__(self, *exc: object) -> None:
        self._injector.store_calls -= 1
