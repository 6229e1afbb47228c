"""`SagaActor`: drives one saga instance through the state machine.

For each event it has the driver (`_driver.commit`) compute the transition
and make it durable, and only then carries out the commands. Steps run
inline: their outcome is the next event, with no message round trip; the
positions of a parallel group run concurrently, each outcome applied as it
comes. Signals, cancellations and a child's report arrive durably in the
saga's inbox; the runtime nudges the actor (`Nudges`), which applies them in
order, each in the same transaction that removes it from the inbox. A
cancellation also interrupts a running forward step (the actor starts again
from its snapshot, so the step counts as interrupted: ambiguous);
compensations are never interrupted.

A code saga's body runs in the actor too, stepped by hand (`_body`): from
the top on every (re)start, against its recorded calls; a body that diverges
from them suspends the saga before anything runs.

When the saga has nothing to do but wait, the actor either stays (the wait
is short: a retry backoff) with a wake-up in the runtime's timer service,
or stops (it passivates): the store's wake-up index and the inbox bring it
back. A restart builds a fresh actor that reloads the last snapshot and
applies `Recovered`.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import anyio
import msgspec

from actors import Actor

from . import _driver as driver
from ._body import BodyRun, PendingCall, decode_args
from ._calls import CallKind
from ._commands import Command, Finish, RunCompensation, RunStep
from ._context import StepContext
from ._definition import Saga, Step
from ._errorinfo import ErrorInfo
from ._errors import CorruptSagaError, LeaseLostError, SagaEndedError, SagaError, StoreError
from ._events import (
    CancelRequested,
    ChildEnded,
    CompensateRequested,
    CompensationSucceeded,
    CompensationWaiting,
    Event,
    Recovered,
    SignalReceived,
    StepFailed,
    StepWaiting,
    Suspended,
    TimerFired,
)
from ._hosting import FreshStart, Nudge, Nudges, SagaActorDeps, SagaMessage, WakeUp
from ._model import FailureKind, ParentRef, SagaState, SagaStatus, StepStatus
from ._payload import decode_payload, encode_payload
from ._step_runner import attempt_compensation, attempt_step, error_info, wait_deadline
from ._store import InboxItem, StoredSaga

logger = logging.getLogger("saga")

_child_report = msgspec.json.Decoder(driver.ChildReport)
_error_of = msgspec.json.Decoder(ErrorInfo | None)

_Run = RunStep | RunCompensation


class SagaActor(Actor[SagaMessage]):
    """The actor that drives one saga instance; built by the runtime, never by users."""

    spawns_children = False  # steps run inline; timers live in the runtime's timer service

    def __init__(
        self,
        saga: Saga[Any, Any],
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
        self._run: BodyRun | None = None
        self._input: Any = None
        self._results: dict[int, Any] = {}
        self._not_started: list[int] = []
        self._check_inbox = False
        self._dropped = False

    @property
    def state(self) -> SagaState:
        assert self._state is not None, "used before on_start"
        return self._state

    async def on_start(self) -> None:
        fresh, self._fresh = self._fresh, None  # a restart must reload the snapshot
        if fresh is not None:
            self._state = fresh.transition.state
            self._input = fresh.decoded if fresh.has_decoded else self._decode_input(fresh.input)
            self._run = fresh.run
            if self._saga.body is not None and not await self._replay():
                return
            if fresh.resumed:
                # A cancellation waiting in the inbox keeps the in-flight step from running again.
                await self._look_at_inbox()
            await self._carry_out(fresh.transition.commands)
            await self._drive(None)
        else:
            try:
                stored = await self._restore()
                if stored is None:
                    await self._stop(None)  # a version this runtime was not given: it decided
                    return
                self._state = stored.state
                self._input = self._decode_input(stored.input)
            except CorruptSagaError as exc:
                # Park it for an operator; retrying cannot fix the bytes.
                await self._deps.store.quarantine(self._saga_id, str(exc))
                await self._stop(None)
                return
            if not await self._replay():
                return
            await self._look_at_inbox()  # whatever arrived while it was away
            if self._nudges.cancel:
                # Interrupted for a cancellation, or one was left unapplied by a runtime
                # that stopped: apply the inbox first, so the interrupted step is not run
                # again and the interruption does not count as a recovery.
                self._not_started = []
                await self._drive(None)
            if not self._stop_requested:
                now = self._deps.clock.now()
                await self._drive(Recovered(at=now, max_recoveries=self._deps.max_recoveries))
            if self._wake and not self._stop_requested:
                await self._drive(TimerFired(at=self._deps.clock.now()))
        await self._settle()

    async def _restore(self) -> StoredSaga | None:
        """The stored saga on the definition of its own version (None: not given here)."""
        definition_of = self._deps.definition_of
        if definition_of is None:
            return await driver.restore(self._deps.store, self._saga, self._saga_id)
        saga, stored = await driver.restore_on_its_version(
            self._deps.store, definition_of, self._saga_id
        )
        if saga is None:
            if self._deps.unregistered is not None:
                await self._deps.unregistered(stored)
            return None
        self._saga = saga
        return stored

    async def on_stop(self) -> None:
        if self._run is not None:
            self._run.close()

    async def _replay(self) -> bool:
        """A code saga's body, run from the top against its recorded calls: False (and the
        saga suspended) if it no longer makes them."""
        if self._saga.body is None or self._run is not None:
            return True
        run = BodyRun(
            self._saga,
            self._saga_id,
            self._input,
            self.state,
            now=self._deps.clock.now,
            rng=self._deps.rng,
        )
        self._run = run
        run.start()
        if run.diverged is None or not self.state.status.is_live:
            return True  # an ended saga runs nothing more unless a parent reopens it
        logger.error("saga %r suspended: %s", self._saga_id, run.diverged)
        await self._apply(Suspended(at=self._deps.clock.now(), reason=str(run.diverged)))
        await self._stop(None)
        return False

    async def _look_at_inbox(self) -> None:
        """On (re)activation: drain the inbox if it holds anything; note a cancellation."""
        items = await self._deps.store.inbox(self._saga_id)
        self._check_inbox = bool(items)
        if any(item.kind in ("cancel", "compensate") for item in items):
            self._nudges.cancel = True

    async def receive(self, message: SagaMessage) -> object:
        match message:
            case WakeUp():
                await self._drive(TimerFired(at=self._deps.clock.now()))
                await self._settle()
            case Nudge():
                await self._drive(None)
                await self._settle()
        return None

    def _decode_input(self, data: bytes) -> Any:
        return decode_payload(data, self._saga.input_type, "input of saga", self._saga_id)

    async def _apply(self, event: Event, consumed: int | None = None) -> Sequence[Command]:
        """One transition through the driver, durable before its commands are returned."""
        try:
            outcome = await driver.commit(
                self._deps.store, self._saga, self.state, event, self._run, consumed=consumed
            )
        except LeaseLostError as exc:
            await self._drop(exc)
            return ()
        self._state = outcome.state
        return outcome.commands

    async def _drive(self, first: Event | None) -> None:
        """Apply events (and then the inbox) until the saga waits or ends.

        Each new snapshot is durable before its commands run.
        """
        queue: deque[tuple[Event, int | None]] = deque()
        if first is not None:
            queue.append((first, None))
        while not self._dropped:
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
            await self._carry_out(await self._apply(event, consumed))

    async def _drop(self, lost: LeaseLostError) -> None:
        """Another runtime owns the saga now (a shared store fenced this one off): let go."""
        logger.warning("saga %r dropped by this runtime: %s", self._saga_id, lost)
        self._dropped = True
        await self._stop(None)

    async def _stop(self, state: SagaState | None) -> None:
        if not self._stop_requested:
            self.stop()
            await self._deps.on_stopped(self._saga_id, state)

    def _inbox_event(self, item: InboxItem) -> Event:
        now = self._deps.clock.now()
        if item.kind in ("cancel", "compensate"):
            self._nudges.cancel = False
            skipped = tuple(self._not_started)
            self._not_started = []
            not_started = skipped[0] if len(skipped) == 1 else (skipped or None)
            if item.kind == "cancel":
                return CancelRequested(at=now, reason=item.name, not_started=not_started)
            return CompensateRequested(at=now, reason=item.name, not_started=not_started)
        if item.kind == "child":
            report = _child_report.decode(item.payload)
            error = None if report.error is None else msgspec.convert(report.error, ErrorInfo)
            return ChildEnded(
                at=now,
                step=report.step,
                child=item.name,
                status=SagaStatus(report.status),
                result=report.result,
                error=error,
            )
        payload = msgspec.Raw(item.payload)
        return SignalReceived(at=now, name=item.name, payload=payload, key=item.key)

    async def _carry_out(self, commands: Sequence[Command]) -> None:
        """Carry out `commands`, and those that the outcomes of the runs among them bring."""
        while commands and not self._dropped:
            if len(commands) == 1:  # the usual case: one step, one compensation, or the end
                command = commands[0]
                if type(command) is RunStep and not self._nudges.cancel:
                    outcome = await self._run_step(command.step, command.attempt)
                    commands = await self._apply(outcome)
                    continue
                if type(command) is Finish:
                    await self._finish()
                    return
                if type(command) is not RunStep and type(command) is not RunCompensation:
                    return
                runs: list[_Run] = [command]
            else:
                runs = []
                for command in commands:
                    if isinstance(command, RunStep | RunCompensation):
                        runs.append(command)
                    elif type(command) is Finish:
                        await self._finish()
                        return
                if not runs:
                    return
            if self._nudges.cancel and type(runs[0]) is RunStep:
                # A cancellation is durable: start no forward step; the machine decides,
                # when the cancellation is applied, which of them never ran.
                self._not_started.extend(run.step for run in runs)
                self._check_inbox = True
                return
            if len(runs) == 1:
                commands = await self._apply(await self._attempt(runs[0]))
            else:
                commands = await self._attempt_all(runs)

    async def _finish(self) -> None:
        # Waiters (and a child's parent) hear of the end; an inbox item that arrived
        # meanwhile is still applied by `_drive`.
        self.stop()
        await self._deps.on_stopped(self._saga_id, self.state)

    async def _attempt_all(self, runs: list[_Run]) -> Sequence[Command]:
        """Run a group's attempts concurrently, applying each outcome as it comes; the
        commands of the last transition (the next group's) are returned."""
        send, receive = anyio.create_memory_object_stream[Event](len(runs))
        follow: Sequence[Command] = ()

        async def attempt(run: _Run) -> None:
            await send.send(await self._attempt(run))

        async with send, receive, anyio.create_task_group() as group:
            for run in runs:
                group.start_soon(attempt, run)
            for _ in runs:
                follow = await self._apply(await receive.receive())
        return follow

    async def _attempt(self, run: _Run) -> Event:
        if type(run) is RunStep:
            return await self._run_step(run.step, run.attempt)
        return await self._run_compensation(run.step, run.attempt)

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
        await self._stop(None)

    # -- running a position -----------------------------------------------------------

    def _call(self, index: int) -> Step | PendingCall[Any]:
        if self._run is None:
            return self._saga.steps[index]
        return self._run.live(index)

    def _context(
        self, index: int, attempt: int, call: Step | PendingCall[Any], *, compensating: bool
    ) -> StepContext:
        key = f"{self._saga_id}:{call.name if self._run is None else self.label_of(index)}"
        return StepContext(
            saga_id=self._saga_id,
            step=call.name,
            attempt=attempt,
            idempotency_key=f"{key}:compensate" if compensating else key,
            results=_EarlierResults(self, self.state),
            compensating=compensating,
        )

    def label_of(self, index: int) -> str:
        """Position `index`'s name in results and keys: a code saga's k-th call `name#k`."""
        call = self.state.steps[index].call
        return self._saga.steps[index].name if call is None else call.label

    def result_of(self, index: int, state: SagaState | None = None) -> Any:
        """Position `index`'s recorded result, decoded (once)."""
        if index not in self._results:
            call = self._call(index)
            raw = (state or self.state).steps[index].result
            self._results[index] = decode_payload(
                bytes(raw), call.result_type, "result of step", call.name
            )
        return self._results[index]

    def _args(self, index: int, call: Step | PendingCall[Any]) -> tuple[Any, ...]:
        if isinstance(call, Step):
            return (self._input,)
        recorded = self.state.steps[index].call
        assert recorded is not None
        return decode_args(call, bytes(recorded.args))

    async def _run_step(self, index: int, attempt: int) -> Event:
        """One attempt of a forward step (or a code saga's child call)."""
        call = self._saga.steps[index] if self._run is None else self._run.live(index)
        ctx = self._context(index, attempt, call, compensating=False)
        clock = self._deps.clock
        args: tuple[Any, ...]
        if isinstance(call, Step) and call.wait is None:
            args = (self._input,)  # a step list's plain step, the usual case
        elif isinstance(call, PendingCall) and call.kind is CallKind.CHILD:
            return await self._start_child(index, attempt, call)
        elif isinstance(call, Step):  # a waiting step
            assert call.wait is not None
            try:
                until = wait_deadline(call.wait, ctx, self._input, clock.now())
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
        else:
            try:
                args = self._args(index, call)
            except SagaError as exc:  # recorded arguments that no longer decode: for good
                return StepFailed(
                    at=clock.now(),
                    step=index,
                    attempt=attempt,
                    error=error_info(exc),
                    kind=FailureKind.DEFINITIVE,
                )
        self._nudges.in_step += 1
        try:
            return await attempt_step(
                call,
                index,
                ctx,
                args,
                clock.now,
                self._deps.rng,
                max_bytes=self._deps.max_payload_bytes,
            )
        finally:
            self._nudges.in_step -= 1

    async def _run_compensation(self, index: int, attempt: int) -> Event:
        call = self._call(index)
        if isinstance(call, PendingCall) and call.kind is CallKind.CHILD:
            return await self._compensate_child(index, attempt, call)
        succeeded = self.state.steps[index].status is StepStatus.SUCCEEDED
        recorded = self.result_of(index) if succeeded else None
        ctx = self._context(index, attempt, call, compensating=True)
        args = (*self._args(index, call), recorded)
        return await attempt_compensation(
            call, index, ctx, args, self._deps.clock.now, self._deps.rng
        )

    async def _start_child(self, index: int, attempt: int, call: PendingCall[Any]) -> Event:
        now = self._deps.clock.now
        start = self._deps.start_child
        assert call.child is not None
        assert call.target is not None
        assert start is not None
        recorded = self.state.steps[index].call
        assert recorded is not None
        data = decode_args(call, bytes(recorded.args))
        try:
            child_input = encode_payload(data[0], "input of saga", call.child.name)
            await start(call.child, call.target, child_input, ParentRef(self._saga_id, index))
        except StoreError:
            raise  # the store's trouble: the actor restarts and tries again
        except SagaError as exc:
            return StepFailed(
                at=now(),
                step=index,
                attempt=attempt,
                error=error_info(exc),
                kind=FailureKind.DEFINITIVE,
            )
        return StepWaiting(at=now(), step=index, attempt=attempt)

    async def _compensate_child(self, index: int, attempt: int, call: PendingCall[Any]) -> Event:
        compensate = self._deps.compensate_child
        assert compensate is not None
        assert call.target is not None
        reason = f"its parent {self._saga_id!r} compensates"
        now = self._deps.clock.now
        try:
            if not await compensate(call.target, reason):
                # It never started: nothing to undo.
                return CompensationSucceeded(at=now(), step=index, attempt=attempt)
        except SagaEndedError as ended:
            # It rolled itself back, or gave up, before this request reached it (the
            # request runs again after a crash): the machine takes its end as a report.
            return ChildEnded(
                at=now(), step=index, child=call.target, status=SagaStatus(ended.status)
            )
        return CompensationWaiting(at=now(), step=index, attempt=attempt)


class _EarlierResults(Mapping[str, Any]):
    """`StepContext.results`: the results of the positions that succeeded, as of one
    snapshot, by name (a code saga's: `name#k` after the first), decoded when first read."""

    __slots__ = ("_actor", "_decoded", "_state")

    def __init__(self, actor: SagaActor, state: SagaState) -> None:
        self._actor = actor
        self._state = state
        self._decoded: dict[str, Any] | None = None

    def _all(self) -> dict[str, Any]:
        if self._decoded is None:
            actor = self._actor
            self._decoded = {
                actor.label_of(index): actor.result_of(index, self._state)
                for index, step_state in enumerate(self._state.steps)
                if step_state.status is StepStatus.SUCCEEDED
                and (step_state.call is None or step_state.call.kind is CallKind.STEP)
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
