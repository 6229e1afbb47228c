"""Properties of the pure saga state machine, driven the way `SagaActor` drives it.

A `Driver` plays the saga actor for one instance: it applies an event,
persists the new snapshot (JSON, as a store would) and appends the event to
the history only when `transition` returns a different state object, then
carries out the commands. Rules give the pending command an outcome, fire
timers (on time, too early, stray), crash the driver (it is rebuilt from the
JSON snapshot alone and receives `Recovered`), suspend and resume. A ledger
records which actions may have taken effect and which compensations ran, by
idempotency key. Invariants check the saga guarantees after every rule.

The side effects are modelled on idempotent services: once an action with a
given key has taken effect, a later attempt with the same key cannot be
refused definitively (the service replays the earlier outcome), so a drawn
definitive failure becomes a success then. Without that, "a definitive
failure proves no effect" would not hold and no saga runtime could help.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import msgspec
import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from saga import (
    Command,
    CompensationFailed,
    CompensationStatus,
    CompensationSucceeded,
    ErrorInfo,
    Event,
    FailureKind,
    Finish,
    InvalidTransitionError,
    NonRetryableError,
    Recovered,
    Resumed,
    RetryPolicy,
    RunCompensation,
    RunStep,
    Saga,
    SagaStarted,
    SagaState,
    SagaStatus,
    ScheduleWakeup,
    StepFailed,
    StepStatus,
    StepSucceeded,
    Suspended,
    TimerFired,
    Transition,
    initial_state,
    start,
    transition,
)
from saga._timeline import timeline
from tests.strategies import (
    Outcome,
    Unavailable,
    epochs,
    error_infos,
    jitter_samples,
    outcomes,
    qualified_name,
    raw_results,
    saga_shapes,
    time_steps,
)

SOAK = os.environ.get("SAGALOOP_SOAK") == "1"
MAX_INSTANCES = 3
MAX_EXHAUSTING_ROUNDS = 6
"""Transient failures in a row for `Outcome.EXHAUSTED` when the policy never gives up."""

LIVE = frozenset({SagaStatus.RUNNING, SagaStatus.WAITING, SagaStatus.COMPENSATING})
STOPPED = frozenset(
    {SagaStatus.COMPLETED, SagaStatus.COMPENSATED, SagaStatus.FAILED, SagaStatus.SUSPENDED}
)
MAY_HAVE_TAKEN_EFFECT = frozenset({StepStatus.SUCCEEDED, StepStatus.AMBIGUOUS})
OUTCOME_EVENTS = (StepSucceeded, StepFailed, CompensationSucceeded, CompensationFailed)

_encoder = msgspec.json.Encoder()
_state_decoder = msgspec.json.Decoder(SagaState)
_event_decoder = msgspec.json.Decoder(Event)

RUN_LINE = re.compile(r"\+\s*\S+s  (step|compensation of) \w+ attempt \d+ started")
FINISH_LINE = re.compile(r"\+\s*\S+s  saga (?!started)\w+$")


def intent(state: SagaState) -> Command | None:
    """What a snapshot says is in flight or due, computed independently of the machine."""
    for index, step in enumerate(state.steps):
        if step.status is StepStatus.RUNNING:
            return RunStep(index, step.attempts)
        if step.compensation is CompensationStatus.RUNNING:
            return RunCompensation(index, step.compensation_attempts)
        if step.status is StepStatus.RETRYING:
            assert step.retry_at is not None
            return ScheduleWakeup(step.retry_at)
        if step.compensation is CompensationStatus.RETRYING:
            assert step.compensation_retry_at is not None
            return ScheduleWakeup(step.compensation_retry_at)
    return None


def failure_status(policy: RetryPolicy, attempt: int, kind: FailureKind) -> StepStatus:
    """Where a failed attempt leaves its step, from the policy alone."""
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


def collapse(keys: Sequence[str]) -> list[str]:
    """Runs of one key (its retries) collapsed to one entry."""
    return [key for position, key in enumerate(keys) if position == 0 or keys[position - 1] != key]


@dataclass
class Driver:
    """One saga instance, driven as `SagaActor` drives it."""

    saga: Saga
    saga_id: str
    max_recoveries: int
    state: SagaState
    snapshot: bytes
    history: list[tuple[int, bytes]] = field(default_factory=list)
    pending: Command | None = None
    """The command carried out whose outcome (or wake-up) has not come back yet."""
    finished: SagaStatus | None = None
    """The status of the last `Finish` carried out (cleared by `Resumed`)."""
    issued: list[tuple[Command, bool]] = field(default_factory=list)
    """Every command carried out, and whether compensation had begun before it."""
    compensation_began: bool = False
    reissues: list[tuple[Command, Command]] = field(default_factory=list)
    """(interrupted command, command re-issued by `Recovered`)."""
    crash_streak: int = 0
    """Recoveries with something in flight since the last outcome or resume."""
    effects: Counter[str] = field(default_factory=Counter)
    """Ledger: idempotency key of an action -> times it (may have) taken effect."""
    compensations: list[tuple[str, str]] = field(default_factory=list)
    """Ledger: (idempotency key, how it ended) of every compensation run, in order."""

    @classmethod
    def started(cls, saga: Saga, saga_id: str, max_recoveries: int, at: float) -> Driver:
        event = SagaStarted(at=at)
        first = start(saga, saga_id, at)
        assert first == transition(saga, initial_state(saga, saga_id), event)
        driver = cls(
            saga=saga,
            saga_id=saga_id,
            max_recoveries=max_recoveries,
            state=first.state,
            snapshot=_encoder.encode(first.state),
        )
        driver.history.append((first.state.seq, _encoder.encode(event)))
        driver.carry_out(first.commands)
        return driver

    def step_key(self, index: int) -> str:
        return f"{self.saga_id}:{self.saga.steps[index].name}"

    def compensation_key(self, index: int) -> str:
        return f"{self.step_key(index)}:compensate"

    def events(self) -> list[Event]:
        return [_event_decoder.decode(data) for _, data in self.history]

    def apply(self, event: Event) -> Transition:
        """What `SagaActor._apply` does: transition, persist if changed, carry out."""
        old = self.state
        result = transition(self.saga, old, event)
        # The actor keeps one token: a second command would orphan the first.
        assert len(result.commands) <= 1, result.commands
        self.pending = None  # the event consumed the outstanding outcome or wake-up
        if result.state is not old:
            self.history.append((result.state.seq, _encoder.encode(event)))
            self.snapshot = _encoder.encode(result.state)
            self.state = result.state
            if result.state.status in (
                SagaStatus.COMPENSATING,
                SagaStatus.COMPENSATED,
                SagaStatus.FAILED,
            ):
                self.compensation_began = True
        if isinstance(event, (*OUTCOME_EVENTS, Resumed)):
            self.crash_streak = 0
        if isinstance(event, Resumed):
            self.finished = None
        self.carry_out(result.commands)
        return result

    def carry_out(self, commands: Sequence[Command]) -> None:
        for command in commands:
            self.issued.append((command, self.compensation_began))
            if isinstance(command, Finish):
                self.finished = command.status
                self.pending = None
            else:
                self.pending = command

    def crash_and_reload(self) -> SagaState:
        """A new incarnation: nothing survives but the persisted snapshot and history."""
        reloaded = _state_decoder.decode(self.snapshot)
        assert reloaded == self.state
        self.state = reloaded
        self.pending = None
        return reloaded


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

    def live(self) -> list[Driver]:
        return [d for d in self.drivers.values() if d.state.status in LIVE]

    def with_pending(self, kind: type | tuple[type, ...]) -> list[Driver]:
        return [d for d in self.drivers.values() if isinstance(d.pending, kind)]

    def add_saga(self, data: st.DataObject) -> None:
        shape = data.draw(saga_shapes(), label="shape")
        max_recoveries = data.draw(st.integers(0, 3), label="max_recoveries")
        saga_id = f"saga-{len(self.drivers)}"
        driver = Driver.started(shape.build(), saga_id, max_recoveries, self.now)
        assert driver.pending == RunStep(0, 1)
        self.drivers[saga_id] = driver

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

    @precondition(lambda self: bool(self.with_pending((RunStep, RunCompensation))))
    @rule(data=st.data(), outcome=outcomes())
    def run_pending(self, data: st.DataObject, outcome: Outcome) -> None:
        driver = self.pick(data, self.with_pending((RunStep, RunCompensation)))
        if outcome is Outcome.EXHAUSTED:
            self.exhaust(data, driver)
            return
        command = driver.pending
        if isinstance(command, RunStep):
            self.finish_step(data, driver, command, outcome)
        elif isinstance(command, RunCompensation):
            self.finish_compensation(data, driver, command, outcome)

    @precondition(lambda self: bool(self.with_pending((RunStep, RunCompensation))))
    @rule(data=st.data())
    def succeed_pending(self, data: st.DataObject) -> None:
        """Most calls succeed: without this rule few sagas would get far."""
        self.run_pending(data, Outcome.SUCCESS)

    def exhaust(self, data: st.DataObject, driver: Driver) -> None:
        """Retryable failures, retry after retry, until the policy gives up (or a cap)."""
        first = driver.pending
        assert isinstance(first, (RunStep, RunCompensation))
        for _ in range(MAX_EXHAUSTING_ROUNDS):
            command = driver.pending
            if not isinstance(command, type(first)) or command.step != first.step:
                return
            if isinstance(command, RunStep):
                self.finish_step(data, driver, command, Outcome.TRANSIENT)
            elif isinstance(command, RunCompensation):
                self.finish_compensation(data, driver, command, Outcome.TRANSIENT)
            wakeup = driver.pending
            if not isinstance(wakeup, ScheduleWakeup):
                return  # the policy gave up
            self.now = max(self.now, wakeup.at)
            driver.apply(TimerFired(at=self.now))
            retried = driver.pending
            assert isinstance(retried, type(first))
            assert retried.step == first.step and retried.attempt == command.attempt + 1

    def failure_kind_and_error(
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
        if outcome is Outcome.SUCCESS:
            driver.effects[key] += 1
            result = data.draw(raw_results(), label="result")
            driver.apply(StepSucceeded(at=at, step=index, attempt=attempt, result=result))
            step = driver.state.steps[index]
            assert step.status is StepStatus.SUCCEEDED
            assert bytes(step.result) == bytes(result)
            return
        policy = driver.saga.steps[index].retry
        kind, error = self.failure_kind_and_error(data, outcome, policy)
        if kind is not FailureKind.DEFINITIVE and data.draw(st.booleans(), label="took effect"):
            driver.effects[key] += 1
        jitter = data.draw(jitter_samples(), label="jitter")
        driver.apply(
            StepFailed(at=at, step=index, attempt=attempt, error=error, kind=kind, jitter=jitter)
        )
        step = driver.state.steps[index]
        assert step.status is failure_status(policy, attempt, kind)
        assert step.error == error
        if step.status is StepStatus.RETRYING:
            assert step.retry_at is not None and step.retry_at >= at
            assert driver.pending == ScheduleWakeup(step.retry_at)
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
        kind, error = self.failure_kind_and_error(data, outcome, policy)
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

    # -- timers --------------------------------------------------------------

    @precondition(lambda self: bool(self.with_pending(ScheduleWakeup)))
    @rule(data=st.data(), early=st.booleans())
    def fire_timer(self, data: st.DataObject, early: bool) -> None:
        driver = self.pick(data, self.with_pending(ScheduleWakeup))
        wakeup = driver.pending
        assert isinstance(wakeup, ScheduleWakeup)
        before = driver.state
        if early:
            # The clock reads before the due time (a wake-up a little early, clock skew).
            at = wakeup.at - data.draw(st.floats(min_value=1e-3, max_value=10.0), label="early")
            result = driver.apply(TimerFired(at=at))
            assert result.state is before
            assert result.commands == (wakeup,)
            return
        self.now = max(self.now, wakeup.at) + data.draw(time_steps(), label="late")
        expected = intent(before)
        result = driver.apply(TimerFired(at=self.now))
        assert result.state is not before
        assert len(result.commands) == 1
        retried = result.commands[0]
        if any(s.status is StepStatus.RETRYING for s in before.steps):
            assert isinstance(retried, RunStep)
            assert retried.attempt == before.steps[retried.step].attempts + 1
        else:
            assert isinstance(retried, RunCompensation)
            step = before.steps[retried.step]
            assert retried.attempt == step.compensation_attempts + 1
        assert expected == wakeup

    # -- crashes, suspension, resumption -------------------------------------

    @rule(data=st.data(), took_effect=st.booleans())
    def crash(self, data: st.DataObject, took_effect: bool) -> None:
        """The process dies at this point; a new actor starts from the last snapshot.

        The interrupted command may or may not have run (and taken effect);
        an outcome computed but not yet persisted is lost the same way.
        """
        driver = self.pick(data, list(self.drivers.values()))
        interrupted = driver.pending
        if took_effect and isinstance(interrupted, RunStep):
            driver.effects[driver.step_key(interrupted.step)] += 1
        if took_effect and isinstance(interrupted, RunCompensation):
            driver.compensations.append((driver.compensation_key(interrupted.step), "interrupted"))
        before = driver.crash_and_reload()
        in_flight = isinstance(interrupted, (RunStep, RunCompensation))
        if in_flight:
            driver.crash_streak += 1
        result = driver.apply(Recovered(at=self.tick(data), max_recoveries=driver.max_recoveries))
        if not in_flight:
            # Backing off, or stopped: nothing to persist, the same wake-up (or nothing).
            assert result.state is before
            assert result.commands == ((interrupted,) if interrupted is not None else ())
            return
        assert interrupted is not None
        if driver.crash_streak > driver.max_recoveries:
            assert result.state.status is SagaStatus.SUSPENDED
            assert result.state.resume_status is before.status
            assert result.state.suspended_reason
            assert result.commands == (Finish(SagaStatus.SUSPENDED),)
        else:
            assert result.state.recoveries == driver.crash_streak
            assert len(result.commands) == 1
            driver.reissues.append((interrupted, result.commands[0]))

    @precondition(lambda self: bool(self.live()))
    @rule(data=st.data(), took_effect=st.booleans())
    def operator_suspends(self, data: st.DataObject, took_effect: bool) -> None:
        driver = self.pick(data, self.live())
        event = Suspended(at=self.tick(data), reason="operator")
        before = driver.state
        interrupted = driver.pending
        if took_effect and isinstance(interrupted, RunStep):
            driver.effects[driver.step_key(interrupted.step)] += 1
        if took_effect and isinstance(interrupted, RunCompensation):
            driver.compensations.append((driver.compensation_key(interrupted.step), "interrupted"))
        result = driver.apply(event)
        assert result.state.status is SagaStatus.SUSPENDED
        assert result.state.resume_status is before.status
        assert result.state.suspended_reason == "operator"
        assert result.commands == (Finish(SagaStatus.SUSPENDED),)

    @precondition(
        lambda self: any(d.state.status is SagaStatus.SUSPENDED for d in self.drivers.values())
    )
    @rule(data=st.data())
    def resume(self, data: st.DataObject) -> None:
        suspended = [d for d in self.drivers.values() if d.state.status is SagaStatus.SUSPENDED]
        driver = self.pick(data, suspended)
        before = driver.state
        expected = intent(before)
        assert expected is not None, "a suspended saga always has something to carry on with"
        result = driver.apply(Resumed(at=self.tick(data)))
        assert result.state.status is before.resume_status
        assert result.state.resume_status is None
        assert result.state.suspended_reason is None
        assert result.state.recoveries == 0
        # It carries on where it stopped: the same attempt, or the same wake-up.
        assert result.commands == (expected,)
        assert driver.pending == expected

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
        kind: type[StepSucceeded | StepFailed | CompensationSucceeded | CompensationFailed],
        step: int,
        attempt: int,
    ) -> None:
        """What no driver should send is refused; what a driver may send late is ignored.

        The machine is pure, so these checks call `transition` and drop the result.
        """
        driver = self.pick(data, list(self.drivers.values()))
        state, at = driver.state, self.now
        error = ErrorInfo(type="x", message="stale")
        event: Event
        if kind is StepSucceeded:
            event, legitimate = StepSucceeded(at=at, step=step, attempt=attempt), RunStep
        elif kind is StepFailed:
            event = StepFailed(
                at=at, step=step, attempt=attempt, error=error, kind=FailureKind.TRANSIENT
            )
            legitimate = RunStep
        elif kind is CompensationSucceeded:
            event = CompensationSucceeded(at=at, step=step, attempt=attempt)
            legitimate = RunCompensation
        else:
            event = CompensationFailed(
                at=at, step=step, attempt=attempt, error=error, kind=FailureKind.TRANSIENT
            )
            legitimate = RunCompensation
        # An outcome of anything but the command in flight is refused.
        if driver.pending != legitimate(step, attempt):
            with pytest.raises(InvalidTransitionError):
                transition(driver.saga, state, event)
        with pytest.raises(InvalidTransitionError):
            transition(driver.saga, state, SagaStarted(at=at))
        if state.status is not SagaStatus.SUSPENDED:
            with pytest.raises(InvalidTransitionError):
                transition(driver.saga, state, Resumed(at=at))
        if state.status not in LIVE:
            with pytest.raises(InvalidTransitionError):
                transition(driver.saga, state, Suspended(at=at, reason="late"))
        # A wake-up with nothing due (an old timer; a stopped saga) changes nothing.
        if not isinstance(driver.pending, ScheduleWakeup):
            later = at + data.draw(time_steps(1e6), label="timer at")
            ignored = transition(driver.saga, state, TimerFired(at=later))
            assert ignored.state is state
            assert ignored.commands == ()

    # -- at the end of each run ---------------------------------------------

    def teardown(self) -> None:
        for driver in self.drivers.values():
            self.check_timeline(driver)
            # Shown by `pytest --hypothesis-show-statistics`: how far the runs got.
            event(f"saga ended {driver.state.status}")
            if driver.reissues:
                event("an interrupted attempt was re-issued")

    def check_timeline(self, driver: Driver) -> None:
        """The timeline replays the history: one line per attempt started, per finish."""
        lines = timeline(driver.saga, driver.saga_id, driver.events())
        assert lines[0].endswith("saga started")
        run_lines = [line for line in lines if RUN_LINE.match(line)]
        runs = [c for c, _ in driver.issued if isinstance(c, (RunStep, RunCompensation))]
        assert len(run_lines) == len(runs)
        finish_lines = [line for line in lines if FINISH_LINE.match(line)]
        assert len(finish_lines) == sum(isinstance(c, Finish) for c, _ in driver.issued)

    # -- invariants ------------------------------------------------------------

    @invariant()
    def history_folds_into_the_snapshot(self) -> None:
        for driver in self.drivers.values():
            seqs = [seq for seq, _ in driver.history]
            assert seqs == list(range(1, len(seqs) + 1))
            assert driver.state.seq == len(seqs)
            state = initial_state(driver.saga, driver.saga_id)
            for seq, event in zip(seqs, driver.events(), strict=True):
                folded = transition(driver.saga, state, event).state
                assert folded is not state, "a persisted event must change the state"
                assert folded.seq == seq
                state = folded
            assert state == driver.state == _state_decoder.decode(driver.snapshot)

    @invariant()
    def the_driver_does_what_the_snapshot_says(self) -> None:
        for driver in self.drivers.values():
            state = driver.state
            active = [
                index
                for index, step in enumerate(state.steps)
                if step.status in (StepStatus.RUNNING, StepStatus.RETRYING)
                or step.compensation in (CompensationStatus.RUNNING, CompensationStatus.RETRYING)
            ]
            assert len(active) <= 1, "one step (or compensation) at a time"
            if state.status in STOPPED:
                assert driver.finished is state.status
                assert driver.pending is None
                assert driver.issued[-1][0] == Finish(state.status)
            else:
                assert driver.finished is None
                # Write-ahead: what runs is what the snapshot records; and a live
                # saga always has something to do.
                assert driver.pending is not None
                assert driver.pending == intent(state)

    @invariant()
    def steps_run_in_order(self) -> None:
        for driver in self.drivers.values():
            statuses = [step.status for step in driver.state.steps]
            done = 0
            while done < len(statuses) and statuses[done] is StepStatus.SUCCEEDED:
                done += 1
            rest = statuses[done + 1 :]
            assert all(status is StepStatus.PENDING for status in rest), statuses
            started = [c.step for c, _ in driver.issued if isinstance(c, RunStep)]
            assert started == sorted(started)

    @invariant()
    def attempts_are_counted_by_outcomes_not_crashes(self) -> None:
        for driver in self.drivers.values():
            events = driver.events()
            for index, step in enumerate(driver.state.steps):
                tried = [
                    e.attempt
                    for e in events
                    if isinstance(e, (StepSucceeded, StepFailed)) and e.step == index
                ]
                assert tried == list(range(1, len(tried) + 1))
                in_flight = 1 if step.status is StepStatus.RUNNING else 0
                assert step.attempts == len(tried) + in_flight
                compensated = [
                    e.attempt
                    for e in events
                    if isinstance(e, (CompensationSucceeded, CompensationFailed))
                    and e.step == index
                ]
                assert compensated == list(range(1, len(compensated) + 1))
                in_flight = 1 if step.compensation is CompensationStatus.RUNNING else 0
                assert step.compensation_attempts == len(compensated) + in_flight
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
    def no_forward_step_once_compensation_began(self) -> None:
        for driver in self.drivers.values():
            for command, compensating in driver.issued:
                assert not (compensating and isinstance(command, RunStep)), command

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
                    driver.compensation_key(c.step)
                    for c, _ in driver.issued
                    if isinstance(c, RunCompensation)
                ]
            )
            if not driver.compensation_began:
                assert not issued and not ran
                continue
            # Newest first, each key in one block (retries of the same key), only
            # for steps that may have taken effect and have a compensation.
            assert issued == expected[: len(issued)], (issued, expected)
            assert ran == issued[: len(ran)]
            completed = [key for key, how in driver.compensations if how == "succeeded"]
            assert len(completed) == len(set(completed)), "a compensation completed twice"
            if completed:
                last = max(
                    position
                    for position, (key, how) in enumerate(driver.compensations)
                    if how == "succeeded"
                )
                for key, _ in driver.compensations[last + 1 :]:
                    assert key not in completed, "a completed compensation ran again"
            if state.status is SagaStatus.COMPENSATED:
                assert issued == expected
                assert completed == expected
                for index, step in enumerate(state.steps):
                    done = driver.compensation_key(index) in expected
                    assert (step.compensation is CompensationStatus.COMPENSATED) is done
            if state.status is SagaStatus.FAILED:
                failed = [
                    s for s in state.steps if s.compensation is CompensationStatus.FAILED
                ]
                assert len(failed) == 1

    @invariant()
    def completed_means_every_step_succeeded(self) -> None:
        for driver in self.drivers.values():
            state = driver.state
            if state.status is not SagaStatus.COMPLETED:
                continue
            assert all(step.status is StepStatus.SUCCEEDED for step in state.steps)
            assert all(step.compensation is CompensationStatus.NONE for step in state.steps)
            assert not driver.compensation_began
            assert not driver.compensations
            assert all(driver.effects[driver.step_key(i)] for i in range(len(state.steps)))
            assert state.failed_step is None and state.failure is None


SagaMachine.TestCase.settings = settings(
    max_examples=2000 if SOAK else 120,
    stateful_step_count=80 if SOAK else 40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
TestSagaMachine = SagaMachine.TestCase
