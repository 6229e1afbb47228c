"""`SagaHost`: keeps saga actors in memory only while they have work.

It starts actors (spawned, resumed, woken by a timer or a signal), passes
nudges to live ones, wakes the callers of `SagaHandle.result`, and parks a
saga whose actor keeps crashing. The `Runtime` is its public face.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Mapping

import anyio
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
    FreshStart,
    InvalidTransitionError,
    Nudge,
    Nudges,
    Saga,
    SagaActor,
    SagaActorDeps,
    SagaState,
    Store,
    Suspended,
    WakeUp,
    transition,
)

from ._errors import RuntimeNotRunningError
from ._timers import TimerService

logger = logging.getLogger("runtime")


class _Waiter:
    """Woken when a saga's actor stops; carries the final state when it finished."""

    __slots__ = ("done", "state")

    def __init__(self) -> None:
        # asyncio's own Event: anyio's costs several times more to make and wait on,
        # and every `result()` makes one.
        self.done = asyncio.Event()
        self.state: SagaState | None = None


class SagaHost:
    def __init__(
        self,
        store: Store,
        sagas: Mapping[str, Saga],
        *,
        clock: Clock,
        rng: random.Random,
        max_recoveries: int,
        supervision: RestartWithBackoff,
        mailbox_size: int,
        keep_warm: float,
    ) -> None:
        self._store = store
        self._sagas = sagas
        self._clock = clock
        self._mailbox_size = mailbox_size
        self.supervisor = Supervisor(supervision, on_escalate=self._on_escalate, rng=rng)
        self.timers = TimerService(clock, store, self.wake)
        self._nudges: dict[str, Nudges] = {}
        self._waiters: dict[str, _Waiter] = {}
        self._retry_delays: dict[str, float] = {}
        self._task_group: TaskGroup | None = None
        self._deps = SagaActorDeps(
            store=store,
            clock=clock,
            rng=rng,
            max_recoveries=max_recoveries,
            on_stopped=self._on_stopped,
            schedule_wakeup=self.timers.schedule,
            note_passivated=self.timers.note_store_wake,
            keep_warm=keep_warm,
        )

    def bind(self, task_group: TaskGroup) -> None:
        self._task_group = task_group

    def close(self) -> None:
        for waiter in self._waiters.values():
            waiter.done.set()
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
        previous = self.supervisor.get(saga_id)
        if previous is not None:
            await previous.join()  # an actor that just passivated or ended is winding down
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

    async def activate(self, saga_id: str, saga_name: str | None, *, wake: bool = False) -> None:
        """Bring a passivated saga back (or tell its live actor): a timer or a signal."""
        ref = self.supervisor.get(saga_id)
        nudges = self._nudges.get(saga_id)
        if ref is not None and nudges is not None:
            if not wake:
                nudges.notify()
            # A full mailbox settles and re-arms its timer; a stopping one is re-activated.
            with contextlib.suppress(MailboxFullError, ActorStoppedError):
                ref.tell_nowait(WakeUp() if wake else Nudge())
            return
        if saga_name is None:
            saga_name = (await self._store.load(saga_id)).saga_name
        saga = self._sagas.get(saga_name)
        if saga is None:
            logger.warning("saga %r is a %r saga, unknown to this runtime", saga_id, saga_name)
            return
        await self.start(saga, saga_id, None, wake=wake)

    async def nudge(self, saga_id: str, saga_name: str, *, cancel: bool) -> None:
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
        waiter = self._waiters.pop(saga_id, None)
        if waiter is not None:
            waiter.done.set()
        if nudges.inbox and error is None and self._task_group is not None:
            # A nudge landed as the actor stopped: bring it back for its inbox.
            self._task_group.start_soon(self.activate, saga_id, None)

    async def _on_stopped(self, saga_id: str, state: SagaState | None) -> None:
        # The actor is about to stop; waiters wake once it has (`_actor_gone`).
        waiter = self._waiters.get(saga_id)
        if waiter is not None:
            waiter.state = state

    async def wait(self, saga_id: str) -> SagaState | None:
        """Wait until the saga's actor stops; its final state if it finished."""
        waiter = self._waiters.get(saga_id)
        if waiter is None:
            waiter = self._waiters[saga_id] = _Waiter()
        await waiter.done.wait()
        return waiter.state

    def waiter_armed(self, saga_id: str) -> None:
        """Register interest before checking the store, so no wake-up is missed."""
        if saga_id not in self._waiters:
            self._waiters[saga_id] = _Waiter()

    async def _try_again(self, saga_id: str, delay: float) -> None:
        await anyio.sleep(delay)  # real time: the store's trouble is real
        try:
            await self.activate(saga_id, None)
        except Exception:
            logger.exception(
                "saga %r could not be restarted; it resumes at the next start", saga_id
            )

    async def _on_escalate(self, saga_id: str, error: Exception) -> None:
        reason = f"its actor kept crashing; last error: {type(error).__name__}: {error}"
        try:
            stored = await self._store.load(saga_id)
            saga = self._sagas[stored.saga_name]
            event = Suspended(at=self._clock.now(), reason=reason)
            suspended = transition(saga, stored.state, event)
            await self._store.save(suspended.state, event)
            logger.error("saga %r suspended: %s", saga_id, reason)
        except CorruptSagaError as exc:
            await self._store.quarantine(saga_id, str(exc))
        except InvalidTransitionError:
            pass  # it ended or was suspended meanwhile
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
                waiter.done.set()
