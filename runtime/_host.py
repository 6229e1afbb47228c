"""`SagaHost`: keeps saga actors in memory only while they have work.

It starts actors (spawned, resumed, woken by a timer or a signal), passes
nudges to live ones, wakes the callers of `SagaHandle.result`, and parks a
saga whose actor keeps crashing. The `Runtime` is its public face.
"""

from __future__ import annotations

import contextlib
import logging
import random
from typing import Any

import anyio
import anyio.lowlevel
from anyio.abc import TaskGroup

from actors import (
    ActorStoppedError,
    MailboxFullError,
    RestartWithBackoff,
    Supervisor,
    SupervisorNotRunningError,
)
from saga import (
    Clock,
    CorruptSagaError,
    DefinitionError,
    PayloadError,
    Saga,
    SagaNotFound,
    SagaStatus,
    engine,
)
from saga.engine import (
    FreshStart,
    InvalidTransitionError,
    Nudge,
    Nudges,
    SagaActor,
    SagaActorDeps,
    WakeUp,
    check_size,
    decode_payload,
)
from saga.store import (
    InboxItem,
    LeaseLostError,
    Notice,
    ParentRef,
    SagaState,
    SharedStore,
    StaleStateError,
    Store,
    StoredSaga,
)

from ._errors import RuntimeNotRunningError
from ._latch import Latch
from ._registry import Registry, not_registered, stand_in
from ._timers import TimerService

logger = logging.getLogger("runtime")

_SUSPEND_ATTEMPTS = 5
"""Tries at suspending a saga whose own actor keeps writing it."""

_CLAIM_PAGE = 50
"""Orphans claimed per statement: small pages spread a burst among the runtimes sweeping."""


class _Waiter(Latch):
    """Set when a saga's actor stops (every `result()` makes one); carries the final
    state when it finished."""

    __slots__ = ("state", "users")

    def __init__(self) -> None:
        super().__init__()
        self.state: SagaState | None = None
        self.users = 0


class SagaHost:
    """The runtime's hosting of saga actors: it starts an actor for each saga with work,
    lets it go when the saga passivates or ends, wakes it for timers, signals and child
    reports, and turns an actor that keeps crashing into a suspended saga (`_on_escalate`).

    One per `Runtime`; the `Runtime` is its only user. Every state change goes through
    `saga.engine` (the driver); the host only decides which actor runs when.
    """

    def __init__(
        self,
        store: Store,
        sagas: Registry,
        *,
        clock: Clock,
        rng: random.Random,
        max_recoveries: int,
        supervision: RestartWithBackoff,
        mailbox_size: int,
        keep_warm: float,
        stop_timeout: float,
        max_payload_bytes: int | None = None,
    ) -> None:
        self._store = store
        self.shared: SharedStore | None = store if isinstance(store, SharedStore) else None
        if self.shared is not None:
            self.shared.saga_names = sagas.names
            self.shared.saga_versions = frozenset((s.name, s.version) for s in sagas)
        self._sagas = sagas
        self._clock = clock
        self._mailbox_size = mailbox_size
        self.supervisor = Supervisor(
            supervision, on_escalate=self._on_escalate, rng=rng, stop_timeout=stop_timeout
        )
        self.timers = TimerService(clock, store, self.wake, self.quarantine)
        self._nudges: dict[str, Nudges] = {}
        self._waiters: dict[str, _Waiter] = {}
        self._retry_delays: dict[str, float] = {}
        self._task_group: TaskGroup | None = None
        self.claims_wanted = anyio.Event()
        self.stopping = False
        """Set as the runtime begins to stop: no actor starts after that."""
        self._deps = SagaActorDeps(
            store=store,
            clock=clock,
            rng=rng,
            max_recoveries=max_recoveries,
            on_stopped=self._on_stopped,
            schedule_wakeup=self.timers.schedule,
            note_passivated=self.timers.note_store_wake,
            keep_warm=keep_warm,
            start_child=self._start_child,
            compensate_child=self._compensate_child,
            max_payload_bytes=max_payload_bytes,
            definition_of=sagas.get,
            unregistered=self._unregistered,
        )
        self._rng = rng

    def begin(
        self,
        saga: Saga[Any, Any],
        saga_id: str,
        data: bytes,
        decoded: Any,
        parent: ParentRef | None = None,
    ) -> engine.Begun:
        """A new saga's first transition, computed (a code saga's body runs to its first call)."""
        return engine.begin(
            saga,
            saga_id,
            data,
            decoded,
            self._clock.now(),
            now=self._clock.now,
            rng=self._rng,
            parent=parent,
        )

    async def _start_child(
        self, saga: Saga[Any, Any], child_id: str, data: bytes, parent: ParentRef
    ) -> None:
        """A parent's `ctx.child`: create the child exactly once, and start it."""
        if self._sagas.get(saga.name, saga.version) is not saga:
            raise DefinitionError(
                f"child saga {saga.name!r} is not one of this runtime's sagas: "
                "pass it in Runtime(sagas=[...]) too"
            )
        check_size(data, self._deps.max_payload_bytes, "input of saga", saga.name)
        decoded = decode_payload(data, saga.input_type, "input of saga", saga.name)
        begun = self.begin(saga, child_id, data, decoded, parent)
        existing = await self._store.create(begun.stored, begun.event)
        if existing is None:
            if self.shared is None or self.shared.run_spawned_here:
                await self.start(saga, child_id, begun.fresh)
            return
        if existing.saga_name != saga.name or existing.input != data:
            raise PayloadError(
                f"saga {child_id!r} exists already as another saga or with another input; "
                "give the child call its own saga_id"
            )
        if existing.state.status.is_live and not self.is_live(child_id):
            await self.activate(child_id, existing.saga_name)  # a create whose reply was lost

    async def _compensate_child(self, child_id: str, reason: str) -> bool:
        """A parent compensates its child: ask the child to roll back as a unit."""
        item = InboxItem(
            0, child_id, "compensate", reason, b"null", "compensate", self._clock.now()
        )
        try:
            await self._store.deliver(item)
        except SagaNotFound:
            return False
        await self.nudge(child_id, None, cancel=True)
        return True

    def bind(self, task_group: TaskGroup) -> None:
        self._task_group = task_group
        self.stopping = False
        if self.shared is not None:
            self.shared.on_notice(self._on_notice)

    def close(self) -> None:
        for waiter in self._waiters.values():
            waiter.set()
        self._waiters.clear()
        self._task_group = None

    @property
    def live_actors(self) -> int:
        return self.supervisor.live_actors

    def is_live(self, saga_id: str) -> bool:
        return self.supervisor.get(saga_id) is not None

    async def start(
        self, saga: Saga, saga_id: str, fresh: FreshStart | None, *, wake: bool = False
    ) -> None:
        """Start an actor for `saga_id` (after the previous one, if any, has gone)."""
        # An actor that just passivated or ended is winding down; another path may
        # have started a new one meanwhile: wait for that one too.
        while (previous := self.supervisor.get(saga_id)) is not None:
            await previous.join()
        if self.stopping:
            raise RuntimeNotRunningError(
                f"the runtime is stopping; saga {saga_id!r} is durable and runs at the next start"
            )
        pending = [fresh] if fresh is not None else []
        nudges = self._nudges[saga_id] = Nudges()

        def build() -> SagaActor:
            # Only the first incarnation starts from the in-memory transition;
            # a restart reloads the durable snapshot.
            first = pending.pop() if pending else None
            return SagaActor(saga, saga_id, self._deps, first, nudges, wake=wake)

        try:
            self.supervisor.spawn(
                build,
                name=saga_id,
                mailbox_size=self._mailbox_size,
                on_stop=lambda error: self._actor_gone(saga_id, nudges, error),
            )
        except SupervisorNotRunningError as exc:
            del self._nudges[saga_id]
            raise RuntimeNotRunningError(
                f"the runtime stopped; saga {saga_id!r} is durable and runs at the next start"
            ) from exc

    async def activate(
        self, saga_id: str, saga_name: str | None, *, wake: bool = False, claimed: bool = False
    ) -> None:
        """Bring a passivated saga back (or tell its live actor): a timer or a signal.

        On a shared store the saga is claimed first (unless `claimed`); if
        another live runtime owns it, that runtime was notified and this
        one does nothing.
        """
        if self.stopping:
            return  # durable: the next start (or, on a shared store, another runtime) runs it
        ref = self.supervisor.get(saga_id)
        nudges = self._nudges.get(saga_id)
        if ref is not None and nudges is not None:
            if not wake:
                nudges.notify()
            # A full mailbox settles and re-arms its timer; a stopping one is re-activated.
            with contextlib.suppress(MailboxFullError, ActorStoppedError):
                ref.tell_nowait(WakeUp() if wake else Nudge())
            return
        if self.shared is not None and not claimed and not await self.shared.claim(saga_id):
            return
        try:
            if saga_name is None:
                saga_name = (await self._store.load(saga_id)).saga_name
            if self.is_live(saga_id) and saga_id in self._nudges:
                # Another path (a sweep, a timer) started its actor while this one awaited.
                await self.activate(saga_id, saga_name, wake=wake, claimed=True)
                return
            saga = self._sagas.newest(saga_name)  # its actor picks the version it runs on
            if saga is None:
                logger.warning("saga %r is a %r saga, unknown to this runtime", saga_id, saga_name)
                if self.shared is not None:
                    self.shared.release(saga_id)  # a runtime that knows it may take it
                return
            await self.start(saga, saga_id, None, wake=wake)
        except BaseException as exc:
            if self.shared is not None and not self.is_live(saga_id):
                self.shared.release(saga_id)
            if self.stopping and isinstance(exc, RuntimeNotRunningError):
                return
            raise

    def _on_notice(self, notice: Notice) -> None:
        """Another runtime wrote for us through the shared store (called by the store)."""
        if self._task_group is None:
            return
        if notice.saga_id is None:
            self.claims_wanted.set()
        else:
            self._task_group.start_soon(self._nudge_quietly, notice.saga_id, notice.cancel)

    async def _nudge_quietly(self, saga_id: str, cancel: bool) -> None:
        try:
            await self.nudge(saga_id, None, cancel=cancel)
        except Exception:
            # The sweep for orphans brings it back if this runtime could not.
            logger.exception("could not act on a notice for saga %r", saga_id)

    async def claim_loop(self) -> None:
        """On a shared store: take over sagas with work and no live owner, now and then."""
        shared = self.shared
        assert shared is not None
        while True:
            try:
                while True:
                    page = await shared.claim_orphans(self._clock.now(), _CLAIM_PAGE)
                    for orphan in page:
                        await self.activate(orphan.saga_id, orphan.saga_name, claimed=True)
                    if len(page) < _CLAIM_PAGE:
                        break
                # Our own sagas: a notice may have been lost, or an activation's outcome
                # was unknown (a claim or a create whose reply never came).
                for owned in await shared.owned_with_work(self._clock.now()):
                    if owned.inbox or not self.is_live(owned.saga_id):
                        # A saga with no actor here is activated; a live one told of its inbox.
                        await self.nudge(owned.saga_id, owned.saga_name, cancel=owned.cancel)
            except Exception:
                logger.exception("the sweep for orphaned sagas failed; it runs again shortly")
            with anyio.move_on_after(shared.poll_interval):
                await self.claims_wanted.wait()
            self.claims_wanted = anyio.Event()

    async def nudge(self, saga_id: str, saga_name: str | None, *, cancel: bool) -> None:
        """New items are durable in the saga's inbox: have them applied."""
        nudges = self._nudges.get(saga_id)
        ref = self.supervisor.get(saga_id)
        if nudges is None or ref is None:
            await self.activate(saga_id, saga_name)
            return
        if nudges.notify(cancel=cancel):
            ref.interrupt()  # the running step is cut short; the actor restarts from its snapshot
        # A nudge is already queued, or `_actor_gone` re-activates it.
        with contextlib.suppress(MailboxFullError, ActorStoppedError):
            ref.tell_nowait(Nudge())

    async def wake(self, saga_id: str, saga_name: str | None) -> None:
        """The timer service's handler: a wake-up is due."""
        await self.activate(saga_id, saga_name, wake=True)

    def _actor_gone(self, saga_id: str, nudges: Nudges, error: Exception | None) -> None:
        if self._nudges.get(saga_id) is nudges:
            del self._nudges[saga_id]
        if error is None:
            self._retry_delays.pop(saga_id, None)
            if self.shared is not None:
                self.shared.release(saga_id)
        waiter = self._waiters.pop(saga_id, None)
        if waiter is not None:
            waiter.set()
        if nudges.inbox and error is None and self._task_group is not None and not self.stopping:
            # A nudge landed as the actor stopped: bring it back for its inbox.
            self._task_group.start_soon(self.activate, saga_id, None)

    async def _on_stopped(self, saga_id: str, state: SagaState | None) -> None:
        # The actor is about to stop; waiters wake once it has (`_actor_gone`).
        waiter = self._waiters.get(saga_id)
        if waiter is not None:
            waiter.state = state
        if state is not None and state.parent is not None and state.status.is_terminal:
            # Its report is durable in the parent's inbox: have the parent read it.
            parent = state.parent.saga_id
            if self._task_group is not None and not self.stopping:
                self._task_group.start_soon(self._nudge_quietly, parent, False)

    def arm_waiter(self, saga_id: str) -> _Waiter:
        """Register interest before checking the store, so no wake-up is missed."""
        waiter = self._waiters.get(saga_id)
        if waiter is None:
            waiter = self._waiters[saga_id] = _Waiter()
        waiter.users += 1
        return waiter

    def disarm_waiter(self, saga_id: str, waiter: _Waiter) -> None:
        """Done with `waiter`: forget it unless someone else, or a live actor, needs it."""
        waiter.users -= 1
        if waiter.users == 0 and self._waiters.get(saga_id) is waiter and not self.is_live(saga_id):
            del self._waiters[saga_id]

    async def wait(self, waiter: _Waiter) -> SagaState | None:
        """Wait until the saga's actor stops; its final state if it finished."""
        await waiter.wait()
        return waiter.state

    async def _try_again(self, saga_id: str, delay: float) -> None:
        while True:
            await anyio.sleep(delay)  # real time: the store's trouble is real
            try:
                await self.activate(saga_id, None)
                return
            except Exception:
                delay = min(60.0, 2 * delay)
                logger.exception("saga %r could not be restarted; trying in %.1f s", saga_id, delay)

    async def quarantine(self, saga_id: str, reason: str) -> None:
        """Suspend a saga whose row was edited into nonsense, with `reason`: through the
        engine when its snapshot is sound (so `result()` and `resume` see it), else on
        the row alone (an unreadable snapshot, or a saga that has ended)."""
        logger.error("saga %r quarantined: %s", saga_id, reason)
        try:
            stored = await self._store.load(saga_id)
            saga = self._sagas.get(stored.saga_name, stored.state.definition_version)
            if saga is not None and stored.state.status.is_live:
                await engine.suspend(self._store, saga, saga_id, reason, self._clock.now())
                return
        except (StaleStateError, LeaseLostError):
            return  # its actor moved it meanwhile: a later look sees the new row
        except (CorruptSagaError, InvalidTransitionError):
            pass
        await self._store.quarantine(saga_id, reason)

    async def _unregistered(self, stored: StoredSaga) -> None:
        """An actor found its saga's version is not one of this runtime's definitions.

        On a shared store another runtime may have it: let the saga go. Here alone,
        suspend it with the reason; `Runtime.resume` continues it once it is given."""
        name, version = stored.saga_name, stored.state.definition_version
        reason = not_registered(name, version)
        if self.shared is not None and await self.shared.served_elsewhere(name, version):
            logger.warning("saga %r left to another runtime: %s here", stored.saga_id, reason)
            self.shared.release(stored.saga_id)
            return
        if not stored.state.status.is_live:
            # Suspended already; or ended, with a parent's request to roll back that only
            # its own version can carry out (it waits in the child's inbox until then): the
            # parent, which would wait for it, is suspended with the reason instead.
            parent = stored.state.parent
            if stored.state.status is SagaStatus.COMPLETED and parent is not None:
                why = f"its child saga {stored.saga_id!r} cannot roll back: {reason}"
                await self._suspend_quietly(parent.saga_id, why)
            return
        await self._suspend_quietly(stored.saga_id, reason)

    async def _suspend_quietly(self, saga_id: str, reason: str) -> None:
        """Suspend a live saga with `reason` unless it ended or is not this runtime's.

        Its own actor may be writing it meanwhile (a parent recording that it waits
        for its child): a stale attempt reloads and tries again, a few times."""
        for _ in range(_SUSPEND_ATTEMPTS):
            try:
                stored = await self._store.load(saga_id)
                if not stored.state.status.is_live:
                    return
                saga = self._sagas.get(stored.saga_name, stored.state.definition_version)
                await engine.suspend(
                    self._store, saga or stand_in(stored.state), saga_id, reason, self._clock.now()
                )
            except (StaleStateError, InvalidTransitionError):
                await anyio.lowlevel.checkpoint()  # let its actor finish the write it is making
                continue
            except (LeaseLostError, SagaNotFound):
                return  # another runtime owns it, or it is gone
            logger.error("saga %r suspended: %s", saga_id, reason)
            return
        logger.error("saga %r could not be suspended (%s); it keeps waiting", saga_id, reason)

    async def _on_escalate(self, saga_id: str, error: Exception) -> None:
        reason = f"its actor kept crashing; last error: {type(error).__name__}: {error}"
        if isinstance(error, LeaseLostError):
            logger.warning("saga %r dropped: another runtime took it over (%s)", saga_id, error)
            return
        try:
            stored = await self._store.load(saga_id)
            saga = self._sagas.get(stored.saga_name, stored.state.definition_version)
            await engine.suspend(
                self._store, saga or stand_in(stored.state), saga_id, reason, self._clock.now()
            )
            logger.error("saga %r suspended: %s", saga_id, reason)
        except CorruptSagaError as exc:
            await self._store.quarantine(saga_id, str(exc))
        except InvalidTransitionError:
            pass  # it ended or was suspended meanwhile
        except LeaseLostError as exc:
            logger.warning("saga %r dropped: another runtime took it over (%s)", saga_id, exc)
        except Exception:
            # The store is failing (full, locked): nothing is lost, the snapshot holds
            # the saga. Pause it, then let it try again, waiting longer each time.
            delay = self._retry_delays[saga_id] = min(
                60.0, 2 * self._retry_delays.get(saga_id, 0.5)
            )
            logger.exception("could not suspend saga %r; it tries again in %.1f s", saga_id, delay)
            if self._task_group is not None:
                self._task_group.start_soon(self._try_again, saga_id, delay)
        finally:
            waiter = self._waiters.pop(saga_id, None)
            if waiter is not None:
                waiter.set()
