"""Example-based tests of the pure saga state machine, row by row of its transition table.

Also: the events it refuses (`InvalidTransitionError`), `RetryPolicy`
(backoff and validation), `Step`/`Saga` validation, and the timeline.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import msgspec
import pytest
from msgspec.structs import replace

from saga import (
    CompensationStatus,
    Continue,
    DefinitionError,
    ErrorInfo,
    FailureKind,
    OnTimeout,
    RetryPolicy,
    Saga,
    SagaError,
    SagaStatus,
    Sleep,
    Step,
    StepContext,
    StepStatus,
    WaitForSignal,
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
from saga.store import SagaState


def start(saga: Saga, saga_id: str, at: float) -> Transition:
    """A new saga's first transition (the driver's `begin` does the same, and stores it)."""
    return transition(saga, initial_state(saga, saga_id), SagaStarted(at=at))


T0 = 1000.0
BOOM = ErrorInfo(type="Unavailable", message="503")
DECLINED = ErrorInfo(type="Declined", message="card")


async def act(ctx: StepContext, saga_input: Any) -> None:
    return None


async def undo(ctx: StepContext, saga_input: Any, result: Any) -> None:
    return None


def sync_act(ctx: StepContext, saga_input: Any) -> None:
    return None


STEP_RETRY = RetryPolicy(
    maximum_attempts=3,
    initial_interval=1.0,
    backoff_coefficient=2.0,
    maximum_interval=10.0,
    jitter=0.0,
)
COMPENSATION_RETRY = RetryPolicy(maximum_attempts=2, initial_interval=5.0, jitter=0.0)


def checkout() -> Saga:
    """a, c, d have a compensation; b has none."""
    return Saga(
        "checkout",
        [
            Step(
                name,
                act,
                compensate=None if name == "b" else undo,
                retry=STEP_RETRY,
                compensation_retry=COMPENSATION_RETRY,
            )
            for name in "abcd"
        ],
        version=3,
    )


SAGA = checkout()


def ok(step: int, attempt: int = 1, at: float = T0, result: bytes = b"null") -> StepSucceeded:
    return StepSucceeded(at=at, step=step, attempt=attempt, result=msgspec.Raw(result))


def fail(
    step: int,
    attempt: int = 1,
    kind: FailureKind = FailureKind.TRANSIENT,
    at: float = T0,
    error: ErrorInfo = BOOM,
    jitter: float = 0.0,
) -> StepFailed:
    return StepFailed(at=at, step=step, attempt=attempt, error=error, kind=kind, jitter=jitter)


def undone(step: int, attempt: int = 1, at: float = T0) -> CompensationSucceeded:
    return CompensationSucceeded(at=at, step=step, attempt=attempt)


def undo_failed(
    step: int,
    attempt: int = 1,
    kind: FailureKind = FailureKind.TRANSIENT,
    at: float = T0,
    error: ErrorInfo = BOOM,
) -> CompensationFailed:
    return CompensationFailed(at=at, step=step, attempt=attempt, error=error, kind=kind)


def recovered(at: float = T0, max_recoveries: int = 5) -> Recovered:
    return Recovered(at=at, max_recoveries=max_recoveries)


def drive(events: Sequence[Event], saga: Saga = SAGA, saga_id: str = "s-1") -> Transition:
    """Start the saga at T0, then apply `events`; the last transition."""
    result = start(saga, saga_id, T0)
    for event in events:
        result = transition(saga, result.state, event)
    return result


def state_after(events: Sequence[Event], saga: Saga = SAGA) -> SagaState:
    return drive(events, saga).state


def statuses(state: SagaState) -> list[StepStatus]:
    return [step.status for step in state.steps]


def compensations(state: SagaState) -> list[CompensationStatus]:
    return [step.compensation for step in state.steps]


P, R, S = StepStatus.PENDING, StepStatus.RUNNING, StepStatus.SUCCEEDED
N, C = CompensationStatus.NONE, CompensationStatus.COMPENSATED

# -- (seq 0) SagaStarted ----------------------------------------------------------------


def test_initial_state_has_every_step_pending_at_seq_0() -> None:
    state = initial_state(SAGA, "s-1")
    assert state.seq == 0
    assert state.saga_id == "s-1"
    assert state.saga_name == "checkout"
    assert state.definition_version == 3
    assert statuses(state) == [P, P, P, P]


def test_started_records_step_0_intent_and_runs_it() -> None:
    state, commands = start(SAGA, "s-1", T0)
    assert commands == (RunStep(0, 1),)
    assert state.seq == 1
    assert state.status is SagaStatus.RUNNING
    assert state.started_at == state.updated_at == T0
    assert statuses(state) == [R, P, P, P]
    assert state.steps[0].attempts == 1
    assert start(SAGA, "s-1", T0) == transition(
        SAGA, initial_state(SAGA, "s-1"), SagaStarted(at=T0)
    )


# -- RUNNING, StepSucceeded ---------------------------------------------------------------


def test_step_succeeded_records_result_and_starts_the_next_step() -> None:
    state, commands = drive([ok(0, result=b'{"order":42}', at=T0 + 1)])
    assert commands == (RunStep(1, 1),)
    assert state.seq == 2
    assert state.updated_at == T0 + 1
    assert statuses(state) == [S, R, P, P]
    assert bytes(state.steps[0].result) == b'{"order":42}'
    assert state.steps[1].attempts == 1


def test_last_step_succeeded_completes_the_saga() -> None:
    state, commands = drive([ok(0), ok(1), ok(2), ok(3)])
    assert commands == (Finish(SagaStatus.COMPLETED),)
    assert state.status is SagaStatus.COMPLETED
    assert state.status.is_terminal
    assert statuses(state) == [S, S, S, S]
    assert compensations(state) == [N, N, N, N]
    assert state.seq == 5


# -- RUNNING, StepFailed transient with attempts left -------------------------------------


def test_transient_failure_with_attempts_left_schedules_a_retry() -> None:
    state, commands = drive([ok(0), fail(1, at=T0 + 10)])
    step = state.steps[1]
    assert step.status is StepStatus.RETRYING
    assert step.retry_at == T0 + 11  # initial_interval 1 s, no jitter
    assert step.error == BOOM
    assert step.attempts == 1
    assert commands == (ScheduleWakeup(T0 + 11),)
    assert state.wake_at == T0 + 11
    assert state.status is SagaStatus.RUNNING


def test_each_retry_waits_longer() -> None:
    events: list[Event] = [ok(0), fail(1, 1, at=T0), TimerFired(at=T0 + 1), fail(1, 2, at=T0 + 2)]
    state, commands = drive(events)
    assert state.steps[1].attempts == 2
    assert commands == (ScheduleWakeup(T0 + 2 + 2.0),)  # 1 s * 2 ** 1


def test_retry_delay_takes_the_events_jitter() -> None:
    saga = Saga("jittery", [Step("a", act, retry=RetryPolicy(initial_interval=2.0, jitter=0.5))])
    _, low = drive([fail(0, jitter=0.0)], saga)
    _, high = drive([fail(0, jitter=0.75)], saga)
    assert low == (ScheduleWakeup(T0 + 1.0),)  # 2 s * (1 - 0.5)
    assert high == (ScheduleWakeup(T0 + 2.5),)  # 2 s * (1 + 0.5 * 0.5)


def test_a_timed_out_attempt_is_retried_like_any_transient_failure() -> None:
    timed_out = ErrorInfo(type="StepTimeout", message="10 s", timed_out=True)
    state, commands = drive([fail(0, error=timed_out)])
    assert state.steps[0].status is StepStatus.RETRYING
    assert state.steps[0].error == timed_out
    assert commands == (ScheduleWakeup(T0 + 1),)


# -- RUNNING, StepFailed transient without attempts left / ambiguous -----------------------


def test_retries_exhausted_leave_the_step_ambiguous_and_compensate_it_first() -> None:
    events: list[Event] = [ok(0), ok(1)]
    for attempt in (1, 2):
        events += [fail(2, attempt), TimerFired(at=T0 + 100 * attempt)]
    state, commands = drive([*events, fail(2, 3, at=T0 + 500)])
    assert statuses(state) == [S, S, StepStatus.AMBIGUOUS, P]
    assert state.steps[2].attempts == 3
    assert state.status is SagaStatus.COMPENSATING
    assert state.failed_step == 2
    assert state.failure == BOOM
    # It may have taken effect: its own compensation runs first, newest first.
    assert commands == (RunCompensation(2, 1),)
    assert state.steps[2].compensation is CompensationStatus.RUNNING


def test_an_ambiguous_failure_is_never_retried() -> None:
    state, commands = drive([ok(0), ok(1), fail(2, kind=FailureKind.AMBIGUOUS)])
    assert state.steps[2].status is StepStatus.AMBIGUOUS
    assert state.steps[2].attempts == 1
    assert commands == (RunCompensation(2, 1),)


def test_a_single_attempt_policy_gives_up_at_once() -> None:
    saga = Saga("once", [Step("a", act, compensate=undo, retry=RetryPolicy(maximum_attempts=1))])
    state, commands = drive([fail(0)], saga)
    assert state.steps[0].status is StepStatus.AMBIGUOUS
    assert commands == (RunCompensation(0, 1),)


# -- RUNNING, StepFailed definitive ----------------------------------------------------------


def test_definitive_failure_is_never_compensated_but_earlier_steps_are() -> None:
    state, commands = drive([ok(0), ok(1), fail(2, kind=FailureKind.DEFINITIVE, error=DECLINED)])
    assert statuses(state) == [S, S, StepStatus.FAILED, P]
    assert state.status is SagaStatus.COMPENSATING
    assert state.failed_step == 2
    assert state.failure == DECLINED
    # Not c (proven no effect), not b (no compensation): a.
    assert commands == (RunCompensation(0, 1),)
    assert compensations(state) == [CompensationStatus.RUNNING, N, N, N]


def test_failure_with_nothing_to_compensate_ends_compensated_in_one_transition() -> None:
    state, commands = drive([fail(0, kind=FailureKind.DEFINITIVE)])
    assert state.status is SagaStatus.COMPENSATED
    assert commands == (Finish(SagaStatus.COMPENSATED),)
    assert state.seq == 2
    assert compensations(state) == [N, N, N, N]


# -- COMPENSATING, CompensationSucceeded -----------------------------------------------------


def test_compensations_run_newest_first_skipping_steps_without_one() -> None:
    state, commands = drive([ok(0), ok(1), ok(2), fail(3, kind=FailureKind.AMBIGUOUS)])
    assert commands == (RunCompensation(3, 1),)
    state, commands = transition(SAGA, state, undone(3))
    assert commands == (RunCompensation(2, 1),)
    state, commands = transition(SAGA, state, undone(2))
    assert commands == (RunCompensation(0, 1),)  # b has no compensation
    state, commands = transition(SAGA, state, undone(0, at=T0 + 7))
    assert commands == (Finish(SagaStatus.COMPENSATED),)
    assert state.status is SagaStatus.COMPENSATED
    assert compensations(state) == [C, N, C, C]
    assert state.updated_at == T0 + 7


# -- COMPENSATING, CompensationFailed -------------------------------------------------------


def compensating_a() -> SagaState:
    """Step b failed definitively; a's compensation (attempt 1) is running."""
    return state_after([ok(0), fail(1, kind=FailureKind.DEFINITIVE)])


def test_compensation_transient_failure_with_attempts_left_retries_later() -> None:
    state, commands = transition(SAGA, compensating_a(), undo_failed(0, at=T0 + 3))
    step = state.steps[0]
    assert step.compensation is CompensationStatus.RETRYING
    assert step.compensation_retry_at == T0 + 3 + 5.0
    assert step.compensation_error == BOOM
    assert commands == (ScheduleWakeup(T0 + 8),)
    assert state.status is SagaStatus.COMPENSATING


@pytest.mark.parametrize(
    "events",
    [
        pytest.param([undo_failed(0, kind=FailureKind.DEFINITIVE)], id="definitive"),
        pytest.param([undo_failed(0, kind=FailureKind.AMBIGUOUS)], id="ambiguous"),
        pytest.param(
            [undo_failed(0), TimerFired(at=T0 + 10), undo_failed(0, 2)], id="attempts-exhausted"
        ),
    ],
)
def test_compensation_that_fails_for_good_fails_the_saga(events: list[Event]) -> None:
    state = compensating_a()
    for event in events[:-1]:
        state = transition(SAGA, state, event).state
    state, commands = transition(SAGA, state, events[-1])
    assert state.status is SagaStatus.FAILED
    assert state.steps[0].compensation is CompensationStatus.FAILED
    assert state.steps[0].compensation_error == BOOM
    assert commands == (Finish(SagaStatus.FAILED),)


def test_default_compensation_policy_retries_forever_with_capped_backoff() -> None:
    saga = Saga("stubborn", [Step("a", act, compensate=undo), Step("b", act)])
    state = state_after([ok(0), fail(1, kind=FailureKind.DEFINITIVE)], saga)
    delays = []
    for attempt in range(1, 40):
        state, commands = transition(saga, state, undo_failed(0, attempt, at=T0))
        assert state.steps[0].compensation is CompensationStatus.RETRYING
        assert len(commands) == 1
        wakeup = commands[0]
        assert isinstance(wakeup, ScheduleWakeup)
        delays.append(wakeup.at - T0)
        state, commands = transition(saga, state, TimerFired(at=wakeup.at))
        assert commands == (RunCompensation(0, attempt + 1),)
    assert max(delays) <= 60.0 * 1.1
    assert min(delays[-10:]) >= 60.0 * 0.9


# -- RUNNING/COMPENSATING, TimerFired -----------------------------------------------------


def test_timer_when_the_retry_is_due_runs_the_next_attempt() -> None:
    backing_off = state_after([ok(0), fail(1, at=T0)])
    state, commands = transition(SAGA, backing_off, TimerFired(at=T0 + 1))
    assert commands == (RunStep(1, 2),)
    assert state.steps[1].status is StepStatus.RUNNING
    assert state.steps[1].attempts == 2
    assert state.steps[1].retry_at is None
    assert state.wake_at is None
    assert state.seq == backing_off.seq + 1


def test_timer_when_the_compensation_retry_is_due_runs_the_next_attempt() -> None:
    backing_off = transition(SAGA, compensating_a(), undo_failed(0, at=T0)).state
    state, commands = transition(SAGA, backing_off, TimerFired(at=T0 + 6))
    assert commands == (RunCompensation(0, 2),)
    assert state.steps[0].compensation is CompensationStatus.RUNNING
    assert state.steps[0].compensation_attempts == 2
    assert state.steps[0].compensation_retry_at is None


@pytest.mark.parametrize("compensating", [False, True])
def test_timer_before_the_due_time_changes_nothing(compensating: bool) -> None:
    if compensating:
        backing_off = transition(SAGA, compensating_a(), undo_failed(0, at=T0)).state
        due = T0 + 5
    else:
        backing_off = state_after([fail(0, at=T0)])
        due = T0 + 1
    result = transition(SAGA, backing_off, TimerFired(at=due - 0.001))
    assert result.state is backing_off
    assert result.commands == (ScheduleWakeup(due),)


def test_a_timer_while_a_step_runs_changes_nothing_even_past_the_deadline() -> None:
    running = state_after([ok(0)], DEADLINED)
    result = transition(DEADLINED, running, TimerFired(at=T0 + 500))
    # The step's own outcome decides; the deadline is checked when it comes.
    assert result.state is running
    assert result.commands == ()


def test_timer_with_nothing_to_retry_changes_nothing() -> None:
    running = state_after([ok(0)])
    result = transition(SAGA, running, TimerFired(at=T0 + 99))
    assert result.state is running
    assert result.commands == ()


# -- live, Recovered -------------------------------------------------------------------------


def test_recovered_with_a_step_in_flight_reruns_the_same_attempt() -> None:
    in_flight = state_after([fail(0), TimerFired(at=T0 + 1)])
    state, commands = transition(SAGA, in_flight, recovered(at=T0 + 2))
    # The crash is not the step's failure: attempt 2 again, not attempt 3.
    assert commands == (RunStep(0, 2),)
    assert state.steps[0].attempts == 2
    assert state.recoveries == 1
    assert state.seq == in_flight.seq + 1
    assert state.updated_at == T0 + 2


def test_recovered_with_a_compensation_in_flight_reruns_it() -> None:
    state, commands = transition(SAGA, compensating_a(), recovered())
    assert commands == (RunCompensation(0, 1),)
    assert state.steps[0].compensation_attempts == 1
    assert state.recoveries == 1


@pytest.mark.parametrize("max_recoveries", [0, 1, 3])
def test_recovering_past_the_limit_without_progress_suspends(max_recoveries: int) -> None:
    state = state_after([ok(0)])
    for count in range(1, max_recoveries + 1):
        state, commands = transition(SAGA, state, recovered(max_recoveries=max_recoveries))
        assert commands == (RunStep(1, 1),)
        assert state.recoveries == count
    state, commands = transition(SAGA, state, recovered(max_recoveries=max_recoveries))
    assert commands == (Finish(SagaStatus.SUSPENDED),)
    assert state.status is SagaStatus.SUSPENDED
    assert state.resume_status is SagaStatus.RUNNING
    assert state.suspended_reason is not None
    assert "step 1 attempt 1" in state.suspended_reason
    assert state.steps[1].status is StepStatus.RUNNING  # nothing is lost


@pytest.mark.parametrize(
    "progress",
    [ok(1), fail(1)],
    ids=["succeeded", "failed"],
)
def test_an_outcome_resets_the_recovery_count(progress: Event) -> None:
    state = state_after([ok(0), recovered(), recovered()])
    assert state.recoveries == 2
    assert transition(SAGA, state, progress).state.recoveries == 0


def test_recovered_while_backing_off_changes_nothing_and_rearms_the_timer() -> None:
    backing_off = state_after([fail(0, at=T0)])
    result = transition(SAGA, backing_off, recovered(at=T0 + 0.5))
    assert result.state is backing_off
    assert result.commands == (ScheduleWakeup(T0 + 1),)


# -- live, Suspended; SUSPENDED, Resumed --------------------------------------------------


@pytest.mark.parametrize(
    ("events", "status"),
    [
        pytest.param([ok(0)], SagaStatus.RUNNING, id="running"),
        pytest.param([fail(0)], SagaStatus.RUNNING, id="backing-off"),
        pytest.param(
            [ok(0), fail(1, kind=FailureKind.DEFINITIVE)],
            SagaStatus.COMPENSATING,
            id="compensating",
        ),
    ],
)
def test_suspended_parks_a_live_saga(events: list[Event], status: SagaStatus) -> None:
    live = state_after(events)
    state, commands = transition(SAGA, live, Suspended(at=T0 + 1, reason="operator says so"))
    assert commands == (Finish(SagaStatus.SUSPENDED),)
    assert state.status is SagaStatus.SUSPENDED
    assert state.resume_status is status
    assert state.suspended_reason == "operator says so"
    assert state.steps == live.steps


def test_resumed_reruns_the_attempt_that_was_in_flight() -> None:
    suspended = state_after([ok(0), recovered(max_recoveries=0)])
    assert suspended.status is SagaStatus.SUSPENDED
    state, commands = transition(SAGA, suspended, Resumed(at=T0 + 9))
    assert commands == (RunStep(1, 1),)
    assert state.status is SagaStatus.RUNNING
    assert state.recoveries == 0
    assert state.resume_status is None
    assert state.suspended_reason is None
    assert state.seq == suspended.seq + 1
    # ... and it carries on from there.
    state, commands = transition(SAGA, state, ok(1))
    assert commands == (RunStep(2, 1),)


def test_resumed_while_backing_off_rearms_the_timer() -> None:
    suspended = state_after([fail(0, at=T0), Suspended(at=T0, reason="x")])
    state, commands = transition(SAGA, suspended, Resumed(at=T0 + 0.5))
    assert commands == (ScheduleWakeup(T0 + 1),)
    assert state.status is SagaStatus.RUNNING


def test_resumed_while_compensating_reruns_the_compensation() -> None:
    suspended = transition(SAGA, compensating_a(), Suspended(at=T0, reason="x")).state
    state, commands = transition(SAGA, suspended, Resumed(at=T0))
    assert commands == (RunCompensation(0, 1),)
    assert state.status is SagaStatus.COMPENSATING


# -- waiting steps: StepWaiting, SignalReceived, TimerFired when the wait is over --------


def waiting_saga(on_timeout: OnTimeout | Continue = OnTimeout.COMPENSATE) -> Saga:
    """a (compensable), nap (sleep 60 s), approval (signal, 1 h), z."""
    return Saga(
        "refund",
        [
            Step("a", act, compensate=undo),
            Sleep("nap", seconds=60),
            WaitForSignal("approval", "approve", timeout=3600, on_timeout=on_timeout),
            Step("z", act, compensate=undo),
        ],
    )


WAITS = waiting_saga()


def waits_for(
    step: int, attempt: int = 1, at: float = T0, until: float | None = None
) -> StepWaiting:
    return StepWaiting(at=at, step=step, attempt=attempt, until=until)


NAPPED: list[Event] = [ok(0), StepWaiting(at=T0, step=1, attempt=1, until=T0), TimerFired(at=T0)]
"""WAITS after a, and after the nap: step 2 (the signal wait) is running."""


def signal(
    name: str = "approve", payload: bytes = b'"yes"', key: str | None = None, at: float = T0
) -> SignalReceived:
    return SignalReceived(at=at, name=name, payload=msgspec.Raw(payload), key=key)


def test_a_sleep_waits_until_its_time_then_the_next_step_runs() -> None:
    state, commands = drive([ok(0), waits_for(1, until=T0 + 60)], WAITS)
    assert state.status is SagaStatus.WAITING
    assert state.steps[1].status is StepStatus.WAITING
    assert state.steps[1].wait_until == T0 + 60
    assert state.waiting_for is None
    assert commands == (ScheduleWakeup(T0 + 60),)
    early = transition(WAITS, state, TimerFired(at=T0 + 59))
    assert early.state is state
    assert early.commands == (ScheduleWakeup(T0 + 60),)
    state, commands = transition(WAITS, state, TimerFired(at=T0 + 61))
    assert commands == (RunStep(2, 1),)
    assert state.status is SagaStatus.RUNNING
    assert state.steps[1].status is StepStatus.SUCCEEDED
    assert msgspec.json.decode(bytes(state.steps[1].result)) == T0 + 60  # its wake-up time


def test_a_signal_wait_waits_for_its_signal() -> None:
    state, commands = drive([*NAPPED, waits_for(2)], WAITS)
    assert state.status is SagaStatus.WAITING
    assert state.waiting_for == "approve"
    assert commands == ()  # no timeout: only the signal ends it
    state, commands = transition(WAITS, state, signal(payload=b'{"by":"ann"}'))
    assert commands == (RunStep(3, 1),)
    assert state.status is SagaStatus.RUNNING
    assert state.waiting_for is None
    assert state.steps[2].status is StepStatus.SUCCEEDED
    assert bytes(state.steps[2].result) == b'{"by":"ann"}'


def test_a_signal_that_arrived_early_is_kept_and_taken_when_the_step_waits() -> None:
    early = [signal(payload=b"1"), signal(payload=b"2"), signal("other", b"3")]
    state = state_after([*early, *NAPPED], WAITS)
    assert [bytes(s.payload) for s in state.inbox] == [b"1", b"2", b"3"]
    state, commands = transition(WAITS, state, waits_for(2))
    # The oldest one is taken; the others stay in the inbox.
    assert commands == (RunStep(3, 1),)
    assert bytes(state.steps[2].result) == b"1"
    assert [(s.name, bytes(s.payload)) for s in state.inbox] == [("approve", b"2"), ("other", b"3")]


def test_a_signal_nobody_waits_for_goes_to_the_inbox() -> None:
    running = state_after([], WAITS)
    state, commands = transition(WAITS, running, signal("approve", key="k1", at=T0 + 1))
    assert commands == ()
    assert state.seq == running.seq + 1
    assert state.steps == running.steps
    assert state.inbox[0].name == "approve"
    assert state.inbox[0].at == T0 + 1
    assert state.signal_keys == ("k1",)


def test_a_signal_with_a_key_already_seen_is_recorded_and_ignored() -> None:
    once = state_after([signal(key="k1", payload=b"1")], WAITS)
    state, commands = transition(WAITS, once, signal(key="k1", payload=b"2", at=T0 + 5))
    assert commands == ()
    assert state == replace(once, seq=once.seq + 1, updated_at=T0 + 5)


def test_a_step_that_is_not_a_wait_cannot_wait() -> None:
    with pytest.raises(InvalidTransitionError, match="not a waiting step"):
        transition(WAITS, state_after([], WAITS), waits_for(0))


@pytest.mark.parametrize(
    ("on_timeout", "status", "commands"),
    [
        (OnTimeout.COMPENSATE, SagaStatus.COMPENSATING, (RunCompensation(0, 1),)),
        (OnTimeout.FAIL, SagaStatus.FAILED, (Finish(SagaStatus.FAILED),)),
        (Continue({"approved": False}), SagaStatus.RUNNING, (RunStep(3, 1),)),
    ],
    ids=["compensate", "fail", "continue"],
)
def test_a_signal_wait_that_times_out_does_what_its_step_says(
    on_timeout: OnTimeout | Continue, status: SagaStatus, commands: tuple[Command, ...]
) -> None:
    saga = waiting_saga(on_timeout)
    waiting = state_after([*NAPPED, waits_for(2, until=T0 + 10)], saga)
    assert waiting.wake_at == T0 + 10
    state, issued = transition(saga, waiting, TimerFired(at=T0 + 10))
    assert issued == commands
    assert state.status is status
    step = state.steps[2]
    if isinstance(on_timeout, Continue):
        assert step.status is StepStatus.SUCCEEDED
        assert msgspec.json.decode(bytes(step.result)) == {"approved": False}
        return
    assert step.status is StepStatus.FAILED  # a wait took no effect: never compensated
    assert state.failed_step == 2
    assert state.failure is not None
    assert state.failure.type == "saga.SignalTimeout"
    assert compensations(state)[1:] == [N, N, N]


# -- CancelRequested ---------------------------------------------------------------------


def cancel(at: float = T0, not_started: int | None = None) -> CancelRequested:
    return CancelRequested(at=at, reason="customer changed their mind", not_started=not_started)


CANCELLED = ErrorInfo(type="saga.Cancelled", message="customer changed their mind")


def test_cancelling_a_running_step_leaves_it_ambiguous_and_compensates_it() -> None:
    state, commands = drive([ok(0), ok(1), cancel()])
    assert state.steps[2].status is StepStatus.AMBIGUOUS  # its action may have run
    assert state.status is SagaStatus.COMPENSATING
    assert state.failed_step == 2
    assert state.failure == CANCELLED
    assert commands == (RunCompensation(2, 1),)


def test_cancelling_a_step_whose_action_never_ran_puts_it_back_to_pending() -> None:
    state, commands = drive([ok(0), ok(1), cancel(not_started=2)])
    assert statuses(state) == [S, S, P, P]
    assert commands == (RunCompensation(0, 1),)  # b has no compensation, c never started


def test_not_started_is_ignored_for_a_retry() -> None:
    state, _ = drive([fail(0), TimerFired(at=T0 + 1), cancel(not_started=0)])
    assert state.steps[0].status is StepStatus.AMBIGUOUS  # attempt 1 ran


def test_cancelling_a_step_that_backs_off_leaves_it_ambiguous() -> None:
    state, commands = drive([ok(0), fail(1), cancel()])
    assert state.steps[1].status is StepStatus.AMBIGUOUS
    assert state.steps[1].retry_at is None
    assert state.wake_at is None
    assert commands == (RunCompensation(0, 1),)


def test_cancelling_a_wait_fails_it() -> None:
    state, commands = drive([ok(0), waits_for(1, until=T0 + 60), cancel()], WAITS)
    assert state.steps[1].status is StepStatus.FAILED
    assert state.steps[1].wait_until is None
    assert state.status is SagaStatus.COMPENSATING
    assert commands == (RunCompensation(0, 1),)


@pytest.mark.parametrize(
    "events",
    [
        pytest.param([ok(0), fail(1, kind=FailureKind.DEFINITIVE)], id="compensating"),
        pytest.param([ok(0), ok(1), ok(2), ok(3)], id="completed"),
    ],
)
def test_a_cancellation_once_rolling_back_or_ended_is_only_recorded(events: list[Event]) -> None:
    before = state_after(events)
    state, commands = transition(SAGA, before, cancel(at=T0 + 3))
    assert commands == ()
    assert state == replace(before, seq=before.seq + 1, updated_at=T0 + 3)


def test_a_suspended_saga_takes_its_cancellation_when_resumed() -> None:
    suspended = state_after([fail(0), Suspended(at=T0, reason="x")])
    with pytest.raises(InvalidTransitionError):
        transition(SAGA, suspended, cancel())


def test_a_suspended_saga_takes_its_signals_when_resumed() -> None:
    waiting = state_after([*NAPPED, waits_for(2)], WAITS)
    suspended = transition(WAITS, waiting, Suspended(at=T0, reason="operator")).state
    # Refused: the actor leaves it in the store's inbox until the saga is resumed.
    with pytest.raises(InvalidTransitionError):
        transition(WAITS, suspended, signal())
    resumed = transition(WAITS, suspended, Resumed(at=T0 + 1)).state
    state, commands = transition(WAITS, resumed, signal(at=T0 + 2))
    assert commands == (RunStep(3, 1),)
    assert state.steps[2].status is StepStatus.SUCCEEDED


# -- the saga's deadline ----------------------------------------------------------------


DEADLINED = Saga(
    "quick", [Step(n, act, compensate=undo, retry=STEP_RETRY) for n in "abc"], deadline=100.0
)


def test_the_deadline_is_set_at_start_and_wakes_a_waiting_saga() -> None:
    state = state_after([ok(0), fail(1, at=T0 + 10)], DEADLINED)
    assert state.deadline_at == T0 + 100
    assert state.wake_at == T0 + 11  # the retry comes first
    state = state_after([ok(0), fail(1, at=T0 + 99.5)], DEADLINED)
    assert state.wake_at == T0 + 100  # the deadline comes first


def test_a_timer_past_the_deadline_stops_the_forward_path() -> None:
    backing_off = state_after([ok(0), fail(1, at=T0 + 99.5)], DEADLINED)
    state, commands = transition(DEADLINED, backing_off, TimerFired(at=T0 + 100))
    assert state.steps[1].status is StepStatus.AMBIGUOUS
    assert state.status is SagaStatus.COMPENSATING
    assert state.failure == ErrorInfo(
        type="saga.DeadlineExceeded", message="the saga's deadline passed"
    )
    assert commands == (RunCompensation(1, 1),)


def test_no_step_starts_after_the_deadline() -> None:
    state, commands = drive([ok(0, at=T0 + 100)], DEADLINED)
    assert state.status is SagaStatus.COMPENSATING
    assert state.failed_step is None
    assert statuses(state) == [S, P, P]
    assert commands == (RunCompensation(0, 1),)


def test_no_retry_after_the_deadline() -> None:
    state, commands = drive([ok(0), fail(1, at=T0 + 100)], DEADLINED)
    assert state.steps[1].status is StepStatus.AMBIGUOUS
    assert commands == (RunCompensation(1, 1),)


def test_the_last_step_succeeding_after_the_deadline_completes_the_saga() -> None:
    state, commands = drive([ok(0), ok(1), ok(2, at=T0 + 500)], DEADLINED)
    assert state.status is SagaStatus.COMPLETED
    assert commands == (Finish(SagaStatus.COMPLETED),)


def test_the_deadline_does_not_wake_a_compensating_saga() -> None:
    events: list[Event] = [
        ok(0),
        fail(1, kind=FailureKind.DEFINITIVE),
        undo_failed(0, at=T0 + 99.5),
    ]
    state = state_after(events, DEADLINED)
    retry_at = state.steps[0].compensation_retry_at
    assert retry_at is not None
    assert state.deadline_at is not None
    assert retry_at > state.deadline_at
    assert state.wake_at == retry_at  # the compensation's retry, not the deadline


# -- idle sagas: Recovered and Resumed while waiting -------------------------------------


@pytest.mark.parametrize(
    ("events", "commands"),
    [
        pytest.param(
            [ok(0), waits_for(1, until=T0 + 60)], (ScheduleWakeup(T0 + 60),), id="sleeping"
        ),
        pytest.param([*NAPPED, waits_for(2)], (), id="awaiting-signal"),
    ],
)
def test_an_idle_waiting_saga_recovers_and_resumes_to_the_same_wait(
    events: list[Event], commands: tuple[Command, ...]
) -> None:
    waiting = state_after(events, WAITS)
    recovered_ = transition(WAITS, waiting, recovered())
    assert recovered_.state is waiting
    assert recovered_.commands == commands
    suspended = transition(WAITS, waiting, Suspended(at=T0, reason="x")).state
    state, resumed = transition(WAITS, suspended, Resumed(at=T0))
    assert state.status is SagaStatus.WAITING
    assert resumed == commands


# -- terminal (and suspended), Recovered / TimerFired ---------------------------------------


STOPPED: dict[str, list[Event]] = {
    "completed": [ok(0), ok(1), ok(2), ok(3)],
    "compensated": [fail(0, kind=FailureKind.DEFINITIVE)],
    "failed": [
        ok(0),
        fail(1, kind=FailureKind.DEFINITIVE),
        undo_failed(0, kind=FailureKind.DEFINITIVE),
    ],
    "suspended": [fail(0), Suspended(at=T0, reason="x")],
}


@pytest.mark.parametrize("name", list(STOPPED))
@pytest.mark.parametrize("event", [recovered(at=T0 + 1e6), TimerFired(at=T0 + 1e6)])
def test_a_stopped_saga_ignores_recovery_and_timers(name: str, event: Event) -> None:
    stopped = state_after(STOPPED[name])
    assert stopped.status == name
    result = transition(SAGA, stopped, event)
    assert result.state is stopped
    assert result.commands == ()


# -- InvalidTransitionError ------------------------------------------------------------------


def other_saga(name: str, steps: int) -> Saga:
    return Saga(name, [Step(f"s{i}", act) for i in range(steps)])


@pytest.mark.parametrize(
    ("events", "event"),
    [
        pytest.param([], SagaStarted(at=T0), id="started-twice"),
        pytest.param([], ok(0, attempt=2), id="success-of-another-attempt"),
        pytest.param([], ok(1), id="success-of-a-pending-step"),
        pytest.param([], ok(4), id="no-such-step"),
        pytest.param([], ok(-1), id="negative-step"),
        pytest.param([fail(0)], ok(0), id="success-while-backing-off"),
        pytest.param([ok(0)], ok(0), id="success-twice"),
        pytest.param([ok(0)], fail(0), id="failure-of-a-succeeded-step"),
        pytest.param([], undone(0), id="compensation-outcome-while-running"),
        pytest.param([], undo_failed(0), id="compensation-failure-while-running"),
        pytest.param(
            [ok(0), fail(1, kind=FailureKind.DEFINITIVE)], ok(1), id="step-while-compensating"
        ),
        pytest.param(
            [ok(0), fail(1, kind=FailureKind.DEFINITIVE)],
            undone(1),
            id="compensation-of-failed-step",
        ),
        pytest.param(
            [ok(0), fail(1, kind=FailureKind.DEFINITIVE)],
            undone(0, attempt=2),
            id="compensation-of-another-attempt",
        ),
        pytest.param(
            [ok(0), fail(1, kind=FailureKind.DEFINITIVE)],
            undone(9),
            id="compensation-of-no-such-step",
        ),
        pytest.param([ok(0), ok(1), ok(2), ok(3)], ok(3), id="success-after-completion"),
        pytest.param(
            [ok(0), ok(1), ok(2), ok(3)], Suspended(at=T0, reason="x"), id="suspend-completed"
        ),
        pytest.param(
            [fail(0), Suspended(at=T0, reason="x")],
            Suspended(at=T0, reason="x"),
            id="suspend-twice",
        ),
        pytest.param([ok(0), Suspended(at=T0, reason="x")], ok(1), id="outcome-while-suspended"),
        pytest.param([], Resumed(at=T0), id="resume-running"),
        pytest.param([ok(0), ok(1), ok(2), ok(3)], Resumed(at=T0), id="resume-completed"),
    ],
)
def test_events_that_do_not_apply_are_refused(events: list[Event], event: Event) -> None:
    state = state_after(events)
    with pytest.raises(InvalidTransitionError):
        transition(SAGA, state, event)


def test_invalid_transition_is_a_saga_error_that_names_the_saga() -> None:
    with pytest.raises(SagaError, match="'s-1'"):
        transition(SAGA, state_after([]), ok(3))


@pytest.mark.parametrize(
    "saga",
    [other_saga("checkout", 3), other_saga("checkout", 5), other_saga("refund", 4)],
    ids=["fewer-steps", "more-steps", "other-name"],
)
def test_a_snapshot_of_another_definition_is_refused(saga: Saga) -> None:
    with pytest.raises(InvalidTransitionError, match="does not match"):
        transition(saga, state_after([ok(0)]), recovered())


# -- RetryPolicy ---------------------------------------------------------------------------


def test_delay_grows_exponentially_up_to_the_maximum() -> None:
    policy = RetryPolicy(
        initial_interval=1.0, backoff_coefficient=2.0, maximum_interval=10.0, jitter=0.0
    )
    assert [policy.delay(n, 0.5) for n in range(1, 7)] == [1, 2, 4, 8, 10, 10]


def test_delay_is_spread_by_the_jitter_around_the_capped_interval() -> None:
    policy = RetryPolicy(initial_interval=4.0, maximum_interval=4.0, jitter=0.25)
    assert policy.delay(1, 0.0) == 3.0
    assert policy.delay(1, 0.5) == 4.0
    assert 4.0 < policy.delay(5, math.nextafter(1.0, 0.0)) <= 5.0


def test_delay_of_a_huge_attempt_number_is_the_maximum() -> None:
    for coefficient in (1.5, 2.0, 10.0):
        policy = RetryPolicy(backoff_coefficient=coefficient, maximum_interval=30.0, jitter=0.0)
        assert policy.delay(10**9, 0.5) == 30.0


def test_delay_with_a_coefficient_of_one_is_constant() -> None:
    policy = RetryPolicy(initial_interval=0.25, backoff_coefficient=1.0, jitter=0.0)
    assert {policy.delay(n, 0.3) for n in (1, 2, 50, 10**6)} == {0.25}


def test_delay_with_a_zero_initial_interval_stays_zero() -> None:
    policy = RetryPolicy(
        initial_interval=0.0, backoff_coefficient=10.0, maximum_interval=60.0, maximum_attempts=None
    )
    assert policy.delay(300, 0.5) == 0.0
    assert policy.delay(400, 0.5) == 0.0  # 10.0 ** 399 overflows


def test_allows_another_attempt_counts_attempts_made() -> None:
    policy = RetryPolicy(maximum_attempts=3)
    assert [policy.allows_another_attempt(n) for n in (1, 2, 3, 4)] == [True, True, False, False]
    assert RetryPolicy(maximum_attempts=None).allows_another_attempt(10**9)


def test_default_policies() -> None:
    step = Step("a", act, compensate=undo)
    assert step.retry.maximum_attempts == 3
    assert step.compensation_retry.maximum_attempts is None
    assert step.compensation_retry.maximum_interval == 60.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"initial_interval": -0.1},
        {"initial_interval": math.nan},
        {"backoff_coefficient": 0.99},
        {"backoff_coefficient": math.nan},
        {"initial_interval": 2.0, "maximum_interval": 1.0},
        {"maximum_interval": math.nan},
        {"maximum_attempts": 0},
        {"maximum_attempts": -1},
        {"maximum_attempts": True},
        {"maximum_attempts": 2.0},
        {"non_retryable_error_types": [ValueError]},
        {"non_retryable_error_types": (ValueError, "KeyError")},
        {"non_retryable_error_types": (int,)},
        {"non_retryable_error_types": (ValueError(),)},
        {"jitter": 1.0},
        {"jitter": -0.01},
        {"jitter": math.nan},
    ],
    ids=repr,
)
def test_retry_policy_refuses_invalid_values(kwargs: dict[str, Any]) -> None:
    with pytest.raises(DefinitionError) as caught:
        RetryPolicy(**kwargs)
    assert isinstance(caught.value, ValueError)
    assert isinstance(caught.value, SagaError)


def test_retry_policy_accepts_edge_values() -> None:
    policy = RetryPolicy(
        initial_interval=0.0,
        backoff_coefficient=1.0,
        maximum_interval=0.0,
        maximum_attempts=None,
        non_retryable_error_types=(KeyError, BaseException),
        jitter=0.0,
    )
    assert policy.delay(7, 0.9) == 0.0


# -- Step and Saga definitions ----------------------------------------------------------------


class AsyncCallable:
    async def __call__(self, ctx: StepContext, saga_input: Any) -> None:
        return None


async def act_with(ctx: StepContext, saga_input: Any, extra: int) -> int:
    return extra


def test_step_accepts_async_callables_of_every_kind() -> None:
    partial_step = Step("p", functools.partial(act_with, extra=1))
    object_step = Step("o", AsyncCallable(), compensate=undo, timeout=0.5)
    assert partial_step.compensate is None
    assert object_step.timeout == 0.5
    assert repr(object_step) == "Step('o')"


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        (("", act), {}),
        ((" a", act), {}),
        (("a ", act), {}),
        (("a:b", act), {}),
        ((None, act), {}),
        (("a", sync_act), {}),
        (("a", lambda ctx, saga_input: None), {}),
        (("a", None), {}),
        (("a", act), {"compensate": sync_act}),
        (("a", act), {"retry": {"maximum_attempts": 3}}),
        (("a", act), {"compensation_retry": "forever"}),
        (("a", act), {"timeout": 0}),
        (("a", act), {"timeout": -1.0}),
        (("a", act), {"timeout": True}),
        (("a", act), {"timeout": math.nan}),
        (("a", act), {"compensation_timeout": 0.0}),
    ],
    ids=repr,
)
def test_step_refuses_invalid_definitions(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    with pytest.raises(DefinitionError):
        Step(*args, **kwargs)


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        (("", [Step("a", act)]), {}),
        (("  ", [Step("a", act)]), {}),
        ((5, [Step("a", act)]), {}),
        (("s", []), {}),
        (("s", [Step("a", act), Step("a", act)]), {}),
        (("s", [act]), {}),
        (("s", [Step("a", act)]), {"version": 0}),
        (("s", [Step("a", act)]), {"version": True}),
        (("s", [Step("a", act)]), {"version": "2"}),
    ],
    ids=repr,
)
def test_saga_refuses_invalid_definitions(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    with pytest.raises(DefinitionError):
        Saga(*args, **kwargs)


def test_saga_keeps_its_steps_in_order() -> None:
    assert [step.name for step in SAGA.steps] == ["a", "b", "c", "d"]
    assert [SAGA.step_index(name) for name in "dcba"] == [3, 2, 1, 0]
    assert SAGA.version == 3
    assert repr(SAGA) == "Saga('checkout', ['a', 'b', 'c', 'd'])"


# -- the timeline --------------------------------------------------------------------------


def replay(events: Sequence[Event], saga: Saga = SAGA) -> list[str]:
    return timeline(saga, "s-1", [SagaStarted(at=T0), *events])


def test_timeline_of_no_events_is_empty() -> None:
    assert timeline(SAGA, "s-1", []) == []


def test_timeline_tells_a_retry_a_crash_and_a_compensation() -> None:
    lines = replay(
        [
            ok(0, at=T0 + 0.5),
            fail(1, at=T0 + 1),
            TimerFired(at=T0 + 2),
            recovered(at=T0 + 3),
            fail(1, 2, FailureKind.DEFINITIVE, at=T0 + 4.25, error=DECLINED),
            undone(0, at=T0 + 5),
        ]
    )
    assert lines == [
        "+   0.000s  saga started",
        "+   0.000s  step a attempt 1 started",
        "+   0.500s  step a succeeded",
        "+   0.500s  step b attempt 1 started",
        "+   1.000s  step b attempt 1 failed: Unavailable: 503",
        "+   1.000s  retry due in 1.000s",
        "+   2.000s  step b attempt 2 started",
        "+   3.000s  recovered from the last snapshot after an interruption",
        "+   3.000s  step b attempt 2 was interrupted: run again",
        "+   4.250s  step b attempt 2 failed: Declined: card",
        "+   4.250s  step b failed definitively (took no effect)",
        "+   4.250s  compensation of a attempt 1 started",
        "+   5.000s  step a compensated",
        "+   5.000s  saga compensated",
    ]


def test_timeline_tells_why_a_step_was_given_up() -> None:
    exhausted = replay(
        [fail(0), TimerFired(at=T0 + 1), fail(0, 2), TimerFired(at=T0 + 3), fail(0, 3, at=T0 + 4)]
    )
    assert exhausted[-3:] == [
        "+   4.000s  step a attempt 3 failed: Unavailable: 503",
        "+   4.000s  step a gave up (retries exhausted); it may have taken effect",
        "+   4.000s  compensation of a attempt 1 started",
    ]
    ambiguous = replay([fail(0, kind=FailureKind.AMBIGUOUS)])
    assert "+   0.000s  step a gave up (not retryable); it may have taken effect" in ambiguous


def test_timeline_tells_suspension_resumption_and_completion() -> None:
    lines = replay(
        [
            ok(0, at=T0 + 1),
            recovered(at=T0 + 2, max_recoveries=0),
            Resumed(at=T0 + 3),
            ok(1, at=T0 + 4),
            ok(2, at=T0 + 5),
            ok(3, at=T0 + 6),
        ]
    )
    assert lines[4:] == [
        "+   2.000s  recovered from the last snapshot after an interruption",
        "+   2.000s  saga suspended",
        "+   3.000s  resumed by an operator",
        "+   3.000s  step b attempt 1 started",
        "+   4.000s  step b succeeded",
        "+   4.000s  step c attempt 1 started",
        "+   5.000s  step c succeeded",
        "+   5.000s  step d attempt 1 started",
        "+   6.000s  step d succeeded",
        "+   6.000s  saga completed",
    ]


def test_timeline_tells_a_compensation_failure_and_an_operator_suspension() -> None:
    lines = replay(
        [
            ok(0),
            fail(1, kind=FailureKind.DEFINITIVE),
            undo_failed(0, at=T0 + 1),
            Suspended(at=T0 + 2, reason="operator"),
        ]
    )
    assert lines[-4:] == [
        "+   1.000s  step a compensation attempt 1 failed: Unavailable: 503",
        "+   1.000s  retry due in 5.000s",
        "+   2.000s  suspended: operator",
        "+   2.000s  saga suspended",
    ]


def test_timeline_tells_waits_signals_and_a_cancellation() -> None:
    lines = replay(
        [
            ok(0, at=T0 + 1),
            waits_for(1, at=T0 + 1, until=T0 + 61),
            TimerFired(at=T0 + 61),
            signal("other", at=T0 + 62),
            waits_for(2, at=T0 + 62, until=T0 + 3662),
            signal(at=T0 + 100),
            cancel(at=T0 + 101),
        ],
        WAITS,
    )
    assert lines[3:] == [
        "+   1.000s  step nap attempt 1 started",
        "+   1.000s  step nap sleeping 60.000s",
        "+  61.000s  step nap stopped waiting",
        "+  61.000s  step approval attempt 1 started",
        "+  62.000s  signal 'other' received",
        "+  62.000s  step approval waiting for signal 'approve' (at most 3600.000s)",
        "+ 100.000s  signal 'approve' received",
        "+ 100.000s  step approval got its signal",
        "+ 100.000s  step z attempt 1 started",
        "+ 101.000s  cancellation requested: customer changed their mind",
        "+ 101.000s  compensation of z attempt 1 started",
    ]
