"""`Runtime`: embeds Sagaloop in an async application.

async with Runtime("orders.db", sagas=[checkout]) as rt:
    handle = await rt.spawn(checkout, order, saga_id="order-42")
    output = await handle.result()
"""

from __future__ import annotations

import functools
import logging
import os
import random
import uuid
from collections.abc import Iterable
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from datetime import timedelta
from types import TracebackType
from typing import Any, Self, TypeVar, overload

import anyio

from actors import RestartWithBackoff
from saga import (
    Clock,
    CompensationStatus,
    Saga,
    SagaEndedError,
    SagaNotFound,
    SagaStatus,
    StoreError,
    SystemClock,
    engine,
)
from saga.engine import check_size, decode_payload, encode_payload
from saga.store import InboxItem, SagaRow, SagaState, StaleStateError, Store

from ._errors import (
    CodecError,
    DuplicateSagaError,
    RuntimeNotRunningError,
    SagaCompensated,
    SagaFailed,
    SagaNotSuspendedError,
    SagaPrunedError,
    SagaSuspendedError,
    UnknownSignalError,
    UnregisteredSagaError,
)
from ._handle import SagaHandle
from ._host import SagaHost
from ._info import (
    STATUS_VALUES,
    SagaInfo,
    SagaPage,
    SagaSummary,
    row_problem,
    saga_info,
    sealed_info,
)
from ._pruner import DEFAULT_TOMBSTONE_WINDOW, Pruner
from ._registry import Registry, stand_in
from ._retention import DEFAULT_STATUSES, check_statuses
from .codecs import PayloadCodec
from .sqlite import SqliteStore, Synchronous

logger = logging.getLogger("runtime")

Output = Any
"""An ended saga's output: a step list's maps each step's name to its result."""
OutputT = TypeVar("OutputT")


_POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def _postgres_store(dsn: str, codec: PayloadCodec | None) -> Store:
    try:
        from .postgres import PostgresStore
    except ImportError as exc:
        raise ImportError(
            "a postgresql:// database needs asyncpg: pip install 'sagaloop[postgres]'"
        ) from exc
    return PostgresStore(dsn, codec=codec)


_MAX_TEXT = 1000


def _give_codec(store: object, codec: PayloadCodec) -> None:
    """`Runtime(store, codec=...)`: the store (or the one it wraps) seals with it."""
    target = store
    while not hasattr(target, "codec") and hasattr(target, "inner"):
        target = target.inner
    if not hasattr(target, "codec"):
        raise TypeError(f"{type(store).__name__} takes no payload codec")
    target.codec = codec


def _seconds(value: timedelta | float, what: str) -> float:
    """A duration given as a `timedelta` or seconds; `ValueError` unless finite and >= 0."""
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not 0 <= seconds < 1e12:
        raise ValueError(f"{what} must be a timedelta or seconds >= 0, got {value!r}")
    return float(seconds)


def _check_lookup(saga_id: str) -> None:
    """No saga can have an id that no store can hold (a lone surrogate): not found."""
    try:
        saga_id.encode()
    except UnicodeEncodeError:
        raise SagaNotFound(saga_id) from None


def _check_text(value: str, what: str) -> None:
    """Ids, keys and names are stored and indexed as text by every store: keep them storable."""
    if "\x00" in value:
        raise ValueError(f"{what} must not contain NUL characters")
    try:
        size = len(value.encode())
    except UnicodeEncodeError:  # a lone surrogate, as from a surrogateescape file name
        raise ValueError(f"{what} must be valid Unicode text, got {value!r}") from None
    if size > _MAX_TEXT:
        raise ValueError(f"{what} must be at most {_MAX_TEXT} bytes of UTF-8")


DEFAULT_MAX_PAYLOAD_BYTES = 2 * 1024 * 1024
"""A user value's JSON limit by default: 2 MiB, as Temporal's."""

DEFAULT_SUPERVISION = RestartWithBackoff(
    min_backoff=0.05, max_backoff=5.0, random_factor=0.2, max_restarts=5, within=60.0
)


class Runtime:
    """The saga runtime, used as an async context manager.

    `database` is a SQLite path (or a `Store` object). Entering opens the
    store (running schema migrations) and resumes every unfinished saga
    from its last snapshot; leaving stops the actors (interrupted steps run
    again on the next start) and closes the store. Sagas stay durable
    across any exit, clean or not.

    Options: `clock` (wall time for due times; tests pass a
    `VirtualClock`), `keep_warm` (waits shorter than this keep their actor
    in memory; longer ones passivate it: no actor, no task, until a timer
    or a signal brings it back),
    `synchronous` (SQLite's durability; FULL by default), `max_recoveries`
    (recoveries in a row without progress before a saga is suspended),
    `supervision` (how crashed saga actors are restarted before they are
    suspended), `rng` (jitter source), `stop_timeout` (seconds leaving waits for
    the running steps to end once cancelled; a step that ignores its cancellation
    longer is logged and left running, and runs again on the next start),
    `max_payload_bytes` (the JSON size of an input, signal payload or step
    result, 2 MiB by default; None: no limit), `retention` (completed and
    compensated sagas are deleted once they ended this long ago, by a
    background task every `retention_interval`; None: kept forever; see
    `prune`), `tombstone_window` (how long a pruned id still refuses a new
    start: 30 days by default), `codec` (a `runtime.codecs.PayloadCodec` that
    every user value at rest goes through: compression, encryption).

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
        keep_warm: float = 1.0,
        rng: random.Random | None = None,
        stop_timeout: float = 10.0,
        max_payload_bytes: int | None = DEFAULT_MAX_PAYLOAD_BYTES,
        retention: timedelta | float | None = None,
        retention_interval: timedelta | float = 60.0,
        tombstone_window: timedelta | float = DEFAULT_TOMBSTONE_WINDOW,
        codec: PayloadCodec | None = None,
    ) -> None:
        self._sagas = Registry(sagas)
        self._retention = None if retention is None else _seconds(retention, "retention")
        self._retention_interval = _seconds(retention_interval, "retention_interval")
        if self._retention_interval <= 0:
            raise ValueError("retention_interval must be > 0")
        if max_recoveries < 0:
            raise ValueError("max_recoveries must be >= 0")
        if codec is not None and not isinstance(codec, PayloadCodec):
            raise TypeError(f"codec must have encode() and decode(), got {codec!r}")
        if isinstance(database, str) and database.startswith(_POSTGRES_SCHEMES):
            self._store: Store = _postgres_store(database, codec)
        elif isinstance(database, str | os.PathLike):
            self._store = SqliteStore(
                database, synchronous=synchronous, busy_timeout=busy_timeout, codec=codec
            )
        else:
            self._store = database
            if codec is not None:
                _give_codec(database, codec)
        if keep_warm < 0:
            raise ValueError("keep_warm must be >= 0")
        if not stop_timeout >= 0:  # NaN too
            raise ValueError("stop_timeout must be >= 0")
        if max_payload_bytes is not None and (
            isinstance(max_payload_bytes, bool)
            or not isinstance(max_payload_bytes, int)
            or max_payload_bytes < 1
        ):
            raise ValueError("max_payload_bytes must be a positive int or None")
        self._max_payload_bytes = max_payload_bytes
        self._clock = clock if clock is not None else SystemClock()
        self._rng = rng if rng is not None else random.Random()
        self._stack: AsyncExitStack | None = None
        self._host = SagaHost(
            self._store,
            self._sagas,
            clock=self._clock,
            rng=self._rng,
            max_recoveries=max_recoveries,
            supervision=supervision,
            mailbox_size=mailbox_size,
            keep_warm=keep_warm,
            stop_timeout=stop_timeout,
            max_payload_bytes=max_payload_bytes,
        )
        self._pruner = Pruner(
            self._store,
            self._clock,
            tombstone_window=_seconds(tombstone_window, "tombstone_window"),
        )

    @property
    def store(self) -> Store:
        """The store this runtime persists sagas in."""
        return self._store

    @property
    def live_actors(self) -> int:
        """Saga actors currently in memory (a saga that only waits has none)."""
        return self._host.live_actors

    # -- lifecycle ---------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._stack is not None:
            raise RuntimeError("this Runtime is already running")
        stack = AsyncExitStack()
        try:
            if isinstance(self._store, AbstractAsyncContextManager):
                await stack.enter_async_context(self._store)
            task_group = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(task_group.cancel_scope.cancel)  # the timer service runs forever
            self._host.bind(task_group)
            await stack.enter_async_context(self._host.supervisor)
            self._stack = stack
            for saga in await self._store.runnable():
                await self._host.activate(saga.saga_id, saga.saga_name, claimed=True)
            task_group.start_soon(self._host.timers.run, name="sagaloop-timers")
            if self._host.shared is not None:
                task_group.start_soon(self._host.claim_loop, name="sagaloop-claims")
            if self._retention is not None:
                task_group.start_soon(
                    self._pruner.run,
                    self._retention,
                    self._retention_interval,
                    name="sagaloop-retention",
                )
        except BaseException:
            self._stack = None
            self._host.close()
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
        self._host.stopping = True  # no actor starts from here on; the running ones stop
        try:
            if stack is not None:
                return await stack.__aexit__(exc_type, exc, tb)
            return None
        except BaseExceptionGroup as group:
            # A step's Ctrl-C or sys.exit stops the runtime (the step runs again on the
            # next start): it leaves as itself, for `except KeyboardInterrupt` to catch.
            stop = group.subgroup((KeyboardInterrupt, SystemExit))
            if stop is None:
                raise
            raise _first_leaf(stop) from group
        finally:
            self._host.close()

    def _check_running(self) -> None:
        if self._stack is None:
            raise RuntimeNotRunningError("use the Runtime inside `async with`")

    # -- public API --------------------------------------------------------

    def _definition(self, state: SagaState) -> Saga:
        """The definition an instance runs on; `UnregisteredSagaError` if not given here."""
        if state.saga_name not in self._sagas:
            raise UnregisteredSagaError(
                f"saga {state.saga_name!r} is not one of this runtime's sagas "
                f"({self._sagas.describe()}); pass it in Runtime(sagas=[...])"
            )
        return self._sagas.of_instance(state.saga_name, state.definition_version)

    def _definition_or_stand_in(self, state: SagaState) -> Saga:
        """As `_definition`, but a version not given here is read through a stand-in."""
        if state.saga_name in self._sagas:
            found = self._sagas.get(state.saga_name, state.definition_version)
            return found if found is not None else stand_in(state)
        return self._definition(state)

    @overload
    async def spawn(
        self, saga: Saga[Any, OutputT], input: Any, *, saga_id: str | None = None
    ) -> SagaHandle[OutputT]: ...

    @overload
    async def spawn(
        self, saga: str, input: Any, *, saga_id: str | None = None
    ) -> SagaHandle[Any]: ...

    async def spawn(
        self, saga: Saga[Any, Any] | str, input: Any, *, saga_id: str | None = None
    ) -> SagaHandle[Any]:
        """Start a saga and return its handle once the start is durable.

        Exactly-once: spawning an existing `saga_id` with the same input
        returns that saga's handle (even after a restart) and starts
        nothing; so does an id retention pruned, within its tombstone window
        (the handle's `result` raises `SagaPrunedError`). Raises
        `DuplicateSagaError` if it exists (or existed) with another input or saga,
        `UnregisteredSagaError` for a saga not given to this
        runtime, `PayloadError` for an input msgspec cannot serialize or
        that does not match the saga's `input_type`, and `ValueError` for
        an empty `saga_id`, one with a NUL character or over 1,000 bytes.
        """
        self._check_running()
        definition = self._sagas.resolve(saga)
        if saga_id is None:
            saga_id = uuid.uuid4().hex
        elif not isinstance(saga_id, str) or not saga_id.strip():
            raise ValueError(f"saga_id must be a non-empty string, got {saga_id!r}")
        _check_text(saga_id, "saga_id")
        data = encode_payload(input, "input of saga", definition.name, decoded_next=True)
        check_size(data, self._max_payload_bytes, "input of saga", definition.name)
        decoded = decode_payload(data, definition.input_type, "input of saga", definition.name)
        begun = self._host.begin(definition, saga_id, data, decoded)
        try:
            existing = await self._store.create(begun.stored, begun.event)
        except SagaPrunedError:
            return SagaHandle(self, saga_id)  # it ran and ended long ago: start nothing
        if existing is not None:
            if existing.saga_name != definition.name:
                raise DuplicateSagaError(saga_id, f"as a {existing.saga_name!r} saga")
            if existing.input != data:
                raise DuplicateSagaError(saga_id, "with a different input")
            if existing.state.status.is_live and not self._host.is_live(saga_id):
                # An earlier spawn's creation committed but its caller saw an error
                # (a lost acknowledgement): this spawn is the one that starts it.
                await self._host.activate(saga_id, existing.saga_name)
            return SagaHandle(self, saga_id)
        shared = self._host.shared
        if shared is None or shared.run_spawned_here:
            await self._host.start(definition, saga_id, begun.fresh)
        # Else it is durable and nobody's: whichever runtime claims it first runs it.
        return SagaHandle(self, saga_id)

    def handle(self, saga_id: str) -> SagaHandle[Any]:
        """A handle on an existing saga (its `result` raises `SagaNotFound` if there is none)."""
        return SagaHandle(self, saga_id)

    async def status(self, saga_id: str) -> SagaInfo:
        """The saga's stored state and history.

        Raises `SagaNotFound` for an unknown id, `CorruptSagaError` for an
        undecodable snapshot (`CodecError` for an altered sealed one; one sealed
        under a key or codec this runtime lacks reads as its clear columns,
        `encrypted=True`, input `<encrypted>`),
        `UnregisteredSagaError` if this runtime was not given the saga's definition.
        A version of it not given here is read through a stand-in: statuses, errors
        and times as stored, a step list's steps named `step-1`, `step-2`... (their
        names are its version's).
        """
        self._check_running()
        _check_lookup(saga_id)
        try:
            stored = await self._store.load(saga_id)
            history = await self._store.history(saga_id)
        except CodecError as exc:
            sealed = await self._sealed_status(saga_id) if exc.missing_key else None
            if sealed is None:
                raise
            return sealed
        definition = self._definition_or_stand_in(stored.state)
        if stored.state.partial:  # a code saga: its calls come back from its history
            # It may have moved on between the two reads: the history up to the snapshot.
            history = [entry for entry in history if entry.seq <= stored.state.seq]
        complete = engine.complete(definition, stored, history)
        return saga_info(definition, complete, history, stored.input)

    async def _sealed_status(self, saga_id: str) -> SagaInfo | None:
        """The status of a saga whose values the codec cannot open, from its clear columns
        (None: the store cannot say, or the row is not one)."""
        read_row = getattr(self._store, "row", None)
        row = await read_row(saga_id) if read_row is not None else None
        if row is None or row_problem(row) is not None:
            return None
        # Its own version labels it when given; any of its name will do (it shows no steps).
        definition = self._sagas.get(row.saga_name, row.version) or self._sagas.resolve(
            row.saga_name
        )
        return sealed_info(definition, row)

    async def prune(
        self,
        *,
        older_than: timedelta | float,
        statuses: Iterable[SagaStatus | str] = DEFAULT_STATUSES,
        dry_run: bool = False,
    ) -> int:
        """Delete the sagas of `statuses` (completed and compensated by default; failed
        if asked) that ended `older_than` ago or earlier, with their history and inbox;
        return how many (`dry_run`: how many would go, deleting nothing).

        A child goes only after its parent (which might still ask it to roll back); each
        pruned saga leaves a tombstone (see `tombstone_window`). Raises `ValueError` for
        a status that has not ended (a suspended saga may hold effects to undo).
        """
        self._check_running()
        values = check_statuses(statuses)
        return await self._pruner.prune(_seconds(older_than, "older_than"), values, dry_run=dry_run)

    async def resume(self, saga_id: str) -> None:
        """Resume a suspended saga where it stopped (an operator's call).

        Raises `SagaNotFound`, `SagaNotSuspendedError` if it is not suspended,
        `CorruptSagaError` if its snapshot cannot be decoded.
        """
        _check_lookup(saga_id)
        self._check_running()
        shared = self._host.shared
        if shared is not None:
            await shared.claim(saga_id)  # a suspended saga is anyone's to resume
        try:
            stored = await self._store.load(saga_id)
            if stored.state.status is not SagaStatus.SUSPENDED:
                raise SagaNotSuspendedError(
                    f"saga {saga_id!r} is {stored.state.status}, not suspended; nothing to resume"
                )
            definition = self._definition(stored.state)
            stored = await engine.restore(self._store, definition, saga_id)
            try:
                fresh = await engine.resume(self._store, definition, stored, self._clock.now())
            except StaleStateError as exc:
                raise SagaNotSuspendedError(
                    f"saga {saga_id!r} was resumed by another caller meanwhile"
                ) from exc
            except StoreError:
                # Did it commit anyway (a lost acknowledgement)? Then carry on.
                now = await self._store.load(saga_id)
                if (
                    now.state.seq != stored.state.seq + 1
                    or now.state.status is SagaStatus.SUSPENDED
                ):
                    raise
                fresh = None  # the actor reloads it
            await self._host.start(definition, saga_id, fresh)
        except BaseException:
            if shared is not None and not self._host.is_live(saga_id):
                shared.release(saga_id)  # claimed above, but this runtime does not drive it
            raise

    async def signal(
        self,
        saga_id: str,
        name: str,
        payload: Any = None,
        *,
        idempotency_key: str | None = None,
    ) -> bool:
        """Send signal `name` to a saga; return once it is durable.

        It is delivered exactly once, in order, to the step that waits for
        it (now or later: early signals are kept). A second signal with the
        same `idempotency_key` is dropped; returns False for it when it is
        noticed at once. Raises `SagaNotFound`, `SagaEndedError` if the saga
        has ended, `UnknownSignalError` if no step of the saga waits for
        `name`, `PayloadError` if `payload` does not match the step's
        `payload_type`, `UnregisteredSagaError` if this runtime was not given
        the saga's version (it could not check the signal: send it through a
        runtime that has it), `ValueError` for a name or key with a NUL
        character or over 1,000 bytes.
        """
        _check_lookup(saga_id)
        self._check_running()
        stored = await self._store.load(saga_id)
        if stored.state.status.is_terminal and stored.saga_name in self._sagas:
            raise SagaEndedError(saga_id, stored.state.status)
        # Its signals and their payload types are its version's: refused unless known here.
        definition = self._definition(stored.state)
        if definition.signals_declared and name not in definition.signals:
            raise UnknownSignalError(
                f"no step of saga {definition.name!r} waits for signal {name!r} "
                f"(it waits for: {', '.join(sorted(definition.signals)) or 'none'})"
            )
        _check_text(name, "signal name")
        if idempotency_key is not None:
            _check_text(idempotency_key, "idempotency_key")
        what = f"payload of signal {name!r}"
        data = encode_payload(payload, what)
        check_size(data, self._max_payload_bytes, what)
        if name in definition.signals:
            decode_payload(data, definition.signals[name], what)
        item = InboxItem(0, saga_id, "signal", name, data, idempotency_key, self._clock.now())
        accepted = await self._store.deliver(item)
        await self._host.nudge(saga_id, stored.saga_name, cancel=False)
        return accepted

    async def cancel(self, saga_id: str, reason: str = "cancelled") -> None:
        """Cancel a saga: it stops its forward path and compensates what may have taken effect.

        Durable on return. A running forward step is interrupted (it counts
        as ambiguous); compensations are never interrupted. A saga already
        compensating carries on; a suspended one is cancelled when resumed.
        Raises `SagaNotFound`, `SagaEndedError` if it has ended, and
        `ValueError` for a reason with a NUL character or over 1,000 bytes.
        """
        _check_lookup(saga_id)
        self._check_running()
        _check_text(str(reason), "reason")
        stored = await self._store.load(saga_id)
        if stored.state.status.is_terminal:
            raise SagaEndedError(saga_id, stored.state.status)
        item = InboxItem(0, saga_id, "cancel", str(reason), b"null", None, self._clock.now())
        await self._store.deliver(item)
        await self._host.nudge(saga_id, stored.saga_name, cancel=True)

    async def list(
        self,
        *,
        saga_name: str | None = None,
        status: SagaStatus | str | None = None,
        waiting_for: str | None = None,
        after: str | None = None,
        limit: int = 100,
        version: int | None = None,
    ) -> SagaPage:
        """Sagas by id, filtered by saga name, status, the signal they wait for and the
        definition version they run on.

        Pass the page's `next_after` as `after` for the next page (None: the end).
        Raises `ValueError` for an unknown status, a `limit` outside 1..1000, or a
        filter that is not valid Unicode text (a lone surrogate).
        """
        self._check_running()
        for what, text in (
            ("saga_name", saga_name),
            ("waiting_for", waiting_for),
            ("after", after),
        ):
            if text is not None:
                _check_text(text, what)
        if status is not None and status not in STATUS_VALUES:
            raise ValueError(f"unknown status {status!r}")
        if not 1 <= limit <= 1000:
            raise ValueError("limit must be between 1 and 1000")
        if version is not None and (
            isinstance(version, bool) or not isinstance(version, int) or not 1 <= version < 2**31
        ):
            raise ValueError(f"version must be an int >= 1, got {version!r}")
        rows = list(
            await self._store.list_sagas(
                saga_name=saga_name,
                status=None if status is None else str(status),
                waiting_for=waiting_for,
                after=after,
                limit=limit + 1,  # one more tells whether another page follows
                version=version,
            )
        )
        more = len(rows) > limit
        del rows[limit:]
        items = tuple([await self._summary(row) for row in rows])
        return SagaPage(items, items[-1].saga_id if more else None)

    async def _summary(self, row: SagaRow) -> SagaSummary:
        """`row` as listed; a row edited by hand into nonsense is quarantined, so that
        it is listed (suspended, with its reason) and harms no other row of the page."""
        problem = row_problem(row)
        if problem is None:
            return SagaSummary(
                saga_id=row.saga_id,
                saga_name=row.saga_name,
                status=SagaStatus(row.status),
                waiting_for=row.waiting_for,
                wake_at=row.wake_at,
                updated_at=row.updated_at,
                version=row.version,
            )
        await self._host.quarantine(row.saga_id, problem)
        updated_at = row.updated_at if isinstance(row.updated_at, float | int) else 0.0
        return SagaSummary(
            saga_id=row.saga_id,
            saga_name=str(row.saga_name),
            status=SagaStatus.SUSPENDED,
            waiting_for=None,
            wake_at=None,
            updated_at=float(updated_at),
            version=row.version if type(row.version) is int and row.version >= 1 else 1,
        )

    # -- outcomes ----------------------------------------------------------

    async def result(self, saga_id: str, *, timeout: float | None = None) -> Any:
        """Wait for saga `saga_id` to end and return its output (see `SagaHandle.result`).

        Raises `SagaCompensated`, `SagaFailed`, `SagaSuspendedError` if it is (or
        becomes) suspended, `SagaNotFound`, `TimeoutError` after `timeout` seconds.
        """
        _check_lookup(saga_id)
        if timeout is not None:
            with anyio.fail_after(timeout):
                return await self.result(saga_id)
        # Another runtime may drive it, and tells no one here when it ends: look again
        # soon, then less and less often, up to the sweep's poll interval.
        remote_delay = 0.05
        while True:
            self._check_running()
            waiter = self._host.arm_waiter(saga_id)
            try:
                if not self._host.is_live(saga_id):
                    # Not in memory: the store says how it stands.
                    stored = await self._store.load(saga_id)
                    if stored.state.status.is_terminal:
                        return await self._outcome(stored.state)
                    if stored.state.status is SagaStatus.SUSPENDED:
                        raise SagaSuspendedError(saga_id, stored.state.suspended_reason)
                if self._host.shared is not None and not self._host.is_live(saga_id):
                    final = None
                    remote_delay = min(remote_delay * 2, self._host.shared.poll_interval)
                    with anyio.move_on_after(remote_delay):
                        final = await self._host.wait(waiter)
                else:
                    final = await self._host.wait(waiter)
            finally:
                self._host.disarm_waiter(saga_id, waiter)
            if final is not None and final.status.is_terminal:
                return await self._outcome(final)
            if final is not None and final.status is SagaStatus.SUSPENDED:
                raise SagaSuspendedError(saga_id, final.suspended_reason)

    async def _outcome(self, state: SagaState) -> Output:
        # A step list's output is keyed by its steps' names, which only its version knows.
        is_list = not (state.partial or state.is_code)
        definition = self._definition(state) if is_list else self._definition_or_stand_in(state)
        if state.partial and state.status is not SagaStatus.COMPLETED:
            # A code saga's stored form: its failed calls are in its history.
            state = (await engine.restore(self._store, definition, state.saga_id)).state
        output: Output = saga_outcome(definition, state)
        return output


def saga_outcome(definition: Saga[Any, Any], state: SagaState) -> Any:
    """The output of an ended saga, or the `SagaCompensated` / `SagaFailed` it ended with.

    `state` must be complete, except that a completed code saga's stored form will do.
    """
    if state.status is SagaStatus.COMPLETED:
        if definition.body is not None:
            return decode_payload(
                bytes(state.output),
                definition.output_type,
                "output of saga",
                definition.name,
            )
        return {
            step.name: decode_payload(
                bytes(recorded.result), step.result_type, "result of step", step.name
            )
            for step, recorded in zip(definition.steps, state.steps, strict=True)
        }
    label = functools.partial(engine.label, definition, state)
    cause_step = label(state.failed_step) if state.failed_step is not None else None
    if state.status is SagaStatus.COMPENSATED:
        raise SagaCompensated(state.saga_id, cause_step, state.failure)
    for index, step in enumerate(state.steps):
        if step.compensation is CompensationStatus.FAILED:
            raise SagaFailed(
                state.saga_id, label(index), step.compensation_error, cause_step, state.failure
            )
    raise SagaFailed(state.saga_id, None, None, cause_step, state.failure)


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first
