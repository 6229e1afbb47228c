"""`SagaActor`: drives one saga instance through the state machine.

For each event it computes the transition, waits until the new snapshot is
durable, and only then carries out the commands. Steps run inline: their
outcome is the next event, with no message round trip. Signals and
cancellations arrive durably in the saga's inbox; the runtime nudges the
actor (`Nudges`), which applies them in order, each in the same
transaction that removes it from the inbox. A cancellation also interrupts
a running forward step (the actor starts again from its snapshot, so the
step counts as interrupted: ambiguous); compensations are never interrupted.

When the saga has nothing to do but wait, the actor either stays (the wait
is short: a retry backoff) with a wake-up in the runtime's timer service,
or stops (it passivates): the store's wake-up index and the inbox bring it
back. A restart builds a fresh actor that reloads the last snapshot and
applies `Recovered`.
"""

from __future__ import annotations

import logging
import random
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from actors import Actor

from ._clock import Clock
from ._commands import Command, Finish, RunCompensation, RunStep
from ._context import StepContext
from ._definition import Saga
from ._errors import CorruptSagaError, LeaseLostError
from ._events import (
    CancelRequested,
    Event,
    Recovered,
    Resumed,
    SignalReceived,
    StepFailed,
    StepWaiting,
    TimerFired,
)
from ._machine import Transition, transition
from ._model import FailureKind, SagaState, SagaStatus, StepStatus
from ._payload import decode_payload
from ._step_runner import attempt_compensation, attempt_step, error_info, wait_deadline
from ._store import InboxItem, Store

logger = logging.getLogger("saga")

_NOT_FRESH = (Recovered, Resumed)
"""Events after which a step's intent may already have run (see `_carry_out`)."""


@dataclass(frozen=True, slots=True)
class SagaActorDeps:
    """What a saga actor needs from the runtime that hosts it."""

    store: Store
    clock: Clock
    rng: random.Random
    max_recoveries: int
    on_stopped: Callable[[str, SagaState | None], Awaitable[None]]
    """Called when the actor stops driving a saga: with its final state, or None."""
    schedule_wakeup: Callable[[str, float], None]
    """Ask the runtime's timer service to wake this (live) actor at a time."""
    note_passivated: Callable[[float], None]
    """Tell the timer service a passivated saga needs waking at a time."""
    keep_warm: float = 1.0
    """Waits shorter than this keep the actor in memory; longer ones passivate it."""


class Nudges:
    """Shared by the runtime and one saga's actor: work that arrived out of band.

    `in_step` is True while a forward step's action runs: a cancellation
    then interrupts the actor (`ActorRef.interrupt`), which starts again
    from its snapshot and applies the cancellation before anything else.
    """

    __slots__ = ("cancel", "in_step", "inbox")

    def __init__(self) -> None:
        self.inbox = False
        self.cancel = False
        self.in_step = False

    def notify(self, *, cancel: bool = False) -> bool:
        """New inbox items are durable; True if the actor must be interrupted."""
        self.inbox = True
        if cancel:
            self.cancel = True
        return cancel and self.in_step


@dataclass(frozen=True, slots=True)
class WakeUp:
    """A wake-up the saga asked for is due."""


@dataclass(frozen=True, slots=True)
class Nudge:
    """New work is in `Nudges`: look at it."""


@dataclass(frozen=True, slots=True)
class GetState:
    """Ask a saga actor for its current (durable) snapshot."""


SagaMessage = WakeUp | Nudge | GetState


_UNDECODED: Any = object()


class FreshStart(msgspec.Struct, frozen=True):
    """A saga whose latest transition is durable and in hand (spawned or resumed)."""

    transition: Transition
    input: bytes
    resumed: bool = False
    """Resumed by an operator: its in-flight step may have run; its inbox may hold items."""
    decoded: Any = _UNDECODED
    """`input` decoded already (by a spawn, which checks it), or `_UNDECODED`."""


class SagaActor(Actor[SagaMessage]):
    """The actor that drives one saga instance; built by the runtime, never by users."""

    spawns_children = False  # steps run inline; timers live in the runtime's timer service

    def __init__(
        self,
        saga: Saga,
        saga_id: str,
        deps: SagaActorDeps,
        fresh: FreshStart | None,
        nudges: Nudges,
        *,
        wake: bool = False,
    ) -> None:
        self._saga = saga
        self._saga_id = saga_id
        self._deps = deps
        self._fresh = fresh
        self._nudges = nudges
        self._wake = wake
        self._state: SagaState | None = None
        self._input: Any = None
        self._results: dict[int, Any] = {}
        self._not_started: int | None = None
        self._check_inbox = False

    @property
    def state(self) -> SagaState:
        assert self._state is not None, "used before on_start"
        return self._state

    async def on_start(self) -> None:
        fresh, self._fresh = self._fresh, None  # a restart must reload the snapshot
        if fresh is not None:
            self._state = fresh.transition.state
            self._input = (
                self._decode_input(fresh.input) if fresh.decoded is _UNDECODED else fresh.decoded
            )
            if fresh.resumed:
                # A cancellation waiting in the inbox keeps the in-flight step from running again.
                await self._look_at_inbox()
            first = await self._carry_out(fresh.transition.commands, not fresh.resumed)
            await self._drive(first)
        else:
            try:
                stored = await self._deps.store.load(self._saga_id)
                if len(stored.state.steps) != len(self._saga.steps):
                    raise CorruptSagaError(
                        self._saga_id,
                        f"its snapshot has {len(stored.state.steps)} steps; the definition "
                        f"{self._saga.name!r} has {len(self._saga.steps)}",
                    )
            except CorruptSagaError as exc:
                # Park it for an operator; retrying cannot fix the bytes.
                await self._deps.store.quarantine(self._saga_id, str(exc))
                self.stop()
                await self._deps.on_stopped(self._saga_id, None)
                return
            self._state = stored.state
            self._input = self._decode_input(stored.input)
            await self._look_at_inbox()  # whatever arrived while it was away
            if self._nudges.cancel:
                # Interrupted for a cancellation, or one was left unapplied by a runtime
                # that stopped: apply the inbox first, so the interrupted step is not run
                # again and the interruption does not count as a recovery.
                self._nudges.cancel = True
                await self._drive(None)
            if not self._stop_requested:
                now = self._deps.clock.now()
                await self._drive(Recovered(at=now, max_recoveries=self._deps.max_recoveries))
            if self._wake and not self._stop_requested:
                await self._drive(TimerFired(at=self._deps.clock.now()))
        await self._settle()

    async def _look_at_inbox(self) -> None:
        """On (re)activation: drain the inbox if it holds anything; note a cancellation."""
        items = await self._deps.store.inbox(self._saga_id)
        self._check_inbox = bool(items)
        if any(item.kind == "cancel" for item in items):
            self._nudges.cancel = True

    async def receive(self, message: SagaMessage) -> object:
        match message:
            case WakeUp():
                await self._drive(TimerFired(at=self._deps.clock.now()))
                await self._settle()
            case Nudge():
                await self._drive(None)
                await self._settle()
            case GetState():
                return self._state
        return None

    def _decode_input(self, data: bytes) -> Any:
        return decode_payload(data, self._saga.input_type, "input of saga", self._saga_id)

    async def _drive(self, first: Event | None) -> None:
        """Apply events (and then the inbox) until the saga waits or ends.

        Each new snapshot is durable before its commands run.
        """
        queue: deque[tuple[Event, int | None]] = deque()
        if first is not None:
            queue.append((first, None))
        while True:
            if not queue:
                if self.state.status is SagaStatus.SUSPENDED:
                    return
                if not (self._nudges.inbox or self._check_inbox):
                    return
                self._nudges.inbox = self._check_inbox = False
                for item in await self._deps.store.inbox(self._saga_id):
                    queue.append((self._inbox_event(item), item.id))
                if not queue:
                    return
            event, consumed = queue.popleft()
            old = self.state
            new, commands = transition(self._saga, old, event)
            if new is not old:
                try:
                    await self._deps.store.save(new, event, consumed=consumed)
                except LeaseLostError as exc:
                    await self._drop(exc)
                    return
                self._state = new
            fresh_intent = not isinstance(event, _NOT_FRESH)
            outcome = await self._carry_out(commands, fresh_intent)
            if outcome is not None:
                queue.appendleft((outcome, None))

    async def _drop(self, lost: LeaseLostError) -> None:
        """Another runtime owns the saga now (a shared store fenced this one off): let go."""
        logger.warning("saga %r dropped by this runtime: %s", self._saga_id, lost)
        self.stop()
        await self._deps.on_stopped(self._saga_id, None)

    def _inbox_event(self, item: InboxItem) -> Event:
        now = self._deps.clock.now()
        if item.kind == "cancel":
            self._nudges.cancel = False
            not_started, self._not_started = self._not_started, None
            return CancelRequested(at=now, reason=item.name, not_started=not_started)
        payload = msgspec.Raw(item.payload)
        return SignalReceived(at=now, name=item.name, payload=payload, key=item.key)

    async def _carry_out(self, commands: Sequence[Command], fresh_intent: bool) -> Event | None:
        """Carry out `commands`; the outcome of a step or compensation is the next event.

        `fresh_intent`: a `RunStep` among them was decided just now, so its
        action has certainly not run yet (after a recovery it may have).
        """
        outcome: Event | None = None
        for command in commands:
            match command:
                case RunStep(step, attempt):
                    if self._nudges.cancel:
                        # A cancellation is durable: do not start the forward step; the
                        # cancellation takes its intent back when it is applied.
                        self._not_started = step if fresh_intent else None
                        self._check_inbox = True
                        continue
                    outcome = await self._run_step(step, attempt)
                case RunCompensation(step, attempt):
                    outcome = await self._run_compensation(step, attempt)
                case Finish():
                    self.stop()
                    await self._deps.on_stopped(self._saga_id, self.state)
        return outcome

    async def _settle(self) -> None:
        """Idle now: keep a short wake-up in memory, or passivate."""
        if self._stop_requested:
            return
        state = self.state
        wake_at = state.wake_at
        if state.in_flight:
            return  # a nudge is queued and will pick it up
        if wake_at is not None and wake_at - self._deps.clock.now() <= self._deps.keep_warm:
            self._deps.schedule_wakeup(self._saga_id, wake_at)
            return
        if wake_at is not None:
            self._deps.note_passivated(wake_at)
        self.stop()
        await self._deps.on_stopped(self._saga_id, None)

    def _context(self, index: int, attempt: int, *, compensating: bool) -> StepContext:
        name = self._saga.steps[index].name
        key = f"{self._saga_id}:{name}:compensate" if compensating else f"{self._saga_id}:{name}"
        return StepContext(
            saga_id=self._saga_id,
            step=name,
            attempt=attempt,
            idempotency_key=key,
            results=self._results_view(),
            compensating=compensating,
        )

    def _results_view(self) -> Mapping[str, Any]:
        # Decoded on first use: most steps never look at the results of earlier ones.
        return _EarlierResults(self, self.state)

    def _result(self, index: int, state: SagaState | None = None) -> Any:
        if index not in self._results:
            step = self._saga.steps[index]
            raw = (state or self.state).steps[index].result
            self._results[index] = decode_payload(
                bytes(raw), step.result_type, "result of step", step.name
            )
        return self._results[index]

    async def _run_step(self, index: int, attempt: int) -> Event:
        """One attempt of a forward step."""
        step = self._saga.steps[index]
        ctx = self._context(index, attempt, compensating=False)
        clock = self._deps.clock
        if step.wait is not None:
            try:
                until = wait_deadline(step.wait, ctx, self._input, clock.now())
            except Exception as exc:
                return StepFailed(
                    at=clock.now(),
                    step=index,
                    attempt=attempt,
                    error=error_info(exc),
                    kind=FailureKind.TRANSIENT,
                    jitter=self._deps.rng.random(),
                )
            return StepWaiting(at=clock.now(), step=index, attempt=attempt, until=until)
        self._nudges.in_step = True
        try:
            return await attempt_step(step, index, ctx, self._input, clock.now, self._deps.rng)
        finally:
            self._nudges.in_step = False

    async def _run_compensation(self, index: int, attempt: int) -> Event:
        step = self._saga.steps[index]
        recorded = (
            self._result(index) if self.state.steps[index].status is StepStatus.SUCCEEDED else None
        )
        ctx = self._context(index, attempt, compensating=True)
        return await attempt_compensation(
            step, index, ctx, self._input, recorded, self._deps.clock.now, self._deps.rng
        )


class _EarlierResults(Mapping[str, Any]):
    """`StepContext.results`: the results of the steps that succeeded, as of one snapshot,
    decoded when first read."""

    __slots__ = ("_actor", "_decoded", "_state")

    def __init__(self, actor: SagaActor, state: SagaState) -> None:
        self._actor = actor
        self._state = state
        self._decoded: dict[str, Any] | None = None

    def _all(self) -> dict[str, Any]:
        if self._decoded is None:
            steps = self._actor._saga.steps
            self._decoded = {
                steps[index].name: self._actor._result(index, self._state)
                for index, step_state in enumerate(self._state.steps)
                if step_state.status is StepStatus.SUCCEEDED
            }
        return self._decoded

    def __getitem__(self, name: str) -> Any:
        return self._all()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())

    def __repr__(self) -> str:
        return repr(self._all())
