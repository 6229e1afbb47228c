"""Properties of the pure saga state machine, driven the way `SagaActor` drives it.

A `Driver` plays the saga actor for one instance: it applies an event,
persists the new snapshot (JSON, as a store would) and appends the event to
the history only when `transition` returns a different state object, then
carries out the commands. Rules give the step or compensation in flight an
outcome, fire timers (when due, too early, stray), deliver signals and
cancellations, crash the driver (it is rebuilt from the JSON snapshot alone
and receives `Recovered`), suspend and resume. A ledger records, by
idempotency key, which actions may have taken effect and which compensations
ran. Invariants check the saga guarantees after every rule.

Side effects are modelled on idempotent services: once an action with a
given key has taken effect, a later attempt with the same key cannot be
refused definitively (the service replays the earlier outcome), so a drawn
definitive failure becomes a success then. Without that, "a definitive
failure proves no effect" could not hold and no saga runtime could help.

Signals and cancellations are applied only to sagas that are not
suspended, as the actor does (they wait in the store's inbox meanwhile).
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import msgspec
import pytest
from hypothesis import HealthCheck, Phase, event, settings, target
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from msgspec.structs import replace

from saga import (
    CompensationStatus,
    ErrorInfo,
    FailureKind,
    NonRetryableError,
    OnTimeout,
    RetryPolicy,
    Saga,
    SagaStatus,
    StepStatus,
)
from saga.engine import (
    CancelRequested,
    Command,
    CompensationFailed,
    CompensationSucceeded,
    Event,
    Finish,
    InvalidTransitionError,
    Recovered,
    Resumed,
    RunCompensation,
    RunStep,
    SagaStarted,
    ScheduleWakeup,
    SignalReceived,
    StepFailed,
    StepSucceeded,
    StepWaiting,
    Suspended,
    TimerFired,
    Transition,
    initial_state,
    timeline,
    transition,
)
from saga.store import HistoryEntry, SagaState
from tests.strategies import (
    Outcome,
    SagaShape,
    StepKind,
    Unavailable,
    epochs,
    error_infos,
    jitter_samples,
    outcomes,
    qualified_name,
    saga_shapes,
    sample_results,
    time_steps,
)


def start(saga: Saga, saga_id: str, at: float) -> Transition:
    """A new saga's first transition (the driver's `begin` does the same, and stores it)."""
    return transition(saga, initial_state(saga, saga_id), SagaStarted(at=at))


SOAK = os.environ.get("SAGALOOP_SOAK") == "1"
MAX_INSTANCES = 3
MAX_EXHAUSTING_ROUNDS = 6
"""Transient failures in a row for `Outcome.EXHAUSTED` when the policy never gives up."""

LIVE = frozenset({SagaStatus.RUNNING, SagaStatus.WAITING, SagaStatus.COMPENSATING})
FORWARD = frozenset({SagaStatus.RUNNING, SagaStatus.WAITING})
STOPPED = frozenset(
    {SagaStatus.COMPLETED, SagaStatus.COMPENSATED, SagaStatus.FAILED, SagaStatus.SUSPENDED}
)
MAY_HAVE_TAKEN_EFFECT = frozenset({StepStatus.SUCCEEDED, StepStatus.AMBIGUOUS})
OUTCOME_EVENTS = (StepSucceeded, StepFailed, StepWaiting, CompensationSucceeded, CompensationFailed)
SHAPES = saga_shapes(waiting_steps=True, deadlines=True)

_encoder = msgspec.json.Encoder()
_state_decoder = msgspec.json.Decoder(SagaState)
_event_decoder = msgspec.json.Decoder(Event)

RUN_LINE = re.compile(r"\+\s*\S+s  (step|compensation of) \S+ attempt \d+ (?!failed)")
FINISH_LINE = re.compile(r"\+\s*\S+s  saga (?!started)\w+$")

Run = RunStep | RunCompensation


def in_flight(state: SagaState) -> Run | None:
    """The intent a live snapshot records as running, computed independently of the machine."""
    for index, step in enumerate(state.steps):
        if step.status is StepStatus.RUNNING and state.status is SagaStatus.RUNNING:
            return RunStep(index, step.attempts)
        if step.compensation is CompensationStatus.RUNNING:
            return RunCompensation(index, step.compensation_attempts)
    return None


def failure_status(policy: RetryPolicy, attempt: int, kind: FailureKind) -> StepStatus:
    """Where a failed attempt leaves its step, from the policy alone (no deadline)."""
    attempts_left = policy.maximum_attempts is None or attempt < policy.maximum_attempts
    if kind is FailureKind.TRANSIENT and attempts_left:
        return StepStatus.RETRYING
    return StepStatus.FAILED if kind is FailureKind.DEFINITIVE else StepStatus.AMBIGUOUS


def compensation_failure_status(
    policy: RetryPolicy, attempt: int, kind: FailureKind
) -> CompensationStatus:
    attempts_left = policy.maximum_attempts is None or attempt < policy.maximum_attempts
    if kind is FailureKind.TRANSIENT and attempts_left:
        return CompensationStatus.RETRYING
    return CompensationStatus.FAILED


def fold(saga: Saga, state: SagaState, history: Sequence[HistoryEntry]) -> SagaState:
    """Replay persisted entries; each must change the state and produce its seq."""
    for entry in history:
        folded = transition(saga, state, entry.event).state
        assert folded is not state, "a persisted event must change the state"
        assert folded.seq == entry.seq
        state = folded
    return state


def collapse(keys: Sequence[str]) -> list[str]:
    """Runs of one key (its retries) collapsed to one entry."""
    return [key for position, key in enumerate(keys) if position == 0 or keys[position - 1] != key]


def recorded_only(before: SagaState, after: SagaState, at: float) -> bool:
    """The event was recorded (a new snapshot) and changed nothing else."""
    return after == replace(before, seq=before.seq + 1, updated_at=at)


@dataclass(frozen=True, slots=True)
class Issued:
    command: Command
    compensation_began: bool
    """Whether compensation had begun before this command."""
    event: Event
    """The event whose transition issued it."""


@dataclass(repr=False, eq=False)
class Driver:
    """One saga instance, driven as `SagaActor` drives it."""

    shape: SagaShape
    saga: Saga
    saga_id: str
    max_recoveries: int
    state: SagaState
    snapshot: bytes = b""
    history: list[HistoryEntry] = field(default_factory=list)
    """Persisted (seq, event), each event as decoded from its JSON."""
    folded: SagaState | None = None
    """`initial_state` folded with `history[:folded_upto]`: checked incrementally."""
    folded_upto: int = 0
    running: Run | None = None
    """The step or compensation carried out whose outcome has not come back yet."""
    fresh: bool = True
    """`running` was decided by a new event (not re-issued by a recovery or a resume)."""
    finished: SagaStatus | None = None
    """The status of the last `Finish` carried out (cleared by `Resumed`)."""
    issued: list[Issued] = field(default_factory=list)
    compensation_began: bool = False
    reissues: list[tuple[Command, Command]] = field(default_factory=list)
    """(interrupted command, command re-issued by `Recovered`)."""
    crash_streak: int = 0
    """Recoveries with something in flight since the last progress or resume."""
    effects: Counter[str] = field(default_factory=Counter)
    """Ledger: idempotency key of an action -> times it (may have) taken effect."""
    compensations: list[tuple[str, str]] = field(default_factory=list)
    """Ledger: (idempotency key, how it ended) of every compensation run, in order."""
    inbox: list[tuple[str, str | None, bytes]] = field(default_factory=list)
    """Model of the snapshot's inbox: (name, key, payload) of signals kept for later."""
    keys: set[str] = field(default_factory=set)
    """Model of the signal keys seen."""

    @classmethod
    def started(cls, shape: SagaShape, saga_id: str, max_recoveries: int, at: float) -> Driver:
        saga = shape.build()
        begin = SagaStarted(at=at)
        first = start(saga, saga_id, at)
        assert first == transition(saga, initial_state(saga, saga_id), begin)
        driver = cls(shape, saga, saga_id, max_recoveries, first.state)
        driver.folded = initial_state(saga, saga_id)
        driver.record(first.state, begin)
        driver.carry_out(first, begin)
        return driver

    def __repr__(self) -> str:
        # Short: failure reports print every drawn driver.
        return f"<{self.saga_id} {self.state.status} seq {self.state.seq}>"

    def step_key(self, index: int) -> str:
        return f"{self.saga_id}:{self.saga.steps[index].name}"

    def compensation_key(self, index: int) -> str:
        return f"{self.step_key(index)}:compensate"

    def events(self) -> list[Event]:
        return [entry.event for entry in self.history]

    def record(self, state: SagaState, event: Event) -> None:
        """Persist: the snapshot and the history entry, both as JSON."""
        self.history.append(HistoryEntry(state.seq, _event_decoder.decode(_encoder.encode(event))))
        self.snapshot = _encoder.encode(state)
        self.state = state

    def apply(self, event: Event) -> Transition:
        """What `SagaActor._drive` does: transition, persist if changed, carry out."""
        old = self.state
        result = transition(self.saga, old, event)
        new = result.state
        if new is not old:
            self.record(new, event)
            if new.status in (SagaStatus.COMPENSATING, SagaStatus.COMPENSATED):
                self.compensation_began = True
            if new.status is SagaStatus.FAILED and old.status is SagaStatus.COMPENSATING:
                self.compensation_began = True
            progress = new.steps != old.steps or new.status is not old.status
            if progress and not isinstance(event, Recovered):
                self.crash_streak = 0
        if isinstance(event, Resumed):
            self.finished = None
        self.carry_out(result, event)
        return result

    def carry_out(self, result: Transition, event: Event) -> None:
        # The actor keeps one thing in hand at a time.
        assert len(result.commands) <= 1, result.commands
        run = None
        for command in result.commands:
            self.issued.append(Issued(command, self.compensation_began, event))
            match command:
                case RunStep() | RunCompensation():
                    run = command
                case ScheduleWakeup(at):
                    # The actor schedules from the snapshot's `wake_at`: they must agree.
                    assert at == result.state.wake_at
                case Finish(status):
                    assert status is result.state.status
                    self.finished = status
        if run is not None:
            self.running = run
            self.fresh = not isinstance(event, Recovered | Resumed)
        elif result.state.status not in LIVE or not result.state.in_flight:
            self.running = None

    def compensated_steps(self) -> set[int]:
        return {i.command.step for i in self.issued if isinstance(i.command, RunCompensation)}

    def crash_and_reload(self) -> SagaState:
        """A new incarnation: nothing survives but the persisted snapshot and history."""
        reloaded = _state_decoder.decode(self.snapshot)
        assert reloaded == self.state
        self.state = reloaded
        self.running = None
        return reloaded

    def awaiting(self, state: SagaState) -> list[tuple[int, str]]:
        """(step, signal) of the steps of `state` waiting for a signal."""
        return [
            (index, shape.signal)
            for index, shape in enumerate(self.shape.steps)
            if shape.kind is StepKind.SIGNAL and state.steps[index].status is StepStatus.WAITING
        ]


class SagaMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.drivers: dict[str, Driver] = {}

    # -- helpers -----------------------------------------------------------

    def tick(self, data: st.DataObject) -> float:
        self.now += data.draw(time_steps(), label="clock advance")
        return self.now

    def pick(self, data: st.DataObject, candidates: list[Driver]) -> Driver:
        return data.draw(st.sampled_from(candidates), label="saga")

    def all(self) -> list[Driver]:
        return list(self.drivers.values())

    def running(self) -> list[Driver]:
        return [d for d in self.drivers.values() if d.running is not None]

    def due(self) -> list[Driver]:
        """Live sagas with nothing in flight that wait for a time."""
        return [d for d in self.drivers.values() if self.is_due(d)]

    def is_due(self, driver: Driver) -> bool:
        state = driver.state
        return state.status in LIVE and driver.running is None and state.wake_at is not None

    def not_suspended(self) -> list[Driver]:
        return [d for d in self.drivers.values() if d.state.status is not SagaStatus.SUSPENDED]

    def add_saga(self, data: st.DataObject) -> None:
        shape = data.draw(SHAPES, label="shape")
        max_recoveries = data.draw(st.sampled_from((2, 3, 1, 0)), label="max_recoveries")
        saga_id = f"saga-{len(self.drivers)}"
        driver = Driver.started(shape, saga_id, max_recoveries, self.now)
        assert driver.running == RunStep(0, 1)
        assert driver.state.deadline_at == (
            None if shape.deadline is None else self.now + shape.deadline
        )
        self.drivers[saga_id] = driver

    def took_effect(self, driver: Driver, data: st.DataObject) -> None:
        """The action or compensation in flight may have run (and had its effect) already."""
        running = driver.running
        if not data.draw(st.booleans(), label="took effect"):
            return
        if isinstance(running, RunStep) and self.is_action(driver, running.step):
            driver.effects[driver.step_key(running.step)] += 1
        if isinstance(running, RunCompensation):
            driver.compensations.append((driver.compensation_key(running.step), "interrupted"))

    def is_action(self, driver: Driver, index: int) -> bool:
        return driver.shape.steps[index].kind is StepKind.ACTION

    # -- starting ----------------------------------------------------------

    @initialize(data=st.data(), at=epochs())
    def first_saga(self, data: st.DataObject, at: float) -> None:
        self.now = at
        self.add_saga(data)

    @precondition(lambda self: len(self.drivers) < MAX_INSTANCES)
    @rule(data=st.data())
    def another_saga(self, data: st.DataObject) -> None:
        self.tick(data)
        self.add_saga(data)

    # -- outcomes of steps and compensations ---------------------------------

    @precondition(lambda self: bool(self.running()))
    @rule(data=st.data(), outcome=outcomes())
    def run_pending(self, data: st.DataObject, outcome: Outcome) -> None:
        self.carry_on(data, self.pick(data, self.running()), outcome)

    def carry_on(self, data: st.DataObject, driver: Driver, outcome: Outcome) -> None:
        """The step or compensation in hand ends with `outcome` (a wait begins)."""
        command = driver.running
        if isinstance(command, RunStep) and not self.is_action(driver, command.step):
            self.begin_wait(data, driver, command)
        elif outcome is Outcome.EXHAUSTED:
            self.exhaust(data, driver)
        elif isinstance(command, RunStep):
            self.finish_step(data, driver, command, outcome)
        elif isinstance(command, RunCompensation):
            self.finish_compensation(data, driver, command, outcome)

    @precondition(lambda self: bool(self.running()))
    @rule(data=st.data(), steps=st.integers(1, 4))
    def succeed_pending(self, data: st.DataObject, steps: int) -> None:
        """Most calls succeed, several in a row: without this few sagas would get far."""
        driver = self.pick(data, self.running())
        for _ in range(steps):
            if driver.running is None:
                return
            self.carry_on(data, driver, Outcome.SUCCESS)

    def begin_wait(self, data: st.DataObject, driver: Driver, command: RunStep) -> None:
        """A waiting step's turn: the actor computes when the wait ends, as `StepWaiting`."""
        index = command.step
        shape = driver.shape.steps[index]
        at = self.tick(data)
        if shape.kind is StepKind.SLEEP:
            until: float | None = at + shape.seconds
        else:
            until = None if shape.signal_timeout is None else at + shape.signal_timeout
        queued = [entry for entry in driver.inbox if entry[0] == shape.signal]
        before = driver.state
        driver.apply(StepWaiting(at=at, step=index, attempt=command.attempt, until=until))
        step = driver.state.steps[index]
        if shape.kind is StepKind.SIGNAL and queued:
            # It arrived before the saga got here: taken from the inbox, oldest first.
            driver.inbox.remove(queued[0])
            assert step.status is StepStatus.SUCCEEDED
            assert bytes(step.result) == queued[0][2]
        else:
            assert step.status is StepStatus.WAITING
            assert step.wait_until == until
            assert driver.state.status is SagaStatus.WAITING
            assert driver.state.wake_at == min(
                (t for t in (until, before.deadline_at) if t is not None), default=None
            )

    def exhaust(self, data: st.DataObject, driver: Driver) -> None:
        """Retryable failures, retry after retry, until the policy gives up (or a cap)."""
        first = driver.running
        assert first is not None
        for _ in range(MAX_EXHAUSTING_ROUNDS):
            command = driver.running
            if not isinstance(command, type(first)) or command.step != first.step:
                return  # the policy gave up (or the deadline passed)
            if isinstance(command, RunStep):
                self.finish_step(data, driver, command, Outcome.TRANSIENT)
            elif isinstance(command, RunCompensation):
                self.finish_compensation(data, driver, command, Outcome.TRANSIENT)
            if self.is_due(driver):
                wake_at = driver.state.wake_at
                assert wake_at is not None
                self.now = max(self.now, wake_at)
                driver.apply(TimerFired(at=self.now))

    def maybe_wake(self, data: st.DataObject, driver: Driver) -> None:
        """Often the next thing after a retryable failure is its wake-up (or an early one)."""
        when = data.draw(st.sampled_from((None, "early", "due")), label="then wake")
        if when is not None and self.is_due(driver):
            self.wake(data, driver, early=when == "early")

    def failure(
        self, data: st.DataObject, outcome: Outcome, policy: RetryPolicy
    ) -> tuple[FailureKind, ErrorInfo]:
        if outcome is Outcome.TIMEOUT:
            return FailureKind.TRANSIENT, data.draw(error_infos(timed_out=True), label="error")
        if outcome is Outcome.AMBIGUOUS:
            return FailureKind.AMBIGUOUS, data.draw(error_infos(), label="error")
        if outcome is Outcome.DEFINITIVE:
            error_type = data.draw(
                st.sampled_from([*policy.non_retryable_error_types, NonRetryableError]),
                label="non-retryable type",
            )
            return FailureKind.DEFINITIVE, ErrorInfo(type=qualified_name(error_type), message="no")
        return FailureKind.TRANSIENT, ErrorInfo(type=qualified_name(Unavailable), message="503")

    def finish_step(
        self, data: st.DataObject, driver: Driver, command: RunStep, outcome: Outcome
    ) -> None:
        index, attempt = command.step, command.attempt
        key = driver.step_key(index)
        if outcome is Outcome.DEFINITIVE and driver.effects[key]:
            outcome = Outcome.SUCCESS  # an idempotent service replays what it already did
        at = self.tick(data)
        before = driver.state
        past_deadline = before.deadline_at is not None and at >= before.deadline_at
        if outcome is Outcome.SUCCESS:
            driver.effects[key] += 1
            result = data.draw(sample_results(), label="result")
            driver.apply(StepSucceeded(at=at, step=index, attempt=attempt, result=result))
            step = driver.state.steps[index]
            assert step.status is StepStatus.SUCCEEDED
            assert bytes(step.result) == bytes(result)
            if past_deadline and index + 1 < len(before.steps):
                assert driver.state.status in (SagaStatus.COMPENSATING, SagaStatus.COMPENSATED)
            return
        policy = driver.saga.steps[index].retry
        kind, error = self.failure(data, outcome, policy)
        if kind is not FailureKind.DEFINITIVE and data.draw(st.booleans(), label="took effect"):
            driver.effects[key] += 1
        jitter = data.draw(jitter_samples(), label="jitter")
        driver.apply(
            StepFailed(at=at, step=index, attempt=attempt, error=error, kind=kind, jitter=jitter)
        )
        step = driver.state.steps[index]
        expected = failure_status(policy, attempt, kind)
        if past_deadline and expected is StepStatus.RETRYING:
            expected = StepStatus.AMBIGUOUS  # no retry after the deadline
        assert step.status is expected
        assert step.error == error
        if step.status is StepStatus.RETRYING:
            assert step.retry_at is not None
            assert step.retry_at >= at
            assert driver.state.wake_at is not None
            assert driver.state.wake_at <= step.retry_at
            self.maybe_wake(data, driver)
        else:
            assert driver.state.failed_step == index
            assert driver.state.failure == error

    def finish_compensation(
        self, data: st.DataObject, driver: Driver, command: RunCompensation, outcome: Outcome
    ) -> None:
        index, attempt = command.step, command.attempt
        key = driver.compensation_key(index)
        at = self.tick(data)
        if outcome is Outcome.SUCCESS:
            driver.compensations.append((key, "succeeded"))
            driver.apply(CompensationSucceeded(at=at, step=index, attempt=attempt))
            assert driver.state.steps[index].compensation is CompensationStatus.COMPENSATED
            return
        driver.compensations.append((key, "failed"))
        policy = driver.saga.steps[index].compensation_retry
        kind, error = self.failure(data, outcome, policy)
        jitter = data.draw(jitter_samples(), label="jitter")
        driver.apply(
            CompensationFailed(
                at=at, step=index, attempt=attempt, error=error, kind=kind, jitter=jitter
            )
        )
        step = driver.state.steps[index]
        assert step.compensation is compensation_failure_status(policy, attempt, kind)
        assert step.compensation_error == error
        if step.compensation is CompensationStatus.FAILED:
            assert driver.state.status is SagaStatus.FAILED
        if step.compensation is CompensationStatus.RETRYING:
            self.maybe_wake(data, driver)

    # -- timers --------------------------------------------------------------

    @precondition(lambda self: bool(self.due()))
    @rule(data=st.data(), early=st.booleans())
    def fire_timer(self, data: st.DataObject, early: bool) -> None:
        self.wake(data, self.pick(data, self.due()), early)

    def wake(self, data: st.DataObject, driver: Driver, early: bool) -> None:
        """The saga's wake-up fires: when due, or a little early."""
        before = driver.state
        due = before.wake_at
        assert due is not None
        if early:
            # The clock reads before the due time (a wake-up a little early, clock skew).
            at = due - data.draw(st.floats(min_value=1e-3, max_value=10.0), label="early")
            result = driver.apply(TimerFired(at=at))
            assert result.state is before
            assert result.commands == (ScheduleWakeup(due),)
            return
        self.now = max(self.now, due) + data.draw(time_steps(), label="late")
        result = driver.apply(TimerFired(at=self.now))
        # Something was due, so something happens: a no-op here would make the
        # actor wake up again at once, forever.
        assert result.state is not before
        after = result.state
        deadline = before.deadline_at
        if before.status in FORWARD and deadline is not None and self.now >= deadline:
            assert after.status not in FORWARD
            assert after.failure is not None
        for command in result.commands:
            if isinstance(command, RunStep) and before.steps[command.step].attempts:
                # A retry: the next attempt of a step that was backing off.
                assert before.steps[command.step].status is StepStatus.RETRYING
                assert command.attempt == before.steps[command.step].attempts + 1
            if isinstance(command, RunStep) and not before.steps[command.step].attempts:
                # The step after a wait that ended.
                assert command.attempt == 1
                assert before.steps[command.step - 1].status is StepStatus.WAITING
            if isinstance(command, RunCompensation) and command.attempt > 1:
                step = before.steps[command.step]
                assert step.compensation is CompensationStatus.RETRYING
                assert command.attempt == step.compensation_attempts + 1

    # -- signals and cancellation --------------------------------------------

    @precondition(lambda self: bool(self.not_suspended()))
    @rule(data=st.data(), cancellation=st.sampled_from((False, False, False, True)))
    def deliver(self, data: st.DataObject, cancellation: bool) -> None:
        """The inbox delivers an item: a signal, or (less often) a cancellation.

        Never to a suspended saga: the actor leaves them in the inbox then.
        """
        driver = self.pick(data, self.not_suspended())
        if cancellation and driver.state.status in FORWARD:
            self.cancel(data, driver)
        else:
            self.send_signal(data, driver)

    def send_signal(self, data: st.DataObject, driver: Driver) -> None:
        name = data.draw(st.sampled_from([*driver.shape.signals, "stray"]), label="signal")
        key = data.draw(st.none() | st.sampled_from(("k1", "k2")), label="key")
        payload = data.draw(sample_results(), label="payload")
        before = driver.state
        at = self.tick(data)
        result = driver.apply(SignalReceived(at=at, name=name, payload=payload, key=key))
        after = result.state
        if before.status.is_terminal or (key is not None and key in before.signal_keys):
            assert recorded_only(before, after, at)  # recorded, and ignored
            assert result.commands == ()
            return
        if key is not None:
            driver.keys.add(key)
        waiting = [index for index, signal in driver.awaiting(before) if signal == name]
        if waiting:
            step = after.steps[waiting[0]]
            assert step.status is StepStatus.SUCCEEDED
            assert bytes(step.result) == bytes(payload)
            assert after.inbox == before.inbox
        else:
            driver.inbox.append((name, key, bytes(payload)))
            assert after.steps == before.steps
            assert result.commands == ()

    def cancel(self, data: st.DataObject, driver: Driver) -> None:
        """An operator cancels: before the step in hand ran, or while it runs."""
        before_it_ran = data.draw(st.booleans(), label="before the step ran")
        before = driver.state
        at = self.tick(data)
        running = driver.running
        # The driver tells the machine what it did not start; the machine decides whether
        # that step never ran at all (its first attempt, not carried over an interruption).
        not_started = running.step if before_it_ran and isinstance(running, RunStep) else None
        never_ran = isinstance(running, RunStep) and not_started is not None
        never_ran = never_ran and running is not None and running.attempt == 1 and driver.fresh
        if not never_ran:
            self.took_effect(driver, data)
        result = driver.apply(CancelRequested(at=at, reason="operator", not_started=not_started))
        after = result.state
        assert after.status in (SagaStatus.COMPENSATING, SagaStatus.COMPENSATED)
        assert after.failure == ErrorInfo(type="saga.Cancelled", message="operator")
        for index, (old, new) in enumerate(zip(before.steps, after.steps, strict=True)):
            if old.status is StepStatus.WAITING:
                assert new.status is StepStatus.FAILED  # a wait takes no effect
            elif index == not_started and never_ran:
                assert new.status is StepStatus.PENDING  # its action never ran
            elif old.status in (StepStatus.RUNNING, StepStatus.RETRYING):
                assert new.status is StepStatus.AMBIGUOUS  # it may have run
            else:
                assert new.status is old.status

    # -- crashes, suspension, resumption -------------------------------------

    @rule(
        data=st.data(),
        then=st.none() | outcomes(),
        escalate=st.sampled_from((False, False, False, True)),
    )
    def crash(self, data: st.DataObject, then: Outcome | None, escalate: bool) -> None:
        """The process dies at this point; a new actor starts from the last snapshot.

        The command in hand may or may not have run (and taken effect); an
        outcome computed but not yet persisted is lost the same way. `then`:
        the re-issued attempt's outcome, if it gets one before anything else.
        `escalate`: the actor crashed too often; its supervisor suspends the saga.
        """
        driver = self.pick(data, self.all())
        if escalate and driver.state.status in LIVE:
            self.suspend(data, driver)
            return
        interrupted = driver.running
        if interrupted is not None:
            self.took_effect(driver, data)
        before = driver.crash_and_reload()
        if interrupted is not None:
            driver.crash_streak += 1
        result = driver.apply(Recovered(at=self.tick(data), max_recoveries=driver.max_recoveries))
        if interrupted is None:
            # Waiting, or stopped: nothing to persist; the same wake-up (or nothing).
            assert result.state is before
            wake_at = before.wake_at if before.status in LIVE else None
            assert result.commands == (() if wake_at is None else (ScheduleWakeup(wake_at),))
            return
        if driver.crash_streak > driver.max_recoveries:
            assert result.state.status is SagaStatus.SUSPENDED
            assert result.state.resume_status is before.status
            assert result.state.suspended_reason
            assert result.commands == (Finish(SagaStatus.SUSPENDED),)
        else:
            assert result.state.recoveries == driver.crash_streak
            assert len(result.commands) == 1
            driver.reissues.append((interrupted, result.commands[0]))
            if then is not None:
                self.carry_on(data, driver, then)

    def suspend(self, data: st.DataObject, driver: Driver) -> None:
        if driver.running is not None:
            self.took_effect(driver, data)
        before = driver.state
        result = driver.apply(Suspended(at=self.tick(data), reason="kept crashing"))
        assert result.state.status is SagaStatus.SUSPENDED
        assert result.state.resume_status is before.status
        assert result.state.suspended_reason == "kept crashing"
        assert result.state.steps == before.steps
        assert result.commands == (Finish(SagaStatus.SUSPENDED),)

    @precondition(
        lambda self: any(d.state.status is SagaStatus.SUSPENDED for d in self.drivers.values())
    )
    @rule(data=st.data(), then=st.none() | outcomes())
    def resume(self, data: st.DataObject, then: Outcome | None) -> None:
        suspended = [d for d in self.drivers.values() if d.state.status is SagaStatus.SUSPENDED]
        driver = self.pick(data, suspended)
        before = driver.state
        assert before.resume_status is not None
        result = driver.apply(Resumed(at=self.tick(data)))
        after = result.state
        assert after.status is before.resume_status
        assert after.resume_status is None
        assert after.suspended_reason is None
        assert after.recoveries == 0
        # The same steps; an in-flight intent is marked interrupted (its action may have run).
        assert [replace(s, interrupted=False) for s in after.steps] == [
            replace(s, interrupted=False) for s in before.steps
        ]
        for step in after.steps:
            assert step.interrupted or step.status is not StepStatus.RUNNING
        # It carries on where it stopped: the same attempt, or the same wake-up.
        intent = in_flight(after)
        if intent is not None:
            assert result.commands == (intent,)
        elif after.wake_at is not None:
            assert result.commands == (ScheduleWakeup(after.wake_at),)
        else:
            assert result.commands == ()
        if then is not None and driver.running is not None:
            self.carry_on(data, driver, then)

    # -- events that must be refused -----------------------------------------

    @rule(
        data=st.data(),
        kind=st.sampled_from(OUTCOME_EVENTS),
        step=st.integers(-1, 8),
        attempt=st.integers(0, 6),
    )
    def stale_events(
        self,
        data: st.DataObject,
        kind: type[
            StepSucceeded | StepFailed | StepWaiting | CompensationSucceeded | CompensationFailed
        ],
        step: int,
        attempt: int,
    ) -> None:
        """What no driver should send is refused; what a driver may send late is ignored.

        The machine is pure, so these checks call `transition` and drop the result.
        """
        driver = self.pick(data, self.all())
        state, at = driver.state, self.now
        error = ErrorInfo(type="x", message="stale")
        legitimate: Run | None = None
        stale: Event
        if kind is StepSucceeded:
            stale, legitimate = (
                StepSucceeded(at=at, step=step, attempt=attempt),
                RunStep(step, attempt),
            )
        elif kind is StepFailed:
            stale = StepFailed(
                at=at, step=step, attempt=attempt, error=error, kind=FailureKind.TRANSIENT
            )
            legitimate = RunStep(step, attempt)
        elif kind is StepWaiting:
            stale = StepWaiting(at=at, step=step, attempt=attempt)
            if 0 <= step < len(driver.shape.steps) and not self.is_action(driver, step):
                legitimate = RunStep(step, attempt)
        elif kind is CompensationSucceeded:
            stale = CompensationSucceeded(at=at, step=step, attempt=attempt)
            legitimate = RunCompensation(step, attempt)
        else:
            stale = CompensationFailed(
                at=at, step=step, attempt=attempt, error=error, kind=FailureKind.TRANSIENT
            )
            legitimate = RunCompensation(step, attempt)
        # An outcome of anything but the command in hand is refused.
        if legitimate is None or driver.running != legitimate:
            with pytest.raises(InvalidTransitionError):
                transition(driver.saga, state, stale)
        with pytest.raises(InvalidTransitionError):
            transition(driver.saga, state, SagaStarted(at=at))
        late_cancel = CancelRequested(at=at, reason="late")
        if state.status is SagaStatus.SUSPENDED:
            # They wait in the store's inbox until the saga is resumed.
            with pytest.raises(InvalidTransitionError):
                transition(driver.saga, state, late_cancel)
            with pytest.raises(InvalidTransitionError):
                transition(driver.saga, state, SignalReceived(at=at, name="approve"))
        else:
            with pytest.raises(InvalidTransitionError):
                transition(driver.saga, state, Resumed(at=at))
        if state.status not in FORWARD | {SagaStatus.SUSPENDED}:
            # Rolling back already, or ended: a cancellation is only recorded.
            recorded = transition(driver.saga, state, late_cancel)
            assert recorded_only(state, recorded.state, at)
            assert recorded.commands == ()
        if state.status not in LIVE:
            with pytest.raises(InvalidTransitionError):
                transition(driver.saga, state, Suspended(at=at, reason="late"))
        # A wake-up while a step runs (an old timer), or for a stopped saga, changes nothing.
        if driver.running is not None or state.status not in LIVE:
            later = at + data.draw(time_steps(1e6), label="timer at")
            ignored = transition(driver.saga, state, TimerFired(at=later))
            assert ignored.state is state
            assert ignored.commands == ()

    # -- at the end of each run ---------------------------------------------

    def teardown(self) -> None:
        # Steer generation towards runs that compensate several steps: they are
        # rare by chance, and they are where ordering bugs show.
        compensated = max(len(d.compensated_steps()) for d in self.drivers.values())
        target(float(compensated), label="steps compensated in one saga")
        for driver in self.drivers.values():
            rebuilt = fold(driver.saga, initial_state(driver.saga, driver.saga_id), driver.history)
            assert rebuilt == _state_decoder.decode(driver.snapshot)
            self.check_timeline(driver)
            # Shown by `pytest --hypothesis-show-statistics`: how far the runs got.
            event(f"saga ended {driver.state.status}")
            if driver.reissues:
                event("an interrupted attempt was re-issued")
            if driver.state.failure is not None:
                event(f"failure {driver.state.failure.type.rpartition('.')[2]}")
            event(f"steps compensated: {min(len(driver.compensated_steps()), 2)}")

    def check_timeline(self, driver: Driver) -> None:
        """The timeline replays the history: one line per attempt started, per finish."""
        lines = timeline(driver.saga, driver.saga_id, driver.events())
        assert lines[0].endswith("saga started")
        run_lines = [line for line in lines if RUN_LINE.match(line)]
        runs = [i for i in driver.issued if isinstance(i.command, RunStep | RunCompensation)]
        assert len(run_lines) == len(runs)
        finish_lines = [line for line in lines if FINISH_LINE.match(line)]
        assert len(finish_lines) == sum(isinstance(i.command, Finish) for i in driver.issued)

    # -- invariants ------------------------------------------------------------

    @invariant()
    def history_folds_into_the_snapshot(self) -> None:
        for driver in self.drivers.values():
            seqs = [entry.seq for entry in driver.history]
            assert seqs == list(range(1, len(seqs) + 1))
            assert driver.state.seq == len(seqs)
            # The machine is pure, so folding only the new entries onto the
            # previous fold is folding the whole history (teardown does that too).
            assert driver.folded is not None
            driver.folded = fold(driver.saga, driver.folded, driver.history[driver.folded_upto :])
            driver.folded_upto = len(driver.history)
            assert driver.folded == driver.state == _state_decoder.decode(driver.snapshot)

    @invariant()
    def the_driver_does_what_the_snapshot_says(self) -> None:
        for driver in self.drivers.values():
            state = driver.state
            active = [
                index
                for index, step in enumerate(state.steps)
                if step.status in (StepStatus.RUNNING, StepStatus.RETRYING, StepStatus.WAITING)
                or step.compensation in (CompensationStatus.RUNNING, CompensationStatus.RETRYING)
            ]
            assert len(active) <= 1, "one step (or compensation) at a time"
            if state.status in STOPPED:
                assert driver.finished is state.status
                assert driver.running is None
                assert driver.issued[-1].command == Finish(state.status)
                continue
            assert driver.finished is None
            # Write-ahead: what runs is what the snapshot records.
            assert driver.running == in_flight(state)
            if driver.running is None:
                # Nothing runs: then something is due at a time, or a signal is awaited.
                awaited = [
                    index
                    for index, _ in driver.awaiting(state)
                    if state.steps[index].wait_until is None
                ]
                assert state.wake_at is not None or awaited, state

    @invariant()
    def steps_run_in_order(self) -> None:
        for driver in self.drivers.values():
            statuses = [step.status for step in driver.state.steps]
            done = 0
            while done < len(statuses) and statuses[done] is StepStatus.SUCCEEDED:
                done += 1
            rest = statuses[done + 1 :]
            assert all(status is StepStatus.PENDING for status in rest), statuses
            started = [i.command.step for i in driver.issued if isinstance(i.command, RunStep)]
            assert started == sorted(started)

    @invariant()
    def attempts_are_counted_by_outcomes_not_crashes(self) -> None:
        for driver in self.drivers.values():
            events = driver.events()
            for index, step in enumerate(driver.state.steps):
                issued = sorted(
                    {
                        i.command.attempt
                        for i in driver.issued
                        if isinstance(i.command, RunStep) and i.command.step == index
                    }
                )
                if step.status is StepStatus.PENDING:
                    assert step.attempts == 0
                    assert issued in ([], [1])  # [1]: cancelled before its action ran
                else:
                    assert issued == list(range(1, step.attempts + 1))
                ended = [
                    e.attempt
                    for e in events
                    if isinstance(e, StepSucceeded | StepFailed | StepWaiting) and e.step == index
                ]
                assert ended == list(range(1, len(ended) + 1))
                assert len(ended) in (step.attempts, step.attempts - 1)
                if step.status in (StepStatus.RETRYING, StepStatus.FAILED, StepStatus.WAITING):
                    assert len(ended) == step.attempts
                compensated = [
                    e.attempt
                    for e in events
                    if isinstance(e, CompensationSucceeded | CompensationFailed) and e.step == index
                ]
                assert compensated == list(range(1, len(compensated) + 1))
                running = 1 if step.compensation is CompensationStatus.RUNNING else 0
                assert step.compensation_attempts == len(compensated) + running
            for interrupted, reissued in driver.reissues:
                assert reissued == interrupted, "a crash must not cost an attempt"

    @invariant()
    def recoveries_without_progress_suspend(self) -> None:
        for driver in self.drivers.values():
            state = driver.state
            if state.status in LIVE:
                assert state.recoveries == driver.crash_streak
                assert driver.crash_streak <= driver.max_recoveries
            if driver.crash_streak > driver.max_recoveries:
                assert state.status is SagaStatus.SUSPENDED

    @invariant()
    def no_forward_step_once_compensation_began_or_the_deadline_passed(self) -> None:
        for driver in self.drivers.values():
            deadline = driver.state.deadline_at
            for issued in driver.issued:
                if not isinstance(issued.command, RunStep):
                    continue
                assert not issued.compensation_began, issued
                if deadline is not None and issued.event.at >= deadline:
                    # Only the same attempt again, after a crash or a resume.
                    assert isinstance(issued.event, Recovered | Resumed), issued

    @invariant()
    def compensations_undo_exactly_what_may_have_taken_effect(self) -> None:
        for driver in self.drivers.values():
            saga, state = driver.saga, driver.state
            for index, step in enumerate(state.steps):
                if driver.effects[driver.step_key(index)]:
                    # It took effect: it must never be taken as "proven no effect".
                    assert step.status not in (StepStatus.PENDING, StepStatus.FAILED)
            expected = [
                driver.compensation_key(index)
                for index in reversed(range(len(state.steps)))
                if state.steps[index].status in MAY_HAVE_TAKEN_EFFECT
                and saga.steps[index].compensate is not None
            ]
            ran = collapse([key for key, _ in driver.compensations])
            issued = collapse(
                [
                    driver.compensation_key(i.command.step)
                    for i in driver.issued
                    if isinstance(i.command, RunCompensation)
                ]
            )
            if not driver.compensation_began:
                assert not issued
                assert not ran
                continue
            # Newest first, each key in one block (retries of the same key), only
            # for steps that may have taken effect and have a compensation.
            assert issued == expected[: len(issued)], (issued, expected)
            assert ran == issued[: len(ran)]
            completed = [key for key, how in driver.compensations if how == "succeeded"]
            assert len(completed) == len(set(completed)), "a compensation completed twice"
            for position, (key, how) in enumerate(driver.compensations):
                if how == "succeeded":
                    later = {k for k, _ in driver.compensations[position + 1 :]}
                    assert key not in later, "a completed compensation ran again"
            if state.status is SagaStatus.COMPENSATED:
                assert issued == expected
                assert completed == expected
                for index, step in enumerate(state.steps):
                    done = driver.compensation_key(index) in expected
                    assert (step.compensation is CompensationStatus.COMPENSATED) is done

    @invariant()
    def terminal_outcomes_mean_what_they_say(self) -> None:
        for driver in self.drivers.values():
            state = driver.state
            if state.status is SagaStatus.COMPLETED:
                assert all(step.status is StepStatus.SUCCEEDED for step in state.steps)
                assert all(step.compensation is CompensationStatus.NONE for step in state.steps)
                assert not driver.compensation_began
                assert not driver.compensations
                for index, shape in enumerate(driver.shape.steps):
                    assert (
                        shape.kind is not StepKind.ACTION or driver.effects[driver.step_key(index)]
                    )
                assert state.failure is None
            if state.status is SagaStatus.FAILED:
                failed = [s for s in state.steps if s.compensation is CompensationStatus.FAILED]
                if not failed:
                    # Only a signal wait that timed out with `OnTimeout.FAIL` ends the
                    # saga failed with nothing compensated.
                    assert state.failed_step is not None
                    shape = driver.shape.steps[state.failed_step]
                    assert shape.kind is StepKind.SIGNAL
                    assert shape.on_timeout is OnTimeout.FAIL
                    assert not driver.compensation_began
                else:
                    assert len(failed) == 1
            if state.status in (SagaStatus.COMPENSATING, SagaStatus.COMPENSATED):
                assert state.failure is not None

    @invariant()
    def signals_are_kept_until_awaited_and_deduplicated(self) -> None:
        for driver in self.drivers.values():
            state = driver.state
            inbox = [(s.name, s.key, bytes(s.payload)) for s in state.inbox]
            assert inbox == driver.inbox
            assert len(state.signal_keys) == len(set(state.signal_keys))
            assert set(state.signal_keys) == driver.keys
            # A step never waits for a signal that is already there.
            for _, signal in driver.awaiting(state):
                assert signal not in {name for name, _, _ in driver.inbox}


# The default run steers towards deep runs with `target()` (see `teardown`); a
# soak run explores broadly instead: targeting would spend half its budget
# polishing one kind of run. No "explain" phase: slow, and mute for state machines.
_PHASES = [Phase.explicit, Phase.generate, Phase.shrink]
SagaMachine.TestCase.settings = settings(
    max_examples=3000 if SOAK else 200,
    stateful_step_count=80 if SOAK else 40,
    deadline=None,
    phases=_PHASES if SOAK else [*_PHASES, Phase.target],
    # No example database: with `target()` it keeps a Pareto front of runs that
    # costs more than the runs. A failure prints its steps and a blob to replay.
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# A failing run shrinks for up to Hypothesis's five minutes: let it report.
TestSagaMachine = pytest.mark.timeout(1800 if SOAK else 600)(SagaMachine.TestCase)
