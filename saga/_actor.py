"""`SagaActor`: drives one saga instance through the state machine.

On every message it computes the transition, waits until the new snapshot
is durable, and only then carries out the commands: a step or compensation
runs as a child task whose outcome comes back as a message; a wake-up is a
child task that sleeps until its due time. A restart (by the supervisor)
builds a fresh actor that reloads the last snapshot and applies `Recovered`.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import anyio
import msgspec

from actors import Actor

from ._clock import Clock
from ._commands import Command, Finish, RunCompensation, RunStep, ScheduleWakeup
from ._context import StepContext
from ._definition import Saga, Step
from ._errors import CorruptSagaError, NonRetryableError, PayloadError
from ._events import (
    CompensationFailed,
    CompensationSucceeded,
    Event,
    Recovered,
    StepFailed,
    StepSucceeded,
    TimerFired,
)
from ._machine import Transition, transition
from ._model import NULL, ErrorInfo, FailureKind, SagaState, StepStatus
from ._payload import decode_payload, encode_payload
from ._store import Store

logger = logging.getLogger("saga")


@dataclass(frozen=True, slots=True)
class SagaActorDeps:
    """What a saga actor needs from the runtime that hosts it."""

    store: Store
    clock: Clock
    rng: random.Random
    max_recoveries: int
    on_stopped: Callable[[str, SagaState | None], Awaitable[None]]
    """Called when the actor stops driving a saga: with its final state, or None."""


@dataclass(frozen=True, slots=True)
class _WakeUp:
    token: object


@dataclass(frozen=True, slots=True)
class GetState:
    """Ask a saga actor for its current (durable) snapshot."""


SagaMessage = _WakeUp | GetState


@dataclass(frozen=True, slots=True)
class FreshStart:
    """A just-spawned saga: its first transition is durable, its input already encoded."""

    transition: Transition
    input: bytes


def error_info(error: BaseException, *, timed_out: bool = False) -> ErrorInfo:
    cls = type(error)
    return ErrorInfo(
        type=f"{cls.__module__}.{cls.__qualname__}", message=str(error), timed_out=timed_out
    )


class SagaActor(Actor[SagaMessage]):
    """The actor that drives one saga instance; built by the runtime, never by users."""

    def __init__(
        self, saga: Saga, saga_id: str, deps: SagaActorDeps, fresh: FreshStart | None
    ) -> None:
        self._saga = saga
        self._saga_id = saga_id
        self._deps = deps
        self._fresh = fresh
        self._state: SagaState | None = None
        self._input: Any = None
        self._token: object = None
        self._results: dict[int, Any] = {}

    @property
    def state(self) -> SagaState:
        assert self._state is not None, "used before on_start"
        return self._state

    async def on_start(self) -> None:
        fresh, self._fresh = self._fresh, None  # a restart must reload the snapshot
        if fresh is not None:
            self._state = fresh.transition.state
            self._input = self._decode_input(fresh.input)
            await self._drive(await self._carry_out(fresh.transition.commands))
            return
        try:
            stored = await self._deps.store.load(self._saga_id)
        except CorruptSagaError as exc:
            # Park it for an operator; retrying cannot fix the bytes.
            await self._deps.store.quarantine(self._saga_id, str(exc))
            self.stop()
            await self._deps.on_stopped(self._saga_id, None)
            return
        self._state = stored.state
        self._input = self._decode_input(stored.input)
        await self._drive(
            Recovered(at=self._deps.clock.now(), max_recoveries=self._deps.max_recoveries)
        )

    async def receive(self, message: SagaMessage) -> object:
        match message:
            case _WakeUp(token):
                if token is self._token:
                    self._token = None
                    await self._drive(TimerFired(at=self._deps.clock.now()))
            case GetState():
                return self._state
        return None

    def _decode_input(self, data: bytes) -> Any:
        return decode_payload(data, self._saga.input_type, f"input of saga {self._saga_id!r}")

    async def _drive(self, event: Event | None) -> None:
        """Apply events until the saga waits or ends.

        Each new snapshot is durable before its commands run. Steps run
        inline: their outcome is the next event, with no message round trip.
        """
        while event is not None:
            old = self.state
            new, commands = transition(self._saga, old, event)
            if new is not old:
                await self._deps.store.save(new, event)
                self._state = new
            event = await self._carry_out(commands)

    async def _carry_out(self, commands: Sequence[Command]) -> Event | None:
        outcome: Event | None = None
        for command in commands:
            match command:
                case RunStep(step, attempt):
                    outcome = await self._run_step(step, attempt)
                case RunCompensation(step, attempt):
                    outcome = await self._run_compensation(step, attempt)
                case ScheduleWakeup(at):
                    self._token = token = object()
                    self.start_soon(self._sleep_until, at, token)
                case Finish():
                    self.stop()
                    await self._deps.on_stopped(self._saga_id, self.state)
        return outcome

    def _results_view(self) -> Mapping[str, Any]:
        results = {}
        for index, step_state in enumerate(self.state.steps):
            if step_state.status is StepStatus.SUCCEEDED:
                results[self._saga.steps[index].name] = self._result(index)
        return MappingProxyType(results)

    def _result(self, index: int) -> Any:
        if index not in self._results:
            step = self._saga.steps[index]
            raw = self.state.steps[index].result
            self._results[index] = decode_payload(
                bytes(raw), step.result_type, f"result of step {step.name!r}"
            )
        return self._results[index]

    def _classify(self, step: Step, error: Exception, compensating: bool) -> FailureKind:
        policy = step.compensation_retry if compensating else step.retry
        if isinstance(error, (NonRetryableError, *policy.non_retryable_error_types)):
            return FailureKind.DEFINITIVE
        return FailureKind.TRANSIENT

    async def _run_step(self, index: int, attempt: int) -> Event:
        step = self._saga.steps[index]
        ctx = StepContext(
            saga_id=self._saga_id,
            step=step.name,
            attempt=attempt,
            idempotency_key=f"{self._saga_id}:{step.name}",
            results=self._results_view(),
        )
        event: Event
        try:
            value = await _call(step.timeout, step.action, ctx, self._input)
        except _StepTimeout as exc:
            event = self._failed(
                index, attempt, error_info(exc, timed_out=True), FailureKind.TRANSIENT
            )
        except Exception as exc:
            kind = self._classify(step, exc, compensating=False)
            event = self._failed(index, attempt, error_info(exc), kind)
        else:
            try:
                result = encode_payload(value, f"result of step {step.name!r}")
            except PayloadError as exc:
                # It returned, so it took effect: ambiguous, compensated with None.
                event = self._failed(index, attempt, error_info(exc), FailureKind.AMBIGUOUS)
            else:
                event = StepSucceeded(
                    at=self._deps.clock.now(), step=index, attempt=attempt, result=_raw(result)
                )
        return event

    def _failed(self, index: int, attempt: int, error: ErrorInfo, kind: FailureKind) -> StepFailed:
        return StepFailed(
            at=self._deps.clock.now(),
            step=index,
            attempt=attempt,
            error=error,
            kind=kind,
            jitter=self._deps.rng.random(),
        )

    async def _run_compensation(self, index: int, attempt: int) -> Event:
        step = self._saga.steps[index]
        assert step.compensate is not None
        step_state = self.state.steps[index]
        recorded = self._result(index) if step_state.status is StepStatus.SUCCEEDED else None
        ctx = StepContext(
            saga_id=self._saga_id,
            step=step.name,
            attempt=attempt,
            idempotency_key=f"{self._saga_id}:{step.name}:compensate",
            results=self._results_view(),
            compensating=True,
        )
        event: Event
        try:
            await _call(step.compensation_timeout, step.compensate, ctx, self._input, recorded)
        except _StepTimeout as exc:
            event = self._compensation_failed(
                index, attempt, error_info(exc, timed_out=True), FailureKind.TRANSIENT
            )
        except Exception as exc:
            kind = self._classify(step, exc, compensating=True)
            event = self._compensation_failed(index, attempt, error_info(exc), kind)
        else:
            event = CompensationSucceeded(at=self._deps.clock.now(), step=index, attempt=attempt)
        return event

    def _compensation_failed(
        self, index: int, attempt: int, error: ErrorInfo, kind: FailureKind
    ) -> CompensationFailed:
        return CompensationFailed(
            at=self._deps.clock.now(),
            step=index,
            attempt=attempt,
            error=error,
            kind=kind,
            jitter=self._deps.rng.random(),
        )

    async def _sleep_until(self, deadline: float, token: object) -> None:
        await self._deps.clock.sleep_until(deadline)
        await self.ref.tell(_WakeUp(token))


class _StepTimeout(Exception):
    def __init__(self, seconds: float | None) -> None:
        super().__init__(f"attempt timed out after {seconds} s")


async def _call(seconds: float | None, func: Callable[..., Awaitable[Any]], *args: Any) -> Any:
    """Await `func(*args)`, raising `_StepTimeout` after `seconds` (None: no limit)."""
    if seconds is None:
        return await func(*args)
    with anyio.move_on_after(seconds):
        return await func(*args)
    raise _StepTimeout(seconds)


def _raw(data: bytes) -> msgspec.Raw:
    return msgspec.Raw(data) if data != b"null" else NULL
