"""The saga state machine: `transition(saga, state, event) -> Transition(state, commands)`.

Theory of operation
-------------------
A saga instance is a `SagaState` snapshot. Everything that happens to it
arrives as an `Event`; `transition` computes the next snapshot and the
`Command`s to carry out. It does no I/O, reads no clock and draws no random
number: time and jitter arrive inside events. That makes it a plain function
Hypothesis can drive, and it makes recovery trivial: the driver persists the
new snapshot (and appends the event to the history) before it carries out any
command, so after a crash the snapshot says exactly what was in flight.

A saga is a sequence of positions, run group by group: a group is one step
(or call) or a parallel group of them. Each position has an intent (durable
before its action runs) and an outcome. Once every position of the group
under way has its final outcome, the program decides what comes next: a
step list's definition (the next element, completion, or compensation when a
step failed for good), or a code saga's body, whose reaction arrives inside
the event (`then`: new calls, a return, a raise). An event that finishes a
group but lacks the body's reaction yields `Advance`: the driver asks the
body and applies the same event again with the reaction.

Compensation runs over the positions that may have taken effect (SUCCEEDED
or AMBIGUOUS, with a compensation): the newest group first, the members of
one group concurrently. FAILED (definitive) and PENDING positions are never
compensated. Once compensation begins no forward position ever runs again.
A definitive compensation failure ends the saga FAILED once nothing else of
its group still runs. A child saga's compensation is requested from the child
(it rolls back as a unit) and waits for the child's report.

What "never ran" means, for a cancellation that arrives before the driver
started a position's action (`CancelRequested.not_started`): the position's
first attempt, unless its intent outlived an interruption (`Recovered` and
`Resumed` mark in-flight intents `interrupted`: their actions may have run).

If `transition` returns the very same state object, nothing changed and there
is nothing to persist (a stale timer, a recovery with nothing in flight).

Accepted events by status (the rest raise `InvalidTransitionError`; "new" is
the state before `SagaStarted`, seq 0)
---------------------------------------------------------------------------
  event                  new  run  wait  comp  done  undone  failed  susp
  SagaStarted             x
  StepSucceeded                x
  StepFailed                   x
  StepWaiting                  x
  SignalReceived               x    x     x     x     x       x
  CancelRequested              x    x     x     x     x       x
  CompensateRequested          x    x     x     x     x       x
  ChildEnded                   x    x     x     x     x       x
  CompensationSucceeded                   x
  CompensationFailed                      x
  CompensationWaiting                     x
  TimerFired                   x    x     x     x     x       x      x
  Recovered                    x    x     x     x     x       x      x
  Suspended                    x    x     x
  Resumed                                                             x

(run: running, wait: waiting, comp: compensating, done: completed,
undone: compensated, susp: suspended.)

Transition table (status, event -> effect)
------------------------------------------
  (new)         SagaStarted            first group RUNNING(1)            RunStep*
                                       (code saga: its body's first reaction)
  RUNNING       StepSucceeded i        i SUCCEEDED; once its group is final:
                                       the next group RUNNING(1)         RunStep*
                                       or COMPLETED                      Finish
                                       or, past the deadline: compensate
                                       (code saga: the body's reaction decides)
  RUNNING       StepFailed i transient, attempts left
                                       i RETRYING until at+delay         ScheduleWakeup
  RUNNING       StepFailed i transient, no attempts left / ambiguous
                                       i AMBIGUOUS; once the group is final: compensate
  RUNNING       StepFailed i definitive
                                       i FAILED; once the group is final: compensate
                                       (code saga: the body gets StepFailedError)
  RUNNING       StepWaiting i (a waiting step's action: its deadline; a child: started)
                  signal already in the inbox: consume it, as StepSucceeded
                  otherwise            i WAITING; saga WAITING           ScheduleWakeup?
  WAITING       SignalReceived, awaited  as StepSucceeded with the payload
  live          SignalReceived, other  kept in the inbox (deduplicated by key)
  RUNNING/WAIT  CancelRequested        positions under way AMBIGUOUS (a sleep or signal
                                       wait: FAILED; never ran: PENDING); compensate
  COMPENSATING  CancelRequested        recorded, nothing else
  RUNNING/WAIT  CompensateRequested    as CancelRequested (a parent rolls its child back)
  COMPLETED     CompensateRequested    compensate (the child rolls back as a unit)
  undone/failed CompensateRequested    recorded; reports its status again  Finish
  live          ChildEnded i           forward: completed: as StepSucceeded; compensated:
                                       FAILED; failed: AMBIGUOUS. A compensation waiting
                                       for it: compensated: as CompensationSucceeded;
                                       failed: as CompensationFailed definitive
  COMPENSATING  CompensationSucceeded  j COMPENSATED; next group, or COMPENSATED Run*/Finish
  COMPENSATING  CompensationFailed transient, attempts left
                                       j RETRYING                        ScheduleWakeup
  COMPENSATING  CompensationFailed otherwise
                                       j FAILED; once its group is still: saga FAILED Finish
  COMPENSATING  CompensationWaiting j  j WAITING (for its child)
  RUNNING/WAIT  TimerFired, deadline passed: as CancelRequested
  live          TimerFired, retries due  their next attempts RUNNING     Run*
  WAITING       TimerFired, wait over  sleep: as StepSucceeded; signal timeout:
                                       FAILED (compensate), saga FAILED, or continue
                                       with the default (`OnTimeout`)
  live          TimerFired, not due    unchanged                         ScheduleWakeup
  live          Recovered, in flight   recoveries+1; same attempts again,
                                       marked interrupted                Run*
                  ... past the limit   SUSPENDED                         Finish
  live          Recovered, idle        unchanged                         ScheduleWakeup?
  live          Suspended              SUSPENDED                         Finish
  SUSPENDED     Resumed                previous status; as Recovered     Run*/Schedule
  terminal      Recovered / TimerFired unchanged                         (none)
  terminal      SignalReceived / CancelRequested / ChildEnded: recorded, ignored

"Compensate": status COMPENSATING; run the compensations of the newest group
with positions to compensate (attempt 1 each), or finish COMPENSATED when
there is none.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import msgspec
from msgspec.structs import replace

from . import _program as program
from ._calls import CallKind, Calls, Raised, Reaction, Returned
from ._commands import Command, Finish, RunCompensation, RunStep, ScheduleWakeup
from ._compensation import (
    compensate,
    compensation_done,
    compensation_gave_up,
    on_compensation_failed,
    on_compensation_succeeded,
    on_compensation_waiting,
)
from ._definition import Saga
from ._errors import InvalidTransitionError
from ._events import (
    CancelRequested,
    ChildEnded,
    CompensateRequested,
    CompensationFailed,
    CompensationSucceeded,
    CompensationWaiting,
    Event,
    Recovered,
    Resumed,
    SagaStarted,
    SignalReceived,
    StepFailed,
    StepSucceeded,
    StepWaiting,
    Suspended,
    TimerFired,
)
from ._interruptions import on_recovered, on_resumed, on_suspended
from ._model import (
    FORWARD,
    LIVE,
    CompensationStatus,
    ErrorInfo,
    FailureKind,
    SagaState,
    SagaStatus,
    Signal,
    StepState,
    StepStatus,
)
from ._transitions import (
    ADVANCE,
    DEADLINE,
    FINAL,
    UNDER_WAY,
    Reactions,
    Transition,
    advance,
    deadline_passed,
    reject,
    saga_error,
    wake_command,
    with_step,
)
from ._waits import Continue, OnTimeout

_json = msgspec.json.Encoder().encode


def initial_state(saga: Saga, saga_id: str) -> SagaState:
    """The state before `SagaStarted`: every step pending (a code saga: no call yet), seq 0."""
    return SagaState(
        saga_id=saga_id,
        saga_name=saga.name,
        definition_version=saga.version,
        steps=_pending_steps(len(saga.steps)),
    )


@functools.cache
def _pending_steps(count: int) -> tuple[StepState, ...]:
    # StepStates are frozen: every new saga of a definition can share one tuple.
    return tuple(StepState() for _ in range(count))


def transition(saga: Saga, state: SagaState, event: Event) -> Transition:
    """Apply `event` to `state`. Pure. Raises `InvalidTransitionError` if it does not apply."""
    if state.saga_name != saga.name or (
        len(state.steps) != len(saga.steps) if saga.body is None else state.partial
    ):
        raise InvalidTransitionError(
            f"snapshot of saga {state.saga_id!r} does not match definition {saga.name!r}"
            + (" (a partial snapshot: restore it from its history first)" if state.partial else "")
        )
    row = _TABLE.get(type(event))
    if row is None:  # pragma: no cover - Event is a closed union
        raise InvalidTransitionError(f"unknown event {event!r}")
    handler, accepted = row
    # A StrEnum member hashes as its string: the status itself is the key.
    phase = "new" if state.seq == 0 else state.status
    if phase not in accepted:
        raise reject(state, event, f"not accepted when {phase}")
    return handler(saga, state, event)


def _forward_status(saga: Saga, state: SagaState) -> tuple[SagaStatus, str | None]:
    """RUNNING while any forward position runs or backs off; WAITING when all under way wait
    (with the signal awaited, if one is)."""
    waiting = False
    waiting_for: str | None = None
    for index, step in enumerate(state.steps):
        if step.status is StepStatus.RUNNING or step.status is StepStatus.RETRYING:
            return SagaStatus.RUNNING, None
        if step.status is StepStatus.WAITING:
            waiting = True
            waiting_for = waiting_for or program.signal_name(saga, state, index)
    return (SagaStatus.WAITING, waiting_for) if waiting else (SagaStatus.RUNNING, None)


# -- starting positions --------------------------------------------------------


def _started(step: StepState) -> StepState:
    return StepState(status=StepStatus.RUNNING, attempts=1, call=step.call)


_STARTED = StepState(status=StepStatus.RUNNING, attempts=1)
"""A step list's step when its first attempt starts (frozen: shared)."""


def _start_list_group(
    saga: Saga,
    state: SagaState,
    event: Event,
    positions: range,
    steps: tuple[StepState, ...] | None = None,
    **changes: object,
) -> Transition:
    """Start a step list's next element (`steps`: `state`'s, already updated)."""
    steps = state.steps if steps is None else steps
    if len(positions) == 1:  # the usual case: one step, no loop
        index = positions.start
        steps = with_step(steps, index, _STARTED)
        commands: tuple[Command, ...] = (RunStep(index, 1),)
    else:
        for index in positions:
            steps = with_step(steps, index, _started(steps[index]))
        commands = tuple(RunStep(index, 1) for index in positions)
    new = advance(
        state,
        event,
        status=SagaStatus.RUNNING,
        steps=steps,
        recoveries=0,
        waiting_for=None,
        **changes,
    )
    return Transition(new, commands)


def _on_started(saga: Saga, state: SagaState, event: SagaStarted) -> Transition:
    changes: dict[str, object] = {
        "started_at": event.at,
        "deadline_at": None if saga.deadline is None else event.at + saga.deadline,
        "parent": event.parent,
    }
    if saga.body is None:
        first = program.list_group(saga, 0)
        return _start_list_group(saga, state, event, first, None, **changes)
    base = replace(state, **changes)
    return _react(saga, base, event, None)


def continue_with(saga: Saga, state: SagaState, event: Event, reaction: Reaction) -> Transition:
    """Go on from `state`, where `transition` stopped for the body (`Advance`), with its
    `reaction`: the same as `transition` of the state before `event` by `event` carrying
    every reaction so far, without applying the event's outcome again."""
    return _react(saga, state, event, Reactions((reaction,)))


def _react(saga: Saga, state: SagaState, event: Event, reactions: Reactions | None) -> Transition:
    """A code saga's group is final (or it just started): apply the body's next reaction."""
    if reactions is None:
        reactions = Reactions(getattr(event, "then", ()))
    reaction = reactions.next()
    if reaction is None:
        return Transition(state, ADVANCE)
    if isinstance(reaction, Returned):
        new = advance(
            state,
            event,
            status=SagaStatus.COMPLETED,
            output=reaction.output,
            recoveries=0,
            waiting_for=None,
        )
        return Transition(new, (Finish(SagaStatus.COMPLETED),))
    if isinstance(reaction, Raised):
        return compensate(saga, state, event, reaction.step, reaction.error)
    return _apply_calls(saga, state, event, reaction, reactions)


def _apply_calls(
    saga: Saga, state: SagaState, event: Event, reaction: Calls, reactions: Reactions
) -> Transition:
    calls = reaction.calls
    if not calls or not calls[-1].kind.blocks:
        raise reject(state, event, "a reaction's calls must end with one the body waits for")
    if any(call.position != len(state.steps) + offset for offset, call in enumerate(calls)):
        raise reject(state, event, f"calls out of order after position {len(state.steps)}")
    if deadline_passed(state, event.at):
        return compensate(saga, state, event, None, DEADLINE)
    steps = list(state.steps)
    commands: list[Command] = []
    inbox = state.inbox
    for call in calls:
        if not call.kind.blocks:
            steps.append(StepState(status=StepStatus.SUCCEEDED, result=call.value, call=call))
        elif call.kind is CallKind.STEP or call.kind is CallKind.CHILD:
            steps.append(StepState(status=StepStatus.RUNNING, attempts=1, call=call))
            commands.append(RunStep(call.position, 1))
        elif call.kind is CallKind.SLEEP:
            steps.append(StepState(status=StepStatus.WAITING, wait_until=call.until, call=call))
        else:  # a signal wait: it may have arrived already
            early = next((n for n, signal in enumerate(inbox) if signal.name == call.name), None)
            if early is not None:
                payload = inbox[early].payload
                inbox = (*inbox[:early], *inbox[early + 1 :])
                steps.append(StepState(status=StepStatus.SUCCEEDED, result=payload, call=call))
            else:
                until = None if call.timeout is None else event.at + call.timeout
                steps.append(StepState(status=StepStatus.WAITING, wait_until=until, call=call))
    base = replace(state, steps=tuple(steps), inbox=inbox)
    last = calls[-1].position
    if all(base.steps[index].status in FINAL for index in program.group(saga, base, last)):
        return _react(saga, base, event, reactions)  # a signal that was already there
    status, waiting_for = _forward_status(saga, base)
    new = advance(base, event, status=status, recoveries=0, waiting_for=waiting_for)
    return Transition(new, tuple(commands) or wake_command(new))


# -- forward outcomes ----------------------------------------------------------


def _running_step(state: SagaState, event: StepSucceeded | StepFailed | StepWaiting) -> StepState:
    if not 0 <= event.step < len(state.steps):
        raise reject(state, event, f"no step {event.step}")
    step = state.steps[event.step]
    if step.status is not StepStatus.RUNNING or step.attempts != event.attempt:
        raise reject(state, event, f"step {event.step} attempt {event.attempt} is not running")
    return step


def _outcome(
    saga: Saga,
    state: SagaState,
    steps: tuple[StepState, ...],
    event: Event,
    index: int,
    reactions: Reactions | None = None,
) -> Transition:
    """Position `index` reached its final forward outcome (`steps`: `state`'s, updated)."""
    positions = saga.element_at[index] if saga.body is None else program.group(saga, state, index)
    if len(positions) > 1 and any(steps[member].status in UNDER_WAY for member in positions):
        base = replace(state, steps=steps)
        status, waiting_for = _forward_status(saga, base)
        new = advance(base, event, status=status, recoveries=0, waiting_for=waiting_for)
        return Transition(new, ())  # the rest of the group is still under way
    if saga.body is not None:
        return _react(saga, replace(state, steps=steps), event, reactions)
    for member in positions:
        if steps[member].status is not StepStatus.SUCCEEDED:
            failed = replace(state, steps=steps)
            return compensate(saga, failed, event, member, steps[member].error)
    following = saga.next_element_at[index]
    if following is None:
        new = advance(
            state, event, status=SagaStatus.COMPLETED, steps=steps, recoveries=0, waiting_for=None
        )
        return Transition(new, (Finish(SagaStatus.COMPLETED),))
    if state.deadline_at is not None and event.at >= state.deadline_at:
        return compensate(saga, replace(state, steps=steps), event, None, DEADLINE)
    return _start_list_group(saga, state, event, following, steps)


def _succeed(
    saga: Saga,
    state: SagaState,
    event: Event,
    index: int,
    result: msgspec.Raw,
    reactions: Reactions | None = None,
) -> Transition:
    step = state.steps[index]
    done = replace(
        step,
        status=StepStatus.SUCCEEDED,
        result=result,
        retry_at=None,
        wait_until=None,
        interrupted=False,
    )
    return _outcome(saga, state, with_step(state.steps, index, done), event, index, reactions)


def _end_forward(
    saga: Saga,
    state: SagaState,
    event: Event,
    index: int,
    status: StepStatus,
    error: ErrorInfo | None,
    reactions: Reactions | None = None,
) -> Transition:
    """Position `index` failed for good: FAILED (definitive) or AMBIGUOUS."""
    step = state.steps[index]
    ended = replace(
        step, status=status, error=error, retry_at=None, wait_until=None, interrupted=False
    )
    return _outcome(saga, state, with_step(state.steps, index, ended), event, index, reactions)


def _on_step_succeeded(saga: Saga, state: SagaState, event: StepSucceeded) -> Transition:
    step = _running_step(state, event)
    index = event.step
    done = replace(
        step,
        status=StepStatus.SUCCEEDED,
        result=event.result,
        retry_at=None,
        wait_until=None,
        interrupted=False,
    )
    return _outcome(saga, state, with_step(state.steps, index, done), event, index)


def _on_step_failed(saga: Saga, state: SagaState, event: StepFailed) -> Transition:
    step = _running_step(state, event)
    policy = program.retry(saga, state, event.step)
    if (
        event.kind is FailureKind.TRANSIENT
        and policy.allows_another_attempt(step.attempts)
        and not deadline_passed(state, event.at)
    ):
        retry_at = event.at + policy.delay(step.attempts, event.jitter)
        backing_off = replace(
            step,
            status=StepStatus.RETRYING,
            retry_at=retry_at,
            error=event.error,
            interrupted=False,
        )
        new = advance(
            state, event, steps=with_step(state.steps, event.step, backing_off), recoveries=0
        )
        return Transition(new, (ScheduleWakeup(new.wake_at or retry_at),))
    outcome = StepStatus.FAILED if event.kind is FailureKind.DEFINITIVE else StepStatus.AMBIGUOUS
    return _end_forward(saga, state, event, event.step, outcome, event.error, None)


def _on_step_waiting(saga: Saga, state: SagaState, event: StepWaiting) -> Transition:
    step = _running_step(state, event)
    kind = program.kind(saga, state, event.step)
    if kind is CallKind.STEP:
        raise reject(state, event, f"step {event.step} is not a waiting step")
    signal = program.signal_name(saga, state, event.step)
    if signal is not None:
        for position, kept in enumerate(state.inbox):
            if kept.name == signal:  # it arrived before the saga got here
                inbox = (*state.inbox[:position], *state.inbox[position + 1 :])
                return _succeed(
                    saga,
                    replace(state, inbox=inbox),
                    event,
                    event.step,
                    kept.payload,
                    None,
                )
    waiting = replace(step, status=StepStatus.WAITING, wait_until=event.until, interrupted=False)
    base = replace(state, steps=with_step(state.steps, event.step, waiting))
    status, waiting_for = _forward_status(saga, base)
    new = advance(base, event, status=status, waiting_for=waiting_for, recoveries=0)
    return Transition(new, wake_command(new))


def _waiting_for_signal(saga: Saga, state: SagaState, signal: str) -> int | None:
    if state.status is not SagaStatus.WAITING:
        return None
    for index, step in enumerate(state.steps):
        if step.status is StepStatus.WAITING and program.signal_name(saga, state, index) == signal:
            return index
    return None


def _on_signal(saga: Saga, state: SagaState, event: SignalReceived) -> Transition:
    if state.status.is_terminal or (event.key is not None and event.key in state.signal_keys):
        return Transition(advance(state, event), ())  # recorded, and ignored
    keys = state.signal_keys if event.key is None else (*state.signal_keys, event.key)
    index = _waiting_for_signal(saga, state, event.name)
    if index is not None:
        keyed = replace(state, signal_keys=keys)
        return _succeed(saga, keyed, event, index, event.payload, None)
    kept = Signal(name=event.name, payload=event.payload, key=event.key, at=event.at)
    return Transition(advance(state, event, signal_keys=keys, inbox=(*state.inbox, kept)), ())


def _on_child_ended(saga: Saga, state: SagaState, event: ChildEnded) -> Transition:
    index = event.step
    if state.status.is_terminal or not 0 <= index < len(state.steps):
        return Transition(advance(state, event), ())  # late or stray: recorded, ignored
    step = state.steps[index]
    call = step.call
    if call is None or call.kind is not CallKind.CHILD or call.target != event.child:
        return Transition(advance(state, event), ())
    if step.compensation in (CompensationStatus.RUNNING, CompensationStatus.WAITING):
        if event.status is SagaStatus.COMPENSATED:
            return compensation_done(saga, state, event, index)
        if event.status is SagaStatus.FAILED:
            error = event.error or saga_error("ChildFailed", f"child saga {event.child!r} failed")
            return compensation_gave_up(saga, state, event, index, error)
        return Transition(advance(state, event), ())
    if step.status not in (StepStatus.WAITING, StepStatus.RUNNING) or state.status not in FORWARD:
        return Transition(advance(state, event), ())
    reactions = None
    if event.status is SagaStatus.COMPLETED:
        return _succeed(saga, state, event, index, event.result, reactions)
    outcome = StepStatus.FAILED if event.status is SagaStatus.COMPENSATED else StepStatus.AMBIGUOUS
    error = event.error or saga_error("ChildEnded", f"child saga {event.child!r} {event.status}")
    return _end_forward(saga, state, event, index, outcome, error, reactions)


# -- stopping the forward path: cancellation, deadline -----------------------


def _on_cancel(saga: Saga, state: SagaState, event: CancelRequested) -> Transition:
    if state.status not in FORWARD:
        return Transition(advance(state, event), ())  # already rolling back, or ended
    return _stop_forward(
        saga, state, event, saga_error("Cancelled", event.reason), event.not_started
    )


def _on_compensate_requested(
    saga: Saga, state: SagaState, event: CompensateRequested
) -> Transition:
    error = saga_error("CompensatedByParent", event.reason)
    if state.status in FORWARD:
        return _stop_forward(saga, state, event, error, event.not_started)
    if state.status is SagaStatus.COMPLETED:
        return compensate(saga, state, event, None, error)
    new = advance(state, event)
    if state.status.is_terminal:  # undone or failed already: say so again
        return Transition(new, (Finish(state.status),))
    return Transition(new, ())  # compensating: carries on


def _not_started(event: CancelRequested | CompensateRequested) -> frozenset[int]:
    skipped = event.not_started
    if skipped is None:
        return frozenset()
    return frozenset((skipped,) if isinstance(skipped, int) else skipped)


def _stop_forward(
    saga: Saga,
    state: SagaState,
    event: Event,
    error: ErrorInfo,
    not_started: int | tuple[int, ...] | None,
) -> Transition:
    """End the forward path now (cancel, deadline) and compensate what may have taken effect."""
    skipped = (
        _not_started(event) if isinstance(event, CancelRequested | CompensateRequested) else ()
    )
    steps = state.steps
    first: int | None = None
    for index, step in enumerate(steps):
        if step.status not in UNDER_WAY:
            continue
        first = index if first is None else first
        waits = program.kind(saga, state, index) in (CallKind.SLEEP, CallKind.SIGNAL)
        if step.status is StepStatus.WAITING and waits:
            ended = replace(step, status=StepStatus.FAILED, wait_until=None, error=error)
        elif index in skipped and step.attempts == 1 and not step.interrupted:
            ended = StepState(call=step.call)  # its action never ran: it never started
        else:
            ended = replace(
                step,
                status=StepStatus.AMBIGUOUS,
                retry_at=None,
                wait_until=None,
                error=error,
                interrupted=False,
            )
        steps = with_step(steps, index, ended)
    return compensate(saga, replace(state, steps=steps), event, first, error)


# -- time: retries, waits, deadlines ---------------------------------------------


def _on_timer(saga: Saga, state: SagaState, event: TimerFired) -> Transition:
    if state.status not in LIVE or state.in_flight:
        return Transition(state, ())
    if state.status in FORWARD and deadline_passed(state, event.at):
        return _stop_forward(saga, state, event, DEADLINE, None)
    steps = state.steps
    commands: list[Command] = []
    for index, step in enumerate(state.steps):
        if step.status is StepStatus.WAITING and step.wait_until is not None:
            if step.wait_until <= event.at:
                return _wait_over(saga, state, event, index)
        elif step.status is StepStatus.RETRYING and step.retry_at is not None:
            if step.retry_at <= event.at:
                again = replace(
                    step, status=StepStatus.RUNNING, attempts=step.attempts + 1, retry_at=None
                )
                steps = with_step(steps, index, again)
                commands.append(RunStep(index, again.attempts))
        elif (
            step.compensation is CompensationStatus.RETRYING
            and step.compensation_retry_at is not None
            and step.compensation_retry_at <= event.at
        ):
            attempt = step.compensation_attempts + 1
            again = replace(
                step,
                compensation=CompensationStatus.RUNNING,
                compensation_attempts=attempt,
                compensation_retry_at=None,
            )
            steps = with_step(steps, index, again)
            commands.append(RunCompensation(index, attempt))
    if not commands:
        return Transition(state, wake_command(state))  # early or stale: wait on
    return Transition(advance(state, event, steps=steps), tuple(commands))


def _wait_over(saga: Saga, state: SagaState, event: TimerFired, index: int) -> Transition:
    """The wait at `index` reached its time: a sleep ends; a signal wait times out."""
    step = state.steps[index]
    assert step.wait_until is not None
    reactions = None
    if program.is_sleep(saga, state, index):
        return _succeed(saga, state, event, index, msgspec.Raw(_json(step.wait_until)), reactions)
    on_timeout, default = program.on_timeout(saga, state, index)
    if isinstance(on_timeout, Continue):
        assert default is not None
        return _succeed(saga, state, event, index, msgspec.Raw(default), reactions)
    signal = program.signal_name(saga, state, index)
    limit = program.timeout_of(saga, state, index)
    error = saga_error("SignalTimeout", f"no {signal!r} signal within {limit} s")
    if on_timeout is OnTimeout.FAIL:
        failed = replace(step, status=StepStatus.FAILED, wait_until=None, error=error)
        new = advance(
            state,
            event,
            status=SagaStatus.FAILED,
            steps=with_step(state.steps, index, failed),
            failed_step=index,
            failure=error,
            waiting_for=None,
        )
        return Transition(new, (Finish(SagaStatus.FAILED),))
    return _end_forward(saga, state, event, index, StepStatus.FAILED, error, reactions)


_Handler = Callable[[Saga, SagaState, Any], Transition]

_RUN, _WAIT, _COMP = "running", "waiting", "compensating"
_DONE, _UNDONE, _FAILED, _SUSP = "completed", "compensated", "failed", "suspended"
_LIVE_OR_ENDED = frozenset({_RUN, _WAIT, _COMP, _DONE, _UNDONE, _FAILED})

_TABLE: dict[type[Event], tuple[_Handler, frozenset[str]]] = {
    SagaStarted: (_on_started, frozenset({"new"})),
    StepSucceeded: (_on_step_succeeded, frozenset({_RUN})),
    StepFailed: (_on_step_failed, frozenset({_RUN})),
    StepWaiting: (_on_step_waiting, frozenset({_RUN})),
    SignalReceived: (_on_signal, _LIVE_OR_ENDED),
    CancelRequested: (_on_cancel, _LIVE_OR_ENDED),
    CompensateRequested: (_on_compensate_requested, _LIVE_OR_ENDED),
    ChildEnded: (_on_child_ended, _LIVE_OR_ENDED),
    CompensationSucceeded: (on_compensation_succeeded, frozenset({_COMP})),
    CompensationFailed: (on_compensation_failed, frozenset({_COMP})),
    CompensationWaiting: (on_compensation_waiting, frozenset({_COMP})),
    TimerFired: (_on_timer, _LIVE_OR_ENDED | {_SUSP}),
    Recovered: (on_recovered, _LIVE_OR_ENDED | {_SUSP}),
    Suspended: (on_suspended, frozenset({_RUN, _WAIT, _COMP})),
    Resumed: (on_resumed, frozenset({_SUSP})),
}
"""The transition table as data: each event type's handler and the statuses that accept it
(checked in `transition`; the module docstring's matrix is tested against it)."""


def accepted_statuses() -> dict[str, frozenset[str]]:
    """Each event type's tag name and the statuses (or "new") that accept it: for tests."""
    return {event.__name__: accepted for event, (_, accepted) in _TABLE.items()}
