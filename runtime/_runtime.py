"""`Runtime`: embeds Sagaloop in an async application.

async with Runtime("orders.db", sagas=[checkout]) as rt:
    handle = await rt.spawn(checkout, order, saga_id="order-42")
    output = await handle.result()
"""

from __future__ import annotations

import logging
import os
import random
import uuid
from collections.abc import Iterable
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any, Self

import anyio

from actors import RestartWithBackoff, Supervisor
from saga import (
    Clock,
    CompensationStatus,
    CorruptSagaError,
    FreshStart,
    InvalidTransitionError,
    Resumed,
    Saga,
    SagaActor,
    SagaActorDeps,
    SagaStarted,
    SagaState,
    SagaStatus,
    Store,
    StoredSaga,
    Suspended,
    SystemClock,
    Transition,
    decode_payload,
    encode_payload,
    initial_state,
    transition,
)

from ._errors import (
    DuplicateSagaError,
    RuntimeNotRunningError,
    SagaCompensated,
    SagaFailed,
    SagaSuspendedError,
    UnknownSagaError,
)
from ._handle import SagaHandle
from ._info import SagaInfo, saga_info
from ._sqlite_store import SqliteStore, Synchronous

logger = logging.getLogger("runtime")

Output = dict[str, Any]

DEFAULT_SUPERVISION = RestartWithBackoff(
    min_backoff=0.05, max_backoff=5.0, random_factor=0.2, max_restarts=5, within=60.0
)


class _Waiter:
    """Woken when a saga's actor stops; carries the final state when it finished."""

    __slots__ = ("done", "state")

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.state: SagaState | None = None


class Runtime:
    """The saga runtime, used as an async context manager.

    `database` is a SQLite path (or a `Store` object). Entering opens the
    store (running schema migrations) and resumes every unfinished saga
    from its last snapshot; leaving stops the actors (interrupted steps run
    again on the next start) and closes the store. Sagas stay durable
    across any exit, clean or not.

    Options: `clock` (wall time for due times; tests pass a fake),
    `synchronous` (SQLite's durability; FULL by default), `max_recoveries`
    (recoveries in a row without progress before a saga is suspended),
    `supervision` (how crashed saga actors are restarted before they are
    suspended), `rng` (jitter source).

    Raises `StoreLockedError` on entering if another runtime has the file,
    and `SchemaVersionError` if a newer Sagaloop wrote it.
    """

    def __init__(
        self,
        database: str | os.PathLike[str] | Store,
        *,
        sagas: Iterable[Saga],
        clock: Clock | None = None,
        synchronous: Synchronous = "FULL",
        busy_timeout: float = 5.0,
        max_recoveries: int = 5,
        supervision: RestartWithBackoff = DEFAULT_SUPERVISION,
        mailbox_size: int = 16,
        rng: random.Random | None = None,
    ) -> None:
        self._sagas: dict[str, Saga] = {}
        for saga in sagas:
            if not isinstance(saga, Saga):
                raise TypeError(f"sagas must be Saga definitions, got {saga!r}")
            if saga.name in self._sagas and self._sagas[saga.name] is not saga:
                raise ValueError(f"two different sagas are named {saga.name!r}")
            self._sagas[saga.name] = saga
        if max_recoveries < 0:
            raise ValueError("max_recoveries must be >= 0")
        if isinstance(database, str | os.PathLike):
            self._store: Store = SqliteStore(
                database, synchronous=synchronous, busy_timeout=busy_timeout
            )
        else:
            self._store = database
        self._clock = clock if clock is not None else SystemClock()
        self._max_recoveries = max_recoveries
        self._supervision = supervision
        self._mailbox_size = mailbox_size
        self._rng = rng if rng is not None else random.Random()
        self._supervisor: Supervisor | None = None
        self._stack: AsyncExitStack | None = None
        self._waiters: dict[str, _Waiter] = {}
        self._deps = SagaActorDeps(
            store=self._store,
            clock=self._clock,
            rng=self._rng,
            max_recoveries=max_recoveries,
            on_stopped=self._on_stopped,
        )

    @property
    def store(self) -> Store:
        """The store this runtime persists sagas in."""
        return self._store

    @property
    def live_actors(self) -> int:
        """Saga actors currently in memory."""
        return self._supervisor.live_actors if self._supervisor is not None else 0

    # -- lifecycle ---------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._stack is not None:
            raise RuntimeError("this Runtime is already running")
        stack = AsyncExitStack()
        try:
            enter = getattr(self._store, "__aenter__", None)
            if enter is not None:
                await stack.enter_async_context(self._store)  # type: ignore[arg-type]
            self._supervisor = await stack.enter_async_context(
                Supervisor(self._supervision, on_escalate=self._on_escalate, rng=self._rng)
            )
            self._stack = stack
            await self._resume_unfinished()
        except BaseException:
            self._stack = None
            self._supervisor = None
            await stack.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        stack, self._stack = self._stack, None
        try:
            if stack is not None:
                return await stack.__aexit__(exc_type, exc, tb)
            return None
        finally:
            self._supervisor = None
            for waiter in self._waiters.values():
                waiter.done.set()
            self._waiters.clear()

    def _running_supervisor(self) -> Supervisor:
        if self._supervisor is None or self._stack is None:
            raise RuntimeNotRunningError("use the Runtime inside `async with`")
        return self._supervisor

    async def _resume_unfinished(self) -> None:
        for saga in await self._store.unfinished():
            definition = self._sagas.get(saga.saga_name)
            if definition is None:
                logger.warning(
                    "saga %r is a %r saga, which this runtime was not given; left as it is",
                    saga.saga_id,
                    saga.saga_name,
                )
                continue
            await self._start_actor(definition, saga.saga_id, None)

    async def _start_actor(self, saga: Saga, saga_id: str, fresh: FreshStart | None) -> None:
        supervisor = self._running_supervisor()
        previous = supervisor.get(saga_id)
        if previous is not None:
            await previous.join()  # an actor that just finished this saga is still winding down
        pending = [fresh] if fresh is not None else []

        def build() -> SagaActor:
            # Only the first incarnation starts from the in-memory transition;
            # a restart reloads the durable snapshot.
            return SagaActor(saga, saga_id, self._deps, pending.pop() if pending else None)

        supervisor.spawn(
            build,
            name=saga_id,
            mailbox_size=self._mailbox_size,
            on_stop=lambda: self._wake_waiters(saga_id),
        )

    # -- public API --------------------------------------------------------

    def _definition(self, saga: Saga | str) -> Saga:
        name = saga.name if isinstance(saga, Saga) else saga
        definition = self._sagas.get(name)
        if definition is None or (isinstance(saga, Saga) and definition is not saga):
            raise UnknownSagaError(
                f"saga {name!r} is not one of this runtime's sagas "
                f"({', '.join(sorted(self._sagas)) or 'none'}); pass it in Runtime(sagas=[...])"
            )
        return definition

    async def spawn(
        self, saga: Saga | str, input: Any, *, saga_id: str | None = None
    ) -> SagaHandle[Output]:
        """Start a saga and return its handle once the start is durable.

        Exactly-once: spawning an existing `saga_id` with the same input
        returns that saga's handle (even after a restart) and starts
        nothing. Raises `DuplicateSagaError` if it exists with another
        input or saga, `UnknownSagaError` for a saga not given to this
        runtime, `PayloadError` for an input msgspec cannot serialize or
        that does not match the saga's `input_type`, and `ValueError` for
        an empty `saga_id`.
        """
        self._running_supervisor()
        definition = self._definition(saga)
        if saga_id is None:
            saga_id = uuid.uuid4().hex
        elif not isinstance(saga_id, str) or not saga_id.strip():
            raise ValueError(f"saga_id must be a non-empty string, got {saga_id!r}")
        data = encode_payload(input, f"input of saga {definition.name!r}")
        decode_payload(data, definition.input_type, f"input of saga {definition.name!r}")
        started = SagaStarted(at=self._clock.now())
        first = transition(definition, initial_state(definition, saga_id), started)
        stored = StoredSaga(saga_id, definition.name, data, first.state)
        existing = await self._store.create(stored, started)
        if existing is not None:
            if existing.saga_name != definition.name:
                raise DuplicateSagaError(saga_id, f"as a {existing.saga_name!r} saga")
            if existing.input != data:
                raise DuplicateSagaError(saga_id, "with a different input")
            return SagaHandle(self, saga_id)
        await self._start_actor(definition, saga_id, FreshStart(first, data))
        return SagaHandle(self, saga_id)

    def handle(self, saga_id: str) -> SagaHandle[Output]:
        """A handle on an existing saga (its `result` raises `SagaNotFound` if there is none)."""
        return SagaHandle(self, saga_id)

    async def status(self, saga_id: str) -> SagaInfo:
        """The saga's stored state and history.

        Raises `SagaNotFound` for an unknown id, `CorruptSagaError` for an
        undecodable snapshot, `UnknownSagaError` if this runtime was not
        given the saga's definition.
        """
        stored = await self._store.load(saga_id)
        history = await self._store.history(saga_id)
        return saga_info(self._definition(stored.saga_name), stored.state, history)

    async def resume(self, saga_id: str) -> None:
        """Resume a suspended saga where it stopped (an operator's call).

        Raises `SagaNotFound`, `SagaSuspendedError` if it is not suspended,
        `CorruptSagaError` if its snapshot cannot be decoded.
        """
        self._running_supervisor()
        stored = await self._store.load(saga_id)
        if stored.state.status is not SagaStatus.SUSPENDED:
            raise SagaSuspendedError(
                f"saga {saga_id!r} is {stored.state.status}, not suspended; nothing to resume"
            )
        definition = self._definition(stored.saga_name)
        event = Resumed(at=self._clock.now())
        resumed = transition(definition, stored.state, event)
        await self._store.save(resumed.state, event)
        await self._start_actor(definition, saga_id, FreshStart(resumed, stored.input))

    # -- outcomes ----------------------------------------------------------

    async def _on_stopped(self, saga_id: str, state: SagaState | None) -> None:
        # The actor is about to stop; waiters wake once it has (`_wake_waiters`).
        waiter = self._waiters.get(saga_id)
        if waiter is not None:
            waiter.state = state

    def _wake_waiters(self, saga_id: str) -> None:
        waiter = self._waiters.pop(saga_id, None)
        if waiter is not None:
            waiter.done.set()

    async def _on_escalate(self, saga_id: str, error: Exception) -> None:
        reason = f"its actor kept crashing; last error: {type(error).__name__}: {error}"
        try:
            stored = await self._store.load(saga_id)
            event = Suspended(at=self._clock.now(), reason=reason)
            suspended: Transition = transition(
                self._definition(stored.saga_name), stored.state, event
            )
            await self._store.save(suspended.state, event)
            logger.error("saga %r suspended: %s", saga_id, reason)
        except CorruptSagaError as exc:
            await self._store.quarantine(saga_id, str(exc))
        except InvalidTransitionError:
            pass  # it ended or was suspended meanwhile
        except Exception:
            logger.exception("could not suspend saga %r; it resumes at the next start", saga_id)
        finally:
            waiter = self._waiters.pop(saga_id, None)
            if waiter is not None:
                waiter.done.set()

    async def _wait_for_result(self, saga_id: str, timeout: float | None) -> Output:
        if timeout is not None:
            with anyio.fail_after(timeout):
                return await self._wait_for_result(saga_id, None)
        while True:
            if self._stack is None or self._supervisor is None:
                raise RuntimeNotRunningError("the runtime is not running")
            waiter = self._waiters.get(saga_id)
            if waiter is None:
                waiter = self._waiters[saga_id] = _Waiter()
            actor = self._supervisor.get(saga_id)
            if actor is None:
                # Not being driven here: the store says how it stands.
                stored = await self._store.load(saga_id)
                if stored.state.status.is_terminal:
                    return self._outcome(stored.state)
            await waiter.done.wait()
            if waiter.state is not None and waiter.state.status.is_terminal:
                return self._outcome(waiter.state)

    def _outcome(self, state: SagaState) -> Output:
        definition = self._sagas.get(state.saga_name)
        names = [s.name for s in definition.steps] if definition else None
        if names is None:
            raise UnknownSagaError(f"saga {state.saga_name!r} is not one of this runtime's sagas")
        if state.status is SagaStatus.COMPLETED:
            assert definition is not None
            return {
                step.name: decode_payload(
                    bytes(recorded.result), step.result_type, f"result of step {step.name!r}"
                )
                for step, recorded in zip(definition.steps, state.steps, strict=True)
            }
        cause_step = names[state.failed_step] if state.failed_step is not None else None
        if state.status is SagaStatus.COMPENSATED:
            raise SagaCompensated(state.saga_id, cause_step, state.failure)
        for index, step in enumerate(state.steps):
            if step.compensation is CompensationStatus.FAILED:
                raise SagaFailed(
                    state.saga_id, names[index], step.compensation_error, cause_step, state.failure
                )
        raise SagaFailed(state.saga_id, None, None, cause_step, state.failure)  # pragma: no cover
